"""Issue 17: an event and its box's new record are one durable change (`Store.add_event(device=...)`).

Before, the service stored the event (one fsync'd line in the month's journal) and then the box record
(a second line, in boxes.json.journal). A crash between the two kept the event and lost the box state;
the box re-sent, got "duplicate", and its waiting count and last event never caught up. Now the box
record rides in the event's own journal line. These tests "crash" a store by abandoning it without
`close()` (only what reached the disk is there, as after a SIGKILL) and open the folder again.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

import gateway.storage as storage_mod
from gateway.framing import scan_lines
from gateway.store import BOX_REV, COMPACT_EVERY, JOURNAL_SUFFIX, Store, StoreError, blank_device
from tests.support.store_faults import Killed, appends_fail, die_after_append, event_record

T0 = 1_795_000_000.0  # 2026-11-17, mid-month
BIG_SEGMENTS = 10_000  # one segment file for the month: every line below goes to the same journal


def _box_after(store: Store, device: str, eid: str, t: float, **fields: Any) -> dict[str, Any]:
    """The box's record as the service builds it for an event: the stored one, changed."""
    rec = store.get_device(device) or dict(blank_device(device))
    rec.update(last_event_id=eid, last_seen=t, **fields)
    return rec


def _store_with_box(store: Store, device: str, eid: str, t: float, waiting: int) -> bool:
    return store.add_event(
        event_record(device, eid, t), [], device=_box_after(store, device, eid, t, waiting=waiting)
    )


def _journal_lines(path: Path) -> list[dict[str, Any]]:
    return scan_lines(path.read_bytes()).entries if path.exists() else []


def test_the_box_record_is_in_the_events_own_line_and_survives_a_kill_right_after_it(tmp_path, monkeypatch):
    """The process dies as soon as the event's journal line is on disk (before anything else is
    written): after the restart the box record already says what the event changed.

    Fails on the old code: `add_event` took no box record, so the service wrote it with a second
    append (`put_device`), which this kill never lets happen."""
    s1 = Store(tmp_path)
    _store_with_box(s1, "box-1", "abcdefgh-000001", T0, waiting=1)
    die_after_append(monkeypatch, lambda entry: entry.get("ev", {}).get("id") == "abcdefgh-000002")
    with pytest.raises(Killed):
        _store_with_box(s1, "box-1", "abcdefgh-000002", T0 + 60, waiting=2)
    monkeypatch.undo()
    boxes_journal = tmp_path / "db" / ("boxes.json" + JOURNAL_SUFFIX)
    assert _journal_lines(boxes_journal) == []  # no second write was needed
    s2 = Store(tmp_path)  # s1 is abandoned: the restart after the SIGKILL
    try:
        assert s2.has_event("box-1", "abcdefgh-000002")
        dev = s2.get_device("box-1")
        assert dev is not None and dev["waiting"] == 2 and dev["last_event_id"] == "abcdefgh-000002"
        # the re-sent event is a duplicate, and the box record stays as it is
        assert not _store_with_box(s2, "box-1", "abcdefgh-000002", T0 + 60, waiting=99)
        assert s2.get_device("box-1")["waiting"] == 2
    finally:
        s2.close()
    s3 = Store(tmp_path)  # and the record reached boxes.json on the clean close
    try:
        assert s3.get_device("box-1")["waiting"] == 2
    finally:
        s3.close()


def test_a_failed_event_write_leaves_the_box_record_unchanged(tmp_path, monkeypatch):
    """One line: if the event is not stored, neither is the box record (in memory or on disk)."""
    s1 = Store(tmp_path)
    _store_with_box(s1, "box-1", "abcdefgh-000001", T0, waiting=1)
    appends_fail(monkeypatch)
    with pytest.raises(OSError):
        _store_with_box(s1, "box-1", "abcdefgh-000002", T0 + 60, waiting=2)
    monkeypatch.undo()
    assert s1.get_device("box-1")["waiting"] == 1
    s2 = Store(tmp_path)
    try:
        assert not s2.has_event("box-1", "abcdefgh-000002")
        assert s2.get_device("box-1")["waiting"] == 1
    finally:
        s2.close()


def test_the_newest_revision_wins_whichever_journal_holds_it(tmp_path):
    """A status after the event (put_device, boxes.json.journal) supersedes the event's record, and an
    event after a status supersedes the status's; both journals are replayed at the next open."""
    s1 = Store(tmp_path)
    _store_with_box(s1, "box-a", "abcdefgh-000001", T0, waiting=1)
    rec = s1.get_device("box-a")
    s1.put_device({**rec, "rssi": -50})  # a status after the event: the newer record
    s1.put_device(dict(blank_device("box-b")) | {"rssi": -70})  # a status first...
    _store_with_box(s1, "box-b", "abcdefgh-000002", T0, waiting=3)  # ...then an event: the newer one
    assert s1.get_device("box-a")[BOX_REV] < s1.get_device("box-b")[BOX_REV]
    s2 = Store(tmp_path)  # crash: nothing compacted, both journals hold lines
    try:
        a, b = s2.get_device("box-a"), s2.get_device("box-b")
        assert (a["waiting"], a["rssi"]) == (1, -50)
        assert (b["waiting"], b["rssi"], b["last_event_id"]) == (3, -70, "abcdefgh-000002")
        # revisions go on from the highest one seen: a new write beats every older one
        _store_with_box(s2, "box-a", "abcdefgh-000003", T0 + 1, waiting=2)
        assert s2.get_device("box-a")[BOX_REV] > b[BOX_REV]
    finally:
        s2.close()


def test_compacting_an_events_journal_writes_boxes_json_first(tmp_path, monkeypatch):
    """The events journal is emptied every COMPACT_EVERY lines; the box records it held must be in
    boxes.json by then. While boxes.json cannot be written, the events journal is kept whole."""
    s1 = Store(tmp_path, segment_records=BIG_SEGMENTS)
    for i in range(COMPACT_EVERY - 1):
        _store_with_box(s1, f"box-{i % 3}", f"abcdefgh-{i:06d}", T0 + i, waiting=i)
    part = s1.part_for(T0)
    journal = tmp_path / "db" / (part + JOURNAL_SUFFIX)
    assert len(_journal_lines(journal)) == COMPACT_EVERY - 1
    real_write = storage_mod.atomic_write_bytes

    def boxes_file_full(path: Path, data: bytes, **kw: Any) -> None:
        if path.name == "boxes.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data, **kw)

    monkeypatch.setattr(storage_mod, "atomic_write_bytes", boxes_file_full)
    i = COMPACT_EVERY - 1
    _store_with_box(s1, f"box-{i % 3}", f"abcdefgh-{i:06d}", T0 + i, waiting=i)  # compaction due, fails
    assert len(_journal_lines(journal)) == COMPACT_EVERY  # kept: boxes.json does not have its records
    assert s1.integrity()["compaction_errors"] == 1
    s2 = Store(
        tmp_path, segment_records=BIG_SEGMENTS
    )  # crash while the disk is full: everything comes back from the journal
    try:
        assert s2.get_device("box-0")["waiting"] == COMPACT_EVERY - 1  # 255 % 3 == 0
    finally:
        s2.close()  # (the disk is still "full" for boxes.json: the journals stay)
    monkeypatch.undo()
    s3 = Store(tmp_path, segment_records=BIG_SEGMENTS)
    try:
        for i in range(COMPACT_EVERY, 2 * COMPACT_EVERY + 1):
            _store_with_box(s3, f"box-{i % 3}", f"abcdefgh-{i:06d}", T0 + i, waiting=i)
        # compacted now: the journal restarted, and boxes.json on disk has the records it held
        assert len(_journal_lines(journal)) < COMPACT_EVERY
        raw = json.loads((tmp_path / "db" / "boxes.json").read_text())
        on_disk = {d["device"]: d["waiting"] for d in raw["devices"].values()}
        in_journal = {
            e["box"]["dev"]["device"]: e["box"]["dev"]["waiting"]
            for e in _journal_lines(journal)
            if "box" in e
        }
        assert {**on_disk, **in_journal} == {d["device"]: d["waiting"] for d in s3.list_devices()}
    finally:
        s3.close()


def test_a_purged_box_is_not_brought_back_by_its_records_in_an_events_journal(tmp_path):
    """The box record is deleted (purge) while the events journal still holds lines with its older
    records; after a crash those must not recreate it: boxes.json's revision mark covers them."""
    s1 = Store(tmp_path)
    _store_with_box(s1, "box-gone", "abcdefgh-000001", T0, waiting=1)
    _store_with_box(s1, "box-kept", "abcdefgh-000002", T0, waiting=1)
    plan = s1.purge_begin("box-gone", T0 + 10)
    assert s1.purge_finish(plan)["box_records"] == 1  # before purge_part rewrote the month: lines remain
    part = s1.part_for(T0)
    lines = _journal_lines(tmp_path / "db" / (part + JOURNAL_SUFFIX))
    assert any(e.get("box", {}).get("dev", {}).get("device") == "box-gone" for e in lines)
    s2 = Store(tmp_path)
    try:
        assert s2.get_device("box-gone") is None
        assert s2.get_device("box-kept")["waiting"] == 1
    finally:
        s2.close()


def test_a_crash_while_opening_keeps_a_box_record_not_replayed_yet(tmp_path, monkeypatch):
    """Opening replays journals one file at a time and may rewrite boxes.json in between; a crash then
    must not make boxes.json claim records only a journal not replayed yet holds."""
    s1 = Store(tmp_path, partition="day")
    s1.put_device(dict(blank_device("box-c")))
    s1.close()
    s1 = Store(tmp_path, partition="day")
    _store_with_box(s1, "box-a", "abcdefgh-000001", T0, waiting=1)  # day 1's journal
    _store_with_box(s1, "box-b", "abcdefgh-000002", T0 + 86_400, waiting=2)  # day 2's journal
    s1.put_device({**s1.get_device("box-c"), "rssi": -40})  # the highest revision, in boxes.json.journal
    # crash; then the next start dies while opening day 2 (after day 1 was replayed and compacted)
    real_replay = Store._replay
    opened: list[str] = []

    def replay_or_die(self: Store, db: Any, journal: storage_mod.Journal) -> None:
        opened.append(journal.path.name)
        if len(opened) == 2:
            raise Killed
        real_replay(self, db, journal)

    monkeypatch.setattr(Store, "_replay", replay_or_die)
    with pytest.raises(Killed):
        Store(tmp_path, partition="day")
    monkeypatch.undo()
    s3 = Store(tmp_path, partition="day")
    try:
        assert s3.get_device("box-a")["waiting"] == 1
        assert s3.get_device("box-b")["waiting"] == 2
        assert s3.get_device("box-c")["rssi"] == -40
    finally:
        s3.close()


def test_a_data_folder_from_before_box_revisions_still_loads(tmp_path):
    """boxes.json without a revision mark, records and journal lines without revisions, events
    journal lines without a box record: loaded as before, and new writes win over them."""
    db = tmp_path / "db"
    db.mkdir(parents=True)
    old = dict(blank_device("box-old")) | {"waiting": 4}
    (db / "boxes.json").write_text(json.dumps({"devices": {"1": old}}))
    journal = storage_mod.Journal(db / ("boxes.json" + JOURNAL_SUFFIX))
    journal.append({"doc_id": 1, "dev": old | {"waiting": 5}})
    journal.append({"doc_id": 2, "dev": dict(blank_device("box-two"))})
    journal.close()
    s0 = Store(tmp_path)
    s0.add_event(event_record("box-old", "abcdefgh-000001", T0))  # an old-style line: no box record
    # crash: s0 is abandoned, the month's journal is not compacted
    s1 = Store(tmp_path)
    assert s1.get_device("box-old")["waiting"] == 5
    assert s1.get_device("box-two") is not None
    assert s1.has_event("box-old", "abcdefgh-000001")
    _store_with_box(s1, "box-old", "abcdefgh-000002", T0 + 1, waiting=6)
    # crash again: the new-style line is only in the journal
    s2 = Store(tmp_path)
    try:
        assert s2.get_device("box-old")["waiting"] == 6
        assert [d["device"] for d in s2.list_devices()] == ["box-old", "box-two"]
    finally:
        s2.close()


def test_a_box_record_of_another_box_is_refused(tmp_path):
    s = Store(tmp_path)
    try:
        with pytest.raises(StoreError):
            s.add_event(event_record("box-1", "abcdefgh-000001", T0), [], device=dict(blank_device("box-2")))
        assert not s.has_event("box-1", "abcdefgh-000001")
    finally:
        s.close()


def test_a_box_known_only_from_an_events_journal_counts_as_seen(tmp_path):
    """`parcelbox device forget` reads the box list without opening the store (a running gateway owns
    it): a box whose record so far is only in an events journal is a box it knows."""
    from gateway.cli import seen_boxes

    s = Store(tmp_path)
    _store_with_box(s, "box-new", "abcdefgh-000001", T0, waiting=1)  # not closed: nothing compacted
    assert "box-new" in seen_boxes(tmp_path)
    s.close()
    assert "box-new" in seen_boxes(tmp_path)  # and from boxes.json once compacted


def test_a_box_doc_of_the_wrong_shape_is_skipped_not_fatal(tmp_path):
    """boxes.json parses but a doc has no device id (damage that still parses, a hand edit): the store
    opens, counts it, and serves the other boxes (before: KeyError at every start)."""
    db = tmp_path / "db"
    db.mkdir(parents=True)
    good = dict(blank_device("box-a")) | {"waiting": 2}
    (db / "boxes.json").write_text(json.dumps({"devices": {"1": {"name": "x"}, "2": good, "x": good}}))
    s = Store(tmp_path)
    try:
        assert s.integrity()["records_unreadable"] == 2
        assert s.get_device("box-a")["waiting"] == 2
        _store_with_box(s, "box-b", "abcdefgh-000001", T0, waiting=1)
        assert s.get_device("box-b")["_doc_id"] == 3
    finally:
        s.close()
