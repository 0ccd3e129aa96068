"""The crash-safe store: atomic writes, one durable write per event + outbox, dedupe across months, retention."""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import sys
import textwrap

import pytest

from gateway.framing import scan_lines
from gateway.storage import AtomicJSONStorage, atomic_write_bytes
from gateway.store import Store, StoreError


def ev(device: str, eid: str, received_at: float, etype: str = "delivery", photo=None) -> dict:
    return {
        "device": device,
        "id": eid,
        "type": etype,
        "ts": received_at,
        "received_at": received_at,
        "seq": 1,
        "sensors": {},
        "photo": photo,
        "cmd": None,
    }


def ob(aid: str, device: str, eid: str, now: float) -> dict:
    return {
        "id": aid,
        "kind": "delivery",
        "device": device,
        "event_ids": [eid],
        "notifier": "folder",
        "recipient": "",
        "state": "pending",
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
        "sent_at": None,
        "last_error": None,
    }


NOV = calendar.timegm((2026, 11, 15, 12, 0, 0))
OCT = calendar.timegm((2026, 10, 15, 12, 0, 0))


def test_atomic_write_failure_leaves_old_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "db.json"
    atomic_write_bytes(target, b'{"old": 1}')

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b'{"new": 2}')
    monkeypatch.undo()
    assert target.read_bytes() == b'{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["db.json"]  # no temp file left behind


def test_sigkill_during_writes_never_leaves_a_torn_file(tmp_path):
    """A child process rewrites the DB as fast as it can; we SIGKILL it; the file always parses."""
    target = tmp_path / "events.json"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(os.getcwd())!r})
        from gateway.storage import AtomicJSONStorage
        from tinydb import TinyDB
        db = TinyDB({str(target)!r}, storage=AtomicJSONStorage)
        i = len(db)
        print("ready", flush=True)
        while True:
            db.insert({{"i": i, "pad": "x" * 5000}})
            i += 1
    """)
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        import time

        time.sleep(0.3)
        p.kill()
        p.wait()
        data = json.loads(target.read_bytes())
        docs = data["_default"]
        assert [d["i"] for d in docs.values()] == list(range(len(docs)))


def test_batch_is_one_write_and_rolls_back_on_error(tmp_path):
    st = AtomicJSONStorage(tmp_path / "x.json")
    from tinydb import TinyDB

    db = TinyDB(tmp_path / "x.json", storage=AtomicJSONStorage)
    s: AtomicJSONStorage = db.storage
    with s.batch():
        db.table("a").insert({"n": 1})
        db.table("b").insert({"n": 2})
    assert s.writes == 1
    with pytest.raises(RuntimeError), s.batch():
        db.table("a").insert({"n": 3})
        raise RuntimeError("crash between the two inserts")
    assert [d["n"] for d in db.table("a").all()] == [1]
    assert json.loads((tmp_path / "x.json").read_text())["a"] == {"1": {"n": 1}}
    del st


def test_event_and_outbox_in_one_file_dedupe_and_reopen(tmp_path):
    s = Store(tmp_path)
    assert s.add_event(ev("box1", "event0001", NOV), [ob("al1", "box1", "event0001", NOV)])
    assert not s.add_event(ev("box1", "event0001", NOV + 5), [ob("al2", "box1", "event0001", NOV)])
    assert s.add_event(ev("box2", "event0001", NOV))  # same id, other box: a different event
    # one durable write (one fsync'd journal line) holds the event and its outbox entry
    lines = scan_lines((tmp_path / "db" / "events-2026-11.json.journal").read_bytes()).entries
    assert len(lines) == 2 and lines[0]["ev"]["id"] == "event0001"
    assert lines[0]["ob"][0]["id"] == "al1"
    s.close()
    raw = json.loads((tmp_path / "db" / "events-2026-11.json").read_text())
    assert len(raw["events"]) == 2 and len(raw["outbox"]) == 1
    assert (tmp_path / "db" / "events-2026-11.json.journal").read_bytes() == b""  # compacted on close
    s2 = Store(tmp_path)
    assert s2.has_event("box1", "event0001") and s2.get_event("box2", "event0001")["device"] == "box2"
    assert [r["id"] for r in s2.open_outbox()] == ["al1"]
    assert not s2.add_event(ev("box1", "event0001", NOV + 99999999))  # dedupe spans month files
    s2.close()


def test_one_file_per_month_newest_first_and_paging(tmp_path):
    s = Store(tmp_path)
    for i in range(5):
        s.add_event(ev("box1", f"oct{i:06d}", OCT + i))
        s.add_event(ev("box1", f"nov{i:06d}", NOV + i, etype="pickup" if i == 4 else "delivery"))
    assert list(s.stats().partitions) == [
        "events-2026-10.json",
        "events-2026-11.json",
    ]
    page = s.list_events(limit=3)
    assert [e["id"] for e in page] == ["nov000004", "nov000003", "nov000002"]
    page2 = s.list_events(limit=4, before=(page[-1]["ts"], page[-1]["seq"], page[-1]["id"]))
    assert [e["id"] for e in page2] == ["nov000001", "nov000000", "oct000004", "oct000003"]
    assert [e["id"] for e in s.list_events(type="pickup")] == ["nov000004"]
    assert len(s.list_events(since=NOV, limit=100)) == 5
    assert len(s.list_events(until=NOV, limit=100)) == 5
    s.close()


def test_photos_written_inside_data_folder_only(tmp_path):
    s = Store(tmp_path)
    s.write_photos("box1", "event0001", NOV, {"original": b"o", "alert": b"a", "thumb": b"t"})
    s.add_event(ev("box1", "event0001", NOV, photo={"size": 1, "sha256": "0" * 64, "width": 1, "height": 1}))
    assert s.photo_path("box1", "event0001", "alert").read_bytes() == b"a"
    assert (
        s.photo_path("box1", "event0001", "alert").parent
        == tmp_path.resolve() / "photos" / "box1" / "2026-11"
    )
    assert s.photo_path("box1", "../etc", "alert") is None
    assert s.photo_path("box1", "event0001", "../../x") is None
    with pytest.raises(StoreError):
        s.write_photos("box1", "../../evil", NOV, {"alert": b"x"})
    s.close()


def test_retention_drops_old_months_and_photos_but_keeps_unsent_alerts(tmp_path):
    s = Store(tmp_path)
    s.add_event(ev("box1", "old0000001", OCT), [ob("pending1", "box1", "old0000001", OCT)])
    s.add_event(ev("box1", "new0000001", NOV))
    s.write_photos("box1", "old0000001", OCT, {"alert": b"a"})
    now = NOV + 40 * 86400
    removed = s.apply_retention(now, retention_days=30, photo_retention_days=30)
    assert removed["partitions"] == 0  # the October file still holds an alert to send
    assert removed["photo_folders"] == 1
    s.update_outbox("pending1", state="sent", sent_at=now)
    removed = s.apply_retention(now, retention_days=30, photo_retention_days=30)
    assert removed["partitions"] == 1
    assert not s.has_event("box1", "old0000001") and s.has_event("box1", "new0000001")
    assert not (tmp_path / "db" / "events-2026-10.json").exists()
    assert s.outbox_counts()["sent"] == 0
    s.close()


def test_day_partitions(tmp_path):
    s = Store(tmp_path, partition="day")
    s.add_event(ev("box1", "event0001", NOV))
    s.close()
    assert (tmp_path / "db" / "events-2026-11-15.json").is_file()


def test_devices_records_durable(tmp_path):
    s = Store(tmp_path)
    s.put_device({"device": "box1", "name": "Box", "waiting": 2})
    s.put_device({**s.get_device("box1"), "waiting": 3})
    s.close()
    s2 = Store(tmp_path)
    assert [d["waiting"] for d in s2.list_devices()] == [3]
    s2.close()


def test_journal_replay_after_sigkill_keeps_every_acknowledged_event(tmp_path):
    """A child stores events (compacting now and then) and prints each id once add_event returned;
    SIGKILL it at some point; every printed id must be in the reopened store, each once."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(os.getcwd())!r})
        import gateway.store as st
        st.COMPACT_EVERY = 7
        s = st.Store({str(tmp_path)!r})
        i = 0
        while True:
            eid = f"event{{i:06d}}"
            now = time.time()
            rec = dict(device="box1", id=eid, type="delivery", ts=now, received_at=now, seq=i, sensors={{}},
                       photo=None, cmd=None)
            ob = dict(id="al" + eid, kind="delivery", device="box1", event_ids=[eid], notifier="folder",
                      recipient="", state="pending", attempts=0, created_at=now, next_attempt_at=now,
                      sent_at=None, last_error=None)
            s.add_event(rec, [ob])
            if i % 3 == 0:
                s.update_outbox("al" + eid, state="sent", sent_at=now)
            print(eid, flush=True)
            i += 1
    """)
    import time

    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    acked = []
    deadline = time.monotonic() + 30
    while len(acked) < 40 and time.monotonic() < deadline:
        acked.append(p.stdout.readline().decode().strip())
    p.kill()
    p.wait()
    s = Store(tmp_path)
    try:
        for eid in acked:
            assert s.has_event("box1", eid)
        events = s.list_events(limit=1000)
        assert len({e["id"] for e in events}) == len(events) >= len(acked)
        assert s.get_outbox("alevent000000")["state"] == "sent"
        assert s.get_outbox("alevent000001")["state"] == "pending"
    finally:
        s.close()


def test_torn_journal_tail_is_ignored(tmp_path):
    s = Store(tmp_path)
    s.add_event(ev("box1", "event0001", NOV))
    journal = tmp_path / "db" / "events-2026-11.json.journal"
    with open(journal, "ab") as f:
        f.write(b'{"ev":{"device":"box1","id":"event0002"')  # a crash in the middle of an append
    s2 = Store(tmp_path)  # reopened "after the crash" (the first one never closed)
    assert s2.has_event("box1", "event0001") and not s2.has_event("box1", "event0002")
    assert journal.read_bytes() == b""  # replayed into the month file and emptied
    assert s2.add_event(ev("box1", "event0002", NOV))
    s2.close()
    s3 = Store(tmp_path)
    assert s3.has_event("box1", "event0002")
    s3.close()


def test_after_a_replay_new_records_get_new_doc_ids(tmp_path):
    """The journal is replayed into the storage's document directly (no TinyDB Table.insert, no
    private TinyDB field): records added after the replay get the next doc ids, updates land."""

    def ob(eid: str) -> dict:
        return dict(
            id="al" + eid,
            kind="delivery",
            device="box1",
            event_ids=[eid],
            notifier="folder",
            recipient="",
            state="pending",
            attempts=0,
            created_at=NOV,
            next_attempt_at=NOV,
            sent_at=None,
            last_error=None,
        )

    s = Store(tmp_path)
    for i in range(3):
        assert s.add_event(ev("box1", f"event000{i}", NOV + i), [ob(f"event000{i}")])
    s.update_outbox("alevent0001", state="sent", sent_at=NOV + 5)
    s2 = Store(tmp_path)  # reopened "after a crash" (the first one never closed): the journal is replayed
    assert s2.add_event(ev("box1", "event0003", NOV + 3), [ob("event0003")])
    s2.update_outbox("alevent0000", state="dead", last_error="gone")
    s2.close()
    raw = json.loads((tmp_path / "db" / "events-2026-11.json").read_bytes())
    assert list(raw["events"]) == ["1", "2", "3", "4"]
    assert [d["id"] for d in raw["events"].values()] == [f"event000{i}" for i in range(4)]
    assert {k: d["state"] for k, d in raw["outbox"].items()} == {
        "1": "dead",
        "2": "sent",
        "3": "pending",
        "4": "pending",
    }
    s3 = Store(tmp_path)
    assert len(s3.list_events(limit=10)) == 4 and s3.get_outbox("alevent0003")["state"] == "pending"
    s3.close()
