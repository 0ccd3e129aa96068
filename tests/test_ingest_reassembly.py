"""Chunk reassembly on its own: every order, duplicates, size/hash checks, the byte cap and the timeout."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from gateway.protocol import Event, PhotoMeta, ProtocolError
from gateway.reassembly import (
    CHUNK_OVERHEAD,
    EVENT_FACTOR,
    PARTIAL_OVERHEAD,
    Complete,
    Dropped,
    Reassembler,
    Refused,
)

DATA = bytes(range(256)) * 40  # 10240 bytes: 3 chunks of 4096


def event(eid: str = "event0001", data: bytes = DATA, sha: str | None = None) -> Event:
    meta = PhotoMeta(len(data), sha or hashlib.sha256(data).hexdigest(), -(-len(data) // 4096), 4096)
    return Event(eid, "delivery", None, 1, {}, meta)


def parts(data: bytes = DATA) -> list[bytes]:
    return [data[i : i + 4096] for i in range(0, len(data), 4096)]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("event_at", range(4))
def test_every_order_completes_once(order, event_at):
    r = Reassembler()
    done = []
    steps = [("c", i) for i in order]
    steps.insert(event_at, ("e", None))
    steps.insert(1, ("c", order[0]))  # a duplicate chunk
    for kind, i in steps:
        out = r.add_event("box1", event()) if kind == "e" else r.add_chunk("box1", "event0001", i, parts()[i])
        if out is not None:
            done.append(out)
    assert len(done) == 1 and isinstance(done[0], Complete) and done[0].photo == DATA
    assert len(r) == 0 and r.held_bytes == 0


def test_hash_and_size_mismatch_and_bad_chunk():
    r = Reassembler()
    for i, p in enumerate(parts()):
        r.add_chunk("box1", "event0001", i, p)
    out = r.add_event("box1", event(sha="0" * 64))
    assert isinstance(out, Dropped) and out.reason == "sha256_mismatch"
    r.add_event("box1", event("event0002"))
    with pytest.raises(ProtocolError) as exc:
        r.add_chunk("box1", "event0002", 0, b"short")
    assert exc.value.reason == "bad_chunk"
    r2 = Reassembler()
    r2.add_chunk("box1", "event0003", 5, b"x" * 4096)  # before the event: not checkable yet
    out = r2.add_event("box1", event("event0003"))
    assert isinstance(out, Dropped) and out.reason == "bad_chunk" and r2.held_bytes == 0


def test_byte_cap_drops_oldest_and_timeout_drops_stale():
    t = [0.0]
    r = Reassembler(max_bytes=10_000, timeout_s=60, clock=lambda: t[0])
    r.add_chunk("box1", "old0000001", 0, b"a" * 4096)
    t[0] = 1
    r.add_chunk("box1", "new0000001", 0, b"b" * 4096)
    r.add_chunk("box1", "new0000001", 1, b"b" * 4096)
    drops = r.expire()
    assert [(d.event_id, d.reason) for d in drops] == [("old0000001", "reassembly_overflow")]
    assert r.held_bytes == 8192
    t[0] = 61
    drops = r.expire()
    assert [(d.event_id, d.reason) for d in drops] == [("new0000001", "reassembly_timeout")]
    assert r.held_bytes == 0 and len(r) == 0


def test_event_without_photo_completes_at_once():
    r = Reassembler()
    out = r.add_event("box1", Event("event0009", "pickup", None, 3, {}, None))
    assert isinstance(out, Complete) and out.photo is None


# --- issue 14 item 5: bounds per box and in total, counted with the bookkeeping ---------------


def test_flood_of_empty_chunks_is_bounded_per_box_and_never_refuses_another_box():
    """500k empty chunks with made-up ids made 348k partials (0 bytes to the old cap, 270 MB of RAM)."""
    r = Reassembler(device_max_partials=8, max_partials=100)
    refused = 0
    for i in range(5000):
        out = r.add_chunk("evil", f"madeup{i:06d}", 0, b"")
        if isinstance(out, Refused):
            assert out.reason == "reassembly_device_busy" and out.device == "evil"
            refused += 1
    assert refused == 5000 - 8 and len(r) == 8
    assert r.device_usage("evil") == (8, 8 * (PARTIAL_OVERHEAD + CHUNK_OVERHEAD))
    assert r.accounted_bytes == 8 * (PARTIAL_OVERHEAD + CHUNK_OVERHEAD) and r.held_bytes == 0
    # another box is untouched by all that
    done = [r.add_event("good", event())] + [
        r.add_chunk("good", "event0001", i, p) for i, p in enumerate(parts())
    ]
    assert isinstance(done[-1], Complete) and done[-1].photo == DATA
    assert r.shed() == [] and r.device_usage("good") == (0, 0)


def test_total_partials_capped():
    r = Reassembler(device_max_partials=8, max_partials=20)
    outs = [r.add_chunk(f"box{i % 5}", f"madeup{i:06d}", 0, b"") for i in range(30)]
    assert [o.reason for o in outs if isinstance(o, Refused)] == ["reassembly_full"] * 10
    assert len(r) == 20


def test_byte_caps_shed_the_box_holding_most_not_the_oldest_partial():
    t = [0.0]
    r = Reassembler(max_bytes=40_000, device_max_bytes=30_000, clock=lambda: t[0])
    r.add_event("good", event())  # oldest partial, waiting for its chunks
    r.add_chunk("good", "event0001", 0, parts()[0])
    for i in range(6):  # orphan chunks with no event, 4 KiB each
        t[0] += 1
        r.add_chunk("evil", f"orphan{i:04d}", 0, b"x" * 4096)
    drops = r.shed()
    # evil went over its own 30,000: its oldest went, never good's
    assert {d.device for d in drops} == {"evil"} and all(d.reason == "reassembly_overflow" for d in drops)
    assert r.device_usage("evil")[1] <= 30_000 and r.accounted_bytes <= 40_000
    assert r.device_usage("good")[0] == 1
    for i in range(2):  # now over the total: shed from evil, the one holding the most
        r.add_chunk("evil", f"orphan9{i:03d}", 0, b"x" * 4096)
    r.add_chunk("good", "event0001", 1, parts()[1])
    drops = r.shed()
    assert drops and {d.device for d in drops} == {"evil"} and r.accounted_bytes <= 40_000
    out = r.add_chunk("good", "event0001", 2, parts()[2])
    assert isinstance(out, Complete) and out.photo == DATA


def test_a_held_event_is_accounted_by_its_size():
    r = Reassembler()
    r.add_event("box1", event(), size=500)
    assert r.accounted_bytes == PARTIAL_OVERHEAD + EVENT_FACTOR * 500
    r.add_event("box1", event(), size=500)  # the same event again is not charged twice
    assert r.accounted_bytes == PARTIAL_OVERHEAD + EVENT_FACTOR * 500
    r.discard("box1", "event0001")
    assert r.accounted_bytes == 0 and r.device_usage("box1") == (0, 0)
