"""Shared helpers for bench scripts: machine description, timing, JSON results in bench/results/."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# ../shared next to the repository: sample data for local benchmarks (a user's clone may not have it).
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else whatever platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(**extra: str) -> dict[str, Any]:
    """What a reader needs to compare figures: cores, CPU, OS, Python and any library versions given."""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "when_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` once; return (milliseconds, result)."""
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000, result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` to bench/results/<name>.json and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Print a plain aligned table (numbers right-aligned)."""
    cells = [[str(h) for h in headers]] + [
        [f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


# --- end-to-end benches (ingest, latency, soak): broker, gateway subprocess, load ---------------
# Added by the ingest/latency/soak benches; everything above is the photo bench's and unchanged.

ROOT = Path(__file__).resolve().parents[1]
PHOTOS_DIR = SHARED_DIR / "photos"
CHUNK_SIZE = 8192  # the firmware's default chunk size (firmware/settings.py)
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def uxga_photos(limit: int = 12, folder: Path | None = None) -> tuple[list[bytes], str]:
    """UXGA camera photos from `folder` (default ../shared/photos: *_uxga.jpg); generated 1600x1200
    JPEGs when absent.

    Returns (photos, where they came from)."""
    folder = PHOTOS_DIR if folder is None else Path(folder)
    files = sorted(folder.glob("*_uxga.jpg"))[:limit] if folder.is_dir() else []
    if files:
        return [p.read_bytes() for p in files], f"{len(files)} UXGA photos from {folder}"
    return [_generated_uxga(i) for i in range(min(limit, 4))], "generated 1600x1200 JPEGs (no sample photos)"


def _generated_uxga(seed: int) -> bytes:
    """A 1600x1200 JPEG with camera-like texture (noise over gradients), ~245 KB at q60: within the
    sample photos' 120-330 KB and the camera driver's 384,000-byte UXGA buffer (`camera_frame_size`);
    at q85 this texture made ~520 KB, more than an ESP32-CAM can send."""
    import io
    import random

    from PIL import Image, ImageFilter

    rnd = random.Random(seed)
    small = Image.new("RGB", (200, 150))
    small.putdata(
        [
            (rnd.randrange(256), (x * 2 + seed * 30) % 256, (y * 3) % 256)
            for y in range(150)
            for x in range(200)
        ]
    )
    im = small.resize((1600, 1200), Image.BICUBIC).filter(ImageFilter.DETAIL)
    noise = Image.effect_noise((1600, 1200), 24).convert("RGB")
    im = Image.blend(im, noise, 0.25)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=60)
    return out.getvalue()


def raise_fd_limit(want: int = 8192) -> int:
    """Raise this process's open-file soft limit (children inherit it: the broker needs one per box)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = min(max(soft, want), hard) if hard != resource.RLIM_INFINITY else max(soft, want)
    if new != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


@dataclass
class ProcSample:
    """One reading of a process: CPU seconds so far (user + system), RSS and open files."""

    t: float
    cpu_s: float
    rss_bytes: int
    fds: int


def proc_sample(pid: int) -> ProcSample | None:
    """Read /proc/<pid>/stat (utime, stime), /proc/<pid>/statm (RSS) and count /proc/<pid>/fd."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        return None
    return ProcSample(time.monotonic(), cpu, rss, fds)


def cpu_cores_used(a: ProcSample | None, b: ProcSample | None) -> float:
    """Average cores busy between two samples (1.0 = one core fully used)."""
    if a is None or b is None or b.t <= a.t:
        return float("nan")
    return (b.cpu_s - a.cpu_s) / (b.t - a.t)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def tool_versions() -> dict[str, str]:
    """Versions a reader needs next to end-to-end figures: Pillow, simplejpeg, paho, Mosquitto, RAM."""
    import subprocess

    out: dict[str, str] = {}
    try:
        import PIL

        out["pillow"] = PIL.__version__
    except ImportError:
        pass
    try:
        import simplejpeg

        out["simplejpeg"] = simplejpeg.__version__
    except (ImportError, AttributeError):
        out["simplejpeg"] = "absent"
    try:
        from importlib.metadata import version

        out["paho_mqtt"] = version("paho-mqtt")
    except Exception:
        pass
    try:
        from gateway.mosquitto import find_mosquitto

        binary = find_mosquitto()
        if binary:
            r = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5)
            out["mosquitto"] = (r.stdout or r.stderr).splitlines()[0].replace("mosquitto version ", "")
    except Exception:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                out["ram_gb"] = f"{int(line.split()[1]) / 1024 / 1024:.1f}"
    except OSError:
        pass
    try:
        out["loadavg_start"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        pass
    return out


class GatewayProcess:
    """The real gateway (`python -m gateway run --config FILE`) as a child process against an
    external broker, with the folder sink in `<workdir>/alerts` and its data in `<workdir>/data`."""

    def __init__(
        self,
        workdir: Path,
        broker_url: str,
        prefix: str,
        *,
        poll_s: float | None = None,
        extra_toml: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.extra_env = dict(env or {})
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.alerts_dir = self.workdir / "alerts"
        self.config_path = self.workdir / "parcelbox.toml"
        text = (
            f'data_dir = "{self.data_dir}"\n'
            f'[broker]\nurl = "{broker_url}"\nprefix = "{prefix}"\n'
            f'[notify.folder]\npath = "{self.alerts_dir}"\n'
            "[web]\nenabled = false\n"
            "[homeassistant]\nenabled = false\n"
        )
        if poll_s is not None:
            text += f"[outbox]\npoll_s = {poll_s}\n"
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(text + extra_toml)
        self.proc: Any = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        import subprocess

        env = {k: v for k, v in os.environ.items() if not k.startswith("PARCELBOX_")}
        env["PYTHONPATH"] = str(ROOT)
        env.update(self.extra_env)
        self.log_path = self.workdir / "gateway.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)],
            cwd=ROOT,
            env=env,
            stdout=open(self.log_path, "wb"),  # noqa: SIM115 - owned by the child
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.log_tail()}")
            if (self.data_dir / "status.json").exists():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway did not start within {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def status(self) -> dict[str, Any]:
        """The gateway's own status snapshot (rewritten every 2 s)."""
        try:
            return json.loads((self.data_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def stop(self, timeout: float = 30.0) -> int | None:
        import signal
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def start_broker(workdir: Path, extra_config: tuple[str, ...] = ()) -> Any:
    """A Mosquitto on a free loopback port, configured exactly as the gateway's managed broker
    (plus `extra_config` lines, for experiments)."""
    from gateway.mosquitto import Mosquitto

    m = Mosquitto(Path(workdir) / "broker", extra_config=extra_config)
    m.start()
    return m


def event_json(eid: str, photo: bytes | None, seq: int, chunk_size: int = CHUNK_SIZE) -> bytes:
    """A protocol-v1 event as the firmware encodes it (docs/protocol.md)."""
    import hashlib

    obj: dict[str, Any] = {
        "v": 1,
        "id": eid,
        "type": "delivery",
        "ts": time.time(),
        "seq": seq,
        "sensors": {"lid": "closed", "range_mm": 183},
        "photo": None,
    }
    if photo is not None:
        obj["photo"] = {
            "size": len(photo),
            "sha256": hashlib.sha256(photo).hexdigest(),
            "chunks": -(-len(photo) // chunk_size),
            "chunk_size": chunk_size,
        }
    return json.dumps(obj, separators=(",", ":")).encode()


# --- a lightweight box: protocol v1 over a minimal asyncio MQTT 3.1.1 client ---------------------
# A SimulatedBox is a thread-free but CPU-heavy object (virtual clock, spool files, paho loop); a
# thousand of them would measure the simulator. LightBox sends the same bytes in the same order as the
# firmware (event JSON, then 8 KiB chunks, each a QoS 1 publish that waits for its PUBACK like
# umqtt.simple does) and waits for the gateway's application-level ack, so a thousand connections fit
# in one asyncio process.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_str(s: bytes) -> bytes:
    return len(s).to_bytes(2, "big") + s


class LightBox:
    """One box connection. `await connect()`, then `await send_event(...)` as often as wanted."""

    def __init__(self, host: str, port: int, prefix: str, device: str, *, timeout: float = 60.0) -> None:
        self.host, self.port, self.prefix, self.device = host, port, prefix, device
        self.timeout = timeout
        self._pid = 0
        self._pending: dict[int, Any] = {}
        self._acks: dict[str, Any] = {}
        self._reader: Any = None
        self._writer: Any = None
        self._task: Any = None
        self.seq = 0

    async def connect(self) -> None:
        import asyncio
        import socket

        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout
        )
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # CONNECT: MQTT 3.1.1, clean session, keepalive 0 (the bench never idles long enough to need it).
        var = _mqtt_str(b"MQTT") + bytes([4, 0x02]) + (0).to_bytes(2, "big")
        body = var + _mqtt_str(self.device.encode())
        self._writer.write(bytes([0x10]) + _varint(len(body)) + body)
        hdr = await asyncio.wait_for(self._reader.readexactly(4), self.timeout)
        if hdr[0] != 0x20 or hdr[3] != 0:
            raise ConnectionError(f"{self.device}: CONNACK refused ({hdr.hex()})")
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        pid, fut = self._next_pid()
        topic = f"{self.prefix}/{self.device}/ack".encode()
        body = pid.to_bytes(2, "big") + _mqtt_str(topic) + b"\x01"
        self._writer.write(bytes([0x82]) + _varint(len(body)) + body)
        await asyncio.wait_for(fut, self.timeout)

    def _next_pid(self) -> tuple[int, Any]:
        import asyncio

        self._pid = self._pid % 65535 + 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._pid] = fut
        return self._pid, fut

    async def _read_loop(self) -> None:
        import asyncio

        r = self._reader
        try:
            while True:
                b0 = (await r.readexactly(1))[0]
                length, mult = 0, 1
                while True:
                    d = (await r.readexactly(1))[0]
                    length += (d & 0x7F) * mult
                    mult *= 128
                    if not d & 0x80:
                        break
                body = await r.readexactly(length)
                kind = b0 >> 4
                if kind in (4, 9):  # PUBACK, SUBACK
                    fut = self._pending.pop(int.from_bytes(body[:2], "big"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                elif kind == 3:  # PUBLISH: the gateway's ack / nack
                    tlen = int.from_bytes(body[:2], "big")
                    pos = 2 + tlen
                    if (b0 >> 1) & 3:
                        pid = body[pos : pos + 2]
                        pos += 2
                        self._writer.write(b"\x40\x02" + pid)
                    try:
                        ack = json.loads(body[pos:])
                        fut = self._acks.pop(ack["id"], None)
                    except (ValueError, KeyError, TypeError):
                        continue
                    if fut is not None and not fut.done():
                        fut.set_result(ack)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))
            for fut in self._acks.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))

    async def publish(self, topic: str, payload: bytes | memoryview) -> None:
        """QoS 1 publish that returns when the broker's PUBACK arrives."""
        import asyncio

        pid, fut = self._next_pid()
        t = topic.encode()
        head = _mqtt_str(t) + pid.to_bytes(2, "big")
        self._writer.write(bytes([0x32]) + _varint(len(head) + len(payload)) + head)
        self._writer.write(payload)
        await asyncio.wait_for(fut, self.timeout)

    async def send_event(self, eid: str, photo: bytes | None, *, retries: int = 3) -> dict[str, Any]:
        """Publish event + chunks and wait for the gateway's ack; resend on a retryable nack.

        Returns {"ok": bool, "tries": n, "started": t0, "acked": t1, "error": str | None}."""
        import asyncio

        self.seq += 1
        started = time.monotonic()
        payload = event_json(eid, photo, self.seq)
        mv = memoryview(photo) if photo is not None else None
        base = f"{self.prefix}/{self.device}"
        ack: dict[str, Any] = {}
        tries = 0
        while tries <= retries:
            tries += 1
            fut = asyncio.get_running_loop().create_future()
            self._acks[eid] = fut
            await self.publish(f"{base}/event", payload)
            if mv is not None:
                for i in range(0, len(mv), CHUNK_SIZE):
                    await self.publish(f"{base}/photo/{eid}/{i // CHUNK_SIZE}", mv[i : i + CHUNK_SIZE])
            ack = await asyncio.wait_for(fut, self.timeout)
            if ack.get("ok") or not ack.get("retry"):
                break
        return {
            "ok": bool(ack.get("ok")),
            "tries": tries,
            "started": started,
            "acked": time.monotonic(),
            "error": ack.get("error"),
        }

    async def close(self) -> None:
        import asyncio

        if self._writer is None:
            return
        try:
            self._writer.write(b"\xe0\x00")  # DISCONNECT
            await asyncio.wait_for(self._writer.drain(), 5)
        except (TimeoutError, ConnectionError):
            pass
        if self._task is not None:
            self._task.cancel()
        self._writer.close()


async def connect_boxes(
    url: str, prefix: str, n: int, stem: str = "bench", batch: int = 50
) -> list[LightBox]:
    """Open `n` box connections (device ids `<stem>-0000`...), `batch` at a time."""
    import asyncio
    from urllib.parse import urlparse

    u = urlparse(url)
    boxes = [LightBox(u.hostname or "127.0.0.1", u.port or 1883, prefix, f"{stem}-{i:04d}") for i in range(n)]
    for i in range(0, n, batch):
        await asyncio.gather(*(b.connect() for b in boxes[i : i + batch]))
    return boxes


# --- the floor: a bare paho subscriber that acks once it has every byte of an event ------------


def run_bare_subscriber(url: str, prefix: str, ready_file: str, nodelay: bool = True) -> None:
    """A thin paho consumer in place of the gateway: it receives the event and every chunk, and acks
    when all have arrived (no hashing, no decoding, no disk). It is what the broker round trip of the
    same photo stream costs, with a Python client at both ends."""
    from urllib.parse import urlparse

    import paho.mqtt.client as mqtt

    u = urlparse(url)
    want: dict[tuple[str, str], int] = {}
    got: dict[tuple[str, str], set[int]] = {}
    ack_topic = prefix + "/{}/ack"

    def maybe_ack(c: mqtt.Client, key: tuple[str, str]) -> None:
        n = want.get(key)
        if n is not None and len(got.get(key, ())) >= n:
            want.pop(key, None)
            got.pop(key, None)
            c.publish(ack_topic.format(key[0]), b'{"v":1,"id":"%s","ok":true}' % key[1].encode(), qos=1)

    def on_message(c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        parts = m.topic.split("/")
        if parts[-1] == "event":
            ev = json.loads(m.payload)
            key = (parts[-2], ev["id"])
            want[key] = (ev.get("photo") or {}).get("chunks", 0)
            maybe_ack(c, key)
        elif len(parts) >= 4 and parts[-3] == "photo":
            key = (parts[-4], parts[-2])
            got.setdefault(key, set()).add(int(parts[-1]))
            maybe_ack(c, key)

    def on_connect(c: mqtt.Client, *_a: Any) -> None:
        import socket

        sock = c.socket()
        if nodelay and isinstance(sock, socket.socket):
            # paho leaves Nagle on: its PUBACKs and the ack would wait for the broker's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe([(f"{prefix}/+/event", 1), (f"{prefix}/+/photo/+/+", 1)])

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bare-{os.getpid()}", clean_session=True)
    c.max_queued_messages_set(0)
    c.on_connect = on_connect
    c.on_message = on_message
    c.on_subscribe = lambda *a: Path(ready_file).write_text(str(os.getpid()))
    c.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=60)
    c.loop_forever()


class BareSubscriber:
    """`run_bare_subscriber` in its own process (like the gateway, so both use a core of their own)."""

    def __init__(self, url: str, prefix: str, workdir: Path) -> None:
        self.url, self.prefix = url, prefix
        self.ready = Path(workdir) / f"bare-{prefix.replace('/', '_')}.ready"
        self.proc: Any = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> None:
        import subprocess

        self.ready.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), "bare-subscriber", self.url, self.prefix, str(self.ready)],
            cwd=ROOT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("bare subscriber did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "bare-subscriber":
    sys.path.insert(0, str(ROOT))
    run_bare_subscriber(
        sys.argv[2], sys.argv[3], sys.argv[4], os.environ.get("BENCH_BARE_NODELAY", "1") == "1"
    )
