"""The ingest queue on its own (`gateway/fairqueue.py`): per-box shares, round-robin, control first."""

from __future__ import annotations

import queue
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.fairqueue import FairQueue


def drain(q: FairQueue) -> list:
    out = []
    while True:
        try:
            out.append(q.get(timeout=0))
        except queue.Empty:
            return out


def test_boxes_are_served_in_turn_whatever_one_backlog():
    q = FairQueue()
    for i in range(100):
        assert q.put("evil", f"evil-{i}", 10) == []
    q.put("good", "good-0", 10)
    q.put("other", "other-0", 10)
    q.put("good", "good-1", 10)
    got = drain(q)
    # one of evil's, then good's and other's turn, whatever evil has queued
    assert got[:5] == ["evil-0", "good-0", "other-0", "evil-1", "good-1"]
    assert len(got) == 103 and q.qsize() == 0 and q.empty()


def test_control_items_first_and_never_refused():
    q = FairQueue(max_messages=1, device_max_messages=1)
    q.put("box1", "m", 1)
    for i in range(5):
        q.put_control(f"c{i}")
    assert drain(q) == ["c0", "c1", "c2", "c3", "c4", "m"]


def test_a_box_over_its_share_is_refused_at_once():
    q = FairQueue(device_max_messages=3, device_max_bytes=100)
    full = [("evil", "device_queue_full")]
    assert [q.put("evil", i, 10) for i in range(5)] == [[], [], [], full, full]
    assert q.put("big", "x", 101) == [("big", "device_queue_full")]
    assert q.put("good", "g", 10) == [] and q.depth("evil") == 3 and q.depth("good") == 1


def test_when_the_total_is_full_the_longest_backlog_pays():
    q = FairQueue(max_messages=10, device_max_messages=10)
    for i in range(8):
        q.put("evil", f"e{i}", 1)
    q.put("meh", "m0", 1)
    q.put("meh", "m1", 1)
    assert q.put("good", "g0", 1) == [("evil", "queue_full")]  # evil's newest made room
    assert q.put("evil", "e9", 1) == [("evil", "queue_full")]  # evil is the biggest: its own refused
    got = drain(q)
    assert "g0" in got and "e7" not in got and "e9" not in got and len(got) == 10


def test_get_waits_for_a_put_and_times_out():
    q = FairQueue()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    t = threading.Timer(0.05, lambda: q.put("box1", "late", 1))
    t.start()
    assert q.get(timeout=10) == "late"
    t.join()


KEYS = ["a", "b", "c", "d"]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(KEYS), st.integers(0, 40)),
        st.tuples(st.just("get")),
        st.tuples(st.just("control")),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, total=st.integers(1, 12), per_key=st.integers(1, 6), per_key_bytes=st.integers(0, 100))
def test_fuzz_bounds_hold_nothing_vanishes_fifo_per_box_and_no_box_waits_long(
    ops, total, per_key, per_key_bytes
):
    """Random puts, gets and control items against a model: every bound holds after every step, a
    message is either served in its box's order, or reported refused / dropped by `put` (never lost
    silently, and only a longer backlog pays for room), and a waiting box is served within one turn
    of each other box (round-robin; checked to fail when the turn order is broken)."""
    q = FairQueue(
        max_messages=total, max_bytes=150, device_max_messages=per_key, device_max_bytes=per_key_bytes
    )
    seq = 0
    queued: dict[str, list[int]] = {k: [] for k in KEYS}  # what the queue should hold, per box, in order
    sizes: dict[int, int] = {}
    waited = dict.fromkeys(KEYS, 0)  # messages served to others while this box had one waiting
    controls = 0
    for op in ops:
        if op[0] == "put":
            _, key, size = op
            seq += 1
            sizes[seq] = size
            out = q.put(key, (key, seq), size)
            # An entry naming this box means this message was refused; any other names a box whose
            # newest message was dropped to make room (only ever another, longer backlog).
            for box, reason in out:
                assert reason in ("device_queue_full", "queue_full")
                if box != key:
                    assert reason == "queue_full" and len(queued[box]) > len(queued[key])
                    queued[box].pop()
            if all(box != key for box, _ in out):
                queued[key].append(seq)
        elif op[0] == "control":
            controls += 1
            q.put_control(("control", controls))
        else:
            try:
                item = q.get(timeout=0)
            except queue.Empty:
                assert not any(queued.values()) and controls == 0
                continue
            if item[0] == "control":
                controls -= 1
                continue
            key, n = item
            assert queued[key] and queued[key][0] == n  # FIFO within a box, nothing skipped
            queued[key].pop(0)
            for other in KEYS:
                if other != key and queued[other]:
                    waited[other] += 1
            waited[key] = 0
            assert all(w < len(KEYS) for w in waited.values())  # round-robin: at most one turn each
        for k in KEYS:
            if not queued[k]:
                waited[k] = 0
            assert q.depth(k) == len(queued[k]) <= per_key
            assert sum(sizes[s] for s in queued[k]) <= per_key_bytes
        assert q.qsize() == sum(len(v) for v in queued.values()) + controls
        assert sum(len(v) for v in queued.values()) <= total
        assert sum(sizes[s] for v in queued.values() for s in v) <= 150
