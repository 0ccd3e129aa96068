"""The gateway's durable state: event records, box records, the alert outbox, photo files.

Layout under the data folder (one owner process, see `gateway.datalock`):

    db/events-2026-11.json   events + their outbox entries received that month (TinyDB, two tables)
    db/events-2026-11.2.json the month's next segment, once the first holds SEGMENT_DOCS records
    db/boxes.json            one record per box (health, waiting count, alert bookkeeping)
    db/purged.journal        keys of events deleted by a purge (`purge_begin`): acked, never stored again
    photos/<device>/<yyyy-mm>/<event id>.jpg | .alert.jpg | .thumb.jpg

Why files per month, in segments: TinyDB reads its whole file into memory and rewrites it whole, so
one file for all history would make each new event cost more than the last, and hold all of it in
RAM. Files per month (or per day, `store.partition = "day"`) let retention drop whole files; segments
of at most `SEGMENT_DOCS` records bound what one file costs to rewrite and to hold: the gateway's
memory stays flat however busy the month is (bench/soak.py), and the cost of a write does not grow
with history (bench/store_growth.py). At most `_CACHED_PARTITIONS` segments are open (parsed in
memory); older ones are read from disk when asked for. Keys seen in every file stay in a small
in-memory index, so de-duplication by (device, event id) still spans all history.

The dashboard's timeline (`list_events`) is answered from a second in-memory index, sorted by
(ts, seq, id) with sub-lists per box, per type and per (box, type) (`gateway.event_index`, ~20 MB at
100,000 events), built in the same pass over the files as the dedupe index: a page costs
O(log n + page size) plus reading the page's own records, whatever the filters and the depth.

An event, its outbox entries and its box's new record (`add_event(..., device=...)`) are one journal
line, one fsync: after a crash all of them exist or none does; so are alerts that belong to no event
and the box record that marks them planned (`add_outbox(..., device=...)`). A grouped delivery's changes to
the alert it joins (`add_event(..., outbox_updates=...)`, the burst merge) ride in the event's line too,
and are applied only with a newly stored event. The box record is in that events
journal until boxes.json is next rewritten, so an events journal is emptied only after boxes.json
(`_durable_flush`); on open, a box record in any journal newer (by revision, `BOX_REV`) than
boxes.json's wins.

TinyDB boundary: the store keeps TinyDB's file format and uses only its public parts: the `Storage`
interface (our `AtomicJSONStorage`: read/write of the whole document) and `Table` reads (`all`, `get`,
`clear_cache` after a direct write). Records are added by writing into the document the storage
returns, never by `Table.insert` (which copies the whole table per call and caches the next id), so no
TinyDB private field is touched.
Photo files are written and fsync'd before the record that points at them.
"""

from __future__ import annotations

import calendar
import copy
import functools
import json
import logging
import re
import shutil
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from tinydb import TinyDB

from gateway.event_index import Entry, EventIndex, entry_for
from gateway.ports import DeviceRecord, EventRecord, OutboxRecord, PhotoVariant
from gateway.protocol import valid_device_id, valid_msg_id
from gateway.storage import AtomicJSONStorage, Journal, atomic_write_bytes, fsync_dir, remove_stale_temp_files
from gateway.vocabulary import OPEN_OUTBOX_STATES, OUTBOX_STATES

log = logging.getLogger(__name__)

EVENTS = "events"
OUTBOX = "outbox"
# events-<yyyy>-<mm>[-<dd>][.<segment>].json; the first segment has no number (older stores had only it).
_PART_RE = re.compile(r"events-(\d{4})-(\d{2})(?:-(\d{2}))?(?:\.([2-9]|[1-9]\d+))?\.json")
_PHOTO_SUFFIX: dict[str, str] = {"original": ".jpg", "alert": ".alert.jpg", "thumb": ".thumb.jpg"}
# Segments kept open (parsed, writable): the one being written and one more, for outbox updates that
# land in the previous segment just after a roll-over. Everything the store holds per record lives in
# these, so together with SEGMENT_DOCS this bounds the store's memory (~2 KB of RAM per record).
_CACHED_PARTITIONS = 2
# Records (events + outbox entries) per segment file before the next segment starts: a home box fills
# one segment in months, a busy fleet one every few minutes, and neither holds more than this in RAM.
SEGMENT_DOCS = 512
# Month files a timeline page read without opening them for writing (see `_events_for_read`); bounded
# by files and by events so one huge old month cannot pin much memory.
_READ_CACHED_PARTITIONS = 16
_READ_CACHED_EVENTS = 4_000
_DECODER = json.JSONDecoder()
# Page records read from closed month files, kept by event key: a stored event never changes (only
# retention removes it), and a filtered view over years (a rare type) otherwise re-reads one file per
# month on every refresh, holding the store lock while ingest waits. ~1.5 KB each.
_RECORD_CACHE = 2_000
JOURNAL_SUFFIX = ".journal"
# Bytes the store could not read (damaged journal lines, damaged files) are kept here, never dropped.
QUARANTINE_DIR = "quarantine"
# Rewrite a month file from memory after this many journal entries: bounds the journal (and replay
# time) while spreading the O(file size) rewrite over many events.
COMPACT_EVERY = 256
# Keys of purged events (`purge_begin`): fsync'd lines, read back at every start; a line goes once
# retention would have deleted the events it names (`_prune_tombstones`).
PURGED_JOURNAL = "purged.journal"
# Box records (boxes.json). Each carries BOX_REV, the store-wide revision of its last write: a box record
# can be made durable in two places (boxes.json.journal by `put_device`, an events journal by
# `add_event(device=...)` or `add_outbox(device=...)`), and on open the newest revision wins wherever
# it is. The file's BOXES_META table holds the highest revision the file reflects: a journal's box
# record at or below it is already in the file (or was deleted since, by a purge) and is not applied again.
DEVICES = "devices"
BOXES_META = "meta"
BOX_REV = "_rev"
_PURGED_PER_LINE = 1_000  # keys per line: a line stays small (~30 KB) however big the box's history


class StoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class StoreStats:
    """What the store holds where, for tests, benches and diagnostics (`Store.stats()`), so none of
    them reads the store's private fields."""

    partitions: tuple[str, ...]  # every partition file (or journal), oldest first
    open_partitions: tuple[str, ...]  # parsed and writable, least recently used first
    open_events: int  # records held by the open partitions' tables
    read_cached_partitions: tuple[str, ...]  # closed partitions' events tables kept for reading
    read_cached_events: int
    cached_records: int  # closed partitions' shaped records kept for the timeline
    events: int  # events in the index


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _event_doc_ok(doc: Any) -> bool:
    """An event record has what the indexes read (a damaged old-format line may parse without it)."""
    # Spelled out, not a loop over the keys: this runs for every stored event at start (100k: ~40 ms).
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("key"), str)
        and isinstance(doc.get("id"), str)
        and isinstance(doc.get("device"), str)
        and isinstance(doc.get("type"), str)
    )


def _outbox_doc_ok(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("id"), str)
        and isinstance(doc.get("notifier"), str)
        and doc.get("state") in OUTBOX_STATES
        and _num(doc.get("created_at"))
    )


def _valid_entry(e: dict[str, Any]) -> bool:
    """A journal entry of an events file has the shape `_commit` writes (replay must not crash)."""
    if "rm" in e:  # a purge (`purge_part`): one box's events and outbox entries leave this file
        return (
            isinstance(e["rm"], str)
            and valid_device_id(e["rm"])
            and isinstance(e.get("k"), list)
            and all(isinstance(k, str) for k in e["k"])
            and isinstance(e.get("o"), list)
            and all(isinstance(o, str) for o in e["o"])
        )
    if not any(k in e for k in ("ev", "ob", "up")):
        return False
    if "ev" in e and not _event_doc_ok(e["ev"]):
        return False
    ob = e.get("ob", [])
    if not (isinstance(ob, list) and all(_outbox_doc_ok(o) for o in ob)):
        return False
    if "box" in e and not (
        ("ev" in e or "ob" in e)
        and _valid_device_entry(e["box"])
        and isinstance(e["box"]["dev"].get(BOX_REV), int)
    ):
        return False
    if "ups" in e and not (
        "ev" in e
        and isinstance(e["ups"], list)
        and all(isinstance(u, dict) and _valid_update(u) for u in e["ups"])
    ):
        return False  # an event's changes to open alerts (`add_event(outbox_updates=...)`) come with it
    if "up" in e:
        return _valid_update(e)
    return True


def _valid_update(u: dict[str, Any]) -> bool:
    """`{"up": alert id, "doc_id": n, "f": {fields}}`: a change to one outbox entry."""
    f = u.get("f")
    return (
        isinstance(u.get("up"), str)
        and isinstance(u.get("doc_id"), int)
        and isinstance(f, dict)
        and f.get("state", "pending") in OUTBOX_STATES
    )


def _valid_purged_entry(e: dict[str, Any]) -> bool:
    keys = e.get("keys")
    return (
        isinstance(e.get("dev"), str)
        and isinstance(keys, list)
        and all(isinstance(k, str) and k.startswith(e["dev"] + "/") for k in keys)
    )


@dataclass
class PurgePlan:
    """One box's history being deleted (`Store.purge_begin`, `purge_part`, `purge_finish`)."""

    device: str
    started_at: float
    keys: frozenset[str]  # its events stored before the purge began: these (and only these) go
    parts: list[str]  # every segment that existed then, oldest first; `purge_part` takes them in turn
    removed: Counter[str] = field(default_factory=Counter)


def _valid_device_entry(e: Any) -> bool:
    return (
        isinstance(e, dict)
        and isinstance(e.get("doc_id"), int)
        and isinstance(e.get("dev"), dict)
        and isinstance(e["dev"].get("device"), str)
    )


def _box_rev(rec: dict[str, Any] | None) -> int:
    """A box record's revision (records written before revisions existed count as 0)."""
    rev = rec.get(BOX_REV) if rec else None
    return rev if isinstance(rev, int) and not isinstance(rev, bool) else 0


def _classify_part_doc(doc: dict[str, Any]) -> str | None:
    """Which table of an events file a salvaged doc belongs to, by its shape."""
    if _event_doc_ok(doc):
        return EVENTS
    if _outbox_doc_ok(doc):
        return OUTBOX
    return None


def _classify_device_doc(doc: dict[str, Any]) -> str | None:
    if isinstance(doc.get("device"), str):
        return DEVICES
    return BOXES_META if isinstance(doc.get("box_rev"), int) else None


def _atomic_storage(db: TinyDB) -> AtomicJSONStorage:
    """The storage under one of our TinyDBs: always AtomicJSONStorage (`_open_tinydb`, no middleware)."""
    storage = db.storage
    if not isinstance(storage, AtomicJSONStorage):
        raise TypeError(f"expected AtomicJSONStorage under the store, got {type(storage).__name__}")
    return storage


def _entry_in(keys: set[str], e: Entry) -> bool:
    return event_key(e[3], e[2]) in keys  # Entry: (ts, seq, event id, device, type)


def event_key(device: str, event_id: str) -> str:
    return f"{device}/{event_id}"


def _part_sort_key(name: str) -> tuple[int, int, int, int]:
    """(year, month, day or 0, segment): segment 10 after 9, and the unnumbered first segment first."""
    m = _PART_RE.fullmatch(name)
    assert m is not None, name
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), int(m.group(4) or 1))


def _segment_name(period: str, segment: int) -> str:
    """`events-2026-11.json` for segment 1, `events-2026-11.<n>.json` after it."""
    return period if segment == 1 else f"{period[: -len('.json')]}.{segment}.json"


def _period_of(name: str) -> str:
    """The first segment's name (the period): `events-2026-11.3.json` -> `events-2026-11.json`."""
    m = _PART_RE.fullmatch(name)
    assert m is not None, name
    return name if m.group(4) is None else name[: m.start(4) - 1] + ".json"


def _partition_end(name: str) -> float:
    """Unix time just after the last moment a partition covers (UTC)."""
    m = _PART_RE.fullmatch(name)
    if not m:
        return float("inf")
    y, mo = int(m.group(1)), int(m.group(2))
    if m.group(3):
        return calendar.timegm((y, mo, int(m.group(3)), 0, 0, 0)) + 86_400.0
    y2, mo2 = (y + 1, 1) if mo == 12 else (y, mo + 1)
    return float(calendar.timegm((y2, mo2, 1, 0, 0, 0)))


def blank_device(device: str, name: str | None = None) -> DeviceRecord:
    return DeviceRecord(
        device=device,
        name=name or device,
        online=False,
        last_seen=None,
        fw=None,
        rssi=None,
        battery_mv=None,
        heap_free=None,
        uptime_s=None,
        spooled=None,
        waiting=0,
        lid_open=None,
        last_delivery_ts=None,
        last_event_id=None,
    )


class Store:
    """Thread-safe (one lock); all methods are quick except the first open of a big history."""

    def __init__(
        self, data_dir: Path | str, *, partition: str = "month", segment_records: int | None = None
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.segment_records = segment_records or SEGMENT_DOCS
        self.db_dir = self.data_dir / "db"
        self.photo_dir = self.data_dir / "photos"
        self.partition = partition
        self._lock = threading.RLock()
        self._dbs: OrderedDict[str, TinyDB] = OrderedDict()
        self._journals: dict[str, Journal] = {}
        self._event_index: dict[str, tuple[str, int]] = {}  # key -> (partition, doc id)
        self._timeline = EventIndex()  # sorted (ts, id, device, type): list_events never scans files
        self._read_cache: OrderedDict[str, dict[str, Any]] = OrderedDict()  # part -> raw events table
        self._record_cache: OrderedDict[str, EventRecord] = OrderedDict()  # key -> record (closed files)
        self._outbox_index: dict[str, tuple[str, int]] = {}
        self._latest_segment: dict[str, str] = {}  # period -> the segment new records go to
        self._part_docs: dict[str, int] = {}  # latest segments only: records in the file
        self._open_outbox: dict[str, dict[str, Any]] = {}  # pending/failed entries, by id
        self._in_flight: set[str] = set()  # open entries a dispatcher is sending (`claim_outbox`)
        self._outbox_counts: dict[str, int] = dict.fromkeys(OUTBOX_STATES, 0)
        self._devices: dict[str, dict[str, Any]] = {}
        self._devices_db: TinyDB | None = None
        self._box_rev = 0  # the last revision given to a box record write (BOX_REV), never reused
        self._boxes_file_rev = 0  # boxes.json on disk holds every box write up to this revision
        # A box record written with an event (`add_event(device=...)`) is durable only in that events
        # journal until boxes.json is rewritten: no events journal may be emptied before that.
        self._boxes_behind = False
        self._loading = True  # journals not replayed yet may hold box records newer than boxes.json
        # Keys of purged events: a box re-sending one (its spool, the broker's queue) gets it acked as
        # a duplicate instead of stored again, so a purge is not undone piecemeal (`purge_begin`).
        self._purged: set[str] = set()
        self._purged_lines: list[dict[str, Any]] = []  # purged.journal's lines: which keys, purged when
        self.quarantine_dir = self.db_dir / QUARANTINE_DIR
        # What went wrong with the disk since start (`integrity()`): damage found, writes refused.
        self._problems: Counter[str] = Counter()
        self._compaction_failing: set[str] = set()  # files whose last rewrite failed (journal growing)
        self.db_dir.mkdir(parents=True, exist_ok=True)
        self.photo_dir.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temp_files(self.data_dir)
        if stale:
            log.warning("removed %d temp file(s) left by a crash in %s", stale, self.data_dir)
        self._load()

    # --- opening ------------------------------------------------------------------

    def _partitions(self) -> list[str]:
        """Partition file names (a partition may so far exist only as its journal), oldest first."""
        names = set()
        for p in self.db_dir.iterdir():
            name = p.name[: -len(JOURNAL_SUFFIX)] if p.name.endswith(JOURNAL_SUFFIX) else p.name
            if _PART_RE.fullmatch(name):
                names.add(name)
        return sorted(names, key=_part_sort_key)

    def _db(self, part: str) -> TinyDB:
        db = self._dbs.get(part)
        if db is None:
            self._read_cache.pop(part, None)  # from now on the open TinyDB is the truth
            db = self._open_tinydb(part, _classify_part_doc)
            journal = self._journal(part + JOURNAL_SUFFIX, _valid_entry)
            self._dbs[part] = db
            self._journals[part] = journal
            self._replay(db, journal)
            while len(self._dbs) > _CACHED_PARTITIONS:
                old_part = next(iter(self._dbs))
                # Closing after a failed compaction is safe too: the journal keeps the changes and
                # the next open replays them.
                self._compact(old_part)
                self._close_part(old_part)
        else:
            self._dbs.move_to_end(part)
        return db

    def _open_tinydb(self, name: str, classify: Any) -> TinyDB:
        db = TinyDB(
            self.db_dir / name,
            storage=AtomicJSONStorage,
            quarantine_dir=self.quarantine_dir,
            classify=classify,
        )
        storage = _atomic_storage(db)
        storage.buffered = True
        try:
            storage.read()  # parse now, so a damaged file is salvaged (and counted) at open
        finally:
            if storage.salvaged:
                self._problems["files_salvaged"] += len(storage.salvaged)
                storage.salvaged.clear()
        return db

    def _journal(self, name: str, valid: Any) -> Journal:
        return Journal(self.db_dir / name, quarantine_dir=self.quarantine_dir, valid=valid)

    def _read_journal(self, journal: Journal) -> list[dict[str, Any]]:
        entries = journal.read()
        for d in journal.damage:
            self._problems["journal_torn_tails" if d.reason == "torn" else "journal_damaged"] += 1
        return entries

    def _durable_flush(self, storage: AtomicJSONStorage, journal: Journal, pending: int) -> bool:
        """Write a file from memory and empty its journal. On failure (full disk, EIO) both stay as
        they are: the journal still holds every change, so nothing is lost, and the next attempt
        comes after another COMPACT_EVERY changes rather than on every one."""
        try:
            if journal is self._devices_journal:
                self._flush_boxes()
            else:
                if self._boxes_behind:
                    # This journal may hold the only durable copy of a box record: boxes.json first.
                    self._flush_boxes()
                storage.flush()
                journal.reset()
            self._compaction_failing.discard(storage.path.name)
            return True
        except OSError as exc:
            self._problems["compaction_errors"] += 1
            self._compaction_failing.add(storage.path.name)
            journal.entries_since_reset = max(0, pending - COMPACT_EVERY)
            log.warning(
                "%s: could not rewrite the file from its journal (%s); the journal keeps every change",
                storage.path.name,
                exc,
            )
            return False

    def _close_part(self, part: str) -> None:
        self._read_cache.pop(part, None)
        db = self._dbs.pop(part, None)
        if db is not None:
            db.close()
        j = self._journals.pop(part, None)
        if j is not None:
            j.close()

    def _replay(self, db: TinyDB, journal: Journal) -> None:
        """Apply journal entries the file does not have yet (idempotent), then compact."""
        entries = self._read_journal(journal)
        if not entries and not journal.path.exists():
            return
        storage = _atomic_storage(db)
        # Into the storage's dict, like `_apply` (not through Table.insert/update, whose cached next id
        # would then be stale): the store uses only TinyDB's file format, its Storage interface and
        # Table reads (see "TinyDB boundary" in the module docstring).
        data = storage.read() or {}
        events = data.setdefault(EVENTS, {})
        outbox = data.setdefault(OUTBOX, {})
        keys = {d["key"] for d in events.values()}
        in_file = set(keys)  # events the file had before this replay (see the burst merge below)
        outbox_ids = {d["id"]: doc_id for doc_id, d in outbox.items()}
        for e in entries:
            if "box" in e and self._merge_box(e["box"]):
                self._boxes_behind = True  # now in memory; boxes.json gets it before this journal empties
            if "rm" in e:
                # In journal order, so a record added after the purge is kept: forget the purged keys
                # here too, or a later line re-adding the same record would be skipped.
                gone_keys, gone_ids = _remove_box_docs(data, e)
                keys -= gone_keys
                in_file -= gone_keys
                for oid in gone_ids:
                    outbox_ids.pop(oid, None)
                continue
            new_event = "ev" in e and e["ev"]["key"] not in keys
            if new_event:
                events[str(_next_id(events))] = e["ev"]
                keys.add(e["ev"]["key"])
            for o in e.get("ob", ()):
                if o["id"] not in outbox_ids:
                    oid = str(_next_id(outbox))
                    outbox[oid] = o
                    outbox_ids[o["id"]] = oid
            # A burst merge is skipped when the file had its event before this replay: then it has the
            # merge too (both were in memory at the rewrite), and a later merge into the same alert
            # (a longer `event_ids`) may be in it as well, which this older one must not undo. A line
            # repeating an event of an earlier journal line is applied in order all the same: the
            # earlier one may be an append the store saw fail but could not cut off (a failing card),
            # whose merge the store never made; the later lines are the ones it did make.
            for u in e.get("ups", ()) if "ev" in e and e["ev"]["key"] not in in_file else ():
                if u["up"] in outbox_ids:
                    outbox[outbox_ids[u["up"]]].update(u["f"])
            if "up" in e and e["up"] in outbox_ids:
                outbox[outbox_ids[e["up"]]].update(e["f"])
        storage.write(data)  # buffered (set at open): durable through _durable_flush below
        for name in (EVENTS, OUTBOX):
            db.table(name).clear_cache()
        if entries:
            log.info("%s: replayed %d journal entries", journal.path.name, len(entries))
        storage._dirty = True
        self._durable_flush(storage, journal, len(entries) + COMPACT_EVERY)

    def _compact(self, part: str) -> bool:
        """Write a partition's file from memory and empty its journal. False if that failed."""
        db, journal = self._dbs.get(part), self._journals.get(part)
        if db is None or journal is None:
            return True
        storage = _atomic_storage(db)
        if journal.entries_since_reset == 0 and not storage._dirty and not journal.damage:
            return True
        return self._durable_flush(storage, journal, journal.entries_since_reset)

    @staticmethod
    def _apply(db: TinyDB, entry: dict[str, Any]) -> tuple[int | None, list[int]]:
        """Apply a journal entry to the in-memory TinyDB data.

        Straight into the storage's dict rather than through `Table.insert`, which copies the whole
        table on every call (O(events this month) per event); the file format stays TinyDB's own.
        """
        storage = _atomic_storage(db)
        data = storage.read()
        if data is None:
            data = {}
        events = data.setdefault(EVENTS, {})
        outbox = data.setdefault(OUTBOX, {})
        ev_id = None
        if "ev" in entry:
            ev_id = _next_id(events)
            events[str(ev_id)] = entry["ev"]
        out_ids = []
        for o in entry.get("ob", ()):
            oid = _next_id(outbox)
            outbox[str(oid)] = o
            out_ids.append(oid)
        for u in entry.get("ups", ()):
            outbox[str(u["doc_id"])].update(u["f"])
        if "up" in entry:
            outbox[str(entry["doc_id"])].update(entry["f"])
        if "rm" in entry:
            _remove_box_docs(data, entry)
        storage.write(data)  # buffered: memory only; the journal already holds the change
        for name in (EVENTS, OUTBOX):
            db.table(name).clear_cache()
        return ev_id, out_ids

    def _commit(self, part: str, entry: dict[str, Any]) -> tuple[int | None, list[int]]:
        """Make one change durable (journal append + fsync), then apply it in memory."""
        db = self._db(part)
        try:
            self._journals[part].append(entry)
        except OSError:
            self._problems["write_errors"] += 1
            raise
        try:
            ev_id, out_ids = self._apply(db, entry)
        except BaseException:
            # Memory and journal disagree now: reopen, which replays the journal (the truth).
            self._close_part(part)
            self._db(part)
            raise
        if "box" in entry:
            # Before the compaction below: the journal may only be emptied once boxes.json has this.
            self._set_box(entry["box"]["doc_id"], entry["box"]["dev"])
            self._boxes_behind = True
        if part in self._part_docs:
            self._part_docs[part] += (ev_id is not None) + len(out_ids)
        if self._journals[part].entries_since_reset >= COMPACT_EVERY:
            self._compact(part)
        return ev_id, out_ids

    def _load(self) -> None:
        # Box records first: an events journal replayed below may carry a newer one (`add_event`).
        self._load_boxes()
        timeline: dict[str, Entry] = {}  # by key: a doubled record is listed once
        for part in self._partitions():
            db = self._db(part)
            self._note_segment(part, len(db.table(EVENTS)) + len(db.table(OUTBOX)))
            for doc in db.table(EVENTS).all():  # one read builds both the dedupe and timeline indexes
                if not _event_doc_ok(doc):
                    self._unreadable_doc(part, EVENTS, doc.doc_id)
                    continue
                self._event_index[doc["key"]] = (part, doc.doc_id)
                timeline[doc["key"]] = entry_for(doc)
            for doc in db.table(OUTBOX).all():
                if not _outbox_doc_ok(doc):
                    self._unreadable_doc(part, OUTBOX, doc.doc_id)
                    continue
                self._outbox_index[doc["id"]] = (part, doc.doc_id)
                self._outbox_counts[doc["state"]] = self._outbox_counts.get(doc["state"], 0) + 1
                if doc["state"] in OPEN_OUTBOX_STATES:
                    self._open_outbox[doc["id"]] = dict(doc)
        self._timeline.build(timeline.values())
        del timeline
        # Every journal has been read: memory holds every box write up to `_box_rev`, and the next
        # rewrite of boxes.json may say so.
        self._loading = False
        self._purged_journal = self._journal(PURGED_JOURNAL, _valid_purged_entry)
        for e in self._read_journal(self._purged_journal):
            self._purged.update(e["keys"])
            self._purged_lines.append(e)

    def _load_boxes(self) -> None:
        self._devices_db = self._open_tinydb("boxes.json", _classify_device_doc)
        # Box records change with every event; rewriting the whole file each time made one event cost
        # O(boxes) (40 % of the gateway's GIL time with 1,000 boxes, bench/ingest.py). Journal them
        # like events: one fsync'd line per change (in the event's own line when the change comes with
        # an event), the file rewritten every COMPACT_EVERY changes.
        storage = _atomic_storage(self._devices_db)
        self._devices_journal = self._journal("boxes.json" + JOURNAL_SUFFIX, _valid_device_entry)
        data = storage.read() or {}
        for doc in (data.get(BOXES_META) or {}).values():
            if _box_rev({BOX_REV: doc.get("box_rev")}):
                self._boxes_file_rev = max(self._boxes_file_rev, doc["box_rev"])
        self._box_rev = self._boxes_file_rev
        for doc_id, doc in (data.get(DEVICES) or {}).items():
            if not (isinstance(doc.get("device"), str) and doc_id.isdigit()):
                self._unreadable_doc("boxes.json", DEVICES, doc_id)  # damage that still parses
                continue
            self._devices[doc["device"]] = {**doc, "_doc_id": int(doc_id)}
            self._box_rev = max(self._box_rev, _box_rev(doc))
        entries = self._read_journal(self._devices_journal)
        for e in entries:  # in order; a line the file already has is skipped (`_merge_box`)
            self._merge_box(e)
        if entries or self._devices_journal.path.exists():
            storage._dirty = True
            self._durable_flush(storage, self._devices_journal, len(entries) + COMPACT_EVERY)
            if entries:
                log.info("boxes.json: replayed %d journal entries", len(entries))

    def _merge_box(self, entry: dict[str, Any]) -> bool:
        """Apply a box record read from a journal if it is newer than what the store holds for that box
        (by revision); records from before revisions existed (0) apply in journal order, as they always
        did. True if applied."""
        rec = entry["dev"]
        rev = _box_rev(rec)
        self._box_rev = max(self._box_rev, rev)
        if rev and rev <= self._boxes_file_rev:
            return False  # the file has this write or a later one, or the box was deleted since
        if rev < _box_rev(self._devices.get(rec["device"])):
            return False
        self._set_box(entry["doc_id"], rec)
        return True

    def _box_doc_id(self, device: str, table: dict[str, Any]) -> int:
        """The doc id of a box's record: its own if it has one, else the next free one."""
        cur = self._devices.get(device)
        if cur is not None:
            return int(cur["_doc_id"])
        return max((int(k) for k in table if k.isdigit()), default=0) + 1

    def _set_box(self, doc_id: int, rec: dict[str, Any]) -> None:
        """Put a (durable) box record into memory: boxes.json's data, written at its next rewrite."""
        assert self._devices_db is not None
        storage = _atomic_storage(self._devices_db)
        data = storage.read() or {}
        table = data.setdefault(DEVICES, {})
        cur = self._devices.get(rec["device"])
        if cur is not None:
            doc_id = int(cur["_doc_id"])
        elif str(doc_id) in table:  # taken by another box (its id was reused after a purge)
            doc_id = self._box_doc_id(rec["device"], table)
        rec = {k: v for k, v in rec.items() if k != "_doc_id"}
        table[str(doc_id)] = rec
        storage.write(data)  # buffered: memory only; a journal already holds the record
        self._devices_db.table(DEVICES).clear_cache()
        self._devices[rec["device"]] = {**rec, "_doc_id": doc_id}

    def _new_box_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """A journal line for a box record: its doc id and the record with the next revision."""
        assert self._devices_db is not None
        table = (_atomic_storage(self._devices_db).read() or {}).get(DEVICES) or {}
        rec = {k: v for k, v in record.items() if k not in ("_doc_id", BOX_REV)}
        if not isinstance(rec.get("device"), str):
            raise StoreError(f"a box record needs its device id, got {rec.get('device')!r}")
        self._box_rev += 1  # taken even if the write fails: a revision is never given twice
        rec[BOX_REV] = self._box_rev
        return {"doc_id": self._box_doc_id(rec["device"], table), "dev": rec}

    def _flush_boxes(self) -> None:
        """Rewrite boxes.json from memory and empty its journal (raises OSError, leaving both)."""
        assert self._devices_db is not None
        storage = _atomic_storage(self._devices_db)
        data = storage.read() or {}
        # While opening, a journal not read yet may hold a box write newer than the file: claim only
        # what the file already claimed, so that write still wins at the next open if we crash now.
        claim = self._boxes_file_rev if self._loading else self._box_rev
        data[BOXES_META] = {"1": {"box_rev": claim}}
        storage.write(data)
        storage._dirty = True
        storage.flush()
        self._devices_journal.reset()
        self._boxes_file_rev = claim
        self._boxes_behind = False

    def _unreadable_doc(self, part: str, table: str, doc_id: int | str) -> None:
        """A doc of the wrong shape (damage that still parses): left in its file, never indexed."""
        self._problems["records_unreadable"] += 1
        log.warning(
            "%s: %s doc %s is damaged (fields missing); left in the file, not listed", part, table, doc_id
        )

    def _note_segment(self, part: str, docs: int) -> None:
        """Remember `part` as its period's latest segment if it is (files are visited oldest first)."""
        period = _period_of(part)
        latest = self._latest_segment.get(period)
        if latest is None or _part_sort_key(part) >= _part_sort_key(latest):
            if latest is not None:
                self._part_docs.pop(latest, None)
            self._latest_segment[period] = part
            self._part_docs[part] = docs

    def period_for(self, when: float) -> str:
        """The name of the first segment of the period (month or day) `when` falls in."""
        tm = time.gmtime(when)
        if self.partition == "day":
            return f"events-{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}.json"
        return f"events-{tm.tm_year:04d}-{tm.tm_mon:02d}.json"

    def part_for(self, when: float) -> str:
        """The segment that records stamped `when` go to now: its period's latest, or a new one once
        that holds `segment_records` records (a new segment is created by its first journal line)."""
        period = self.period_for(when)
        part = self._latest_segment.get(period)
        if part is None:
            part = period
        elif self._part_docs.get(part, 0) >= self.segment_records:
            part = _segment_name(period, _part_sort_key(part)[3] + 1)
        else:
            return part
        self._note_segment(part, 0)
        return part

    # --- events -------------------------------------------------------------------

    def has_event(self, device: str, event_id: str) -> bool:
        """Stored, or stored once and purged since (either way: ack it, do not store it)."""
        with self._lock:
            key = event_key(device, event_id)
            return key in self._event_index or key in self._purged

    def event_count(self) -> int:
        with self._lock:
            return len(self._event_index)

    def partition_of(self, device: str, event_id: str) -> str | None:
        """The partition file an event is stored in, or None."""
        with self._lock:
            loc = self._event_index.get(event_key(device, event_id))
            return loc[0] if loc is not None else None

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(
                partitions=tuple(self._partitions()),
                open_partitions=tuple(self._dbs),
                open_events=sum(
                    len(t) for db in self._dbs.values() for t in (_atomic_storage(db).read() or {}).values()
                ),
                read_cached_partitions=tuple(self._read_cache),
                read_cached_events=sum(len(t) for t in self._read_cache.values()),
                cached_records=len(self._record_cache),
                events=len(self._event_index),
            )

    def _photo_base(self, device: str, event_id: str, received_at: float) -> Path:
        if not (valid_device_id(device) and valid_msg_id(event_id)):
            raise StoreError(f"refusing a path built from bad ids {device!r}/{event_id!r}")
        tm = time.gmtime(received_at)
        folder = self.photo_dir / device / f"{tm.tm_year:04d}-{tm.tm_mon:02d}"
        base = (folder / event_id).resolve()
        if self.photo_dir not in base.parents:
            raise StoreError("photo path escapes the data folder")
        return base

    def write_photos(
        self, device: str, event_id: str, received_at: float, variants: dict[str, bytes]
    ) -> None:
        """Write photo files (variant -> bytes), each fsync'd and renamed into place, before the record."""
        base = self._photo_base(device, event_id, received_at)
        base.parent.mkdir(parents=True, exist_ok=True)
        for variant, data in variants.items():
            atomic_write_bytes(base.with_name(base.name + _PHOTO_SUFFIX[variant]), data)
        fsync_dir(base.parent)

    def add_event(
        self,
        record: EventRecord,
        outbox: Iterable[OutboxRecord] = (),
        device: dict[str, Any] | None = None,
        outbox_updates: Iterable[tuple[str, dict[str, Any]]] = (),
    ) -> bool:
        """Store an event, its outbox entries, (`device`) its box's new record and (`outbox_updates`,
        (alert id, fields) pairs: the burst merge, gateway.alerts.merge_into_burst) its changes to open
        alerts in one durable write (one journal line, one fsync): after a crash all of them exist or
        none does. False if already stored (then nothing is written: box record and alerts stay as
        they are).

        Each updated alert must be one of `mergeable_outbox(record["received_at"])`: open, not being
        sent, and in the file this event goes to (a line is replayed into its own file only). Plan the
        updates and call this inside one `exclusive()` block, so no send starts in between; an update
        that does not qualify raises StoreError and nothing is written."""
        key = event_key(record["device"], record["id"])
        outbox = list(outbox)
        updates = [(aid, dict(f)) for aid, f in outbox_updates]
        if device is not None and device.get("device") != record["device"]:
            raise StoreError(
                f"box record {device.get('device')!r} given with an event of {record['device']!r}"
            )
        with self._lock:
            if key in self._event_index or key in self._purged:
                return False
            part = self.part_for(record["received_at"])
            entry: dict[str, Any] = {"ev": {**record, "key": key}, "ob": [dict(o) for o in outbox]}
            if updates:
                entry["ups"] = [
                    {"up": aid, "doc_id": self._mergeable_doc_id(aid, part), "f": f} for aid, f in updates
                ]
            if device is not None:
                entry["box"] = self._new_box_record(device)
            doc_id, out_ids = self._commit(part, entry)
            assert doc_id is not None
            self._event_index[key] = (part, doc_id)
            self._timeline.add(entry_for(record))
            for o, oid in zip(outbox, out_ids, strict=True):
                self._index_outbox(part, oid, dict(o))
            for aid, f in updates:
                old = self._open_outbox[aid]
                self._outbox_changed(aid, old, {**old, **f})
        if record["photo"] is None:
            # An earlier attempt may have written this event's photo files and crashed before its
            # record; if the box then dropped the photo (full spool) they would belong to nothing.
            base = self._photo_base(record["device"], record["id"], record["received_at"])
            for suffix in _PHOTO_SUFFIX.values():
                base.with_name(base.name + suffix).unlink(missing_ok=True)
        return True

    def get_event(self, device: str, event_id: str) -> EventRecord | None:
        with self._lock:
            key = event_key(device, event_id)
            loc = self._event_index.get(key)
            if loc is None:
                return None
            cached = self._record_cache.get(key)
            if cached is not None:
                return copy.copy(cached)
            # Read, never open for writing: opening an old segment would evict (and compact) the
            # one being written just because someone looked at an old photo.
            doc = self._events_for_read(loc[0]).get(str(loc[1]))
            return _event_out(doc) if isinstance(doc, dict) else None

    def list_events(
        self,
        *,
        device: str | None = None,
        type: str | tuple[str, ...] | None = None,
        since: float | None = None,
        until: float | None = None,
        before: tuple[float, int, str] | None = None,
        limit: int = 50,
    ) -> list[EventRecord]:
        """Newest first by (ts, seq, id, device); `before` is the (ts, seq, id) of the previous page's
        last row.

        The page comes from the in-memory timeline index (`gateway.event_index`): only the records on
        the page are read, grouped by file so each file is opened at most once per call.
        """
        limit = max(0, min(int(limit), 1000))
        with self._lock:
            entries = self._timeline.page(
                device=device, type=type, since=since, until=until, before=before, limit=limit
            )
            out: list[EventRecord | None] = [None] * len(entries)
            by_part: dict[str, list[tuple[int, str, int]]] = {}
            for pos, (_ts, _seq, eid, dev, _type) in enumerate(entries):
                key = event_key(dev, eid)
                cached = self._record_cache.get(key)
                if cached is not None:
                    self._record_cache.move_to_end(key)
                    out[pos] = cached
                    continue
                part, doc_id = self._event_index[key]
                by_part.setdefault(part, []).append((pos, key, doc_id))
            for part, wanted in by_part.items():
                closed = part not in self._dbs
                table = self._events_for_read(part)
                for pos, key, doc_id in wanted:
                    doc = table.get(str(doc_id))
                    if not isinstance(
                        doc, dict
                    ):  # index and file disagree: say so, never crash the dashboard
                        log.error("%s: event doc %d is in the index but not in the file", part, doc_id)
                        continue
                    out[pos] = rec = _event_out(doc)
                    if closed:
                        self._record_cache[key] = rec
                        if len(self._record_cache) > _RECORD_CACHE:
                            self._record_cache.popitem(last=False)
        return [copy.copy(r) for r in out if r is not None]  # callers may change their copy

    def _events_for_read(self, part: str) -> dict[str, Any]:
        """A partition's raw events table (doc id -> record), for reading a page of the timeline.

        An open partition is read from memory. Any other is read from its file without opening it for
        writing: opening would evict (and so compact, a whole-file rewrite) the month being written,
        just because someone browsed history. Only the events table is parsed (it comes first in the
        file; the outbox after it is the bigger part). A closed partition's journal is empty (closing
        compacts) unless a crash left one: then the ordinary open replays it.
        """
        db = self._dbs.get(part)
        if db is not None:
            return (db.storage.read() or {}).get(EVENTS, {})
        table = self._read_cache.get(part)
        if table is not None:
            self._read_cache.move_to_end(part)
            return table
        journal = self.db_dir / (part + JOURNAL_SUFFIX)
        if journal.exists() and journal.stat().st_size:
            return (self._db(part).storage.read() or {}).get(EVENTS, {})
        table = _read_events_table(self.db_dir / part)
        if table is None:  # damaged since it was last opened: the ordinary open salvages it
            return (self._db(part).storage.read() or {}).get(EVENTS, {})
        self._read_cache[part] = table
        while len(self._read_cache) > 1 and (
            len(self._read_cache) > _READ_CACHED_PARTITIONS
            or sum(len(t) for t in self._read_cache.values()) > _READ_CACHED_EVENTS
        ):
            self._read_cache.popitem(last=False)
        return table

    def _outbox_for_read(self, part: str) -> dict[str, Any]:
        """A partition's raw outbox table, from memory if open, else from its file (not opened for
        writing, for the same reason as `_events_for_read`; not cached: listing old alerts is rare)."""
        db = self._dbs.get(part)
        journal = self.db_dir / (part + JOURNAL_SUFFIX)
        if db is None and journal.exists() and journal.stat().st_size:
            db = self._db(part)  # a crash left changes in the journal: the ordinary open replays them
        if db is not None:
            return (db.storage.read() or {}).get(OUTBOX, {})
        try:
            raw = (self.db_dir / part).read_bytes()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError:
            data = None
        if not isinstance(data, dict):  # damaged: the ordinary open salvages it
            return (self._db(part).storage.read() or {}).get(OUTBOX, {})
        return data.get(OUTBOX, {})

    def photo_path(self, device: str, event_id: str, variant: PhotoVariant) -> Path | None:
        if variant not in _PHOTO_SUFFIX or not (valid_device_id(device) and valid_msg_id(event_id)):
            return None
        rec = self.get_event(device, event_id)
        if rec is None or rec.get("photo") is None:
            return None
        base = self._photo_base(device, event_id, rec["received_at"])
        path = base.with_name(base.name + _PHOTO_SUFFIX[variant])
        return path if path.is_file() else None

    # --- outbox -------------------------------------------------------------------

    def _index_outbox(self, part: str, doc_id: int, rec: dict[str, Any]) -> None:
        self._outbox_index[rec["id"]] = (part, doc_id)
        self._outbox_counts[rec["state"]] = self._outbox_counts.get(rec["state"], 0) + 1
        if rec["state"] in OPEN_OUTBOX_STATES:
            self._open_outbox[rec["id"]] = rec

    def add_outbox(
        self, records: Iterable[OutboxRecord], when: float, device: dict[str, Any] | None = None
    ) -> None:
        """Outbox entries that belong to no event (offline, back online, low battery), and (`device`)
        the box record that says they were planned (`offline_alerted`...), in one durable write like
        `add_event`: a crash can no longer keep the "alerted" mark and lose the alerts. Without
        entries the box record alone goes to boxes.json's journal (`put_device`)."""
        records = list(records)
        if not records:
            if device is not None:
                self.put_device(device)
            return
        with self._lock:
            part = self.part_for(when)
            entry: dict[str, Any] = {"ob": [dict(r) for r in records]}
            if device is not None:
                entry["box"] = self._new_box_record(device)
            _, ids = self._commit(part, entry)
            for r, oid in zip(records, ids, strict=True):
                self._index_outbox(part, oid, dict(r))

    def update_outbox(
        self, alert_id: str, *, if_state: tuple[str, ...] | None = None, **fields: Any
    ) -> dict[str, Any] | None:
        """Change an outbox entry durably; returns the new record. With `if_state`, only an entry in
        one of those states changes (else None): a check and a write no other thread comes between."""
        with self._lock:
            loc = self._outbox_index.get(alert_id)
            if loc is None:
                return None
            old = self._db(loc[0]).table(OUTBOX).get(doc_id=loc[1])
            if old is None or (if_state is not None and old.get("state") not in if_state):
                return None
            self._commit(loc[0], {"up": alert_id, "doc_id": loc[1], "f": fields})
            new = {**old, **fields}
            self._outbox_changed(alert_id, old, new)
            return new

    def _outbox_changed(self, alert_id: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Counts and the open list after a (durable) change of one entry."""
        if old["state"] != new["state"]:
            self._outbox_counts[old["state"]] -= 1
            self._outbox_counts[new["state"]] = self._outbox_counts.get(new["state"], 0) + 1
        if new["state"] in OPEN_OUTBOX_STATES:
            self._open_outbox[alert_id] = new
        else:
            self._open_outbox.pop(alert_id, None)

    def exclusive(self) -> threading.RLock:
        """`with store.exclusive():` no other thread reads or writes the store (nor claims an alert
        for sending, `claim_outbox`) until the block ends. For a write planned from what was just read:
        the burst merge reads `mergeable_outbox`, plans, and writes with `add_event`. Keep it short:
        ingest and the dispatchers wait."""
        return self._lock

    def claim_outbox(self, alert_id: str, now: float) -> dict[str, Any] | None:
        """Take an open entry for sending: its current record if it is pending or failed and due at
        `now`, else None. Until `release_outbox` (after its result is written) it is in flight: no
        burst merge changes it (`mergeable_outbox`), so what is sent is what the record says was sent.
        In memory only: after a restart nothing is in flight."""
        with self._lock:
            rec = self._open_outbox.get(alert_id)
            if rec is None or (rec.get("next_attempt_at") or 0) > now:
                return None
            self._in_flight.add(alert_id)
            return dict(rec)

    def release_outbox(self, alert_id: str) -> None:
        """The send `claim_outbox` allowed is over (its result written, or it never started)."""
        with self._lock:
            self._in_flight.discard(alert_id)

    def mergeable_outbox(self, received_at: float, device: str | None = None) -> list[dict[str, Any]]:
        """The open entries an event received at `received_at` may change in its own journal line
        (`add_event(outbox_updates=...)`): not in flight, and stored in the file that event goes to;
        with `device`, only that box's (a burst joins its own box's alert only). Oldest first. An alert
        in an older file (the segment rolled over, a new month began) is left alone: a grouped delivery
        then starts a new alert."""
        with self._lock:
            part = self.part_for(received_at)
            rows = [
                dict(r)
                for aid, r in self._open_outbox.items()
                if (device is None or r.get("device") == device)
                and aid not in self._in_flight
                and self._outbox_index.get(aid, ("",))[0] == part
            ]
        return sorted(rows, key=lambda r: r["created_at"])

    def _mergeable_doc_id(self, alert_id: str, part: str) -> int:
        """The doc id of an alert an event's line may change (see `mergeable_outbox`), or StoreError."""
        loc = self._outbox_index.get(alert_id)
        if alert_id not in self._open_outbox or alert_id in self._in_flight or loc is None or loc[0] != part:
            raise StoreError(
                f"alert {alert_id!r} cannot change with this event (not open, in flight, or in another file)"
            )
        return loc[1]

    def get_outbox(self, alert_id: str) -> dict[str, Any] | None:
        with self._lock:
            if alert_id in self._open_outbox:
                return dict(self._open_outbox[alert_id])
            loc = self._outbox_index.get(alert_id)
            if loc is None:
                return None
            doc = self._db(loc[0]).table(OUTBOX).get(doc_id=loc[1])
            return dict(doc) if doc else None

    def open_outbox(self) -> list[dict[str, Any]]:
        """Pending and failed entries (the dispatcher's work list), oldest first."""
        with self._lock:
            return sorted((dict(r) for r in self._open_outbox.values()), key=lambda r: r["created_at"])

    def outbox_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._outbox_counts)

    def list_outbox(self, state: str | None = None, limit: int = 100) -> list[OutboxRecord]:
        """Newest first."""
        limit = max(0, min(int(limit), 1000))
        with self._lock:
            if state in OPEN_OUTBOX_STATES:
                rows = [r for r in self._open_outbox.values() if r["state"] == state]
            else:
                rows = []
                for part in reversed(self._partitions()):
                    rows += [
                        dict(d) for d in self._outbox_for_read(part).values() if state in (None, d["state"])
                    ]
                    if len(rows) >= limit:
                        break
        rows.sort(key=lambda r: r["created_at"], reverse=True)
        return [_outbox_out(r) for r in rows[:limit]]

    # --- devices ------------------------------------------------------------------

    def get_device(self, device: str) -> dict[str, Any] | None:
        with self._lock:
            d = self._devices.get(device)
            return dict(d) if d else None

    def list_devices(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(d) for _, d in sorted(self._devices.items())]

    def put_device(self, record: dict[str, Any]) -> None:
        """Insert or replace a box record durably (the file holds one small record per box)."""
        assert self._devices_db is not None
        with self._lock:
            line = self._new_box_record(record)
            try:
                self._devices_journal.append(line)  # durable from here
            except OSError:
                self._problems["write_errors"] += 1
                raise
            self._set_box(line["doc_id"], line["dev"])
            if self._devices_journal.entries_since_reset >= COMPACT_EVERY:
                storage = _atomic_storage(self._devices_db)
                self._durable_flush(storage, self._devices_journal, self._devices_journal.entries_since_reset)

    # --- purge (`parcelbox device forget NAME --purge`) -------------------------------

    def purge_begin(self, device: str, now: float) -> PurgePlan:
        """Start deleting a box's history: what it has stored now leaves every listing at once.

        Its event keys go to the tombstone journal first (fsync'd), then out of the in-memory indexes;
        the files are rewritten one segment at a time by `purge_part`, so ingest waits for one segment
        at most. Until the last one is done the records are still on disk: a crash leaves them there
        and the purge, run again (the request file stays until `purge_finish`), plans them again.
        Events the box sends after this moment are new history and stay.
        """
        if not valid_device_id(device):
            raise StoreError(f"refusing to purge a bad device id {device!r}")
        prefix = device + "/"  # device ids have no "/": the prefix selects exactly this box's keys
        with self._lock:
            keys = frozenset(k for k in self._event_index if k.startswith(prefix))
            new = sorted(keys - self._purged)
            for i in range(0, len(new), _PURGED_PER_LINE):
                chunk = new[i : i + _PURGED_PER_LINE]
                line = {"dev": device, "keys": chunk, "at": now}
                try:
                    self._purged_journal.append(line)
                except OSError:
                    self._problems["write_errors"] += 1
                    raise
                self._purged.update(chunk)
                self._purged_lines.append(line)
            for k in keys:
                del self._event_index[k]
                self._record_cache.pop(k, None)
            self._timeline.remove_if(lambda e: e[3] == device)
            for aid in [a for a, r in self._open_outbox.items() if r.get("device") == device]:
                rec = self._open_outbox.pop(aid)
                self._outbox_index.pop(aid, None)
                self._outbox_counts[rec["state"]] -= 1
            return PurgePlan(device=device, started_at=now, keys=keys, parts=self._partitions())

    def purge_part(self, plan: PurgePlan, part: str) -> int:
        """Remove the box's records from one segment: its planned events, and its outbox entries
        created before the purge began (a pending or failed alert is cancelled, never sent). Returns
        how many records left the file.

        An open segment gets one fsync'd journal line (replayed in order after a crash) and is then
        compacted; a closed one is rewritten from its file without being opened for writing (the
        2-segment cache stays as it is), by atomic replace: after a crash the file is the old one or
        the new one. Other records keep their doc ids, so the indexes stay right.
        """
        device = plan.device
        with self._lock:
            journal = self.db_dir / (part + JOURNAL_SUFFIX)
            data: dict[str, Any] | None = None
            if part not in self._dbs and not (journal.exists() and journal.stat().st_size):
                try:
                    raw = (self.db_dir / part).read_bytes()
                except FileNotFoundError:
                    return 0  # retention removed it meanwhile
                try:
                    parsed = json.loads(raw) if raw.strip() else {}
                    data = parsed if isinstance(parsed, dict) else None
                except ValueError:
                    data = None  # damaged: the ordinary open salvages it (below)
            db = None
            if data is None:
                db = self._db(part)
                data = _atomic_storage(db).read() or {}
            events, outbox = data.get(EVENTS) or {}, data.get(OUTBOX) or {}
            entry = {
                "rm": device,
                "k": [
                    d["key"]
                    for d in events.values()
                    if d.get("key") in plan.keys and d.get("device") == device
                ],
                "o": [
                    d["id"]
                    for d in outbox.values()
                    if d.get("device") == device
                    and isinstance(d.get("id"), str)
                    and _num(d.get("created_at"))
                    and d["created_at"] <= plan.started_at
                ],
            }
            if not entry["k"] and not entry["o"]:
                return 0
            gone_docs = {d["id"]: (i, d.get("state")) for i, d in outbox.items() if d.get("id") in entry["o"]}
            if db is not None:
                self._commit(part, entry)
                if not self._compact(part):
                    log.warning("%s: purged records are gone from memory; the journal holds the purge", part)
            else:
                _remove_box_docs(data, entry)
                atomic_write_bytes(self.db_dir / part, json.dumps(data, separators=(",", ":")).encode())
                self._read_cache.pop(part, None)
            for oid, (doc_id, state) in gone_docs.items():
                if self._outbox_index.get(oid) == (part, int(doc_id)):
                    del self._outbox_index[oid]  # not open (those left at purge_begin): count it here
                    if state in self._outbox_counts:
                        self._outbox_counts[state] -= 1
            plan.removed["events"] += len(entry["k"])
            plan.removed["alerts"] += len(entry["o"])
            return len(entry["k"]) + len(entry["o"])

    def purge_finish(self, plan: PurgePlan) -> dict[str, int]:
        """Delete the box's photo files (every file of its folders that belongs to no stored event,
        so also leftovers of a crash) and its box record, unless it was heard from after the purge
        began. Returns what was removed."""
        device = plan.device
        with self._lock:
            folder = (self.photo_dir / device).resolve()
            if self.photo_dir not in folder.parents or folder.name != device:
                raise StoreError("photo path escapes the data folder")
            for month in sorted(folder.iterdir()) if folder.is_dir() else []:
                if month.is_symlink() or not month.is_dir():
                    continue
                for f in list(month.iterdir()):
                    eid = f.name.split(".", 1)[0]
                    if f.is_file() and event_key(device, eid) not in self._event_index:
                        f.unlink(missing_ok=True)
                        plan.removed["photo_files"] += 1
                if not any(month.iterdir()):
                    month.rmdir()
                fsync_dir(folder)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                fsync_dir(self.photo_dir)
            rec = self._devices.get(device)
            if rec is not None and (rec.get("last_seen") or 0.0) <= plan.started_at:
                self._remove_device(device)
                plan.removed["box_records"] += 1
        return dict(plan.removed)

    def _remove_device(self, device: str) -> None:
        """Drop a box record: the file is rewritten without it (atomic) and the journal emptied. The
        file's revision mark covers every earlier write of the box, so a crash before the journal is
        emptied, or its records still in events journals, do not bring it back at the next open (lines
        from before revisions existed do; the re-run purge drops the record again)."""
        assert self._devices_db is not None
        storage = _atomic_storage(self._devices_db)
        rec = self._devices.pop(device)
        data = storage.read() or {}
        data.setdefault(DEVICES, {}).pop(str(rec["_doc_id"]), None)
        storage.write(data)
        self._devices_db.table(DEVICES).clear_cache()
        # The file's revision mark covers the box's records still in events journals: none of them
        # brings the box back at the next open.
        self._flush_boxes()

    def purge_device(self, device: str, now: float) -> dict[str, int]:
        """The whole purge in one call (the CLI, with the gateway stopped)."""
        plan = self.purge_begin(device, now)
        for part in plan.parts:
            self.purge_part(plan, part)
        return self.purge_finish(plan)

    # --- retention ----------------------------------------------------------------

    def apply_retention(self, now: float, retention_days: int, photo_retention_days: int) -> dict[str, int]:
        """Delete month files and photo folders older than the retention settings (0 = keep)."""
        removed = {"partitions": 0, "photo_folders": 0}
        with self._lock:
            if retention_days > 0:
                cutoff = now - retention_days * 86_400
                for part in self._partitions():
                    if _partition_end(part) > cutoff:
                        break
                    if any(
                        loc[0] == part for aid, loc in self._outbox_index.items() if aid in self._open_outbox
                    ):
                        continue  # an alert still waiting to be sent keeps its file alive
                    if self._boxes_behind:
                        # Its journal may hold the only copy of a box record (`add_event(device=...)`).
                        try:
                            self._flush_boxes()
                        except OSError as exc:
                            self._problems["compaction_errors"] += 1
                            log.warning("retention waits: boxes.json could not be rewritten (%s)", exc)
                            break
                    self._close_part(part)
                    if self._latest_segment.get(_period_of(part)) == part:
                        del self._latest_segment[_period_of(part)]
                    self._part_docs.pop(part, None)
                    Journal(self.db_dir / (part + JOURNAL_SUFFIX)).remove()
                    gone = {k for k, v in self._event_index.items() if v[0] == part}
                    self._event_index = {k: v for k, v in self._event_index.items() if v[0] != part}
                    self._timeline.remove_if(functools.partial(_entry_in, gone))
                    for k in gone:
                        self._record_cache.pop(k, None)  # the same key may be stored again later
                    for aid in [a for a, loc in self._outbox_index.items() if loc[0] == part]:
                        del self._outbox_index[aid]
                    (self.db_dir / part).unlink(missing_ok=True)
                    removed["partitions"] += 1
                if removed["partitions"]:
                    fsync_dir(self.db_dir)
                    self._recount_outbox()
                removed["tombstones"] = self._prune_tombstones(cutoff)
            if photo_retention_days > 0:
                cutoff = now - photo_retention_days * 86_400
                for folder in self.photo_dir.glob("*/*"):
                    if not folder.is_dir():
                        continue
                    end = _partition_end(f"events-{folder.name}.json")
                    if end <= cutoff:
                        shutil.rmtree(folder, ignore_errors=True)
                        removed["photo_folders"] += 1
        return removed

    def _prune_tombstones(self, cutoff: float) -> int:
        """Forget purged keys once retention would have deleted the events they stand for. Returns how
        many keys went.

        A tombstone makes a re-sent purged event a duplicate instead of new history. Dedupe of events
        that were not purged lasts as long as retention keeps them (a box re-sending an event older
        than that stores it again), and a box's spool has no age limit to wait for, so a purged event
        is remembered exactly as long: every event of a purge was received before the purge began,
        so once the partition the purge's own time falls in is past the cutoff, so are all of theirs.
        A line without its time (none is written so) is kept. The journal is rewritten atomically
        without the lines that go (its damaged stretches are quarantined first); if that fails,
        nothing is forgotten."""
        keep: list[dict[str, Any]] = []
        gone: list[dict[str, Any]] = []
        for line in self._purged_lines:
            at = line.get("at")
            expired = isinstance(at, (int, float)) and _partition_end(self.period_for(float(at))) <= cutoff
            (gone if expired else keep).append(line)
        if not gone:
            return 0
        journal = self._purged_journal
        try:
            journal.replace(keep)
        except OSError as exc:
            self._problems["write_errors"] += 1
            log.warning("%s: could not drop expired tombstones (%s); kept", journal.path.name, exc)
            return 0
        self._purged_lines = keep
        before = len(self._purged)
        # Rebuilt from the lines kept: a key stored again after a purge and purged again is in both.
        self._purged = {k for line in keep for k in line["keys"]}
        n = before - len(self._purged)
        log.info("retention forgot %d purged event key(s) of %d purge line(s)", n, len(gone))
        return n

    def _recount_outbox(self) -> None:
        counts = dict.fromkeys(OUTBOX_STATES, 0)
        for part in self._partitions():
            for doc in self._outbox_for_read(part).values():
                counts[doc["state"]] = counts.get(doc["state"], 0) + 1
        self._outbox_counts = counts

    def integrity(self) -> dict[str, int]:
        """Damage found and writes refused since start, and the files kept in quarantine (ever)."""
        with self._lock:
            out = {
                k: self._problems.get(k, 0)
                for k in (
                    "journal_damaged",
                    "journal_torn_tails",
                    "files_salvaged",
                    "records_unreadable",
                    "write_errors",
                    "compaction_errors",
                )
            }
        try:
            names = [p.name for p in self.quarantine_dir.iterdir() if p.suffix == ".bad"]
        except OSError:
            names = []
        out["quarantined_files"] = len(names)
        out["compaction_failing"] = len(self._compaction_failing)
        # Torn tails are what a power cut mid-append leaves (never acked): kept, but not damage.
        out["quarantined_damage"] = sum(1 for n in names if ".torn." not in n)
        return out

    def close(self) -> None:
        with self._lock:
            for part in list(self._dbs):
                self._compact(part)
                self._close_part(part)
            if self._devices_db is not None:
                storage = _atomic_storage(self._devices_db)
                if self._devices_journal.entries_since_reset or storage._dirty:
                    self._durable_flush(
                        storage, self._devices_journal, self._devices_journal.entries_since_reset
                    )
                self._devices_journal.close()
                self._devices_db.close()
            self._purged_journal.close()


def _remove_box_docs(data: dict[str, Any], entry: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Apply a purge entry to a file's raw tables: drop the events whose key it names and the outbox
    entries whose id it names, each only if the record is of the box named (never another box's).
    Returns the (event keys, outbox ids) removed. Other docs keep their doc ids."""
    device, keys, ids = entry["rm"], set(entry["k"]), set(entry["o"])
    gone_keys: set[str] = set()
    gone_ids: set[str] = set()
    events = data.get(EVENTS) or {}
    for doc_id in [i for i, d in events.items() if d.get("key") in keys and d.get("device") == device]:
        gone_keys.add(events.pop(doc_id)["key"])
    outbox = data.get(OUTBOX) or {}
    for doc_id in [i for i, d in outbox.items() if d.get("id") in ids and d.get("device") == device]:
        gone_ids.add(outbox.pop(doc_id)["id"])
    return gone_keys, gone_ids


def _next_id(table: dict[str, Any]) -> int:
    """Next TinyDB doc id for a raw table; ids only grow, so the last key is the largest (dicts keep order)."""
    if not table:
        return 1
    return int(next(reversed(table))) + 1


def _read_events_table(path: Path) -> dict[str, Any] | None:
    """The events table of a partition file, parsing only that table when it comes first (it does in
    every file this store writes); any other layout is parsed whole. None if the file is damaged."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        return None
    prefix = '{"' + EVENTS + '":'
    if raw.startswith(prefix):
        try:
            table, _end = _DECODER.raw_decode(raw, len(prefix))
        except ValueError:
            table = None
        if isinstance(table, dict):
            return table
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return None
    return data.get(EVENTS, {}) if isinstance(data, dict) else None


def _event_out(doc: dict[str, Any]) -> EventRecord:
    # A stored doc has every key (written from the same record type); cast: the checker cannot follow
    # a comprehension over the TypedDict's own keys.
    out = cast(EventRecord, {k: doc.get(k) for k in EventRecord.__annotations__ if k != "photo_dropped"})
    if doc.get("photo_dropped"):  # optional key: present only when the box dropped the photo
        out["photo_dropped"] = True
    return out


def _outbox_out(doc: dict[str, Any]) -> OutboxRecord:
    return cast(OutboxRecord, {k: doc.get(k) for k in OutboxRecord.__annotations__})
