"""A grouped delivery joins its burst's alert in the event's own durable write, and never an alert
whose send has begun. Through the real service, a real broker and real store files.

Before, the ingest pipeline read the open outbox, then wrote each change to the burst's alert as its
own journal line (`update_outbox`), and only then the event's line. A failed or killed write in between
left the alert naming an event that was never stored. And the dispatcher sent the records of the open
list it read at the start of its pass: an alert joined while an earlier send of that pass ran went out
as it was before, while its record said the new event had been told.
"""

from __future__ import annotations

import errno
import threading
from typing import Any

import pytest

import gateway.storage as storage_mod
from gateway.alerts import rhash as _rhash
from gateway.notify.base import Alert, SendResult
from gateway.service import GatewayService
from tests.support.gateway_core import Box, JumpClock, gateway_config, new_event_id, wait_for


class GateSink:
    """An alert sink that reports every send and can hold one (a slow remote service). Returns
    failure for the alerts named in `fail_once` on their first send (a retryable error)."""

    name = "gate"
    rate_limit = None

    def __init__(self) -> None:
        self.sent: list[Alert] = []
        self.fail_once: set[str] = set()
        self.hold: str | None = None  # device whose next send blocks until `release`
        self.holding = threading.Event()
        self.release = threading.Event()

    def recipients(self, device: str) -> list[str]:
        return [""]

    def send(self, alert: Alert) -> SendResult:
        if alert.id in self.fail_once:
            self.fail_once.discard(alert.id)
            return SendResult(ok=False, error="busy, try later")
        if alert.device == self.hold:
            self.hold = None
            self.holding.set()
            assert self.release.wait(30), "the test never released the held send"
        self.sent.append(alert)
        return SendResult(ok=True)

    def close(self) -> None:
        pass


def _start(tmp_path, mosquitto, prefix, clock: JumpClock, sink: GateSink) -> GatewayService:
    cfg = gateway_config(
        tmp_path / "data",
        mosquitto.url,
        prefix,
        PARCELBOX_ALERTS_GROUP_WINDOW_S="60",
        PARCELBOX_OUTBOX_BACKOFF_INITIAL_S="30",  # a failed send waits for the test's clock, not real time
    )
    svc = GatewayService(cfg, clock=clock)
    svc.add_notifier(sink)
    svc.start()
    assert svc.wait_connected(10)
    return svc


def _deliveries(svc: GatewayService, device: str) -> list[dict[str, Any]]:
    return [o for o in svc.list_outbox(limit=1000) if o["kind"] == "delivery" and o["device"] == device]


@pytest.fixture
def boxes(mosquitto, prefix):
    b1, b2 = Box(mosquitto.url, prefix, "box1"), Box(mosquitto.url, prefix, "box2")
    yield b1, b2
    b1.close()
    b2.close()


def test_a_failed_event_write_leaves_the_burst_alert_as_it_was(
    tmp_path, mosquitto, prefix, boxes, monkeypatch
):
    """The disk refuses the second delivery's write: its alert must not name it (it is not stored, not
    acked). Fails on the old code: the change to the burst's alert was a line of its own, written
    before the event's line that failed, so the alert named an event the gateway does not have."""
    box, _ = boxes
    sink = GateSink()
    svc = _start(tmp_path, mosquitto, prefix, JumpClock(), sink)
    try:
        first, second = new_event_id(), new_event_id()
        box.send(first, None)
        assert box.wait_ack(first)["ok"]
        (burst,) = _deliveries(svc, "box1")
        real_append = storage_mod.Journal.append
        refused = threading.Event()

        def no_room_for_the_event(self: storage_mod.Journal, entry: dict[str, Any]) -> None:
            if entry.get("ev", {}).get("id") == second:
                refused.set()
                raise OSError(errno.ENOSPC, "No space left on device")
            real_append(self, entry)

        monkeypatch.setattr(storage_mod.Journal, "append", no_room_for_the_event)
        box.send(second, None)
        wait_for(refused.is_set, what="the event's write refused")
        wait_for(lambda: svc.counters.get("store_write_errors") == 1, what="the failure handled")
        assert not svc.store.has_event("box1", second)
        assert svc.store.get_outbox(burst["id"])["event_ids"] == [first]
        monkeypatch.undo()
        box.send(second, None)  # the box's spool: no ack came, so it sends the event again
        assert box.wait_ack(second)["ok"]
        assert [o["event_ids"] for o in _deliveries(svc, "box1")] == [[first, second]]
    finally:
        svc.stop()


def test_an_alert_joined_while_an_earlier_send_runs_goes_out_as_joined(tmp_path, mosquitto, prefix, boxes):
    """The dispatcher's pass reads the open alerts, then sends them one by one. A delivery joins the
    burst's alert while an earlier send of that pass is still running (a slow service); when the pass
    reaches the burst's alert it must send it as it is now, naming both events.

    Fails on the old code: the pass sent the record it had read at its start, naming only the first
    event, and then marked the alert sent; the second delivery was never told."""
    box1, box2 = boxes
    clock = JumpClock()
    sink = GateSink()
    svc = _start(tmp_path, mosquitto, prefix, clock, sink)
    try:
        pickup, first, second = new_event_id(), new_event_id(), new_event_id()
        # An alert older than the burst's, due again while the burst waits: its first send fails.
        sink.fail_once.add(f"box2_{pickup}_gate_{_rhash('')}")
        sink.hold = "box2"  # its retry (the next send) is the slow one
        box2.send(pickup, None, etype="pickup")
        assert box2.wait_ack(pickup)["ok"]
        wait_for(
            lambda: svc.store.open_outbox() and svc.store.open_outbox()[0]["attempts"] == 1,
            what="first try failed",
        )
        box1.send(first, None)
        assert box1.wait_ack(first)["ok"]
        clock.advance(40)  # the pickup's retry is due (30 s); the burst (60 s) is not
        assert sink.holding.wait(30), "the retry was not sent"
        box1.send(second, None)  # joins the burst while the pass is inside the pickup's send
        assert box1.wait_ack(second)["ok"]
        (burst,) = _deliveries(svc, "box1")
        assert burst["event_ids"] == [first, second]
        clock.advance(60)  # the burst is due when the pass gets to it
        sink.release.set()
        wait_for(lambda: any(a.device == "box1" for a in sink.sent), what="the burst sent")
        (told,) = [a for a in sink.sent if a.device == "box1"]
        assert told.event_ids == (first, second)
        assert "2 packages" in told.caption
    finally:
        sink.release.set()
        svc.stop()
