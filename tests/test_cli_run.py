"""`parcelbox run` as a user starts it: no config file, own broker, folder sink; one owner per data folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.gateway_core import Box, make_jpeg, new_event_id, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARCELBOX_", "XDG_"))}
    env["HOME"] = str(home)
    # Loopback and a free port instead of 0.0.0.0:1883, no dashboard port: tests must not collide.
    env.update(
        PARCELBOX_BROKER_LISTEN_HOST="127.0.0.1",
        PARCELBOX_BROKER_LISTEN_PORT="0",
        PARCELBOX_BROKER_LOCAL_PORT="0",
        PARCELBOX_WEB_ENABLED="0",
    )
    env.update(extra)
    return env


def _run(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115
    )


def test_fresh_machine_run_own_broker_folder_sink_summary_and_clean_sigterm(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    secret_cfg = tmp_path / "c.toml"
    secret_cfg.write_text(
        'log_level = "DEBUG"\n[notify.webhook]\nurl = "http://127.0.0.1:9/x"\n'
        'headers = { Authorization = "Bearer s3cr3t-token" }\n'
    )
    log = tmp_path / "run.log"
    gw = _run(_env(home), log)
    try:
        text = wait_for(lambda: "next:" in log.read_text() and log.read_text(), 30, what="startup summary")
        data_dir = home / ".local" / "share" / "parcelbox"
        assert f"data folder   {data_dir}" in text
        assert "config        none (all defaults)" in text
        assert "managed mosquitto on 127.0.0.1:" in text
        url = re.search(r"gateway connects to (mqtt://127\.0\.0\.1:\d+)", text).group(1)
        # the live address is written where `flash provision` and scripts find it, and said so
        live = data_dir / "broker.json"
        assert f"address written to {live}" in text
        assert json.loads(live.read_text())["url"] == url
        # the box listener takes logins only; the summary names the local listener for simulated boxes
        trial = re.search(r"simulate\.py --broker (mqtt://127\.0\.0\.1:\d+)", text).group(1)
        assert trial != url and json.loads(live.read_text())["local_url"] == trial
        url = trial
        box = Box(url, "parcelbox", "box-1")
        try:
            eid = new_event_id()
            box.send(eid, make_jpeg(320, 240))
            assert box.wait_ack(eid)["ok"]
        finally:
            box.close()
        # the user-facing simulator (the real firmware modules on simulated hardware) against it
        sim = subprocess.run(
            [
                sys.executable,
                "tools/simulate.py",
                "--broker",
                url,
                "--device",
                "sim-box",
                "--deliveries",
                "2",
                "--quiet",
                "--timeout",
                "60",
            ],
            cwd=ROOT,
            env=_env(home),
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert sim.returncode == 0, sim.stdout + sim.stderr
        alerts = data_dir / "alerts"
        wait_for(
            lambda: len(list(alerts.glob("*.json"))) == 3 and len(list(alerts.glob("*.jpg"))) == 3,
            what="alert files",
        )
        assert len(list(alerts.glob("sim-box_*.json"))) == 2
        # a second gateway on the same data folder refuses, naming the first one's pid
        second = subprocess.run(
            [sys.executable, "-m", "gateway", "run"],
            cwd=ROOT,
            env=_env(home),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 3 and f"in use by pid {gw.pid}" in second.stderr
        broker_pid = int((data_dir / "broker" / "mosquitto.pid").read_text())
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(30) == 0
        assert "gateway stopped" in log.read_text()
        assert not live.exists()  # removed on a clean stop
        # the managed broker went down with it (no orphan Mosquitto holding the port). Asked of the
        # process, not the port: another test worker's process may listen on that port by now.
        try:
            left = Path(f"/proc/{broker_pid}/cmdline").read_bytes()
        except OSError:
            left = b""
        assert b"mosquitto" not in left, left
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()
    # secrets never reach the log, even at DEBUG
    log2 = tmp_path / "run2.log"
    gw = _run(_env(home), log2, "--config", str(secret_cfg))
    try:
        wait_for(lambda: "next:" in log2.read_text(), 30, what="startup summary")
        time.sleep(0.2)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(30)
    out = log2.read_text()
    assert "s3cr3t-token" not in out and "'headers': '***'" in out
