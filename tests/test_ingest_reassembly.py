"""Chunk reassembly on its own: every order, duplicates, size/hash checks, the byte cap and the timeout."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from gateway.protocol import Event, PhotoMeta, ProtocolError
from gateway.reassembly import Complete, Dropped, Reassembler

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
