"""Issue 14: at a full disk the gateway acks nothing it could not make durable, counts and says so
(health, status, bus for Home Assistant) before and while it happens, and acks again once there is
room. A real Mosquitto, a real gateway core and a real (tmpfs) file system that really fills up."""

from __future__ import annotations

import logging

import pytest

from gateway.bus import STORAGE_STATE
from gateway.diskspace import (
    MB,
    REMIND_EVERY_S,
    DiskNumbers,
    DiskThresholds,
    StorageWatch,
    disk_report,
    storage_report,
)
from gateway.service import GatewayService
from gateway.store import Store
from tests.support.fullfs import fill, free, tmpfs
from tests.support.gateway_core import Box, gateway_config, make_jpeg, new_event_id, wait_for


@pytest.mark.parametrize(
    ("free_mb", "total_mb", "files", "low"),
    [
        (600, 8_000, None, False),  # 500 MB floor is the larger threshold on a small card
        (400, 8_000, None, True),
        (40_000, 1_000_000, None, True),  # 5 % of a 1 TB disk is the larger one
        (60_000, 1_000_000, None, False),
        (600, 8_000, (10, 100_000), True),  # out of inodes with space left (many small photos)
    ],
)
def test_disk_report_thresholds(free_mb, total_mb, files, low):
    n = DiskNumbers(free_mb * MB, total_mb * MB, files[0] if files else None, files[1] if files else None)
    assert disk_report(n, DiskThresholds())["low"] is low


def test_storage_report_problems_are_actionable():
    disk = disk_report(DiskNumbers(100 * MB, 8000 * MB, None, None), DiskThresholds())
    ok = storage_report(disk_report(DiskNumbers(4000 * MB, 8000 * MB, None, None), DiskThresholds()), {}, 0)
    assert ok["ok"] and ok["problems"] == []
    bad = storage_report(disk, {"journal_damaged": 1, "journal_torn_tails": 3}, 2)
    assert not bad["ok"]
    text = " ".join(bad["problems"])
    assert "disk almost full" in text and "retention" in text
    assert "2 write(s) failed" in text and "quarantine" in text
    torn_only = storage_report(ok["disk"], {"journal_torn_tails": 1}, 0)
    assert torn_only["ok"]  # a crash mid-append is normal after a power cut, never acked
    # 15 minutes after the last refused write the boxes have re-sent: counted, no longer a problem.
    assert storage_report(ok["disk"], {"write_errors": 3}, 3, failed_recently=False)["ok"]


def test_storage_watch_logs_new_problems_reminds_hourly_and_publishes_sparingly():
    def report(free_mb: int, refused: int = 0) -> dict:
        disk = disk_report(DiskNumbers(free_mb * MB, 8000 * MB, None, None), DiskThresholds())
        return storage_report(disk, {}, refused)

    w = StorageWatch()
    logs, recovered, pub = w.update(report(4000), 0.0)
    assert logs == [] and not recovered and pub["ok"] and pub["free_mb"] == 4000  # first state: published
    assert w.update(report(3990), 2.0)[2] is None  # 10 MB less: not worth a retained message
    logs, _, pub = w.update(report(400), 4.0)  # below the 500 MB floor
    assert [p.split(":")[0] for p in logs] == ["disk almost full"] and pub["ok"] is False
    logs, _, pub = w.update(report(399, refused=1), 6.0)
    assert len(logs) == 1 and "write(s) failed" in logs[0]  # only the new problem
    assert pub is not None  # the problem list changed
    logs, _, _ = w.update(report(398, refused=2), 8.0)
    assert logs == []  # same kinds, other numbers: not news
    logs, _, _ = w.update(report(398, refused=2), 6.0 + REMIND_EVERY_S)
    assert len(logs) == 2  # the hourly reminder repeats every problem
    logs, recovered, pub = w.update(report(4000), 7.0 + REMIND_EVERY_S)
    assert logs == [] and recovered and pub["ok"]


def test_storage_monitor_warns_once_a_minute_with_a_count_and_shows_refused_writes_for_a_while(
    tmp_path, caplog
):
    """`gateway.status.StorageMonitor` alone, on an injected monotonic clock: a full disk fails every
    write, the log gets one line a minute (with how many it held back), the bus hears the problem once
    and hears it is over once the refused writes are `WRITE_FAILURE_SHOWN_S` old."""
    from gateway.bus import Bus
    from gateway.diskspace import WRITE_FAILURE_SHOWN_S
    from gateway.health import Counters
    from gateway.status import StorageMonitor

    caplog.set_level(logging.WARNING, logger="gateway")
    store = Store(tmp_path)
    now = [1000.0]
    bus = Bus()
    states: list[dict] = []
    bus.subscribe(lambda _t, d: states.append(d), STORAGE_STATE)
    counters = Counters()
    m = StorageMonitor(
        tmp_path,
        DiskThresholds(min_free_mb=0, min_free_percent=0),  # whatever the test machine's disk has
        store=lambda: store,
        bus=bus,
        counters=counters,
        monotonic=lambda: now[0],
    )
    m.check()
    assert len(states) == 1 and states[0]["ok"] and m.state() == states[0]

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "could not write" in r.getMessage()]

    full = OSError(28, "No space left on device")
    for _ in range(3):
        m.failed(full, "event box1/e1")
    assert len(warnings()) == 1 and "not acked, the box keeps it" in warnings()[0]
    assert counters.get("store_write_errors") == 3
    assert len(states) == 2 and not states[1]["ok"] and m.state() == states[1]
    now[0] += 61.0
    m.failed(full, "status.json", counter="status_write_errors")
    assert len(warnings()) == 2 and "(2 more such failure(s) in the last minute)" in warnings()[1]
    assert "not acked" not in warnings()[1]  # a snapshot, not an event: nothing for a box to re-send
    assert counters.get("status_write_errors") == 1 and not m.health()["ok"]
    now[0] = 1000.0 + WRITE_FAILURE_SHOWN_S + 1
    m.check()
    assert m.health()["ok"] and len(states) == 3 and states[2]["ok"]
    store.close()


def test_full_disk_no_ack_counted_warned_then_acked_again(tmp_path, mosquitto, prefix, caplog):
    caplog.set_level(logging.WARNING)
    with tmpfs(tmp_path / "disk", "6m") as disk:
        cfg = gateway_config(
            disk / "data",
            mosquitto.url,
            prefix,
            PARCELBOX_STORE_MIN_FREE_MB="1",
            PARCELBOX_STORE_MIN_FREE_PERCENT="0",
        )
        svc = GatewayService(cfg)
        states: list[dict] = []
        svc.bus.subscribe(lambda _t, d: states.append(d), STORAGE_STATE)
        svc.start()
        box = Box(mosquitto.url, prefix, "box1")
        photo = make_jpeg(320, 240, seed=1)
        ids = [new_event_id() for _ in range(5)]
        try:
            assert svc.wait_connected(10)
            box.send(ids[0], photo)
            assert box.wait_ack(ids[0])["ok"]
            assert svc.health()["storage"]["ok"], svc.health()["storage"]
            filler = fill(disk)
            box.send(ids[1], photo)  # its photo files cannot be written
            wait_for(lambda: svc.counters.get("store_write_errors") >= 1, what="the refused photo")
            # No photo, and a line longer than a page: its journal line cannot be written (a short line
            # could still fit in the room left in the journal's last page).
            box.send(ids[2], None, etype="lid_closed", sensors={"note": "x" * 6000})
            wait_for(lambda: svc.store.integrity()["write_errors"] >= 1, what="the refused journal line")
            storage = svc.health()["storage"]
            assert not storage["ok"] and storage["disk"]["low"]
            text = " ".join(storage["problems"])
            assert "disk almost full" in text and "not acked" in text
            wait_for(lambda: any(not s["ok"] for s in states), what="the bus to hear of it")
            free(filler)
            for eid in ids[3:]:
                box.send(eid, None, etype="lid_closed")
            for eid in ids[3:]:
                assert box.wait_ack(eid)["ok"]
            # Acks on one topic arrive in order: had ids[1] or ids[2] been acked, it would be here already.
            assert not box._acks.get(ids[1]) and not box._acks.get(ids[2])
            assert not svc.store.has_event("box1", ids[1]) and not svc.store.has_event("box1", ids[2])
            box.send(ids[1], photo)  # the box's spool sends them again, after its ack timeout
            box.send(ids[2], None, etype="lid_closed", sensors={"note": "x" * 6000})
            assert box.wait_ack(ids[1])["ok"] and box.wait_ack(ids[2])["ok"]
        finally:
            box.close()
            svc.stop()
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("not acked" in m and ids[1] in m for m in warned), warned
        assert any("write(s) failed" in m for m in warned), warned
        assert any(m.startswith("storage: disk almost full") for m in warned), warned
        s = Store(disk / "data")
        try:
            assert all(s.has_event("box1", eid) for eid in ids)
            assert s.get_event("box1", ids[1])["photo"] is not None
        finally:
            s.close()
