"""Month files in segments: bounded files and bounded memory, with nothing lost or doubled across them.

`SEGMENT_DOCS` is made tiny here so a few dozen events span many segment files.
"""

from __future__ import annotations

import calendar
import json

import pytest

import gateway.store as store_mod
from gateway.store import Store
from tests.test_store import NOV, OCT, ev, ob

SEG = 8  # records per segment in these tests


@pytest.fixture(autouse=True)
def small_segments(monkeypatch):
    monkeypatch.setattr(store_mod, "SEGMENT_DOCS", SEG)


def fill(s: Store, n: int, when: float = NOV, prefix: str = "e") -> list[str]:
    """n events, each with one outbox entry (2 records per event)."""
    ids = []
    for i in range(n):
        eid = f"{prefix}{i:07d}"
        assert s.add_event(ev("box1", eid, when + i), [ob(f"a{eid}", "box1", eid, when + i)])
        ids.append(eid)
    return ids


def records_in(path) -> int:
    data = json.loads(path.read_text())
    return sum(len(t) for t in data.values())


def test_names_sort_by_period_then_segment_number():
    names = [
        "events-2026-11.10.json",
        "events-2026-11.json",
        "events-2026-10.json",
        "events-2026-11.9.json",
        "events-2026-11.2.json",
    ]
    assert sorted(names, key=store_mod._part_sort_key) == [
        "events-2026-10.json",
        "events-2026-11.json",
        "events-2026-11.2.json",
        "events-2026-11.9.json",
        "events-2026-11.10.json",
    ]
    assert store_mod._period_of("events-2026-11.10.json") == "events-2026-11.json"
    assert store_mod._period_of("events-2026-11-05.3.json") == "events-2026-11-05.json"
    assert store_mod._partition_end("events-2026-11.7.json") == store_mod._partition_end(
        "events-2026-11.json"
    )
    for bad in ("events-2026-11.1.json", "events-2026-11.02.json", "events-2026-11.x.json"):
        assert not store_mod._PART_RE.fullmatch(bad)


def test_a_month_rolls_over_into_bounded_segments(tmp_path):
    s = Store(tmp_path)
    ids = fill(s, 30)  # 60 records
    s.close()
    files = sorted(
        (tmp_path / "db").glob("events-2026-11*.json"), key=lambda p: store_mod._part_sort_key(p.name)
    )
    assert [p.name for p in files[:3]] == [
        "events-2026-11.json",
        "events-2026-11.2.json",
        "events-2026-11.3.json",
    ]
    counts = [records_in(p) for p in files]
    assert sum(counts) == 60 and max(counts) <= SEG and len(files) == 60 // SEG + 1
    s2 = Store(tmp_path)
    try:
        assert s2.event_count() == 30
        assert [e["id"] for e in s2.list_events(limit=100)] == ids[::-1]
        for eid in ids:  # every record readable, deduped whichever segment holds it
            assert s2.get_event("box1", eid)["id"] == eid
            assert not s2.add_event(ev("box1", eid, NOV))
            assert s2.get_outbox(f"a{eid}")["state"] == "pending"
        assert s2.event_count() == 30
    finally:
        s2.close()


def test_reopen_continues_the_latest_segment(tmp_path):
    s = Store(tmp_path)
    fill(s, 5)  # 10 records: segment 1 full (8), segment 2 holds 2
    s.close()
    s2 = Store(tmp_path)
    fill(s2, 3, prefix="f")  # 6 more: segment 2 reaches 8
    fill(s2, 1, prefix="g")  # then segment 3
    s2.close()
    db = tmp_path / "db"
    assert records_in(db / "events-2026-11.json") == 8
    assert records_in(db / "events-2026-11.2.json") == 8
    assert records_in(db / "events-2026-11.3.json") == 2


def test_memory_is_bounded_by_open_segments(tmp_path):
    """What the store holds per record is in its open segments; their number and size are capped."""
    s = Store(tmp_path)
    try:
        fill(s, 200)
        for i in range(0, 200, 3):  # updates to entries in old, closed segments
            assert s.update_outbox(f"ae{i:07d}", state="sent", attempts=1)
        s.list_outbox(limit=1000)
        s.list_events(limit=1000)
        assert s.get_event("box1", "e0000000")
        st = s.stats()
        assert len(st.open_partitions) <= store_mod._CACHED_PARTITIONS
        assert st.open_events <= store_mod._CACHED_PARTITIONS * SEG
        assert st.read_cached_events <= max(store_mod._READ_CACHED_EVENTS, SEG)
    finally:
        s.close()
    s2 = Store(tmp_path)
    try:
        sent = [r for r in s2.list_outbox(limit=1000) if r["state"] == "sent"]
        assert len(sent) == len(range(0, 200, 3))
        assert s2.outbox_counts() == {"pending": 200 - len(sent), "sent": len(sent), "failed": 0, "dead": 0}
    finally:
        s2.close()


def test_reading_history_does_not_open_old_segments(tmp_path):
    """Looking at old events or alerts must not evict (and so rewrite) the segment being written."""
    s = Store(tmp_path)
    try:
        fill(s, 41)
        writing = s.partition_of("box1", "e0000040")
        assert writing == "events-2026-11.11.json" and writing in s.stats().open_partitions
        before = set(s.stats().open_partitions)
        assert s.get_event("box1", "e0000001")["id"] == "e0000001"
        assert len(s.list_outbox(limit=1000)) == 41
        assert len(s.list_events(limit=1000)) == 41
        assert set(s.stats().open_partitions) == before
    finally:
        s.close()


def test_unclean_reopen_replays_a_segment_that_exists_only_as_its_journal(tmp_path):
    s = Store(tmp_path)
    fill(s, 4)  # segment 1 exactly full
    assert s.add_event(ev("box1", "late0001", NOV + 100), [ob("alate0001", "box1", "late0001", NOV)])
    seg2 = tmp_path / "db" / "events-2026-11.2.json"
    assert not seg2.exists() and (tmp_path / "db" / "events-2026-11.2.json.journal").stat().st_size
    # no close(): as after a kill
    s2 = Store(tmp_path)
    try:
        assert s2.has_event("box1", "late0001") and s2.get_outbox("alate0001")["state"] == "pending"
        assert records_in(seg2) == 2
        assert s2.add_event(ev("box1", "late0002", NOV + 200))
        assert s2.partition_of("box1", "late0002") == "events-2026-11.2.json"
    finally:
        s2.close()
        s.close()


def test_retention_removes_every_segment_of_an_old_month(tmp_path):
    s = Store(tmp_path)
    fill(s, 20, when=OCT, prefix="o")
    fill(s, 3, when=NOV, prefix="n")
    for i in range(20):
        s.update_outbox(f"ao{i:07d}", state="sent")
    assert len(list((tmp_path / "db").glob("events-2026-10*.json*"))) >= 5
    now = float(calendar.timegm((2026, 11, 20, 0, 0, 0)))
    removed = s.apply_retention(now, retention_days=15, photo_retention_days=0)
    assert removed["partitions"] == 5  # 40 records in segments of 8
    assert not list((tmp_path / "db").glob("events-2026-10*"))
    assert s.event_count() == 3 and not s.has_event("box1", "o0000000")
    assert s.outbox_counts()["sent"] == 0 and s.outbox_counts()["pending"] == 3
    # a late event for October starts that month again from its first segment
    assert s.add_event(ev("box1", "o0000000", OCT))
    s.close()
    assert (tmp_path / "db" / "events-2026-10.json").is_file()
