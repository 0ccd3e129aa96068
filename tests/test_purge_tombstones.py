"""Tombstones of purged events (`db/purged.journal`) are forgotten once retention would have deleted the
events they stand for (`Store._prune_tombstones`, docs/architecture.md "Tombstones"), and not before:
until then a box re-sending a purged event gets it acked as a duplicate, never stored again."""

from __future__ import annotations

import calendar

from gateway.framing import scan_lines
from gateway.store import PURGED_JOURNAL, Store
from tests.support.store_faults import event_record


def _t(y: int, m: int, d: int) -> float:
    return float(calendar.timegm((y, m, d, 12, 0, 0)))


def test_tombstones_go_when_retention_would_have_deleted_their_events(tmp_path):
    s = Store(tmp_path)
    old_ids = [f"oldevent-{i:06d}" for i in range(3)]
    new_ids = [f"newevent-{i:06d}" for i in range(2)]
    for eid in old_ids:
        assert s.add_event(event_record("box-old", eid, _t(2025, 11, 10)))
    for eid in new_ids:
        assert s.add_event(event_record("box-new", eid, _t(2026, 11, 10)))
    s.purge_device("box-old", _t(2025, 11, 20))  # a year ago
    s.purge_device("box-new", _t(2026, 11, 20))  # two weeks ago
    now = _t(2026, 12, 6)
    # retention off (0 = keep everything): purged events stay remembered for good
    assert s.apply_retention(now, 0, 0).get("tombstones", 0) == 0
    assert all(s.has_event("box-old", e) for e in old_ids)
    # 365 days: November 2025 (where the first purge and all its events fall) is past it, November 2026 not
    removed = s.apply_retention(now, 365, 0)
    assert removed["tombstones"] == len(old_ids)
    assert not any(s.has_event("box-old", e) for e in old_ids)
    assert all(s.has_event("box-new", e) for e in new_ids)
    s.purge_device("box-new", _t(2026, 12, 1))  # nothing new to purge: no line
    assert s.add_event(event_record("box-third", "thirdevt-000001", _t(2026, 12, 2)))
    s.purge_device("box-third", _t(2026, 12, 3))  # appended to the rewritten journal
    s.close()
    lines = scan_lines((tmp_path / "db" / PURGED_JOURNAL).read_bytes())
    assert not lines.damage
    assert [e["dev"] for e in lines.entries] == ["box-new", "box-third"]
    s2 = Store(tmp_path)
    try:
        assert not any(s2.has_event("box-old", e) for e in old_ids)
        assert all(s2.has_event("box-new", e) for e in new_ids)
        assert s2.has_event("box-third", "thirdevt-000001")
        assert s2.integrity()["journal_damaged"] == 0
        # a re-sent event of the first box is new history now, as an unpurged event past retention is
        assert s2.add_event(event_record("box-old", old_ids[0], _t(2025, 11, 10)))
    finally:
        s2.close()


def test_a_tombstone_stays_while_its_month_is_within_retention(tmp_path):
    s = Store(tmp_path)
    try:
        assert s.add_event(event_record("box-1", "someevnt-000001", _t(2026, 10, 30)))
        s.purge_device("box-1", _t(2026, 10, 31))
        # 30 days after the end of October: October's partition is exactly at the cutoff's edge - 1 s
        now = calendar.timegm((2026, 11, 1, 0, 0, 0)) + 30 * 86_400 - 1
        assert s.apply_retention(now, 30, 0)["tombstones"] == 0
        assert s.has_event("box-1", "someevnt-000001")
        assert s.apply_retention(now + 1, 30, 0)["tombstones"] == 1
        assert not s.has_event("box-1", "someevnt-000001")
    finally:
        s.close()


def _purged_once(tmp_path):
    s = Store(tmp_path)
    assert s.add_event(event_record("box-old", "oldevent-000001", _t(2025, 11, 10)))
    s.purge_device("box-old", _t(2025, 11, 20))
    return s


def test_a_failed_rewrite_of_the_tombstones_forgets_nothing(tmp_path, monkeypatch):
    """Dropping expired tombstones rewrites purged.journal; when that write fails (a full disk) every
    tombstone stays, in memory and on disk, and the failure is counted."""
    import gateway.storage
    import gateway.store

    s = _purged_once(tmp_path)
    real = gateway.storage.atomic_write_bytes

    def failing(path, data, **kw):
        if path.name == PURGED_JOURNAL:
            raise OSError(28, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(gateway.storage, "atomic_write_bytes", failing)
    monkeypatch.setattr(gateway.store, "atomic_write_bytes", failing)
    try:
        assert s.apply_retention(_t(2026, 12, 6), 365, 0).get("tombstones", 0) == 0
        assert s.has_event("box-old", "oldevent-000001")  # still remembered: a re-send is a duplicate
        assert s.integrity()["write_errors"] >= 1
    finally:
        s.close()
    monkeypatch.undo()
    s2 = Store(tmp_path)
    try:
        assert s2.has_event("box-old", "oldevent-000001")
    finally:
        s2.close()


def test_damaged_bytes_in_the_tombstones_are_quarantined_before_the_rewrite(tmp_path):
    _purged_once(tmp_path).close()
    journal = tmp_path / "db" / PURGED_JOURNAL
    with journal.open("ab") as f:
        f.write(b"\x00garbage that is no line\n")
    s = Store(tmp_path)
    try:
        assert s.apply_retention(_t(2026, 12, 6), 365, 0)["tombstones"] == 1
    finally:
        s.close()
    assert scan_lines(journal.read_bytes()).entries == []
    kept = list((tmp_path / "db" / "quarantine").glob(PURGED_JOURNAL + "*"))
    assert kept and b"garbage that is no line" in b"".join(p.read_bytes() for p in kept)
