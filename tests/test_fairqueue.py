"""The ingest queue on its own (`gateway/fairqueue.py`): per-box shares, round-robin, control first."""

from __future__ import annotations

import queue
import threading

import pytest

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
