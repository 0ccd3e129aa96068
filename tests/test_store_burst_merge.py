"""A grouped delivery's changes to its burst's alert are part of the event's one durable write
(`Store.add_event(..., outbox_updates=...)`), and only alerts no dispatcher is sending may change.

Before, the pipeline wrote each change to the burst's alert as its own journal line (`update_outbox`)
and the event after them: a crash in between left an open alert naming an event that was not stored.
These tests "crash" a store by abandoning it without `close()` (only what reached the disk is there, as
after a SIGKILL) and open the folder again.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import pytest

import gateway.storage as storage_mod
from gateway.framing import scan_lines
from gateway.store import JOURNAL_SUFFIX, Store, StoreError
from tests.support.store_faults import Killed, appends_fail, die_after_append, event_record

T0 = 1_795_000_000.0  # 2026-11-17, mid-month


def _event(eid: str, t: float, device: str = "box-1") -> dict[str, Any]:
    return event_record(device, eid, t)


def _alert(eid: str, t: float, device: str = "box-1") -> dict[str, Any]:
    return {
        "id": f"{device}_{eid}_folder_00000000",
        "kind": "delivery",
        "device": device,
        "event_ids": [eid],
        "notifier": "folder",
        "recipient": "",
        "state": "pending",
        "attempts": 0,
        "created_at": t,
        "next_attempt_at": t + 60,
        "sent_at": None,
        "last_error": None,
        "message_id": None,
        "receipt": None,
        "receipt_at": None,
        "caption": "1 package",
    }


def _joined(*eids: str) -> dict[str, Any]:
    """The fields the burst merge changes (gateway.alerts.merge_into_burst)."""
    return {"event_ids": list(eids), "caption": f"{len(eids)} packages"}


def _journal(tmp_path: Path, store: Store) -> Path:
    return tmp_path / "db" / (store.part_for(T0) + JOURNAL_SUFFIX)


def _lines(path: Path) -> list[dict[str, Any]]:
    return scan_lines(path.read_bytes()).entries if path.exists() else []


def _burst(tmp_path: Path) -> tuple[Store, str]:
    """A store holding the first delivery and its alert, open (not sent yet)."""
    s = Store(tmp_path)
    alert = _alert("abcdefgh-000001", T0)
    assert s.add_event(_event("abcdefgh-000001", T0), [alert])
    return s, alert["id"]


def test_the_change_to_the_burst_is_in_the_events_line_and_survives_a_kill_after_it(tmp_path, monkeypatch):
    """The process dies as soon as the first line naming the second event is on disk: after the
    restart the event is stored and the alert names it, or (see the next test) neither."""
    s1, aid = _burst(tmp_path)
    die_after_append(monkeypatch, lambda entry: "abcdefgh-000002" in repr(entry))
    with pytest.raises(Killed):
        s1.add_event(
            _event("abcdefgh-000002", T0 + 5),
            [],
            outbox_updates=[(aid, _joined("abcdefgh-000001", "abcdefgh-000002"))],
        )
    monkeypatch.undo()
    (line,) = [e for e in _lines(_journal(tmp_path, s1)) if "abcdefgh-000002" in repr(e)]
    assert line["ev"]["id"] == "abcdefgh-000002" and [u["up"] for u in line["ups"]] == [aid]
    s2 = Store(tmp_path)  # the restart after the SIGKILL
    try:
        assert s2.has_event("box-1", "abcdefgh-000002")
        rec = s2.get_outbox(aid)
        assert rec["event_ids"] == ["abcdefgh-000001", "abcdefgh-000002"] and rec["state"] == "pending"
        assert [o["id"] for o in s2.open_outbox()] == [aid]
    finally:
        s2.close()


def test_a_failed_write_changes_neither_the_event_nor_the_burst(tmp_path, monkeypatch):
    s1, aid = _burst(tmp_path)
    appends_fail(monkeypatch)
    with pytest.raises(OSError):
        s1.add_event(
            _event("abcdefgh-000002", T0 + 5),
            [],
            outbox_updates=[(aid, _joined("abcdefgh-000001", "abcdefgh-000002"))],
        )
    monkeypatch.undo()
    assert s1.get_outbox(aid)["event_ids"] == ["abcdefgh-000001"]
    assert s1.open_outbox()[0]["event_ids"] == ["abcdefgh-000001"]
    s2 = Store(tmp_path)
    try:
        assert not s2.has_event("box-1", "abcdefgh-000002")
        assert s2.get_outbox(aid)["event_ids"] == ["abcdefgh-000001"]
    finally:
        s2.close()


def test_a_duplicate_event_does_not_change_the_burst(tmp_path):
    s1, aid = _burst(tmp_path)
    assert s1.add_event(
        _event("abcdefgh-000002", T0 + 5),
        [],
        outbox_updates=[(aid, _joined("abcdefgh-000001", "abcdefgh-000002"))],
    )
    before = len(_lines(_journal(tmp_path, s1)))
    assert not s1.add_event(_event("abcdefgh-000002", T0 + 5), [], outbox_updates=[(aid, _joined("other"))])
    assert len(_lines(_journal(tmp_path, s1))) == before  # nothing written
    assert s1.get_outbox(aid)["event_ids"] == ["abcdefgh-000001", "abcdefgh-000002"]
    s2 = Store(tmp_path)
    try:
        assert s2.get_outbox(aid)["caption"] == "2 packages"
    finally:
        s2.close()


def test_replay_applies_a_change_only_with_a_newly_stored_event(tmp_path):
    """A crash after the file was rewritten but before its journal was emptied: the journal's lines
    are replayed over a file that has them all. A burst's change comes back only with its event, so
    an older line never undoes a later state of the alert (here: a later hand edit in the file)."""
    s1, aid = _burst(tmp_path)
    s1.add_event(
        _event("abcdefgh-000002", T0 + 5),
        [],
        outbox_updates=[(aid, _joined("abcdefgh-000001", "abcdefgh-000002"))],
    )
    journal = _journal(tmp_path, s1)
    kept = tmp_path / "journal.copy"
    shutil.copy(journal, kept)
    s1.close()  # compacts: the file has everything, the journal is emptied
    s1 = Store(tmp_path)
    s1.update_outbox(aid, caption="edited later")
    s1.close()
    shutil.copy(kept, journal)  # as if the journal had never been emptied
    s2 = Store(tmp_path)
    try:
        assert s2.get_outbox(aid)["caption"] == "edited later"
        assert s2.get_outbox(aid)["event_ids"] == ["abcdefgh-000001", "abcdefgh-000002"]
        assert s2.event_count() == 2
    finally:
        s2.close()


def test_an_alert_being_sent_is_not_mergeable_and_cannot_be_changed_by_an_event(tmp_path):
    s, aid = _burst(tmp_path)
    try:
        assert [o["id"] for o in s.mergeable_outbox(T0 + 5)] == [aid]
        assert s.claim_outbox(aid, T0 + 1) is None  # not due yet: not claimed
        claimed = s.claim_outbox(aid, T0 + 60)
        assert claimed is not None and claimed["event_ids"] == ["abcdefgh-000001"]
        assert s.mergeable_outbox(T0 + 5) == []
        with pytest.raises(StoreError):
            s.add_event(_event("abcdefgh-000002", T0 + 5), [], outbox_updates=[(aid, _joined("x"))])
        assert not s.has_event("box-1", "abcdefgh-000002")  # nothing written
        s.release_outbox(aid)
        assert [o["id"] for o in s.mergeable_outbox(T0 + 5)] == [aid]
        s.update_outbox(aid, state="sent", attempts=1)
        assert s.mergeable_outbox(T0 + 5) == []  # sent: not open any more
        with pytest.raises(StoreError):
            s.add_event(_event("abcdefgh-000002", T0 + 5), [], outbox_updates=[(aid, _joined("x"))])
    finally:
        s.close()


def test_an_alert_in_an_older_segment_is_left_alone(tmp_path):
    """A line is replayed into its own file only: an alert stored in the segment before the one the
    event goes to (the segment rolled over) is not offered, and a change to it is refused."""
    s = Store(tmp_path, segment_records=2)
    try:
        alert = _alert("abcdefgh-000001", T0)
        assert s.add_event(_event("abcdefgh-000001", T0), [alert])  # 2 records: the segment is full
        assert s.mergeable_outbox(T0 + 5) == []
        with pytest.raises(StoreError):
            s.add_event(_event("abcdefgh-000002", T0 + 5), [], outbox_updates=[(alert["id"], _joined("x"))])
        assert s.add_event(_event("abcdefgh-000002", T0 + 5), [_alert("abcdefgh-000002", T0 + 5)])
        assert s.partition_of("box-1", "abcdefgh-000002") != s.partition_of("box-1", "abcdefgh-000001")
    finally:
        s.close()


def test_a_journal_from_before_this_change_still_replays(tmp_path):
    """The old way (the alert's change as a line of its own, then the event's line) is read as before."""
    s1, aid = _burst(tmp_path)
    s1.update_outbox(aid, **_joined("abcdefgh-000001", "abcdefgh-000002"))
    s1.add_event(_event("abcdefgh-000002", T0 + 5))
    s2 = Store(tmp_path)
    try:
        assert s2.get_outbox(aid)["event_ids"] == ["abcdefgh-000001", "abcdefgh-000002"]
        assert s2.has_event("box-1", "abcdefgh-000002")
    finally:
        s2.close()


def test_a_damaged_change_list_quarantines_its_line_and_nothing_else(tmp_path):
    s1, aid = _burst(tmp_path)
    journal = _journal(tmp_path, s1)
    j = storage_mod.Journal(journal)
    j.append({"ev": {**_event("abcdefgh-000003", T0 + 9), "key": "box-1/abcdefgh-000003"}, "ups": "nope"})
    j.close()
    s2 = Store(tmp_path)
    try:
        assert not s2.has_event("box-1", "abcdefgh-000003")
        assert s2.has_event("box-1", "abcdefgh-000001")
        assert s2.integrity()["journal_damaged"] == 1
    finally:
        s2.close()


def test_a_line_the_card_could_not_take_back_does_not_cost_a_later_merge(tmp_path, monkeypatch):
    """A failing card: the event's line is written, its fsync fails, and cutting it off fails too
    (`Journal.cut_failures`). The store treats the event as not stored (the box sends it again), but the
    line stays in the journal. Every merge the store made after it must come back at the next open:
    the event sent again joins the burst once more, and the alert names all three deliveries."""
    s1, aid = _burst(tmp_path)
    e1, e2, e3 = "abcdefgh-000001", "abcdefgh-000002", "abcdefgh-000003"

    def eio(*_a: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(storage_mod.os, "fsync", eio)
    monkeypatch.setattr(storage_mod.os, "ftruncate", eio)
    with pytest.raises(OSError):
        s1.add_event(_event(e2, T0 + 5), [], outbox_updates=[(aid, _joined(e1, e2))])
    monkeypatch.undo()
    assert not s1.has_event("box-1", e2)
    assert [e["ev"]["id"] for e in _lines(_journal(tmp_path, s1))] == [e1, e2]  # the line is still there
    assert s1.add_event(_event(e3, T0 + 6), [], outbox_updates=[(aid, _joined(e1, e3))])
    assert s1.add_event(_event(e2, T0 + 7), [], outbox_updates=[(aid, _joined(e1, e3, e2))])
    assert s1.get_outbox(aid)["event_ids"] == [e1, e3, e2]
    s2 = Store(tmp_path)  # the restart (s1 abandoned, as after a power cut)
    try:
        assert s2.has_event("box-1", e2) and s2.has_event("box-1", e3)
        assert s2.get_outbox(aid)["event_ids"] == [e1, e3, e2]
        assert [o["event_ids"] for o in s2.open_outbox()] == [[e1, e3, e2]]
    finally:
        s2.close()


def test_mergeable_outbox_of_one_box_leaves_the_others_out(tmp_path):
    """The pipeline asks for the event's own box only (`mergeable_outbox(t, device)`): a burst joins an
    alert of its own box, and the rest of the open outbox is not copied and sorted under the lock."""
    s = Store(tmp_path)
    try:
        for n, device in enumerate(("box-1", "box-2", "box-1")):
            eid = f"abcdefgh-00000{n + 1}"
            assert s.add_event(_event(eid, T0 + n, device), [_alert(eid, T0 + n, device)])
        ids = {device: [o["id"] for o in s.mergeable_outbox(T0 + 5, device)] for device in ("box-1", "box-2")}
        assert ids == {
            "box-1": ["box-1_abcdefgh-000001_folder_00000000", "box-1_abcdefgh-000003_folder_00000000"],
            "box-2": ["box-2_abcdefgh-000002_folder_00000000"],
        }
        assert s.mergeable_outbox(T0 + 5, "box-3") == []
        assert len(s.mergeable_outbox(T0 + 5)) == 3  # without a box: every open entry, as before
    finally:
        s.close()
