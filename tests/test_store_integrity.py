"""Issue 14, items 1-2: the store never loses an acknowledged event to a full disk or a damaged line.

"Acknowledged" here means `add_event` returned (the gateway acks only then). A crash is simulated
by reopening the data folder while the first `Store` is still open (never closed), which is what a
SIGKILL leaves; tests/e2e/test_full_disk.py does the same through a real gateway process.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.storage as storage_mod
import gateway.store as store_mod
from gateway.framing import HEADER, decode_line, encode_line, salvage_tables, scan_lines
from gateway.store import Store
from tests.support.fullfs import fill, free, tmpfs
from tests.test_store import NOV, ev, ob

JOURNAL = Path("db") / "events-2026-11.json.journal"


@pytest.fixture
def no_compaction(monkeypatch):
    """Keep everything in the journal (as between two compactions)."""
    monkeypatch.setattr(store_mod, "COMPACT_EVERY", 10**9)


def big_event(eid: str, pad: int = 6000) -> dict:
    rec = ev("box1", eid, NOV)
    rec["sensors"] = {"note": "x" * pad}  # a line longer than the room left in the journal's last page
    return rec


# --- a failed append leaves nothing behind ---------------------------------------------------------------


def test_short_write_then_enospc_leaves_no_partial_line(tmp_path, no_compaction, monkeypatch):
    """Half the line reaches the file, then ENOSPC: the acks after it must survive a crash."""
    s = Store(tmp_path)
    s.add_event(ev("box1", "event0001", NOV))
    real_write = os.write
    journal = (tmp_path / JOURNAL).stat()

    def short_then_full(fd, data):
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (journal.st_dev, journal.st_ino):  # the journal's own file
            monkeypatch.setattr(os, "write", real_write)  # only this one append fails
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError):
        s.add_event(ev("box1", "event0002", NOV))  # never acked
    assert s.add_event(ev("box1", "event0003", NOV))  # acked
    assert s.add_event(ev("box1", "event0004", NOV))  # acked
    raw = (tmp_path / JOURNAL).read_bytes()
    assert raw.startswith(HEADER)
    lines = raw[len(HEADER) :].splitlines()
    assert len(lines) == 3 and all(decode_line(line) for line in lines)  # no half line in between
    s2 = Store(tmp_path)  # "after the SIGKILL"
    try:
        assert [s2.has_event("box1", f"event000{i}") for i in (1, 2, 3, 4)] == [True, False, True, True]
        assert s2.integrity()["journal_damaged"] == 0
    finally:
        s2.close()


def test_fsync_error_cuts_the_line_and_counts(tmp_path, no_compaction, monkeypatch):
    s = Store(tmp_path)
    s.add_event(ev("box1", "event0001", NOV))

    def eio(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(OSError):
        s.add_event(ev("box1", "event0002", NOV))
    monkeypatch.undo()
    assert not s.has_event("box1", "event0002")
    assert s.integrity()["write_errors"] == 1
    assert (tmp_path / JOURNAL).read_bytes().count(b"\n") == 2  # the header and event0001's line
    assert s.add_event(ev("box1", "event0002", NOV))  # the box sends it again: stored now
    s.close()


def test_partial_line_left_by_an_older_gateway_does_not_hide_later_lines(tmp_path, no_compaction, caplog):
    """The issue's sequence with the bytes an older gateway left: half a line, then two acked lines."""
    s = Store(tmp_path)
    s.add_event(ev("box1", "event0001", NOV))
    journal = tmp_path / JOURNAL
    with journal.open("ab") as f:
        f.write(encode_line({"ev": {**ev("box1", "event0002", NOV), "key": "box1/event0002"}})[:70])
    for eid in ("event0003", "event0004"):
        line = encode_line({"ev": {**ev("box1", eid, NOV), "key": f"box1/{eid}"}, "ob": []})
        with journal.open("ab") as f:
            f.write(line)
    caplog.set_level(logging.WARNING)
    s2 = Store(tmp_path)
    try:
        assert [s2.has_event("box1", f"event000{i}") for i in (1, 2, 3, 4)] == [True, False, True, True]
        assert s2.integrity()["journal_damaged"] == 1
        assert s2.integrity()["quarantined_files"] == 1
    finally:
        s2.close()
    assert any(
        "events-2026-11.json.journal" in r.getMessage() and "byte" in r.getMessage() for r in caplog.records
    )


# --- a real full file system --------------------------------------------------------------------------------


def test_real_full_disk_half_written_line_then_crash(tmp_path, no_compaction):
    """The issue's scenario on a real (tmpfs) file system: the kernel's own short write and ENOSPC."""
    with tmpfs(tmp_path / "disk", "2m") as disk:
        s = Store(disk)
        s.add_event(ev("box1", "event0001", NOV))
        journal = disk / JOURNAL
        size_before = journal.stat().st_size
        assert size_before % 4096  # the journal's last page has some room: the next line half fits
        filler = fill(disk)
        with pytest.raises(OSError) as exc:
            s.add_event(big_event("event0002"))
        assert exc.value.errno == errno.ENOSPC
        assert journal.stat().st_size == size_before  # the half line was cut off again
        assert not s.has_event("box1", "event0002")
        free(filler)
        assert s.add_event(ev("box1", "event0003", NOV))
        assert s.add_event(big_event("event0004"))
        s2 = Store(disk)  # "after the SIGKILL": s was never closed
        try:
            assert [s2.has_event("box1", f"event000{i}") for i in (1, 2, 3, 4)] == [True, False, True, True]
            assert s2.integrity()["write_errors"] == 0  # a new process, a fresh count
        finally:
            s2.close()
        assert s.integrity()["write_errors"] == 1


def test_real_full_disk_compaction_fails_without_losing_anything(tmp_path, monkeypatch):
    """The periodic rewrite needs room for a whole new file; at a full disk it fails and the store
    carries on from its journal (nothing it acked is forgotten, in memory or after a crash)."""
    monkeypatch.setattr(store_mod, "COMPACT_EVERY", 4)
    with tmpfs(tmp_path / "disk", "2m") as disk:
        s = Store(disk)
        for i in range(3):
            s.add_event(ev("box1", f"event000{i}", NOV), [ob(f"al{i}", "box1", f"event000{i}", NOV)])
        # Leave room for a few journal lines but not for a rewrite of the month file.
        fill(disk, leave=3000)
        s.add_event(ev("box1", "event0003", NOV))  # the 4th change: compaction is due, and fails
        assert s.integrity()["compaction_errors"] == 1 and s.integrity()["compaction_failing"] == 1
        assert s.get_event("box1", "event0003") is not None
        assert s.get_event("box1", "event0001") is not None  # memory was not thrown away
        assert s.update_outbox("al1", state="sent") is not None
        s2 = Store(disk)  # crash
        try:
            assert all(s2.has_event("box1", f"event000{i}") for i in range(4))
            assert s2.get_outbox("al1")["state"] == "sent"
        finally:
            s2.close()
        # The next compaction that finds room clears the problem (the counter of failures stays).
        free(disk / "filler")
        for i in range(4, 8):
            s.add_event(ev("box1", f"event000{i}", NOV))
        assert s.integrity()["compaction_failing"] == 0 and s.integrity()["compaction_errors"] == 1


# --- damage in the middle is not a torn tail ----------------------------------------------------------------


def _journal_of(
    tmp_path: Path, n: int, *, old_format: bool = False
) -> tuple[bytes, list[tuple[str, int, int]]]:
    """A journal of n acked events (each with an outbox entry) and each event's line span [start, end]."""
    lines = []
    for i in range(n):
        eid = f"event{i:04d}"
        entry = {
            "ev": {**ev("box1", eid, NOV + i), "key": f"box1/{eid}"},
            "ob": [ob(f"al{i}", "box1", eid, NOV)],
        }
        lines.append(
            (json.dumps(entry, separators=(",", ":")) + "\n").encode() if old_format else encode_line(entry)
        )
    spans, pos = [], 0
    for i, line in enumerate(lines):
        spans.append((f"event{i:04d}", pos, pos + len(line) - 1))  # the newline belongs to its line
        pos += len(line)
    return b"".join(lines), spans


def _reopen_with(tmp_path: Path, journal: bytes) -> Store:
    data = tmp_path / "data"
    shutil.rmtree(data, ignore_errors=True)
    (data / "db").mkdir(parents=True)
    (data / JOURNAL).write_bytes(journal)
    return Store(data)


def test_one_flipped_byte_in_the_middle_keeps_every_later_event(tmp_path, caplog):
    raw, spans = _journal_of(tmp_path, 6)
    eid, start, end = spans[2]
    bad = bytearray(raw)
    bad[start + 40] ^= 0x04  # bit rot inside event0002's line
    caplog.set_level(logging.WARNING)
    s = _reopen_with(tmp_path, bytes(bad))
    try:
        present = [e for e, _, _ in spans if s.has_event("box1", e)]
        assert present == ["event0000", "event0001", "event0003", "event0004", "event0005"]
        assert s.integrity()["journal_damaged"] == 1
        q = list(s.quarantine_dir.glob("*.bad"))
        assert len(q) == 1 and q[0].read_bytes() == bytes(bad[start:end])  # the damaged line, kept
        assert (tmp_path / "data" / JOURNAL).read_bytes() == b""  # compacted only after that
    finally:
        s.close()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"at byte {start}" in m and "events-2026-11.json.journal" in m for m in warned), warned


def test_a_lost_newline_costs_only_its_own_line(tmp_path):
    raw, spans = _journal_of(tmp_path, 4)
    bad = bytearray(raw)
    bad[spans[1][2]] = ord("x")  # event0001's newline: its line and the next are glued together
    s = _reopen_with(tmp_path, bytes(bad))
    try:
        assert [s.has_event("box1", e) for e, _, _ in spans] == [True, False, True, True]
    finally:
        s.close()


@pytest.mark.parametrize("old_format", [False, True], ids=["crc-lines", "old-plain-lines"])
def test_random_byte_flips_never_lose_an_event_whose_line_is_intact(tmp_path, old_format):
    """Seeded: 1-3 random byte changes over a journal of acked events, 120 times; after reopening,
    every event whose own line (newline included) is untouched is present, and with CRC lines
    nothing that was not written appears."""
    raw, spans = _journal_of(tmp_path, 12, old_format=old_format)
    written = {e for e, _, _ in spans}
    rng = random.Random(14)
    for trial in range(120):
        bad = bytearray(raw)
        hit = set()
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(bad))
            bad[pos] = (bad[pos] ^ (1 << rng.randrange(8))) if rng.random() < 0.7 else rng.randrange(256)
            hit.add(pos)
        intact = [e for e, a, b in spans if not any(a <= p <= b for p in hit)]
        s = _reopen_with(tmp_path, bytes(bad))
        try:
            missing = [e for e in intact if not s.has_event("box1", e)]
            assert not missing, f"trial {trial}: flips at {sorted(hit)} lost intact {missing}"
            if not old_format:
                assert {e["id"] for e in s.list_events(limit=100)} <= written
            for e in intact:
                assert s.get_outbox("al" + str(int(e[5:]))) is not None
            damaged_lines = len(spans) - len(intact)
            if not old_format and damaged_lines:
                assert s.integrity()["journal_damaged"] >= 1
        finally:
            s.close()


def test_old_format_journal_is_still_read(tmp_path):
    raw, spans = _journal_of(tmp_path, 3, old_format=True)
    s = _reopen_with(tmp_path, raw + b'{"ev":{"device":"box1","id":"torn')  # and a torn old tail
    try:
        assert all(s.has_event("box1", e) for e, _, _ in spans)
        assert s.integrity()["journal_torn_tails"] == 1
        assert s.integrity()["journal_damaged"] == 0
    finally:
        s.close()


def test_a_readable_line_of_the_wrong_shape_is_quarantined_not_fatal(tmp_path):
    raw, spans = _journal_of(tmp_path, 2)
    s = _reopen_with(tmp_path, raw[: spans[1][1]] + encode_line({"ev": "not a record"}) + raw[spans[1][1] :])
    try:
        assert all(s.has_event("box1", e) for e, _, _ in spans)
        assert s.integrity()["journal_damaged"] == 1 and s.integrity()["quarantined_files"] == 1
    finally:
        s.close()


def test_boxes_journal_damage_keeps_later_box_records(tmp_path):
    s = Store(tmp_path)
    for i, dev in enumerate(("box-a", "box-b", "box-c")):
        s.put_device({**store_mod.blank_device(dev), "waiting": i + 1})
    journal = tmp_path / "db" / "boxes.json.journal"
    raw = bytearray(journal.read_bytes())
    raw[raw.index(b"box-b") + 1] ^= 0x01
    journal.write_bytes(bytes(raw))
    s2 = Store(tmp_path)
    try:
        assert s2.get_device("box-a")["waiting"] == 1 and s2.get_device("box-c")["waiting"] == 3
        assert s2.integrity()["journal_damaged"] == 1
    finally:
        s2.close()


# --- damaged files (not journals) ---------------------------------------------------------------------------


def test_damaged_month_file_is_kept_aside_and_its_readable_records_salvaged(tmp_path, caplog):
    s = Store(tmp_path)
    for i in range(5):
        s.add_event(ev("box1", f"event000{i}", NOV), [ob(f"al{i}", "box1", f"event000{i}", NOV)])
    s.close()
    month = tmp_path / "db" / "events-2026-11.json"
    raw = bytearray(month.read_bytes())
    original = bytes(raw)
    raw[raw.index(b"event0002") - 1] ^= 0x20  # damage inside event0002's record (a quote becomes \x02)
    month.write_bytes(bytes(raw))
    caplog.set_level(logging.WARNING)
    s2 = Store(tmp_path)  # used to raise JSONDecodeError: the gateway would not start
    try:
        assert [s2.has_event("box1", f"event000{i}") for i in range(5)] == [True, True, False, True, True]
        assert all(s2.get_outbox(f"al{i}") for i in range(5))
        assert s2.integrity()["files_salvaged"] == 1
        kept = list(s2.quarantine_dir.glob("events-2026-11.json.*.bad"))
        assert len(kept) == 1 and kept[0].read_bytes() == bytes(raw) != original
        assert json.loads(month.read_bytes())  # rewritten from what was salvaged
        assert s2.add_event(ev("box1", "event0002", NOV))  # the box sends it again
    finally:
        s2.close()
    assert any(
        "events-2026-11.json" in r.getMessage() and "salvaged 9 record" in r.getMessage()
        for r in caplog.records
    )


def test_a_flip_that_still_parses_leaves_the_doc_unlisted_not_fatal(tmp_path):
    s = Store(tmp_path)
    for i in range(3):
        s.add_event(ev("box1", f"event000{i}", NOV), [ob(f"al{i}", "box1", f"event000{i}", NOV)])
    s.close()
    month = tmp_path / "db" / "events-2026-11.json"
    raw = month.read_bytes()
    month.write_bytes(
        raw.replace(b'"id":"event0001"', b'"iD":"event0001"').replace(
            b'"state":"pending","attempts":0,"created_at":1794744000,"next_attempt_at":1794744000,"sent_at":null,"last_error":null},"3"',
            b'"state":"pendinG","attempts":0,"created_at":1794744000,"next_attempt_at":1794744000,"sent_at":null,"last_error":null},"3"',
        )
    )
    s2 = Store(tmp_path)  # used to raise KeyError
    try:
        assert [s2.has_event("box1", f"event000{i}") for i in range(3)] == [True, False, True]
        assert s2.get_outbox("al1") is None and s2.get_outbox("al2") is not None
        assert s2.integrity()["records_unreadable"] == 2
    finally:
        s2.close()
    assert b'"iD":"event0001"' in month.read_bytes()  # not understood, so not thrown away


def test_damaged_closed_month_read_for_the_timeline_does_not_break_the_api(tmp_path):
    s = Store(tmp_path)
    s.add_event(ev("box1", "event0001", NOV))
    s.close()
    s = Store(tmp_path)
    month = tmp_path / "db" / "events-2026-11.json"
    s.add_event(ev("box1", "event0002", NOV + 31 * 86_400))  # December and January open for writing:
    s.add_event(ev("box1", "event0003", NOV + 62 * 86_400))  # November is closed, read from its file
    assert "events-2026-11.json" not in s.stats().open_partitions
    month.write_bytes(month.read_bytes()[:-3] + b"\xff\xfe")  # damaged while the gateway runs
    try:
        assert [e["id"] for e in s.list_events()] == ["event0003", "event0002", "event0001"]
    finally:
        s.close()


def test_scan_and_salvage_units():
    a, b = encode_line({"ob": [{"id": "x"}]}), encode_line({"ob": [{"id": "y"}]})
    assert scan_lines(a + b).entries == [{"ob": [{"id": "x"}]}, {"ob": [{"id": "y"}]}]
    scan = scan_lines(a[:-1] + b"\x00garbage" + b)  # a's newline lost, junk glued on: b survives
    assert scan.entries == [{"ob": [{"id": "y"}]}] and scan.damage[0].reason == "corrupt"
    scan = scan_lines(a + b[:10])
    assert scan.entries == [{"ob": [{"id": "x"}]}] and [d.reason for d in scan.damage] == ["torn"]
    # A flipped digit in the body of a framed line is caught by its CRC (old plain lines cannot be).
    flipped = a.replace(b'"x"', b'"z"')
    assert decode_line(flipped[:-1]) is None
    tables, skipped = salvage_tables(
        b'{"events":{"1":{"key":"a","device":"d"},"2":{"key":"b",XX},"3":{"key":"c","device":"d"}}}',
        lambda d: "events" if "key" in d else None,
    )
    assert sorted(tables["events"]) == ["1", "3"] and skipped == 1


def test_unreadable_file_without_salvage_still_refuses(tmp_path):
    p = tmp_path / "x.json"
    p.write_bytes(b'{"a": ')
    with pytest.raises(ValueError, match="unreadable"):
        storage_mod.AtomicJSONStorage(p).read()


def test_opening_at_a_full_disk_with_a_damaged_journal_keeps_everything(tmp_path, no_compaction):
    """Start-up at a full disk: the replay cannot rewrite the file nor quarantine the damaged line.
    The store still opens with every readable event, and drops nothing until both can be written."""
    with tmpfs(tmp_path / "disk", "2m") as disk:
        s = Store(disk)
        for i in range(4):
            s.add_event(ev("box1", f"event000{i}", NOV))
        journal = disk / JOURNAL
        raw = bytearray(journal.read_bytes())
        raw[raw.index(b"event0001") + 2] ^= 0x01  # bit rot in event0001's line
        journal.write_bytes(bytes(raw))
        filler = fill(disk)
        s2 = Store(disk)  # "after a crash", at a full disk
        try:
            assert [s2.has_event("box1", f"event000{i}") for i in range(4)] == [True, False, True, True]
            assert s2.integrity()["compaction_errors"] >= 1 and s2.integrity()["quarantined_files"] == 0
            assert journal.read_bytes() == bytes(raw)  # nothing dropped while it could not be kept
            free(filler)
            s2.add_event(ev("box1", "event0009", NOV))
        finally:
            s2.close()  # room again: compaction quarantines the damaged line, then empties the journal
        assert journal.read_bytes() == b""
        s3 = Store(disk)
        try:
            assert s3.integrity()["quarantined_files"] == 1
            assert all(s3.has_event("box1", e) for e in ("event0000", "event0002", "event0003", "event0009"))
        finally:
            s3.close()


_values = st.one_of(st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.text(max_size=12))
_entries = st.lists(
    st.fixed_dictionaries(
        {"ob": st.lists(st.dictionaries(st.text(max_size=6), _values, max_size=4), max_size=2)}
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(
    entries=_entries,
    flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=3),
    plain=st.booleans(),
)
def test_scan_keeps_every_intact_line_whatever_the_damage(entries, flips, plain):
    """Property: XOR 1-3 bytes anywhere; every entry whose own line (newline included) is untouched
    is read back, in order; with CRC lines nothing else is."""
    lines = [
        (json.dumps(e, separators=(",", ":")) + "\n").encode() if plain else encode_line(e) for e in entries
    ]
    head = b"" if plain else HEADER  # as `Journal.append` writes them
    raw = bytearray(head + b"".join(lines))
    hit = set()
    for pos, mask in flips:
        raw[pos % len(raw)] ^= mask
        hit.add(pos % len(raw))
    intact, start = [], len(head)
    for e, line in zip(entries, lines, strict=True):
        if not any(start <= p < start + len(line) for p in hit):
            intact.append(e)
        start += len(line)
    got = scan_lines(bytes(raw)).entries
    it = iter(got)
    assert all(any(g == e for g in it) for e in intact), (intact, got)  # a subsequence, in order
    if not plain:
        assert all(g in entries for g in got)


def test_damaged_boxes_file_keeps_the_other_boxes(tmp_path):
    s = Store(tmp_path)
    for i, dev in enumerate(("box-a", "box-b", "box-c")):
        s.put_device({**store_mod.blank_device(dev), "waiting": i + 1})
    s.close()
    boxes = tmp_path / "db" / "boxes.json"
    raw = bytearray(boxes.read_bytes())
    raw[raw.index(b'"box-b"') - 1] ^= 0x40  # breaks the JSON inside box-b's record
    boxes.write_bytes(bytes(raw))
    s2 = Store(tmp_path)  # used to raise: the gateway would not start
    try:
        assert s2.get_device("box-a")["waiting"] == 1 and s2.get_device("box-c")["waiting"] == 3
        assert s2.get_device("box-b") is None  # it comes back with the box's next status
        assert s2.integrity()["files_salvaged"] == 1 and s2.integrity()["quarantined_damage"] == 1
        s2.put_device({**store_mod.blank_device("box-b"), "waiting": 7})
    finally:
        s2.close()
    s3 = Store(tmp_path)
    try:
        assert [d["device"] for d in s3.list_devices()] == ["box-a", "box-b", "box-c"]
    finally:
        s3.close()


def test_a_doc_that_is_not_an_object_is_salvage_not_a_crash(tmp_path):
    s = Store(tmp_path)
    for i in range(3):
        s.add_event(ev("box1", f"event000{i}", NOV))
    s.close()
    month = tmp_path / "db" / "events-2026-11.json"
    data = json.loads(month.read_bytes())
    data["events"]["2"] = 5  # parses, but is no record
    month.write_text(json.dumps(data))
    s2 = Store(tmp_path)  # used to raise in TinyDB
    try:
        assert [s2.has_event("box1", f"event000{i}") for i in range(3)] == [True, False, True]
        assert s2.integrity()["files_salvaged"] == 1
    finally:
        s2.close()
