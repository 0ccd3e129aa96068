"""The real WhatsApp child process (spawned), driven through the fake transport.

Everything but WhatsApp's servers is real here: spawn, the pipe protocol, the
session lock, the supervisor's restarts, the notifier's results.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from gateway.bus import WHATSAPP_STATE, Bus
from gateway.notify.base import Alert
from gateway.notify.whatsapp import WhatsAppNotifier
from tests.support.whatsapp import (
    FakeWhatsApp,
    fake_settings,
    pair_fake,
    paired_fake,
    running,
    wait_state,
    wait_until,
)

TO = "628123456789@s.whatsapp.net"


def _alert(i: int, recipient: str = "+62 812-3456-789", photo: Path | None = None) -> Alert:
    return Alert(
        id=f"alert-{i:04d}",
        kind="delivery",
        device="box1",
        device_name="Front gate",
        event_ids=(f"ev{i:06d}",),
        ts=1_795_000_000.0 + i,
        caption=f"Package {i} delivered to Front gate.",
        recipient=recipient,
        photo_path=photo,
    )


def test_pairing_by_qr_then_connected_and_state_on_the_bus(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path)
    fake = FakeWhatsApp(settings.fake_dir)
    bus = Bus()
    seen: list[dict] = []
    bus.subscribe(lambda _t, d: seen.append(d), WHATSAPP_STATE)
    with running(settings, bus=bus) as sup:
        st = wait_state(sup, "pairing")
        assert st["qr"].startswith("2@fake-qr-")
        assert "Linked devices" in st["detail"]
        # The QR rotates: a later code replaces the first.
        wait_state(sup, lambda s: s.get("qr") not in (None, st["qr"]))
        fake.inject("scan")
        st = wait_state(sup, "connected")
        assert st["paired_as"] == "6281100000000" and st["qr"] is None
    states = [d["state"] for d in seen]
    assert states[0] == "not_paired" and "pairing" in states and states[-1] == "connected"
    assert (settings.session_dir / "state.json").exists()


def test_send_photo_and_text_are_confirmed(tmp_path: Path) -> None:
    settings, fake = paired_fake(tmp_path)
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0fake jpeg bytes\xff\xd9")
    with running(settings) as sup:
        wait_state(sup, "connected")
        n = WhatsAppNotifier(settings, sup)
        assert n.send(_alert(1, photo=photo)).ok
        assert n.send(_alert(2, recipient="120363012345678901@g.us")).ok
    sent = fake.sent()
    assert [s["to"] for s in sent] == [TO, "120363012345678901@g.us"]
    assert (
        sent[0]["text"] == "Package 1 delivered to Front gate."
        and sent[0]["image_bytes"] == photo.stat().st_size
    )
    assert sent[1]["image_bytes"] == 0


def test_sigkill_mid_send_fails_the_send_and_the_retry_after_restart_succeeds(tmp_path: Path) -> None:
    settings, fake = paired_fake(tmp_path)
    with running(settings) as sup:
        wait_state(sup, "connected")
        n = WhatsAppNotifier(settings, sup)
        first_pid = sup.child_pid()
        results: list = []
        with fake.hold():
            t = threading.Thread(target=lambda: results.append(n.send(_alert(1))))
            t.start()
            wait_until(lambda: fake.sending(), what="the send to start in the child")
            os.kill(first_pid, signal.SIGKILL)
            t.join(30)
        assert results and not results[0].ok, results
        assert "killed by SIGKILL" in results[0].error
        assert fake.sent() == []  # it never went out, and the outbox was told so
        wait_state(sup, lambda s: s.get("state") == "connected" and sup.child_pid() not in (None, first_pid))
        assert n.send(_alert(1)).ok  # the outbox's retry
        assert sup.crashes == 1 and sup.restarts == 1
    assert [s["text"] for s in fake.sent()] == ["Package 1 delivered to Front gate."]


def test_stream_of_alerts_survives_kills_nothing_lost(tmp_path: Path) -> None:
    """An outbox-like loop (retry until confirmed) over 30 alerts while the child is SIGKILLed twice."""
    settings, fake = paired_fake(tmp_path, rate_per_minute=1000, rate_per_minute_overall=1000)
    with running(settings) as sup:
        wait_state(sup, "connected")
        n = WhatsAppNotifier(settings, sup)
        pending = [_alert(i) for i in range(30)]
        failures = 0
        kills = {8, 19}
        attempts = 0
        while pending and attempts < 500:
            attempts += 1
            a = pending[0]
            if int(a.id[-4:]) in kills and sup.child_pid():
                kills.discard(int(a.id[-4:]))
                os.kill(sup.child_pid(), signal.SIGKILL)
            r = n.send(a)
            if r.ok:
                pending.pop(0)
            else:
                failures += 1
                time.sleep(0.1)
        assert pending == []
        assert failures >= 2 and sup.crashes == 2
    texts = [s["text"] for s in fake.sent()]
    assert sorted(set(texts)) == sorted(f"Package {i} delivered to Front gate." for i in range(30))
    assert len(texts) == 30  # no send was in flight at the kills, so no duplicates either


def test_go_panic_sigabrt_restarts_with_backoff(tmp_path: Path) -> None:
    settings, fake = paired_fake(tmp_path)
    with running(settings) as sup:
        wait_state(sup, "connected")
        pid = sup.child_pid()
        fake.inject("crash")  # the fake calls os.abort(), as a Go panic does
        st = wait_state(sup, "error")
        assert "SIGABRT" in st["detail"] and "restarting" in st["detail"]
        wait_state(sup, lambda s: s.get("state") == "connected" and sup.child_pid() not in (None, pid))
        assert sup.crashes == 1


def test_stream_replaced_stops_without_reconnecting(tmp_path: Path) -> None:
    settings, fake = paired_fake(tmp_path)
    with running(settings) as sup:
        wait_state(sup, "connected")
        fake.inject("stream_replaced")
        st = wait_state(sup, "stream_replaced")
        assert "NOT reconnecting" in st["detail"]
        assert sup.finished.wait(15), "the supervisor kept restarting after stream replaced"
        assert sup.restarts == 0 and sup.child_pid() is None
        r = WhatsAppNotifier(settings, sup).send(_alert(1))
        assert not r.ok and "stream_replaced" in r.error
    assert fake.sent() == []


def test_logged_out_means_not_paired_with_instructions_then_pairing_again(tmp_path: Path) -> None:
    settings, fake = paired_fake(tmp_path)
    with running(settings) as sup:
        wait_state(sup, "connected")
        fake.inject("logged_out", code="LOGGED_OUT")
        st = wait_state(sup, lambda s: s.get("state") == "not_paired" and "Logged out" in s.get("detail", ""))
        assert "parcelbox whatsapp pair" in st["detail"] and st["paired_as"] is None
        # The dead session is deleted and a new child offers a fresh QR.
        st = wait_state(sup, "pairing")
        assert not (settings.session_dir / "fake-session.json").exists()
        assert sup.restarts == 1 and sup.crashes == 0


def test_temporary_ban_waits_until_it_expires(tmp_path: Path) -> None:
    settings, fake = paired_fake(tmp_path)
    with running(settings) as sup:
        wait_state(sup, "connected")
        before = time.time()
        fake.inject("temporary_ban", code="SEND_TO_TOO_MANY_PEOPLE", expire_s=3600)
        st = wait_state(sup, "banned")
        assert st["retry_at"] >= before + 3600 and "SEND_TO_TOO_MANY_PEOPLE" in st["detail"]
        r = WhatsAppNotifier(settings, sup).send(_alert(1))
        assert not r.ok and r.retry_after_s is not None and r.retry_after_s > 3000
        # It waits for the ban rather than hammering WhatsApp: no restart yet.
        assert not sup.finished.is_set() and sup.restarts == 0


def test_client_outdated_says_upgrade_neonize_and_stops(tmp_path: Path) -> None:
    settings, fake = paired_fake(tmp_path)
    with running(settings) as sup:
        wait_state(sup, "connected")
        fake.inject("client_outdated")
        st = wait_state(sup, "outdated")
        assert "upgrade neonize" in st["detail"]
        assert sup.finished.wait(15) and sup.restarts == 0


def test_the_outdated_advice_stays_inside_the_tested_neonize_versions(tmp_path: Path) -> None:
    """Issue 16 #11: the advice `pip install -U neonize` contradicted the pin in pyproject.toml."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    [pin] = pyproject["project"]["optional-dependencies"]["whatsapp"]
    settings, fake = paired_fake(tmp_path)
    with running(settings) as sup:
        wait_state(sup, "connected")
        fake.inject("client_outdated")
        st = wait_state(sup, "outdated")
    assert f"pip install -U '{pin}'" in st["detail"] and "`pip install -U neonize`" not in st["detail"]
    from gateway.whatsapp import NEONIZE_REQUIREMENT

    assert NEONIZE_REQUIREMENT == pin  # one home per fact: the adapter's tested range


def test_cannot_reach_whatsapp_retries_with_backoff_and_reports_it(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path)
    fake = FakeWhatsApp(settings.fake_dir)
    fake.script(connect_error="dial tcp: lookup web.whatsapp.com: no such host")
    pair_fake(settings)
    with running(settings) as sup:
        delays = []
        for _ in range(3):
            st = wait_state(
                sup,
                lambda s: "Cannot reach WhatsApp" in s.get("detail", "") and s.get("retry_at") not in delays,
            )
            delays.append(st["retry_at"])
            assert st["state"] == "disconnected"
        r = WhatsAppNotifier(settings, sup).send(_alert(1))
        assert not r.ok and "not connected" in r.error and r.retry_after_s is not None
        fake.script(connect_error=None)
        wait_state(sup, "connected")
        assert sup.crashes == 0  # retried inside the child, which kept the session lock
        assert WhatsAppNotifier(settings, sup).send(_alert(1)).ok


def test_rate_limit_through_the_real_child(tmp_path: Path) -> None:
    """The WhatsApp notifier declares its limits; the outbox dispatcher enforces them (one owner)."""
    from gateway.bus import Bus
    from gateway.outbox import OutboxDispatcher
    from gateway.store import Store
    from tests.test_outbox import Clock, entry

    settings, fake = paired_fake(tmp_path, rate_per_minute=2, rate_per_minute_overall=3)
    store = Store(tmp_path / "data")
    clock = Clock()
    rows = [entry(i, clock.t + i * 0.001, notifier="whatsapp", recipient="+628111111111") for i in range(3)]
    rows += [entry(10 + i, clock.t + 1 + i, notifier="whatsapp", recipient="+628222222222") for i in range(2)]
    store.add_outbox(rows, clock.t)
    clock.t += 5
    try:
        with running(settings) as sup:
            wait_state(sup, "connected")
            n = WhatsAppNotifier(settings, sup)
            d = OutboxDispatcher(store, {"whatsapp": n}, bus=Bus(), photo_path=lambda *_: None, clock=clock)
            d._pass("whatsapp")
            # +628111111111 gets 2 (its limit), +628222222222 gets 1 (the overall limit of 3 a minute)
            assert store.outbox_counts() == {"pending": 2, "sent": 3, "failed": 0, "dead": 0}
            assert len(fake.sent()) == 3 and n.counters["sent"] == 3
            clock.t += 61
            d._pass("whatsapp")
            assert store.outbox_counts()["sent"] == 5
        assert len(fake.sent()) == 5
    finally:
        store.close()


def test_a_stopped_supervisor_releases_the_session(tmp_path: Path) -> None:
    from gateway.whatsapp.lock import SessionLock

    settings = fake_settings(tmp_path)
    pair_fake(settings)
    with running(settings) as sup:
        wait_state(sup, "connected")
        pid = sup.child_pid()
        assert SessionLock(settings.session_dir).holder() == pid
    assert SessionLock(settings.session_dir).holder() is None


def test_ctrl_c_in_the_terminal_does_not_kill_the_child(tmp_path: Path) -> None:
    settings, fake = paired_fake(tmp_path)
    with running(settings) as sup:
        wait_state(sup, "connected")
        pid = sup.child_pid()
        os.kill(pid, signal.SIGINT)
        assert WhatsAppNotifier(settings, sup).send(_alert(1)).ok
        assert sup.child_pid() == pid and sup.crashes == 0
    assert len(fake.sent()) == 1


def test_child_exits_and_frees_the_session_when_the_gateway_is_killed(tmp_path: Path) -> None:
    import subprocess
    import sys

    from gateway.whatsapp.lock import SessionLock

    settings = fake_settings(tmp_path)
    pair_fake(settings)
    script = tmp_path / "gw.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.support.whatsapp import fake_settings, wait_state\n"
        "from gateway.whatsapp.supervisor import WhatsAppSupervisor\n"
        "if __name__ == '__main__':\n"
        f"    sup = WhatsAppSupervisor(fake_settings(Path({str(tmp_path)!r})))\n"
        "    sup.start()\n"
        "    wait_state(sup, 'connected')\n"
        "    print(sup.child_pid(), flush=True)\n"
        "    time.sleep(120)\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    gw = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert gw.stdout is not None
        child = int(gw.stdout.readline())
        assert SessionLock(settings.session_dir).holder() == child
        gw.kill()
        gw.wait(10)
        wait_until(
            lambda: SessionLock(settings.session_dir).holder() is None, what="the orphaned child to exit"
        )
        wait_until(
            lambda: (
                not os.path.exists(f"/proc/{child}") or "Z" in open(f"/proc/{child}/stat").read().split()[2]
            ),
            what="child gone",
        )
    finally:
        gw.kill()
        gw.wait(10)


def test_repeated_crashes_back_off_exponentially(tmp_path: Path) -> None:
    settings, fake = paired_fake(tmp_path, restart_backoff_s=(0.2, 0.8))
    details: list[str] = []
    with running(settings, on_state=lambda st: details.append(st.get("detail", ""))) as sup:
        for n in range(4):
            wait_state(sup, lambda s, n=n: s.get("state") == "connected" and sup.crashes == n)
            fake.inject("crash")
            wait_state(sup, lambda s, n=n: sup.crashes == n + 1)
        wait_state(sup, "connected")
    waits = [d.split("restarting in ")[1].split(" s")[0] for d in details if "restarting in" in d]
    assert waits == ["0.2", "0.4", "0.8", "0.8"]  # doubling, capped


def test_expired_qr_round_starts_a_new_one(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path, qr_round_s=1.0)
    fake = FakeWhatsApp(settings.fake_dir)
    fake.script(qr_codes=["2@first", "2@last"], qr_interval_s=0.2)
    codes: list[str] = []
    with running(settings, on_state=lambda st: st.get("qr") and codes.append(st["qr"])) as sup:
        wait_state(sup, lambda s: s.get("qr") == "2@last")
        # No new code for qr_round_s: the child ends the dead round and a fresh one starts.
        wait_until(lambda: codes.count("2@first") == 2, what="a second QR round")
        assert sup.crashes == 0 and sup.restarts == 0


def test_neonize_missing_says_how_to_install_and_does_not_loop(tmp_path: Path, monkeypatch) -> None:
    """A machine without neonize (e.g. 32-bit Raspberry Pi OS): the gateway runs, WhatsApp says why not."""
    import sys

    shadow = tmp_path / "shadow"
    (shadow / "neonize").mkdir(parents=True)
    (shadow / "neonize" / "__init__.py").write_text(
        "raise ImportError('no neonize wheel for this platform')\n"
    )
    # The spawned child gets the parent's sys.path, so it imports this stand-in instead of neonize.
    monkeypatch.setattr(sys, "path", [str(shadow), *sys.path])
    settings = fake_settings(tmp_path, transport="neonize")
    with running(settings) as sup:
        st = wait_state(sup, "not_installed")
        assert ".venv/bin/pip install -e '.[whatsapp]'" in st["detail"]
        assert sup.finished.wait(15) and sup.restarts == 0 and sup.crashes == 0
        # Alerts wait quietly and long (the owner is told at start): no WARNING per alert per retry.
        r = WhatsAppNotifier(settings, sup).send(_alert(1))
        assert not r.ok and r.held and not r.permanent and (r.retry_after_s or 0) >= 900
        assert "not_installed" in (r.error or "")


def test_a_hung_child_is_killed_and_restarted(tmp_path: Path) -> None:
    settings, fake = paired_fake(tmp_path, send_timeout_s=0.5)
    with running(settings) as sup:
        wait_state(sup, "connected")
        pid = sup.child_pid()
        n = WhatsAppNotifier(settings, sup)
        with fake.hold():  # the child stops answering, as a deadlocked Go runtime would
            r1, r2 = n.send(_alert(1)), n.send(_alert(2))
            assert not r1.ok and not r2.ok and "did not confirm" in r2.error
            wait_until(lambda: sup.crashes == 1, what="the hung child to be killed")
        assert sup.hung_kills == 1
        wait_state(sup, lambda s: s.get("state") == "connected" and sup.child_pid() not in (None, pid))
        assert n.send(_alert(1)).ok and n.send(_alert(2)).ok


@pytest.mark.parametrize("one_connect", [False, True], ids=["in-process", "process-per-connect"])
def test_phone_code_pairing_gets_a_new_code_each_round(tmp_path: Path, one_connect: bool) -> None:
    """Issue 16 #3: after the first round (~160 s) no new code came and the QR stayed hidden."""
    settings = fake_settings(tmp_path, qr_round_s=0.5)
    fake = FakeWhatsApp(settings.fake_dir)
    fake.script(qr_codes=["2@round-qr"], qr_interval_s=0.1, one_connect_per_process=one_connect)
    with running(settings, mode="pair", phone="628123456789") as sup:
        st = wait_state(sup, lambda s: s.get("pair_code") == "FAKE-C0DE")
        assert st["pair_code_expires_at"] > time.time() and "a new code follows" in st["detail"]
        st = wait_state(sup, lambda s: s.get("pair_code") == "FAKE-C002")
        assert st["state"] == "pairing"
        # Nobody typed any code: after a few rounds the QR is shown again (no more push notifications).
        st = wait_state(sup, lambda s: bool(s.get("qr")), timeout=60)
    assert len(fake.pair_requests()) >= 2


def test_an_expired_qr_code_is_taken_down_at_once(tmp_path: Path) -> None:
    """Issue 16 #10: the last QR of a round stayed on the dashboard until qr_round_s (75 s) passed,
    although whatsmeow (qrchan.go) gives each code 60 s (the first) or 20 s."""
    settings = fake_settings(tmp_path, qr_valid_s=(0.5, 0.5))  # qr_round_s stays at its 75 s
    fake = FakeWhatsApp(settings.fake_dir)
    fake.script(qr_codes=["2@only-code"], qr_interval_s=0.1)
    with running(settings, mode="pair") as sup:
        st = wait_state(sup, lambda s: s.get("qr") == "2@only-code")
        assert st["qr_expires_at"] > time.time() - 1
        st = wait_state(sup, lambda s: s.get("state") == "pairing" and not s.get("qr"), timeout=30)
        assert "expired" in st["detail"]
        wait_state(sup, lambda s: s.get("qr") == "2@only-code")  # the next round's code


def test_while_the_gateway_runs_the_text_points_to_the_dashboard(tmp_path: Path) -> None:
    """Issue 16 #10: in the gateway (mode run) `parcelbox whatsapp pair` refuses; say so."""
    settings = fake_settings(tmp_path)
    FakeWhatsApp(settings.fake_dir)
    with running(settings) as sup:
        st = wait_state(sup, "not_paired")
        assert "dashboard's WhatsApp page" in st["detail"]
        assert not st["detail"].split("Pair it", 1)[1].startswith(": run `parcelbox whatsapp pair`")
        assert "only while the gateway is stopped" in st["detail"]
