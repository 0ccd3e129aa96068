"""The store's timeline index answers `list_events` exactly as a brute-force scan of the records would.

Random history (seeded): a few boxes and types, event times with many ties (same second, even the
same id on two boxes), spread over several month files and arriving out of order. For random filter
combinations and cursors, one page must equal the brute-force answer, and paging through with the
cursor must yield every matching event exactly once, newest first. Checked on the live store, after
reopening it from disk, and after retention deleted old month files.
"""

from __future__ import annotations

import calendar
import errno
import json
import random
from pathlib import Path
from typing import Any

import pytest

import gateway.storage as storage_mod
from gateway.event_index import EventIndex, entry_for
from gateway.store import Store

DEVICES = ["box1", "box2", "box3", "garage"]
TYPES = ["delivery", "pickup", "lid_closed", "lid_left_open"]  # "snapshot" never occurs
START = float(calendar.timegm((2026, 8, 1, 0, 0, 0)))
END = float(calendar.timegm((2026, 11, 20, 0, 0, 0)))


def make_events(rng: random.Random, n: int, shared_ids: bool = False) -> list[dict[str, Any]]:
    """n events; ts drawn from a small set of instants so ties on ts are common. With `shared_ids`
    the same id also occurs on several boxes (two events), so (ts, id) itself can tie."""
    instants = sorted(rng.uniform(START, END) for _ in range(n // 3))
    instants += [float(int(t)) for t in instants[:10]]  # integral ts too, as the box clock may give
    out = []
    seen = set()
    while len(out) < n:
        device = rng.choice(DEVICES)
        eid = f"ev{rng.randrange(n * 2):08d}"
        if (device, eid) in seen or (not shared_ids and eid in seen):
            continue
        seen.add((device, eid))
        seen.add(eid)
        ts = rng.choice(instants)
        # received_at decides the month file; it can differ from ts (box clock), by up to a day
        received = min(END, ts + rng.choice([0.0, 0.5, 3600.0, 86_400.0]))
        out.append(
            {
                "device": device,
                "id": eid,
                "type": rng.choices(TYPES, weights=[50, 30, 15, 5])[0],
                "ts": ts,
                "received_at": received,
                "seq": len(out),
                "sensors": {"n": len(out)},
                "photo": None,
                "cmd": None,
            }
        )
    return out


def brute(events: list[dict[str, Any]], **q: Any) -> list[tuple[str, str]]:
    """The contract, written as plainly as possible."""
    rows = [
        e
        for e in events
        if (q.get("device") is None or e["device"] == q["device"])
        and (q.get("type") is None or e["type"] == q["type"])
        and (q.get("since") is None or e["ts"] >= q["since"])
        and (q.get("until") is None or e["ts"] < q["until"])
        and (q.get("before") is None or (e["ts"], e["seq"], e["id"]) < tuple(q["before"]))
    ]
    rows.sort(key=lambda e: (e["ts"], e["seq"], e["id"], e["device"]), reverse=True)
    return [(e["device"], e["id"]) for e in rows[: q.get("limit", 50)]]


def random_query(rng: random.Random, events: list[dict[str, Any]]) -> dict[str, Any]:
    q: dict[str, Any] = {"limit": rng.choice([1, 2, 7, 50, 1000])}
    if rng.random() < 0.4:
        q["device"] = rng.choice(DEVICES + ["nobox"])
    if rng.random() < 0.4:
        q["type"] = rng.choice(TYPES + ["snapshot"])
    if rng.random() < 0.3:
        q["since"] = rng.choice([rng.uniform(START, END), rng.choice(events)["ts"]])
    if rng.random() < 0.3:
        q["until"] = rng.choice([rng.uniform(START, END), rng.choice(events)["ts"]])
    if rng.random() < 0.4:
        e = rng.choice(events)
        # a cursor from a real row (ties on ts around it), or one between rows
        q["before"] = rng.choice(
            [(e["ts"], e["seq"], e["id"]), (e["ts"], e["seq"], "ev"), (rng.uniform(START, END), 0, "zz")]
        )
    return q


def page_through(store: Store, **q: Any) -> list[tuple[str, str]]:
    """Follow the keyset cursor like the dashboard does until a short page."""
    got: list[tuple[str, str]] = []
    limit = q.pop("limit")
    before = q.pop("before", None)
    for _ in range(10_000):  # bounded: far more pages than events
        rows = store.list_events(**q, before=before, limit=limit)
        got += [(r["device"], r["id"]) for r in rows]
        if len(rows) < limit:
            return got
        before = (rows[-1]["ts"], rows[-1]["seq"], rows[-1]["id"])
    raise AssertionError("paging did not end")


def check_store(store: Store, events: list[dict[str, Any]], rng: random.Random, queries: int) -> None:
    by_key = {(e["device"], e["id"]): e for e in events}
    everything = store.list_events(limit=1000)
    assert [(r["device"], r["id"]) for r in everything] == brute(events, limit=1000)
    for r in everything[:20]:  # whole records come back, not just keys
        assert r == by_key[(r["device"], r["id"])]
    for _ in range(queries):
        q = random_query(rng, events)
        rows = store.list_events(**q)
        assert [(r["device"], r["id"]) for r in rows] == brute(events, **q), q
        assert all(r == by_key[(r["device"], r["id"])] for r in rows)  # whole records, from any file
    # Paging through with the cursor yields every match once, newest first. The cursor is (ts, seq, id),
    # as the API's is: two events sharing all three (same id on two boxes, same second) can be split by
    # a page boundary and the second one skipped, so the exact check needs (ts, seq, id) unique.
    unique = len({(e["ts"], e["seq"], e["id"]) for e in events}) == len(events)
    for _ in range(queries // 4):
        q = random_query(rng, events)
        q["limit"] = rng.choice([1, 3, 10, 50])
        q.pop("before", None)
        want = brute(events, **{**q, "limit": 10**9})
        got = page_through(store, **dict(q))
        assert len(set(got)) == len(got), q
        if unique:
            assert got == want, q
        else:
            assert set(got) <= set(want) and got == [k for k in want if k in set(got)], q


def fill(store: Store, events: list[dict[str, Any]], rng: random.Random) -> None:
    """Store events mostly in time order, with some late ones (inserts before the tail)."""
    order = sorted(events, key=lambda e: e["ts"])
    for i in range(0, len(order) - 1, 2):
        if rng.random() < 0.15:
            order[i], order[i + 1] = order[i + 1], order[i]
    late = [order.pop(rng.randrange(len(order))) for _ in range(len(order) // 10)]
    for e in order + late:
        assert store.add_event(dict(e))


@pytest.mark.parametrize(
    ("seed", "shared_ids", "segment_docs"),
    [(1, False, None), (2, False, None), (3, True, None), (4, True, 16)],
)
def test_index_matches_brute_force_live_and_after_reopen(
    tmp_path, monkeypatch, seed, shared_ids, segment_docs
):
    import gateway.store as store_mod

    if segment_docs:  # months in many small segments, late events landing in older months' last ones
        monkeypatch.setattr(store_mod, "SEGMENT_DOCS", segment_docs)
    rng = random.Random(seed)
    events = make_events(rng, 600, shared_ids)
    s = Store(tmp_path)
    fill(s, events, rng)
    assert len(s.stats().partitions) >= 4  # several month files
    check_store(s, events, rng, 150)
    s.close()
    s2 = Store(tmp_path)  # the index rebuilt from the files alone
    try:
        check_store(s2, events, rng, 150)
        assert not s2.add_event(dict(events[0]))  # still deduped
        extra = {**events[0], "id": "late0001", "ts": events[0]["ts"]}  # a tie on ts, after reopen
        assert s2.add_event(extra)
        check_store(s2, events + [extra], rng, 50)
    finally:
        s2.close()


def test_index_after_unclean_reopen_replays_journal(tmp_path):
    """Events only in the journal (the gateway was killed before a compaction) are in the index."""
    rng = random.Random(7)
    events = make_events(rng, 120)
    s = Store(tmp_path)
    fill(s, events, rng)
    assert any(p.stat().st_size for p in (tmp_path / "db").glob("*.journal"))
    # no close(): as after a kill
    s2 = Store(tmp_path)
    try:
        check_store(s2, events, rng, 60)
    finally:
        s2.close()
        s.close()


def test_index_after_retention(tmp_path, monkeypatch):
    import gateway.store as store_mod

    monkeypatch.setattr(store_mod, "_CACHED_PARTITIONS", 1)  # pages come from closed files (cached)
    monkeypatch.setattr(store_mod, "SEGMENT_DOCS", 32)  # and each month from several segments
    rng = random.Random(11)
    events = make_events(rng, 500)
    s = Store(tmp_path)
    fill(s, events, rng)
    check_store(s, events, rng, 60)
    assert s.stats().cached_records
    now = float(calendar.timegm((2026, 11, 20, 0, 0, 0)))
    removed = s.apply_retention(now, retention_days=50, photo_retention_days=0)  # August, September
    assert removed["partitions"] >= 2
    kept_months = {store_mod._period_of(p) for p in s.stats().partitions}
    kept = [e for e in events if s.period_for(e["received_at"]) in kept_months]
    assert 0 < len(kept) < len(events)
    assert s.event_count() == len(kept)
    check_store(s, kept, rng, 100)
    for e in events:
        assert s.has_event(e["device"], e["id"]) == (e in kept)
    # An event retention removed can be stored again (a box re-sending it): the new record is listed,
    # not a copy cached before the deletion.
    gone = next(e for e in events if e not in kept)
    again = {**gone, "sensors": {"again": True}}
    assert s.add_event(dict(again))
    kept.append(again)
    check_store(s, kept, rng, 60)
    rows = s.list_events(limit=1000)
    rows[0]["type"] = "changed by a caller"
    rows[0]["id"] = "changed"
    assert s.list_events(limit=1000) != rows  # callers get copies
    s.close()
    s2 = Store(tmp_path)
    try:
        check_store(s2, kept, rng, 50)
    finally:
        s2.close()


def test_type_never_seen_and_unknown_box_are_empty(tmp_path):
    s = Store(tmp_path)
    rng = random.Random(5)
    events = make_events(rng, 50)
    fill(s, events, rng)
    assert s.list_events(type="snapshot") == []
    assert s.list_events(device="nobox") == []
    assert s.list_events(device="box1", type="snapshot") == []
    assert s.list_events(limit=0) == []
    s.close()


def test_cursor_ties_on_ts_and_id(tmp_path):
    """Same ts on many events: the cursor (ts, id) splits between them exactly, none lost or doubled."""
    s = Store(tmp_path)
    t = float(calendar.timegm((2026, 11, 15, 12, 0, 0)))
    for i in range(30):
        s.add_event(
            {
                "device": f"box{i % 3}",
                "id": f"tie{i:06d}",
                "type": "delivery",
                "ts": t,
                "received_at": t,
                "seq": i,
                "sensors": {},
                "photo": None,
                "cmd": None,
            }  # fmt: skip
        )
    got = page_through(s, limit=4)
    assert got == [(f"box{i % 3}", f"tie{i:06d}") for i in reversed(range(30))]
    s.close()


def test_a_record_with_a_bad_ts_is_listed_not_fatal(tmp_path):
    """A record whose ts is unusable (written by an old or broken version) sorts by its receive time."""
    s = Store(tmp_path)
    t = float(calendar.timegm((2026, 11, 15, 12, 0, 0)))
    s.add_event({"device": "box1", "id": "good0001", "type": "delivery", "ts": t, "received_at": t,
                 "seq": 1, "sensors": {}, "photo": None, "cmd": None})  # fmt: skip
    s.close()
    f = tmp_path / "db" / "events-2026-11.json"
    data = json.loads(f.read_text())
    data["events"]["2"] = {**data["events"]["1"], "id": "bad00001", "key": "box1/bad00001", "ts": None,
                           "received_at": t + 5}  # fmt: skip
    f.write_text(json.dumps(data))
    s2 = Store(tmp_path)
    try:
        assert [e["id"] for e in s2.list_events()] == ["bad00001", "good0001"]
    finally:
        s2.close()


def test_event_index_unit():
    idx = EventIndex()
    docs = [
        {"device": "a", "id": "x2", "type": "delivery", "ts": 5},
        {"device": "b", "id": "x1", "type": "pickup", "ts": 5},
        {"device": "a", "id": "x3", "type": "pickup", "ts": 1.5},
    ]
    idx.build(entry_for(d) for d in docs[:2])
    idx.add(entry_for(docs[2]))  # older than everything: an insert, not an append
    assert [e[2] for e in idx.page()] == ["x2", "x1", "x3"]
    assert [e[2] for e in idx.page(before=(5, 0, "x2"))] == ["x1", "x3"]
    assert [e[2] for e in idx.page(device="a", type="pickup")] == ["x3"]
    assert [e[2] for e in idx.page(since=2, until=5.0)] == []
    assert idx.count(type="pickup") == 2 and idx.count(device="a") == 2
    assert idx.remove_if(lambda e: e[3] == "a") == 2
    assert [e[2] for e in idx.page()] == ["x1"] and idx.count(device="a") == 0


def test_same_second_events_follow_the_box_seq(tmp_path):
    """Issue 15 item 2: a box stamps whole seconds; within one, its `seq` says which came first (the
    random ids do not). Old code ordered ties by id: seq 6 was listed above seq 7."""
    t = 1_794_000_000.0
    s = Store(tmp_path)
    try:
        for seq, eid in ((5, "ffff0005"), (6, "eeee0006"), (7, "aaaa0007"), (8, "cccc0008")):
            s.add_event({"device": "box1", "id": eid, "type": "delivery", "ts": t, "received_at": t,
                         "seq": seq, "sensors": {}, "photo": None, "cmd": None})  # fmt: skip
        assert [e["seq"] for e in s.list_events()] == [8, 7, 6, 5]
        page = s.list_events(limit=2)
        rest = s.list_events(limit=10, before=(page[-1]["ts"], page[-1]["seq"], page[-1]["id"]))
        assert [e["seq"] for e in page + rest] == [8, 7, 6, 5]
    finally:
        s.close()
    s2 = Store(tmp_path)  # the order rebuilt from the files is the same
    try:
        assert [e["seq"] for e in s2.list_events()] == [8, 7, 6, 5]
    finally:
        s2.close()


def test_reading_history_does_not_evict_the_month_being_written(tmp_path, monkeypatch):
    """Pages from closed month files are read without opening them for writing; a late event stored
    into a month a page had read is then listed (the read copy is dropped when the file is opened)."""
    import gateway.store as store_mod

    monkeypatch.setattr(store_mod, "_CACHED_PARTITIONS", 1)
    rng = random.Random(13)
    events = make_events(rng, 300)
    s = Store(tmp_path)
    fill(s, events, rng)
    newest = s.part_for(max(e["received_at"] for e in events))
    late = {**events[0], "id": "late0002", "ts": END - 1, "received_at": END - 1}
    assert s.add_event(late)  # the current month is the open one, with journal entries
    events.append(late)
    assert list(s.stats().open_partitions) == [newest]
    check_store(s, events, rng, 60)  # pages from every month
    assert list(s.stats().open_partitions) == [newest]  # still the only open one: browsing compacted nothing
    assert (tmp_path / "db" / (newest + ".journal")).stat().st_size > 0
    old = sorted(s.stats().read_cached_partitions)[0]
    old_ts = min(e["ts"] for e in events if s.part_for(e["received_at"]) == old)
    backfill = {**events[0], "id": "back0001", "ts": old_ts, "received_at": old_ts}
    assert s.part_for(backfill["received_at"]) == old
    assert s.add_event(backfill)  # a box's spool delivering an old event into that month
    events.append(backfill)
    assert old not in s.stats().read_cached_partitions
    check_store(s, events, rng, 60)
    s.close()


def test_reading_a_file_with_another_layout_or_a_crash_journal(tmp_path, monkeypatch):
    """A closed month file whose outbox table comes first is parsed whole; a month left with journal
    entries by a crash is opened (replayed) rather than read from its stale file."""
    import gateway.store as store_mod

    monkeypatch.setattr(store_mod, "_CACHED_PARTITIONS", 1)
    rng = random.Random(17)
    events = make_events(rng, 200)
    s = Store(tmp_path)
    fill(s, events, rng)
    s.close()
    parts = sorted((tmp_path / "db").glob("events-*.json"))
    data = json.loads(parts[0].read_text())
    parts[0].write_text(json.dumps({"outbox": {}, **data}))  # outbox first
    s2 = Store(tmp_path)
    try:
        check_store(s2, events, rng, 40)
        # A closed month whose file is stale and whose journal holds the newest lines: its rewrite
        # failed when it was closed (a full disk), so the journal was kept.
        t, last = min(e["ts"] for e in events), max(e["ts"] for e in events)
        old_month = s2.part_for(t)
        rec = {**events[0], "id": "jour0001", "ts": t, "received_at": t}
        now = {**events[0], "id": "jour0002", "ts": last, "received_at": last}
        real_write = storage_mod.atomic_write_bytes

        def old_month_full(path: Path, data: bytes, **kw: Any) -> None:
            if path.name == old_month:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write(path, data, **kw)

        monkeypatch.setattr(storage_mod, "atomic_write_bytes", old_month_full)
        assert s2.add_event(dict(rec))  # into the old month: opened for writing, journal line
        assert s2.add_event(dict(now))  # the newest month opens; the old one closes, not rewritten
        monkeypatch.setattr(storage_mod, "atomic_write_bytes", real_write)
        assert old_month not in s2.stats().open_partitions
        assert (tmp_path / "db" / (old_month + ".journal")).stat().st_size
        check_store(
            s2, events + [rec, now], rng, 20
        )  # that month is opened (journal replayed), not read stale
        assert old_month in s2.stats().open_partitions
    finally:
        s2.close()
    s3 = Store(tmp_path)
    try:
        check_store(s3, events + [rec, now], rng, 40)
    finally:
        s3.close()


def test_several_types_page_like_the_contract(tmp_path):
    """The dashboard's default list (issue 15 item 11): deliveries and pickups, paged with the cursor."""
    rng = random.Random(7)
    events = make_events(rng, 300)
    s = Store(tmp_path)
    try:
        for e in events:
            s.add_event(dict(e))
        want = [
            (e["device"], e["id"])
            for e in sorted(events, key=lambda e: (e["ts"], e["seq"], e["id"], e["device"]), reverse=True)
            if e["type"] in ("delivery", "pickup")
        ]
        got, before = [], None
        for _ in range(100):
            rows = s.list_events(type=("delivery", "pickup"), before=before, limit=7)
            got += [(r["device"], r["id"]) for r in rows]
            if len(rows) < 7:
                break
            before = (rows[-1]["ts"], rows[-1]["seq"], rows[-1]["id"])
        assert got == want
        assert [r["id"] for r in s.list_events(type=("pickup",), limit=5)] == [
            i
            for d, i in want
            if next(e for e in events if e["id"] == i and e["device"] == d)["type"] == "pickup"
        ][:5]
    finally:
        s.close()
