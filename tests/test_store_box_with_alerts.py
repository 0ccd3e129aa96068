"""Alerts that belong to no event and the box record that marks them planned are one durable change
(`Store.add_outbox(..., device=...)`).

Before, the gateway wrote the box record (`put_device`: `offline_alerted`, `low_battery_alerted`) and
then the alerts (`add_outbox`): two fsync'd lines in two journals. A crash between them kept the mark
and lost the alerts for good: the rules never plan them again for that outage. As in
tests/test_store_box_with_event.py, a store is "crashed" by abandoning it without `close()` (only what
reached the disk is there, as after a SIGKILL) and its folder opened again.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.app import build_notifiers
from gateway.pipeline import Received
from gateway.service import GatewayService
from gateway.store import COMPACT_EVERY, JOURNAL_SUFFIX, Store, blank_device
from tests.support.gateway_core import gateway_config
from tests.support.store_faults import Killed, appends_fail, die_after_append

T0 = 1_795_000_000.0  # 2026-11-17, mid-month
PREFIX = "pbtest"


def _planned(store: Store, kind: str) -> list[dict[str, Any]]:
    return [o for o in store.list_outbox(limit=1000) if o["kind"] == kind]


def _service(tmp_path, store: Store, **env: str) -> GatewayService:
    """A gateway that is not started, over a real store: `tick()` and the pipeline then run right here
    (no worker thread, no broker), which is all these tests need."""
    cfg = gateway_config(tmp_path / "data", "mqtt://127.0.0.1:1", PREFIX, **env)
    svc = GatewayService(cfg)
    for n in build_notifiers(cfg):
        svc.add_notifier(n)
    svc.store = svc.pipeline.store = store
    return svc


def test_an_offline_alert_and_its_mark_survive_a_kill_right_after_the_first_write(tmp_path, monkeypatch):
    """The tick finds the box offline for an hour and the process dies as soon as the first journal
    line is on disk. After the restart the box is marked alerted only if its alerts exist.

    Fails on the old code: the tick wrote the box record (offline_alerted) first, in its own line; the
    kill then left the mark without the alerts, and no later tick plans them again."""
    data = tmp_path / "data"
    s1 = Store(data)
    s1.put_device(dict(blank_device("box1")) | {"online": False, "offline_since": T0, "last_seen": T0})
    svc = _service(tmp_path, s1, PARCELBOX_ALERTS_OFFLINE_AFTER_S="3600")
    die_after_append(monkeypatch)
    with pytest.raises(Killed):
        svc.tick(T0 + 3601)
    monkeypatch.undo()
    s2 = Store(data)  # s1 is abandoned: the restart after the SIGKILL
    try:
        assert s2.get_device("box1")["offline_alerted"] is True
        assert len(_planned(s2, "offline")) == 1  # the folder sink's alert, in the same line
        svc = _service(tmp_path, s2, PARCELBOX_ALERTS_OFFLINE_AFTER_S="3600")
        svc.tick(T0 + 7200)
        assert len(_planned(s2, "offline")) == 1  # still one alert per outage
    finally:
        s2.close()


def test_a_low_battery_alert_and_its_mark_survive_a_kill_right_after_the_first_write(tmp_path, monkeypatch):
    """The same for the alerts a status plans (gateway/pipeline.py): low battery here.

    Fails on the old code: the pipeline wrote the box record (low_battery_alerted) before the alert."""
    data = tmp_path / "data"
    s1 = Store(data)
    svc = _service(tmp_path, s1, PARCELBOX_ALERTS_LOW_BATTERY_MV="3500")
    status = json.dumps({"v": 1, "online": True, "fw": "0.1.0", "battery_mv": 3300}).encode()
    die_after_append(monkeypatch)
    with pytest.raises(Killed):
        svc.pipeline.run(Received(f"{PREFIX}/box1/status", status, T0))
    monkeypatch.undo()
    s2 = Store(data)
    try:
        assert s2.get_device("box1")["low_battery_alerted"] is True
        assert len(_planned(s2, "low_battery")) == 1
    finally:
        s2.close()


def test_a_status_that_plans_nothing_writes_the_box_record_alone(tmp_path):
    """Most statuses plan no alert: their box record goes to boxes.json's own journal, as before, not
    into the month's events journal (which would then wait on boxes.json to be compacted)."""
    data = tmp_path / "data"
    s1 = Store(data)
    svc = _service(tmp_path, s1)
    status = json.dumps({"v": 1, "online": True, "fw": "0.1.0", "rssi": -60}).encode()
    svc.pipeline.run(Received(f"{PREFIX}/box1/status", status, T0))
    assert s1.get_device("box1")["rssi"] == -60
    assert not list((data / "db").glob("events-*" + JOURNAL_SUFFIX))
    s2 = Store(data)  # crash: the record comes back from boxes.json.journal
    try:
        assert s2.get_device("box1")["rssi"] == -60
    finally:
        s2.close()


def _offline_alert(device: str, alert_id: str, t: float) -> dict[str, Any]:
    return {
        "id": alert_id,
        "kind": "offline",
        "device": device,
        "event_ids": [],
        "notifier": "folder",
        "recipient": "",
        "state": "pending",
        "attempts": 0,
        "created_at": t,
        "next_attempt_at": t,
        "sent_at": None,
        "last_error": None,
        "message_id": None,
        "receipt": None,
        "receipt_at": None,
    }


def test_a_failed_write_leaves_neither_the_alerts_nor_the_mark(tmp_path, monkeypatch):
    s1 = Store(tmp_path)
    s1.put_device(dict(blank_device("box1")))
    appends_fail(monkeypatch)
    with pytest.raises(OSError):
        s1.add_outbox(
            [_offline_alert("box1", "a1", T0)], T0, device={**s1.get_device("box1"), "offline_alerted": True}
        )
    monkeypatch.undo()
    assert not s1.get_device("box1").get("offline_alerted")
    assert s1.list_outbox() == []
    s2 = Store(tmp_path)
    try:
        assert not s2.get_device("box1").get("offline_alerted") and s2.list_outbox() == []
    finally:
        s2.close()


def test_box_records_written_with_alerts_survive_compaction_and_a_later_crash(tmp_path):
    """Like an event's box record: the events journal is emptied only once boxes.json has the record;
    and a later `put_device` (a newer revision) wins over it at the next open."""
    s1 = Store(tmp_path, segment_records=10_000)
    for i in range(COMPACT_EVERY + 3):  # one compaction of the month's journal on the way
        box = dict(blank_device(f"box-{i % 3}")) | {"offline_alerted": True, "waiting": i}
        s1.add_outbox([_offline_alert(box["device"], f"a{i}", T0 + i)], T0 + i, device=box)
    s1.put_device({**s1.get_device("box-0"), "rssi": -42})
    s2 = Store(tmp_path, segment_records=10_000)  # crash: s1 abandoned
    try:
        expected = {f"box-{i % 3}": i for i in range(COMPACT_EVERY + 3)}  # the last write of each
        assert {d["device"]: d["waiting"] for d in s2.list_devices()} == expected
        assert s2.get_device("box-0")["rssi"] == -42
        assert len(s2.list_outbox(limit=1000)) == COMPACT_EVERY + 3
    finally:
        s2.close()
