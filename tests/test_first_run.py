"""The first run and day two as a new user lives them (issue 15 items 3, 4, 5, 7, 8, 9): real processes,
a plain shell, a real Mosquitto, real terminals (ptys)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx2 as httpx
import pytest

from gateway import cli
from gateway.service import GatewayService
from tests.support.gateway_core import Box, gateway_config, make_jpeg, new_event_id, wait_for

ROOT = Path(__file__).resolve().parent.parent
PARCELBOX = [sys.executable, "-m", "gateway"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARCELBOX_", "XDG_", "VIRTUAL_ENV"))}
    env["HOME"] = str(home)
    env.update(
        PARCELBOX_BROKER_LISTEN_HOST="127.0.0.1", PARCELBOX_BROKER_LISTEN_PORT="0", PARCELBOX_WEB_PORT="0"
    )
    env.update(extra)
    return env


def _start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*PARCELBOX, "run", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115
    )


def _banner(log: Path) -> str:
    return wait_for(lambda: "Ctrl-C (or SIGTERM)" in log.read_text() and log.read_text(), 60, what="banner")


def _stop(gw: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if gw.poll() is None:
        gw.send_signal(sig)
    try:
        return gw.wait(60)
    except subprocess.TimeoutExpired:
        gw.kill()
        return gw.wait()


def _pb(env: dict[str, str], *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PARCELBOX, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, **kw
    )


def _no_noise(text: str) -> None:
    assert "Traceback" not in text, text
    assert not [line for line in text.splitlines() if " ERROR " in line], text


# --- item 5: the README's trial, exactly as printed, in a plain shell --------------------------------------------


def _netns_works() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    r = subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=10)
    return r.returncode == 0


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "parcelbox").exists(), reason="needs `make venv` (.venv)")
def test_readme_trial_commands_work_as_printed_in_a_plain_shell(tmp_path):
    """Old code: the banner printed `parcelbox status` (command not found without an activated venv)
    and the trial wrote into the real install's data folder."""
    if not _netns_works():
        pytest.skip("needs `unshare -rn` (a private network namespace, so ports 1883 and 8080 are free)")
    # `make demo` first brings .venv up to date with pyproject.toml; do that part here, where pip can
    # reach its index (the namespace below has no network), so the trial itself starts at once.
    subprocess.run(
        ["make", "-s", ".venv/.installed-run"], cwd=ROOT, capture_output=True, timeout=600, check=True
    )
    home = tmp_path / "home"
    home.mkdir()
    report_path = tmp_path / "report.json"
    r = subprocess.run(
        [
            "unshare",
            "-rn",
            "sh",
            "-c",
            'ip link set lo up && exec "$0" -m tests.support.readme_trial "$1" "$2"',
            sys.executable,
            str(home),
            str(report_path),
        ],  # fmt: skip
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(report_path.read_text())
    assert report["readme"][0] == "make demo", report["readme"]
    assert any("tools/simulate.py" in c for c in report["readme"])
    for run in report["runs"]:
        assert run["rc"] == 0, run
    by_cmd = {run["cmd"]: run for run in report["runs"]}
    sim = next(run for c, run in by_cmd.items() if "--deliveries 3" in c)
    assert "OK: every event acked" in sim["out"]
    # Every command the banner suggests was run as printed (no bare `parcelbox`, no bare `python`).
    assert len(report["banner"]) >= 3
    for cmd in report["banner"]:
        assert cmd.startswith((".venv/bin/parcelbox ", ".venv/bin/python ")), cmd
    log = report["log"]
    demo_dir = home / ".local" / "share" / "parcelbox-demo"
    assert f"data folder   {demo_dir}" in log and "TRIAL" in log
    assert len(list((demo_dir / "alerts").glob("box-1_*.json"))) >= 3
    assert not (home / ".local" / "share" / "parcelbox").exists()  # a real install's folder stays untouched
    # Ctrl-C: a clean stop, and not one ERROR line or traceback in terminal 1 (item 8).
    assert "gateway stopped" in log
    _no_noise(log)


def test_banner_commands_name_this_installation():
    """`command()` gives the bare name only when PATH finds this very installation."""
    venv_bin = os.path.dirname(os.path.abspath(sys.executable))
    old = os.environ["PATH"]
    try:
        os.environ["PATH"] = "/usr/bin:/bin"
        assert cli.command("python") in (os.path.relpath(sys.executable), os.path.abspath(sys.executable))
        assert cli.command("python") != "python"
        os.environ["PATH"] = venv_bin + os.pathsep + "/usr/bin:/bin"
        assert cli.command("python") == "python"
    finally:
        os.environ["PATH"] = old


# --- item 4: dashboard port taken -----------------------------------------------------------------------------------


def test_dashboard_port_taken_moves_to_a_free_port_said_in_banner_and_status(tmp_path):
    """Old code: a traceback and exit 1 (a restart loop under the shipped unit)."""
    home = tmp_path / "home"
    home.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = _env(home, PARCELBOX_WEB_PORT=str(port))
        log = tmp_path / "run.log"
        gw = _start(env, log)
        try:
            text = _banner(log)
            m = re.search(r"dashboard     (http://127\.0\.0\.1:(\d+))", text)
            assert m and int(m.group(2)) != port, text
            assert f"port {port} was taken" in text and "PARCELBOX_WEB_PORT" in text
            assert httpx.get(m.group(1) + "/api/health", timeout=10).status_code == 200
            st = _pb(env, "status")
            assert st.returncode == 0 and f"dashboard: {m.group(1)}" in st.stdout, st.stdout + st.stderr
            web_json = home / ".local" / "share" / "parcelbox" / "web.json"
            assert json.loads(web_json.read_text())["url"] == m.group(1)
        finally:
            assert _stop(gw) == 0
        assert not web_json.exists()  # removed on a clean stop
        _no_noise(log.read_text())
    unit = (ROOT / "deploy" / "parcelbox.service").read_text()
    assert "RestartPreventExitStatus=2 3" in unit and "dashboard move to free ports" in unit


# --- item 3: the trial's own data folder; forgetting any box seen ------------------------------------------------------


def test_demo_has_its_own_data_folder_and_any_seen_box_can_be_removed(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = _env(home)
    log = tmp_path / "run.log"
    gw = _start(env, log, "--demo")
    demo_dir = home / ".local" / "share" / "parcelbox-demo"
    try:
        text = _banner(log)
        assert f"data folder   {demo_dir}" in text and "TRIAL" in text
        # Anonymous, as the simulator's boxes are: the managed broker's local listener.
        url = json.loads((demo_dir / "broker.json").read_text())["local_url"]
        box = Box(url, "parcelbox", "sim-1")  # never registered, as the simulator's boxes are not
        try:
            eid = new_event_id()
            box.send(eid, make_jpeg(160, 120))
            assert box.wait_ack(eid)["ok"]
        finally:
            box.close()
        wait_for(lambda: "sim-1" in _pb(env, "status", "--demo").stdout, what="sim-1 in status")
        r = _pb(env, "device", "forget", "sim-1", "--demo")  # old code: refused, "no box named"
        assert r.returncode == 0 and "forgotten" in r.stdout and "history" in r.stdout, r.stdout + r.stderr
        wait_for(lambda: "sim-1" not in _pb(env, "status", "--demo", "--json").stdout.split('"events"')[0],
                 what="sim-1 hidden")  # fmt: skip
        assert _pb(env, "device", "remove", "never-seen", "--demo").returncode == 1
        # Forgotten, then its history deleted too (issue 15 item 3): the running demo gateway does it.
        # Old code: --purge was a usage error.
        r = _pb(env, "device", "forget", "sim-1", "--purge", "--demo")
        assert r.returncode == 0 and "History of 'sim-1' deleted" in r.stdout, r.stdout + r.stderr
        assert not (demo_dir / "photos" / "sim-1").exists()
    finally:
        assert _stop(gw, signal.SIGINT) == 0
    assert not (home / ".local" / "share" / "parcelbox").exists()
    assert (
        _pb(env, "status", "--demo", "--config", str(tmp_path / "x.toml")).returncode == 2
    )  # one or the other


# --- item 7: no tracebacks on ordinary actions ---------------------------------------------------------------------------


def _pty_run(env: dict[str, str], args: list[str], typed: list[bytes]) -> tuple[int, str]:
    """Run in a real terminal (a pty), typing each of `typed` after the next prompt."""
    master, slave = os.openpty()
    p = subprocess.Popen(
        args, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    out = b""
    try:
        for keys in typed:
            deadline = time.monotonic() + 30
            start = len(out)
            while not out[start:].rstrip().endswith(b":"):  # a new prompt since the last answer
                if time.monotonic() > deadline:
                    raise AssertionError(f"no prompt: {out!r}")
                out += os.read(master, 4096)
            os.write(master, keys)
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        rc = p.wait(30)
        os.close(master)
    return rc, out.decode(errors="replace")


def test_set_password_ctrl_d_no_terminal_and_too_short_say_what_happened(tmp_path):
    env = _env(tmp_path)
    # Ctrl-D at the prompt. Old code: EOFError traceback.
    rc, out = _pty_run(env, [*PARCELBOX, "web", "set-password"], [b"\x04"])
    assert rc == 1 and "Cancelled; nothing changed" in out and "Traceback" not in out, out
    # Too short: refused at once, not after typing it twice.
    rc, out = _pty_run(env, [*PARCELBOX, "web", "set-password"], [b"short\n"])
    assert rc == 1 and "at least 8 characters" in out and "Again" not in out, out
    # A good one still works, asked twice.
    rc, out = _pty_run(env, [*PARCELBOX, "web", "set-password"], [b"long enough pw\n", b"long enough pw\n"])
    assert rc == 0 and "Password saved" in out, out
    # No terminal at all (a service, a script without --stdin). Old code: a traceback.
    r = _pb(env, "web", "set-password", stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "--stdin" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_status_into_a_closed_pipe_is_quiet(tmp_path):
    """`parcelbox status | head`: old code printed a BrokenPipeError traceback."""
    env = _env(tmp_path)
    for i in range(3):
        assert _pb(env, "device", "add", f"box-{i}").returncode == 0
    p = subprocess.Popen(
        [*PARCELBOX, "status"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    p.stdout.close()  # the reader went away before the first line
    err = p.stderr.read().decode()
    p.wait(60)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


# --- item 9: one CLI --------------------------------------------------------------------------------------------------------


def test_config_goes_anywhere_header_plurals_and_example_config(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{data}"\n')
    # Old code: `device add x --config F` was a usage error (the option belonged to `device`).
    assert cli.main(["device", "add", "box-a", "--config", str(cfg)]) == 0
    assert cli.main(["--config", str(cfg), "device", "add", "box-b"]) == 0
    assert cli.main(["device", "--config", str(cfg), "add", "box-c"]) == 0
    assert cli.main(["status", "--config", str(cfg), "--json"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("long enough pw\n"))
    assert cli.main(["web", "set-password", "--stdin", "--config", str(cfg)]) == 0  # a plug-in command
    assert (data / "web" / "password").is_file()
    assert sorted(p["device"] for p in json.loads((data / "devices.json").read_text())["devices"].values()) == [
        "box-a", "box-b", "box-c"
    ]  # fmt: skip
    capsys.readouterr()
    assert cli.main(["device", "list", "--config", str(cfg)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["DEVICE", "NAME", "REGISTERED"] and lines[-1] == "3 boxes registered"
    cli.main(["device", "remove", "box-a", "--config", str(cfg)])
    cli.main(["device", "remove", "box-b", "--config", str(cfg)])
    capsys.readouterr()
    cli.main(["device", "list", "--config", str(cfg)])
    assert capsys.readouterr().out.splitlines()[-1] == "1 box registered"
    # The README's service steps copy config.example.toml; as shipped it changes nothing, and every
    # commented setting in it is a real key with a valid value.
    readme = (ROOT / "README.md").read_text()
    assert "cp config.example.toml /etc/parcelbox/config.toml" in readme
    from gateway.config import Config, load_config

    example = ROOT / "config.example.toml"
    assert load_config(example, env={}).web == Config().web
    uncommented = tmp_path / "all.toml"
    uncommented.write_text(re.sub(r"(?m)^# ([a-z_][a-z0-9_-]* = )", r"\1", example.read_text()))
    full = load_config(uncommented, env={})
    assert full.web.host == "0.0.0.0" and full.broker.url.startswith("mqtt://")


def test_simulator_stay_has_no_deadline_unless_given(monkeypatch):
    """Old code: `--stay` still gave up after the default 120 s."""
    from tools import simulate

    seen = []

    def fake_run(boxes, timeout, stay=False, tick=0.005):
        seen.append((timeout, stay))
        return True

    monkeypatch.setattr(simulate, "run_boxes", fake_run)
    monkeypatch.setattr(simulate, "SimulatedBox", lambda *a, **k: _NoBox())
    assert simulate.main(["--broker", "mqtt://127.0.0.1:1", "--stay", "--quiet"]) == 0
    assert simulate.main(["--broker", "mqtt://127.0.0.1:1", "--quiet"]) == 0
    assert simulate.main(["--broker", "mqtt://127.0.0.1:1", "--stay", "--timeout", "5", "--quiet"]) == 0
    assert seen == [(float("inf"), True), (120.0, False), (5.0, True)]


class _NoBox:
    def deliver(self) -> None: ...

    def close(self) -> None: ...

    def all_acked(self) -> bool:
        return True

    def summary(self) -> dict:
        return {"device": "box-1", "events": [], "spooled": 0}


# --- item 8: log noise ----------------------------------------------------------------------------------------------------


def test_clean_stops_log_no_error(tmp_path, mosquitto, prefix, caplog):
    """Old code: paho logged "Client is not connected" at ERROR on most clean stops."""
    caplog.set_level(logging.INFO)
    cfg = gateway_config(tmp_path / "data", mosquitto.url, prefix)
    for _ in range(3):
        svc = GatewayService(cfg)
        svc.start()
        assert svc.wait_connected(10)
        svc.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_amqtt_fallback_starts_quietly(tmp_path):
    """Old code: ~25 INFO lines from amqtt and its state machine, and an ERROR from our own port probe."""
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "run.log"
    gw = _start(_env(home, PARCELBOX_BROKER_PREFER="amqtt"), log)
    try:
        _banner(log)
    finally:
        assert _stop(gw, signal.SIGINT) == 0
    text = log.read_text()
    _no_noise(text)
    assert "gateway stopped" in text
    assert not re.search(r" INFO +(amqtt|transitions)", text), text


def test_packaging_metadata_uses_an_spdx_licence():
    """setuptools >= 77 warns (three times per install) about a `license = { text = ... }` table."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in meta["build-system"]["requires"])


# --- item 6: WhatsApp guidance that agrees with itself (CLI and state texts only) ------------------------------------


def test_whatsapp_guidance_names_the_readme_install_and_how_to_enable(tmp_path):
    env = _env(tmp_path)
    # neonize missing: old code said "not paired" and sent the user to pair.
    hide = "import sys; sys.modules['neonize'] = None; from gateway.cli import main; sys.exit(main())"
    r = subprocess.run([sys.executable, "-c", hide, "whatsapp", "status"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (
        "not installed: .venv/bin/pip install -e '.[whatsapp]'" in r.stdout and "not paired" not in r.stdout
    )
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/pip install -e '.[whatsapp]'" in readme
    # The dashboard's WhatsApp page shows the gateway's state detail: with WhatsApp off it says how to
    # turn it on (old code: only "WhatsApp is not enabled").
    from gateway.service import GatewayService as _S

    detail = _S(gateway_config(tmp_path / "d", "mqtt://127.0.0.1:1", "p")).whatsapp_state()["detail"]
    assert "[whatsapp] enabled = true" in detail and ".venv/bin/pip install -e '.[whatsapp]'" in detail
    child = (ROOT / "gateway" / "whatsapp" / "child.py").read_text()
    assert "pip install 'parcelbox[whatsapp]'" not in child  # one install hint, the README's


def test_banner_flags_whatsapp_enabled_without_neonize(tmp_path, monkeypatch):
    """Item 6: old code said nothing at start; each alert then logged a WARNING per retry."""
    import importlib.util

    from gateway import app
    from gateway.config import load_config

    cfg = load_config(None, env={"PARCELBOX_DATA_DIR": str(tmp_path), "PARCELBOX_WHATSAPP_ENABLED": "1"})
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "neonize" else real(name, *a)
    )
    warning = app.whatsapp_install_warning(cfg)
    assert warning and "install -e '.[whatsapp]'" in warning and "outbox" in warning
    monkeypatch.setattr(importlib.util, "find_spec", real)
    cfg_off = load_config(None, env={"PARCELBOX_DATA_DIR": str(tmp_path)})
    assert app.whatsapp_install_warning(cfg_off) is None
