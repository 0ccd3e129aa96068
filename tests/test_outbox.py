"""Outbox dispatcher: backoff, dead-letter with last error, manual retry, rate limits. Real store files."""

from __future__ import annotations

import logging

import pytest

from gateway.bus import OUTBOX_CHANGED, Bus
from gateway.notify.base import Alert, RateLimit, SendResult
from gateway.outbox import OutboxDispatcher, backoff_s
from gateway.ratelimit import SendLimiter
from gateway.store import Store
from gateway.whatsapp.supervisor import SendOutcome


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


class ScriptedSink:
    """Stands in for a remote service: returns the scripted results in order, then ok."""

    def __init__(self, name: str = "remote", results=(), rate_limit: RateLimit | None = None) -> None:
        self.name = name
        self.results = list(results)
        self.rate_limit = rate_limit
        self.sent: list[Alert] = []

    def recipients(self, device: str) -> list[str]:
        return ["r1"]

    def send(self, alert: Alert) -> SendResult:
        self.sent.append(alert)
        if self.results:
            r = self.results.pop(0)
            if isinstance(r, Exception):
                raise r
            return r
        return SendResult(ok=True)

    def close(self) -> None:
        pass


def entry(i: int, now: float, notifier: str = "remote", recipient: str = "r1") -> dict:
    return {
        "id": f"a{i}_{notifier}",
        "kind": "delivery",
        "device": "box1",
        "event_ids": [f"event{i:05d}"],
        "notifier": notifier,
        "recipient": recipient,
        "state": "pending",
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
        "sent_at": None,
        "last_error": None,
        "caption": f"c{i}",
        "ts": now,
        "device_name": "Box 1",
        "has_photo": False,
    }


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data")
    yield s
    s.close()


def make(store, sink, clock, **kw) -> tuple[OutboxDispatcher, list]:
    bus = Bus()
    changes: list = []
    bus.subscribe(lambda t, d: changes.append(d), OUTBOX_CHANGED)
    d = OutboxDispatcher(
        store,
        {sink.name: sink},
        bus=bus,
        photo_path=lambda *_: None,
        clock=clock,
        backoff_initial_s=2,
        backoff_max_s=30,
        dead_after_s=100,
        **kw,
    )
    return d, changes


def test_backoff_doubles_until_sent_and_state_survives_reopen(tmp_path, store):
    clock = Clock()
    sink = ScriptedSink(
        results=[SendResult(False, "boom1"), RuntimeError("crash in sink"), SendResult(False, "boom3")]
    )
    store.add_outbox([entry(1, clock.t)], clock.t)
    d, changes = make(store, sink, clock)
    assert d._pass("remote")
    rec = store.get_outbox("a1_remote")
    assert rec["state"] == "failed" and rec["attempts"] == 1 and rec["last_error"] == "boom1"
    assert rec["next_attempt_at"] == clock.t + 2
    assert not d._pass("remote")  # not due yet
    clock.t += 2
    d._pass("remote")
    rec = store.get_outbox("a1_remote")
    assert (
        rec["attempts"] == 2
        and "crash in sink" in rec["last_error"]
        and rec["next_attempt_at"] == clock.t + 4
    )
    clock.t += 4
    d._pass("remote")
    assert store.get_outbox("a1_remote")["next_attempt_at"] == clock.t + 8
    # durable: a fresh Store sees the same failed entry
    store.close()
    s2 = Store(tmp_path / "data")
    assert s2.get_outbox("a1_remote")["attempts"] == 3
    d2, _ = make(s2, sink, clock)
    clock.t += 8
    d2._pass("remote")
    rec = s2.get_outbox("a1_remote")
    assert rec["state"] == "sent" and rec["sent_at"] == clock.t
    assert s2.outbox_counts() == {"pending": 0, "sent": 1, "failed": 0, "dead": 0}
    assert [c["state"] for c in changes] == ["failed", "failed", "failed"]
    s2.close()


def test_dead_letter_after_configured_time_then_manual_retry(store):
    clock = Clock()
    sink = ScriptedSink(results=[SendResult(False, f"down {i}") for i in range(20)])
    store.add_outbox([entry(1, clock.t)], clock.t)
    d, _ = make(store, sink, clock)
    for _ in range(20):
        d._pass("remote")
        rec = store.get_outbox("a1_remote")
        if rec["state"] == "dead":
            break
        clock.t = rec["next_attempt_at"]
    assert rec["state"] == "dead" and rec["last_error"].startswith("down")
    assert store.list_outbox("dead")[0]["id"] == "a1_remote"
    assert clock.t - rec["created_at"] >= 100
    sink.results.clear()
    assert d.retry("a1_remote") is True
    assert store.get_outbox("a1_remote")["state"] == "pending"
    d._pass("remote")
    assert store.get_outbox("a1_remote")["state"] == "sent"
    assert d.retry("a1_remote") is False  # nothing to retry once sent


def test_permanent_failure_dead_at_once_and_retry_after_honoured(store):
    clock = Clock()
    sink = ScriptedSink(
        results=[
            SendResult(False, "no such recipient", permanent=True),
            SendResult(False, "slow down", retry_after_s=25),
        ]
    )
    store.add_outbox([entry(1, clock.t), entry(2, clock.t)], clock.t)
    d, _ = make(store, sink, clock)
    d._pass("remote")
    assert store.get_outbox("a1_remote")["state"] == "dead"
    rec = store.get_outbox("a2_remote")
    assert rec["state"] == "failed" and rec["next_attempt_at"] == clock.t + 25


def test_rate_limit_per_recipient_and_overall(store):
    clock = Clock()
    sink = ScriptedSink(rate_limit=RateLimit(per_recipient=(2, 60.0), overall=(3, 60.0)))
    sink.recipients = lambda device: ["r1", "r2"]
    rows = [entry(i, clock.t - 10 + i * 0.001, recipient="r1") for i in range(3)]
    rows += [{**entry(10 + i, clock.t - 5 + i * 0.001, recipient="r2")} for i in range(2)]
    store.add_outbox(rows, clock.t)
    d, _ = make(store, sink, clock)
    d._pass("remote")
    # r1 gets 2 (its limit), r2 gets 1 (the overall limit of 3)
    assert [a.recipient for a in sink.sent] == ["r1", "r1", "r2"]
    assert store.outbox_counts()["pending"] == 2  # limited entries are not failures
    clock.t += 61
    d._pass("remote")
    assert store.outbox_counts()["sent"] == 5


def test_rate_limiter_and_backoff_units():
    rl = SendLimiter.for_limit(RateLimit(per_recipient=(1, 10.0)))
    assert rl.wait_s("a", 0) == 0
    rl.record("a", 0)
    assert rl.wait_s("a", 5) == 5 and rl.wait_s("b", 5) == 0
    assert rl.wait_s("a", 10) == 0
    assert SendLimiter.for_limit(None).wait_s("a", 0) == 0
    assert [backoff_s(n, 2, 30) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 16, 30]


def test_dispatcher_threads_send_and_stop(store):
    import time

    sink = ScriptedSink()
    folder_like = ScriptedSink(name="other")
    now = time.time()
    store.add_outbox([entry(1, now), entry(2, now, notifier="other")], now)
    bus = Bus()
    d = OutboxDispatcher(
        store, {"remote": sink, "other": folder_like}, bus=bus, photo_path=lambda *_: None, poll_s=0.05
    )
    d.start()
    try:
        deadline = time.monotonic() + 10
        while store.outbox_counts()["sent"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        d.stop()
    assert store.outbox_counts()["sent"] == 2
    assert len(sink.sent) == 1 and len(folder_like.sent) == 1


def test_a_send_that_cannot_be_recorded_at_a_full_disk_is_not_sent_again(store, monkeypatch):
    """Issue 14: the WhatsApp message went out, then the disk is full and `sent` cannot be written.
    Sending it again on every pass (every poll_s) would spam the recipient for as long as the disk
    stays full; the dispatcher remembers it in memory and records it once there is room."""
    import errno

    clock = Clock()
    sink = ScriptedSink(results=[SendResult(True), SendResult(False, "remote down")])
    store.add_outbox([entry(1, clock.t), entry(2, clock.t)], clock.t)
    d, changes = make(store, sink, clock)
    real_update = store.update_outbox

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "update_outbox", full)
    for _ in range(5):
        d._pass("remote")
        clock.t += 60
    assert [a.id for a in sink.sent] == ["a1_remote", "a2_remote"]  # each once, however many passes
    # Tried, results not on record: both stay claimed, so no grouped delivery may join them.
    assert store.mergeable_outbox(clock.t) == []
    monkeypatch.setattr(store, "update_outbox", real_update)  # room again
    d._pass("remote")
    assert store.get_outbox("a1_remote")["state"] == "sent"
    # a2's failure was written first (attempt 1); its retry was long due, so the same pass sent it again.
    a2 = store.get_outbox("a2_remote")
    assert a2["state"] == "sent" and a2["attempts"] == 2 and a2["last_error"] == "remote down"
    assert [a.id for a in sink.sent] == ["a1_remote", "a2_remote", "a2_remote"]  # a1 never twice


def test_a_held_channel_waits_quietly(store, caplog):
    """Issue 15 item 6: WhatsApp enabled but neonize missing logged a WARNING per alert per retry. A
    held result (the owner is told at start and on the dashboard) waits its retry time with no WARNING."""
    clock = Clock()
    why = "WhatsApp cannot send until you act (not_installed): pip install -e '.[whatsapp]'"
    sink = ScriptedSink(results=[SendResult(False, why, retry_after_s=900, held=True)])
    store.add_outbox([entry(1, clock.t)], clock.t)
    d, _ = make(store, sink, clock)
    with caplog.at_level(logging.DEBUG, logger="gateway.outbox"):
        d._pass("remote")
    rec = store.get_outbox("a1_remote")
    assert rec["state"] == "failed" and rec["next_attempt_at"] == clock.t + 900 and rec["last_error"] == why
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


class WhatsAppSender:
    """The WhatsApp supervisor's send(), every send delivered; a true edge (the WhatsApp servers)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, to: str, text: str, image: bytes | None = None) -> SendOutcome:
        self.sent.append(to)
        return SendOutcome(ok=True, message_id=f"m{len(self.sent)}")


def test_a_whatsapp_send_is_booked_once_on_the_dispatchers_clock(store, tmp_path):
    """Issue 17: the dispatcher and the WhatsApp notifier both booked each send, on different clocks
    (the dispatcher's injected one, the notifier's time.monotonic). A send the dispatcher allowed a
    minute later was refused by the notifier ("rate limited") and counted as a failed attempt."""
    from gateway.notify.whatsapp import WhatsAppNotifier
    from gateway.whatsapp.settings import WhatsAppSettings

    clock = Clock()
    sender = WhatsAppSender()
    settings = WhatsAppSettings(
        session_dir=tmp_path / "wa",
        recipients=["+628111111111"],
        rate_per_minute=1,
        rate_per_minute_overall=0,
    )
    notifier = WhatsAppNotifier(settings, sender)
    store.add_outbox([entry(1, clock.t, notifier="whatsapp", recipient="+628111111111")], clock.t)
    d, _ = make(store, notifier, clock)
    d._pass("whatsapp")
    clock.t += 61  # a minute later by the dispatcher's clock: the limit allows one more
    store.add_outbox([entry(2, clock.t, notifier="whatsapp", recipient="+628111111111")], clock.t)
    d._pass("whatsapp")
    assert store.outbox_counts() == {"pending": 0, "sent": 2, "failed": 0, "dead": 0}
    assert len(sender.sent) == 2
    # And inside the minute the dispatcher holds it back: waiting, not a failed attempt.
    store.add_outbox([entry(3, clock.t, notifier="whatsapp", recipient="+628111111111")], clock.t)
    d._pass("whatsapp")
    rec = store.get_outbox("a3_whatsapp")
    assert rec["state"] == "pending" and rec["attempts"] == 0 and len(sender.sent) == 2


def test_whatsapp_limit_counts_one_number_however_it_is_spelled(store, tmp_path):
    """The per-recipient WhatsApp limit was keyed on the configured string, so '+62 812-3456-789' and
    '628123456789' (one phone, e.g. once in `recipients` and once in a box's override) each had a
    window of their own: twice the rate WhatsApp tolerates for that number. Keyed on the JID now."""
    from gateway.notify.whatsapp import WhatsAppNotifier
    from gateway.whatsapp.settings import WhatsAppSettings

    clock = Clock()
    sender = WhatsAppSender()
    spellings = ["+62 812-3456-789", "628123456789", "+62 (812) 3456.789"]
    settings = WhatsAppSettings(
        session_dir=tmp_path / "wa", recipients=spellings, rate_per_minute=1, rate_per_minute_overall=0
    )
    notifier = WhatsAppNotifier(settings, sender)
    rows = [
        entry(i, clock.t - 1 + i * 0.001, notifier="whatsapp", recipient=r) for i, r in enumerate(spellings)
    ]
    rows.append(entry(9, clock.t, notifier="whatsapp", recipient="+44 20 7946 0000"))  # another number
    store.add_outbox(rows, clock.t)
    d, _ = make(store, notifier, clock)
    d._pass("whatsapp")
    # One message to 628123456789 in the minute (whichever spelling came first), one to the other number.
    assert sorted(sender.sent) == ["442079460000@s.whatsapp.net", "628123456789@s.whatsapp.net"]
    waiting = [store.get_outbox(f"a{i}_whatsapp") for i in (1, 2)]
    assert [(r["state"], r["attempts"]) for r in waiting] == [("pending", 0), ("pending", 0)]
    clock.t += 61
    d._pass("whatsapp")
    assert sender.sent.count("628123456789@s.whatsapp.net") == 2
    clock.t += 61
    d._pass("whatsapp")
    assert store.outbox_counts()["sent"] == 4
    # A recipient that is no number keeps a window of its own (and is dead-lettered by the send).
    assert notifier.rate_key("not a number") == "not a number"


def test_an_entry_is_claimed_while_its_send_runs_and_released_after(store):
    """While the sink sends an entry no burst may join it (`Store.mergeable_outbox` leaves it out);
    once its result is written it is released, and a failed one is open (and mergeable) again."""
    clock = Clock()
    seen: list[list[str]] = []

    class Watching(ScriptedSink):
        def send(self, alert: Alert) -> SendResult:
            seen.append([o["id"] for o in store.mergeable_outbox(clock.t)])
            return super().send(alert)

    store.add_outbox([entry(1, clock.t), entry(2, clock.t)], clock.t)
    d, _ = make(store, Watching(results=[SendResult(False, "down"), SendResult(True)]), clock)
    assert d._pass("remote")
    # a1 in flight while it was sent; while a2 was, a1 (failed, released) was open again
    assert seen == [["a2_remote"], ["a1_remote"]]
    assert [o["id"] for o in store.mergeable_outbox(clock.t)] == ["a1_remote"]  # a2 sent: not open
    assert store.claim_outbox("a1_remote", clock.t) is None  # not due yet (backoff): not claimed


def test_a_retry_never_reopens_an_alert_whose_send_just_succeeded(store, monkeypatch):
    """The dashboard's Retry on a failed alert whose backoff just ran out: the dispatcher's thread can
    send it and write `sent` after retry saw "failed" and before retry's own write. That write must
    not make the sent alert pending again, or it goes out twice."""
    clock = Clock()
    sink = ScriptedSink(results=[SendResult(False, "down")])
    store.add_outbox([entry(1, clock.t)], clock.t)
    d, _ = make(store, sink, clock)
    d._pass("remote")
    assert store.get_outbox("a1_remote")["state"] == "failed"
    clock.t = store.get_outbox("a1_remote")["next_attempt_at"]  # due again
    real_update = store.update_outbox

    def the_dispatcher_comes_first(alert_id: str, **fields):
        if fields.get("state") == "pending":  # retry's write, once it has decided to retry
            monkeypatch.setattr(store, "update_outbox", real_update)
            d._pass("remote")  # the dispatcher's thread got there first: sent, written
        return real_update(alert_id, **fields)

    monkeypatch.setattr(store, "update_outbox", the_dispatcher_comes_first)
    assert d.retry("a1_remote") is False  # sent meanwhile: nothing to retry
    assert store.get_outbox("a1_remote")["state"] == "sent"
    d._pass("remote")
    assert [a.id for a in sink.sent] == ["a1_remote", "a1_remote"]  # the failed try and the send: once


def test_a_lane_that_cannot_get_a_thread_leaves_its_entry_unclaimed_and_due(store, monkeypatch, caplog):
    """A parallel sink's send runs on a thread per recipient. When none can be started ("can't start
    new thread"), the entry stays claimed for good before this fix: no burst could join it until a
    later send of it. Now it is released at once and sent on the next pass."""
    clock = Clock()
    sink = ScriptedSink()
    sink.parallel_recipients = True  # type: ignore[attr-defined]
    store.add_outbox([entry(1, clock.t)], clock.t)
    d, _ = make(store, sink, clock)
    real_start = __import__("threading").Thread.start

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr("threading.Thread.start", no_thread)
    with caplog.at_level(logging.ERROR, logger="gateway"):
        d._pass("remote")
    assert sink.sent == [] and "no thread for the send" in caplog.text
    assert [o["id"] for o in store.mergeable_outbox(clock.t)] == ["a1_remote"]  # unclaimed: a burst may join
    monkeypatch.setattr("threading.Thread.start", real_start)
    d._pass("remote")
    assert d.wait_lanes(10)
    assert [a.id for a in sink.sent] == ["a1_remote"]


def test_a_failing_rate_key_limits_the_recipient_under_its_own_spelling(store, caplog):
    """A notifier's `rate_key` that raises (its bug) must not stop the pass or the send: the recipient
    is limited under the configured string instead, and the failure is logged (OutboxDispatcher._rate_key)."""

    class BrokenKey(ScriptedSink):
        def rate_key(self, recipient: str) -> str:
            raise ValueError(f"cannot parse {recipient}")

    clock = Clock()
    sink = BrokenKey(rate_limit=RateLimit(per_recipient=(1, 60.0)))
    store.add_outbox([entry(1, clock.t - 1), entry(2, clock.t)], clock.t)
    d, _ = make(store, sink, clock)
    with caplog.at_level(logging.ERROR, logger="gateway.outbox"):
        d._pass("remote")
    assert [a.id for a in sink.sent] == ["a1_remote"]  # sent; the second waits for r1's window
    assert store.get_outbox("a2_remote")["state"] == "pending"
    assert "rate key of 'r1' failed" in caplog.text
