"""Issue 17 through the real gateway process: SIGKILL right after an event's journal line reaches the
disk, restart, the box re-sends: the box's state (waiting count, last event) includes that event.

The kill is a test-only `sitecustomize` on the child's PYTHONPATH (tests/support/faults/): it wraps
`Journal.append` and SIGKILLs the process as soon as the line carrying the named event is fsync'd.
Before the fix the box record was a second write after that line (`put_device`): killed in between,
the event stayed stored and unacked, the box re-sent it, got a "duplicate" ack, and its record never
counted it (waiting stayed 1, last_event_id the previous event). Fails on the old code.
"""

from __future__ import annotations

import signal
from pathlib import Path

from gateway.store import Store
from tests.support.e2e import GatewayProc, wait_for
from tests.support.gateway_core import Box, new_event_id

FAULTS = Path(__file__).resolve().parents[1] / "support" / "faults"


def _killed_at_second_event(gw: GatewayProc, box: Box, first: str, second: str) -> None:
    """Start the gateway (its fault hook armed for `second`), store `first`, send `second`: the gateway dies."""
    gw.start()
    box.send(first, None)
    assert box.wait_ack(first, 30)["ok"]
    box.send(second, None)  # the process dies once the first journal line naming it is on disk
    assert gw.proc is not None
    assert gw.proc.wait(30) == -signal.SIGKILL


def _restarted_and_resent(gw: GatewayProc, box: Box, second: str) -> None:
    """Restart without the hook; the box re-sends `second` (no ack came) and gets its ack; both events count."""
    gw.env = {}
    gw.start()
    box.send(second, None)  # the box's spool: no ack came, so it sends the event again
    ack = box.wait_ack(second, 30)
    assert ack["ok"], ack
    wait_for(lambda: gw.health().get("events_total") == 2, 30, what="both events counted")
    assert gw.stop() == 0


def test_sigkill_right_after_the_event_line_keeps_the_box_state(tmp_path, mosquitto, prefix):
    first, second = new_event_id(), new_event_id()
    gw = GatewayProc(
        tmp_path / "gw",
        mosquitto.url,
        prefix,
        env={"PYTHONPATH": str(FAULTS), "PB_TEST_KILL_AFTER_EVENT": second},
    )
    box = Box(mosquitto.url, prefix, "killbox")
    try:
        _killed_at_second_event(gw, box, first, second)
        assert "Traceback" not in gw.tail(200)
        _restarted_and_resent(gw, box, second)
    finally:
        box.close()
        gw.kill()
    store = Store(gw.data_dir)
    try:
        assert store.has_event("killbox", second)
        dev = store.get_device("killbox")
        assert dev is not None
        assert dev["last_event_id"] == second, dev
        assert dev["waiting"] == 2, dev
    finally:
        store.close()


def _stored_and_named(store: Store, device: str) -> tuple[set[str], list[list[str]]]:
    """The box's stored events, and the event ids each of its delivery alerts names."""
    stored = {e["id"] for e in store.list_events(device=device, limit=1000)}
    named = [o["event_ids"] for o in store.list_outbox(limit=1000) if o["kind"] == "delivery"]
    return stored, named


def test_sigkill_right_after_a_grouped_event_line_keeps_alert_and_event_together(tmp_path, mosquitto, prefix):
    """Grouping on: the second delivery joins the first one's alert. The gateway dies right after the
    first journal line naming the second event reaches the disk. The burst's alert may name only stored
    events; after the restart the box re-sends, gets its ack, and the alert names both, once each.

    Fails on the old code: the change to the alert was its own line, written before the event's line,
    so the kill left the open alert naming an event the gateway did not have."""
    first, second = new_event_id(), new_event_id()
    gw = GatewayProc(
        tmp_path / "gw",
        mosquitto.url,
        prefix,
        extra={"alerts": {"group_window_s": 3600.0}},  # the alert waits: nothing is sent during the test
        env={"PYTHONPATH": str(FAULTS), "PB_TEST_KILL_AFTER_EVENT": second},
    )
    box = Box(mosquitto.url, prefix, "burstbox")
    try:
        # the second event joins the burst; the gateway dies after the first line naming it
        _killed_at_second_event(gw, box, first, second)
        store = Store(gw.data_dir)  # what the restart finds
        try:
            stored, named = _stored_and_named(store, "burstbox")
            assert len(named) == 1 and set(named[0]) <= stored, (named, stored)
        finally:
            store.close()
        _restarted_and_resent(gw, box, second)
    finally:
        box.close()
        gw.kill()
    store = Store(gw.data_dir)
    try:
        stored, named = _stored_and_named(store, "burstbox")
        assert stored == {first, second}
        assert named == [[first, second]]
    finally:
        store.close()
