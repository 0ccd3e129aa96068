"""An in-memory, sorted index of stored events, so the dashboard's timeline never scans history.

Each event is one small tuple `(ts, seq, id, device, type)`, kept in sorted lists: one for all events,
one per box, one per type and one per (box, type) pair. Whatever filters a query has, it picks the
list that already holds exactly the matching boxes/types; the remaining filters (`since`, `until`
and the keyset cursor `before`) are bounds on `(ts, id)`, found by bisection. A page is then a
slice: O(log n + limit) whatever the history, and a type that never occurs has no list at all.

The order is `(ts, seq, id, device)`: a box stamps whole seconds, so events of one second are
told apart by the box's own counter `seq` (the order it saw them in), not by their random ids.
`before=(ts, seq, id)` excludes every event whose `(ts, seq, id)` is at or after the cursor. Deliveries arrive mostly in time order,
so an insert is usually an append; an out-of-order one is a bisection plus a move of the entries
after it (a `memmove` of pointers, short because late events are late by seconds or minutes).

Memory: about 4 list slots + one 4-tuple + the id string per event (device and type strings are
interned and shared): roughly 150 bytes per event, ~15 MB at 100,000 events.
"""

from __future__ import annotations

import heapq
import itertools
import math
import sys
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Entry = tuple[float, int, str, str, str]  # (ts, seq, event id, device, type)
Cursor = tuple[float, int, str]  # (ts, seq, event id) of the last row of the previous page


def entry_for(doc: Mapping[str, Any]) -> Entry:
    """The index entry of a stored event record (ts falls back to the receive time if unusable)."""
    seq = doc.get("seq")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else 0
    return (_sort_ts(doc), seq, str(doc["id"]), sys.intern(str(doc["device"])), sys.intern(str(doc["type"])))


def _sort_ts(doc: Mapping[str, Any]) -> float:
    # Records are validated before they are stored, but a bad ts in an old file must not make the
    # whole timeline unsortable (None vs float raises): fall back to when the gateway received it.
    for name in ("ts", "received_at"):
        v = doc.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return v
    return 0.0


def _add(lst: list[Entry], e: Entry) -> None:
    if not lst or lst[-1] < e:
        lst.append(e)  # the usual case: the newest event so far
    else:
        insort(lst, e)


class EventIndex:
    """Sorted event entries: all, per box, per type, per (box, type). Not thread-safe (the store locks)."""

    def __init__(self) -> None:
        self._all: list[Entry] = []
        self._by_device: dict[str, list[Entry]] = {}
        self._by_type: dict[str, list[Entry]] = {}
        self._by_pair: dict[tuple[str, str], list[Entry]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def build(self, entries: Iterable[Entry]) -> None:
        """Replace the content with `entries` (any order): one sort, then one pass to split them."""
        self._all = sorted(entries)  # files are read oldest first: nearly sorted, Timsort is ~linear
        self._split()

    def _split(self) -> None:
        self._by_device, self._by_type, self._by_pair = {}, {}, {}
        for e in self._all:  # in order, so every sub-list comes out sorted
            self._by_device.setdefault(e[3], []).append(e)
            self._by_type.setdefault(e[4], []).append(e)
            self._by_pair.setdefault((e[3], e[4]), []).append(e)

    def add(self, e: Entry) -> None:
        _add(self._all, e)
        _add(self._by_device.setdefault(e[3], []), e)
        _add(self._by_type.setdefault(e[4], []), e)
        _add(self._by_pair.setdefault((e[3], e[4]), []), e)

    def remove_if(self, drop: Callable[[Entry], bool]) -> int:
        """Remove every entry `drop` says to (retention): one pass over the index. Returns how many."""
        before = len(self._all)
        self._all = [e for e in self._all if not drop(e)]
        if len(self._all) != before:
            self._split()
        return before - len(self._all)

    def page(
        self,
        *,
        device: str | None = None,
        type: str | tuple[str, ...] | None = None,
        since: float | None = None,
        until: float | None = None,
        before: Cursor | None = None,
        limit: int = 50,
    ) -> list[Entry]:
        """Up to `limit` matching entries, newest first; bounds as in `GatewayPort.list_events`.

        Several types (the dashboard's default "deliveries and pickups"): one page per type, merged;
        still O(types x (log n + limit))."""
        if isinstance(type, tuple):
            types = sorted(set(type))
            if len(types) != 1:
                pages = [
                    self.page(device=device, type=t, since=since, until=until, before=before, limit=limit)
                    for t in types
                ]
                return list(itertools.islice(heapq.merge(*pages, reverse=True), max(0, limit)))
            type = types[0]
        if device is not None and type is not None:
            lst = self._by_pair.get((device, type))
        elif device is not None:
            lst = self._by_device.get(device)
        elif type is not None:
            lst = self._by_type.get(type)
        else:
            lst = self._all
        if not lst or limit <= 0:
            return []
        hi = len(lst)
        # (x,) sorts before every (x, id, ...): bisect_left finds the first entry with ts >= x.
        if until is not None:
            hi = bisect_left(lst, (until,), 0, hi)
        if before is not None:
            hi = bisect_left(lst, (before[0], int(before[1]), str(before[2])), 0, hi)  # cursor row excluded
        lo = bisect_left(lst, (since,), 0, hi) if since is not None else 0
        start = max(lo, hi - limit)
        return lst[start:hi][::-1]

    def count(self, *, device: str | None = None, type: str | None = None) -> int:
        """How many events a box / type / pair has (all events with neither)."""
        if device is not None and type is not None:
            return len(self._by_pair.get((device, type), ()))
        if device is not None:
            return len(self._by_device.get(device, ()))
        if type is not None:
            return len(self._by_type.get(type, ()))
        return len(self._all)
