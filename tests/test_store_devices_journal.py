"""Box records are journaled like events: durable per change, replayed after a crash, compacted."""

from __future__ import annotations

import json

from gateway.framing import scan_lines
from gateway.store import COMPACT_EVERY, JOURNAL_SUFFIX, Store, blank_device


def _put(store: Store, device: str, **fields) -> None:
    rec = store.get_device(device) or dict(blank_device(device))
    rec.update(fields)
    store.put_device(rec)


def test_device_changes_survive_a_crash_without_close(tmp_path):
    s1 = Store(tmp_path)
    for i in range(5):
        _put(s1, f"box-{i}", waiting=i)
    _put(s1, "box-3", waiting=33)
    # no close(): like a SIGKILL, only the journal holds the changes
    journal = tmp_path / "db" / ("boxes.json" + JOURNAL_SUFFIX)
    assert journal.stat().st_size > 0
    s2 = Store(tmp_path)
    try:
        assert {d["device"]: d["waiting"] for d in s2.list_devices()} == {
            "box-0": 0,
            "box-1": 1,
            "box-2": 2,
            "box-3": 33,
            "box-4": 4,
        }
        assert journal.stat().st_size == 0  # replayed into boxes.json
        _put(s2, "box-3", waiting=34)  # updates the same record, no second one
    finally:
        s2.close()
    raw = json.loads((tmp_path / "db" / "boxes.json").read_text())["devices"]
    assert sorted(r["device"] for r in raw.values()) == [f"box-{i}" for i in range(5)]
    s3 = Store(tmp_path)
    try:
        assert s3.get_device("box-3")["waiting"] == 34
    finally:
        s3.close()


def test_torn_journal_tail_is_ignored(tmp_path):
    s1 = Store(tmp_path)
    _put(s1, "box-a", waiting=1)
    journal = tmp_path / "db" / ("boxes.json" + JOURNAL_SUFFIX)
    with journal.open("ab") as f:
        f.write(b'{"doc_id": 1, "dev": {"device": "box-a", "wai')  # a crash mid-append
    s2 = Store(tmp_path)
    try:
        assert s2.get_device("box-a")["waiting"] == 1
    finally:
        s2.close()


def test_journal_is_compacted_into_the_file(tmp_path):
    s = Store(tmp_path)
    try:
        for i in range(COMPACT_EVERY + 3):
            _put(s, f"box-{i % 7}", seq=i)
        journal = tmp_path / "db" / ("boxes.json" + JOURNAL_SUFFIX)
        assert len(scan_lines(journal.read_bytes()).entries) == 3
        raw = json.loads((tmp_path / "db" / "boxes.json").read_text())["devices"]
        assert len(raw) == 7
    finally:
        s.close()
