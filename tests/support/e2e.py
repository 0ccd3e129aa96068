"""End-to-end helpers: the real gateway as a subprocess, its CLI, the folder sink, and store audits.

Used by `tests/e2e/`, `tests/test_hostile_corpus.py` and `bench/chaos.py`. The gateway runs as
`python -m gateway run --config FILE` with its own TOML config (external broker URL, folder sink on),
exactly as a user runs it; tests read what it did through its files and `parcelbox status --json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.polling import poll

ROOT = Path(__file__).resolve().parents[2]
PHOTO_SUFFIXES = {"original": ".jpg", "alert": ".alert.jpg", "thumb": ".thumb.jpg"}


def clean_env() -> dict[str, str]:
    """The environment without PARCELBOX_* overrides, so only the config file counts."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PARCELBOX_")}


def wait_for(pred: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "it") -> Any:
    """Poll `pred` until it returns something truthy; TimeoutError naming `what` otherwise."""
    return poll(pred, timeout, interval, what)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def write_config(path: Path, sections: dict[str, Any]) -> Path:
    """Write a TOML config from {"data_dir": ..., "broker": {...}, "notify.folder": {...}}."""
    lines: list[str] = []
    for k, v in sections.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in sections.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class GatewayProc:
    """One gateway data folder + config, run (and re-run, and SIGKILLed) as a subprocess."""

    def __init__(
        self,
        root: Path,
        broker_url: str,
        prefix: str,
        *,
        extra: dict[str, dict[str, Any]] | None = None,
        log_level: str = "INFO",
        nofile: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.env = dict(env or {})  # added to the child's environment (after clean_env), per start
        self.nofile = nofile  # RLIMIT_NOFILE (soft = hard) for the child, like systemd's LimitNOFILE
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root / "data"
        self.alerts_dir = self.root / "alerts"
        self.prefix = prefix
        sections: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "log_level": log_level,
            "broker": {"url": broker_url, "prefix": prefix},
            "notify.folder": {"path": str(self.alerts_dir)},
            "outbox": {"poll_s": 0.1, "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
            "web": {"enabled": False},
            "homeassistant": {"enabled": False},
        }
        for sec, vals in (extra or {}).items():
            cur = sections.setdefault(sec, {})
            cur.update(vals)
        self.config = write_config(self.root / "parcelbox.toml", sections)
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.kills = 0

    # --- process -------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.root / "gateway.log"

    def start(self, wait: bool = True, timeout: float = 60.0) -> None:
        """Start `parcelbox run`; with `wait`, return once its status snapshot names the new pid."""
        assert self.proc is None or self.proc.poll() is not None, "gateway already running"
        self.runs += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== run {self.runs} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
                cwd=ROOT,
                env={**clean_env(), **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=self._limits if self.nofile else None,
            )
        if wait:
            self.wait_up(timeout)

    def _limits(self) -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def open_fds(self) -> int:
        """How many file descriptors the running gateway holds (Linux /proc)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def wait_up(self, timeout: float = 60.0) -> None:
        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.tail()}")
            snap = self.snapshot()
            return bool(snap) and snap.get("health", {}).get("pid") == self.pid

        wait_for(up, timeout, what="the gateway to start")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no last snapshot, whatever was in flight is cut."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.kills += 1

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the clean exit; returns the exit code."""
        if not self.running():
            return self.proc.returncode if self.proc is not None else 0
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # --- what it did ---------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """`<data>/status.json` as the gateway last wrote it (every 2 s), {} if none yet."""
        try:
            return json.loads((self.data_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def health(self) -> dict[str, Any]:
        return self.snapshot().get("health", {})

    def _live(self, name: str) -> dict[str, Any] | None:
        """`<data>/<name>` when this run of the gateway wrote it (its pid), else None."""
        try:
            doc = json.loads((self.data_dir / name).read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and doc.get("pid") == self.pid else None

    def web_url(self, timeout: float = 30.0) -> str:
        """Where this run's dashboard really listens, from `<data>/web.json` (gateway/web/server.py).

        Tests configure `[web] port = 0` and ask here: a port picked by the test and bound later by
        the gateway can be taken by another test worker's process in between (the dashboard then
        moves, and the test would knock on the wrong door).
        """
        from gateway.web.server import WEB_FILE

        doc = wait_for(lambda: self._live(WEB_FILE), timeout, what=f"{WEB_FILE} of gateway pid {self.pid}")
        return str(doc["url"])

    def broker_address(self, timeout: float = 30.0) -> dict[str, Any]:
        """Where this run's managed broker really listens, from `<data>/broker.json` (gateway/broker.py):
        `port` (the box listener), `url` and `local_url`."""
        from gateway.broker import BROKER_FILE

        return wait_for(
            lambda: self._live(BROKER_FILE), timeout, what=f"{BROKER_FILE} of gateway pid {self.pid}"
        )

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a `parcelbox` subcommand against this gateway's config."""
        return subprocess.run(
            [sys.executable, "-m", "gateway", args[0], "--config", str(self.config), *args[1:]],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            timeout=timeout,
            text=True,
        )

    def status(self) -> dict[str, Any]:
        """`parcelbox status --json`."""
        r = self.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert document in the folder sink."""
        out = []
        for p in sorted(self.alerts_dir.glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except ValueError:
                out.append({"id": p.stem, "corrupt": True})
        return out

    def alerts_for(self, kind: str, device: str | None = None) -> list[dict[str, Any]]:
        return [
            a for a in self.alerts() if a.get("kind") == kind and (device is None or a["device"] == device)
        ]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def jpeg_complete(data: bytes) -> bool:
    """A whole JPEG: starts with SOI, ends with EOI, and Pillow decodes every pixel."""
    if not (data.startswith(b"\xff\xd8") and data.rstrip(b"\x00").endswith(b"\xff\xd9")):
        return False
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception:
        return False
    return True


def audit_data_folder(data_dir: Path, alerts_dir: Path) -> dict[str, Any]:
    """Open the store (the gateway must be stopped) and check it against its photo files and the sink.

    Returns the counts and a list of `problems` (empty when everything holds): every stored photo has
    its three files, the original's sha256 is the event's, every file under photos/ belongs to a stored
    event (no orphans, no temp leftovers), every JPEG is whole, and every alert file in the folder sink
    names stored events and has its photo when it says so.
    """
    from gateway.store import Store

    problems: list[str] = []
    # Listed before the store opens: opening it sweeps temp files a crash left, which we want to see.
    photo_root = Path(data_dir).resolve() / "photos"
    all_files = {p.resolve() for p in photo_root.rglob("*") if p.is_file()}
    for p in Path(data_dir).rglob("*.tmp"):
        if p.parent.resolve() != photo_root and photo_root not in p.resolve().parents:
            problems.append(f"temp file left in the data folder: {p.relative_to(data_dir)}")
    store = Store(data_dir)
    try:
        events = store.list_events(limit=10**7)
        outbox = store.list_outbox(limit=10**7)
        expected_files: set[Path] = set()
        for e in events:
            if e.get("photo") is None:
                continue
            for variant in PHOTO_SUFFIXES:
                p = store.photo_path(e["device"], e["id"], variant)  # type: ignore[arg-type]
                if p is None:
                    problems.append(f"event {e['device']}/{e['id']}: no {variant} photo file")
                    continue
                expected_files.add(p.resolve())
                data = p.read_bytes()
                if not jpeg_complete(data):
                    problems.append(f"{p}: truncated or not a JPEG")
                if variant == "original" and hashlib.sha256(data).hexdigest() != e["photo"]["sha256"]:
                    problems.append(f"{p}: sha256 differs from the event's")
        for orphan in sorted(all_files - expected_files):
            problems.append(f"orphan photo file {orphan.relative_to(photo_root)}")
        counts = store.outbox_counts()
    finally:
        store.close()
    keys = {(e["device"], e["id"]) for e in events}
    alerts = []
    for p in sorted(Path(alerts_dir).glob("*")):
        if p.suffix == ".json" and not p.name.startswith("."):
            try:
                alerts.append(json.loads(p.read_text()))
            except ValueError:
                problems.append(f"sink: {p.name} is not whole JSON")
        elif p.suffix == ".jpg":
            if not jpeg_complete(p.read_bytes()):
                problems.append(f"sink: {p.name} is truncated")
            if not (p.with_suffix(".json")).exists():
                problems.append(f"sink: {p.name} has no alert document")
        else:
            problems.append(f"sink: stray file {p.name}")
    for a in alerts:
        for eid in a.get("event_ids", []):
            if (a["device"], eid) not in keys:
                problems.append(f"sink: alert {a['id']} names {a['device']}/{eid}, not stored")
        if a.get("photo") and not (Path(alerts_dir) / a["photo"]).is_file():
            problems.append(f"sink: alert {a['id']} has no photo file")
    sink_ids = {a["id"] for a in alerts}
    for o in outbox:
        if o["notifier"] == "folder" and o["state"] == "sent" and o["id"] not in sink_ids:
            problems.append(f"outbox says {o['id']} was sent to the folder, but it is not there")
    return {
        "events": events,
        "outbox": outbox,
        "outbox_counts": counts,
        "alerts": alerts,
        "problems": problems,
    }
