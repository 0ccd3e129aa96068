"""One owner per WhatsApp session, proven with separate real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.whatsapp.lock import SessionLock, SessionLocked
from tests.support.whatsapp import FakeWhatsApp, fake_settings, pair_fake, running, wait_state, wait_until

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.whatsapp.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _fake_args(settings) -> list[str]:
    """`parcelbox whatsapp ...` options for the settings' data folder and the fake transport."""
    data_dir, fake_dir = settings.session_dir.parent, settings.fake_dir
    return ["--data-dir", str(data_dir), "--transport", "fake", "--fake-dir", str(fake_dir)]


def test_second_process_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from gateway.whatsapp.lock import SessionLock; "
            f"l = SessionLock({str(tmp_path)!r}); l.acquire(); print('locked', flush=True); time.sleep(60)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        lock = SessionLock(tmp_path)
        try:
            lock.acquire()
            raise AssertionError("a second owner got the session lock")
        except SessionLocked as e:
            assert e.pid == holder.pid
            assert f"process {holder.pid}" in str(e)
        assert lock.holder() == holder.pid
        # The kernel drops the lock when the owner dies, even by SIGKILL: no stale lock.
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        lock.acquire()
        assert lock.holder() == os.getpid()
        lock.release()
    finally:
        holder.kill()
        holder.wait(10)


def test_pair_while_the_gateway_child_owns_the_session_refuses(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path)
    pair_fake(settings)
    data_dir = settings.session_dir.parent
    with running(settings) as sup:
        wait_state(sup, "connected")
        pid = sup.child_pid()
        r = _cli(
            "pair", "--data-dir", str(data_dir), "--transport", "fake", "--fake-dir", str(settings.fake_dir)
        )
        assert r.returncode == 1
        assert f"pid {pid}" in r.stderr and "in use" in r.stderr
        r = _cli(
            "unlink", "--data-dir", str(data_dir), "--transport", "fake", "--fake-dir", str(settings.fake_dir)
        )
        assert r.returncode == 1 and f"pid {pid}" in r.stderr
        # The session was not touched.
        assert (settings.session_dir / "fake-session.json").exists()
        assert sup.state()["state"] == "connected"


def test_pair_refuses_while_a_gateway_runs_on_the_data_folder(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path)
    data_dir = settings.session_dir.parent
    data_dir.mkdir(parents=True)
    gw = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, time; "
            f"fd = os.open({str(data_dir / 'gateway.lock')!r}, os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('up', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert gw.stdout is not None and gw.stdout.readline().strip() == "up"
        r = _cli(
            "pair", "--data-dir", str(data_dir), "--transport", "fake", "--fake-dir", str(settings.fake_dir)
        )
        assert r.returncode == 1
        assert f"the gateway (pid {gw.pid}) is running" in r.stderr and "dashboard" in r.stderr
    finally:
        gw.kill()
        gw.wait(10)


def test_second_supervisor_reports_locked_naming_the_owner(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path)
    pair_fake(settings)
    with running(settings) as first:
        wait_state(first, "connected")
        owner = first.child_pid()
        with running(settings) as second:
            st = wait_state(second, "locked")
            assert f"process {owner}" in st["detail"] and st.get("holder_pid") == owner
        assert first.state()["state"] == "connected"


def test_cli_pair_by_qr_status_and_unlink(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path)
    fake = FakeWhatsApp(settings.fake_dir)
    common = _fake_args(settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.whatsapp.cli", "pair", "--timeout", "60", *common],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        wait_until(lambda: (settings.session_dir / "session.lock").exists(), what="the pair child to start")
        # Let it show a code or two, then "scan" it.
        time.sleep(1.0)
        fake.inject("scan")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "QR code #1" in out and "Linked devices" in out
    assert "\u2588" in out or "\u2580" in out or "\u2584" in out  # drawn with block characters by segno
    assert "Paired and connected as +6281100000000" in out
    # status (nothing running now) and unlink
    r = _cli("status", "--json", *common)
    data = json.loads(r.stdout)
    assert data["session_exists"] and data["gateway_pid"] is None and data["session_owner_pid"] is None
    r = _cli("unlink", *common)
    assert r.returncode == 0, r.stderr
    assert "Unlinked" in r.stdout
    assert fake.logouts() and not (settings.session_dir / "fake-session.json").exists()


def test_cli_pair_with_phone_prints_a_pairing_code(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path)
    fake = FakeWhatsApp(settings.fake_dir)
    common = _fake_args(settings)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.whatsapp.cli",
            "pair",
            "--phone",
            "+62 812-3456-789",
            "--timeout",
            "60",
            *common,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: fake.pair_requests(), what="a pairing-code request")
        fake.inject("scan")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert fake.pair_requests()[0]["phone"] == "628123456789"
    assert "Pairing code: FAKE-C0DE" in out and "QR code #" not in out


def test_cli_groups_lists_ids_for_recipients(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path)
    fake = FakeWhatsApp(settings.fake_dir)
    common = _fake_args(settings)
    r = _cli("groups", *common)
    assert r.returncode == 1 and "Not paired" in r.stderr
    pair_fake(settings)
    fake.script(groups=[["120363012345678901@g.us", "Rumah"], ["120363098765432109@g.us", "Kantor"]])
    r = _cli("groups", *common)
    assert r.returncode == 0, r.stderr
    assert "120363012345678901@g.us" in r.stdout and "Rumah" in r.stdout and "recipients" in r.stdout
