"""Property-based fuzzing of the chunk reassembler (`gateway/reassembly.py`), bounded in time.

Two properties:
- honest boxes, any interleaving: events and chunks of several photos in random order, with
  duplicates, never timing out: every photo completes exactly once with exactly its bytes, and nothing
  stays held;
- hostile traffic: wrong sizes, indexes past the end, lying hashes, chunks without events, the clock
  jumping, a small byte cap: the only exception is `ProtocolError`, a `Complete` is always a photo
  whose bytes hash to what its event said, the byte accounting never drifts, and after `expire()` the
  memory cap holds.
"""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocol import Event, PhotoMeta, ProtocolError
from gateway.reassembly import Complete, Dropped, Reassembler, Refused

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DROP_REASONS = {"reassembly_timeout", "reassembly_overflow", "sha256_mismatch", "size_mismatch", "bad_chunk"}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


photos = st.lists(
    st.tuples(st.binary(min_size=1, max_size=3000), st.integers(1, 700)), min_size=1, max_size=4
)


def _event(n: int, data: bytes, cs: int, sha: str | None = None) -> Event:
    meta = PhotoMeta(len(data), sha or hashlib.sha256(data).hexdigest(), -(-len(data) // cs), cs)
    return Event(f"event-{n:04d}", "delivery", None, n, {}, meta)


def _chunks(data: bytes, cs: int) -> list[bytes]:
    return [data[i : i + cs] for i in range(0, len(data), cs)]


def _held_is_consistent(r: Reassembler) -> None:
    partials = list(r._partials.values())
    assert r.held_bytes == sum(p.held for p in partials) >= 0
    assert all(p.held == sum(len(c) for c in p.chunks.values()) for p in partials)
    assert len(r) == len(partials) <= r.max_partials
    # the accounting the caps use: bytes + bookkeeping, per box and in total, never drifting
    assert r.accounted_bytes == sum(p.cost for p in partials)
    for dev in {p.device for p in partials}:
        mine = [p for p in partials if p.device == dev]
        assert r.device_usage(dev) == (len(mine), sum(p.cost for p in mine))
        assert len(mine) <= r.device_max_partials


@FUZZ
@given(photos=photos, data=st.data())
def test_honest_boxes_any_interleaving_every_photo_once_and_exact(photos, data):
    r = Reassembler(timeout_s=1e9, max_bytes=1 << 30)
    steps: list[tuple[int, int | None]] = []
    for n, (blob, cs) in enumerate(photos):
        steps.append((n, None))
        steps += [(n, i) for i in range(len(_chunks(blob, cs)))]
    # any order, and some messages twice (MQTT QoS 1 redelivery, a box re-sending)
    order = data.draw(st.permutations(steps))
    dups = data.draw(st.lists(st.sampled_from(steps), max_size=8))
    for d in dups:
        order.insert(data.draw(st.integers(0, len(order))), d)
    done: dict[int, list[Complete | Dropped]] = {}
    for n, idx in order:
        blob, cs = photos[n]
        if idx is None:
            out = r.add_event("box-1", _event(n, blob, cs))
        else:
            out = r.add_chunk("box-1", f"event-{n:04d}", idx, _chunks(blob, cs)[idx])
        if out is not None:
            done.setdefault(n, []).append(out)
        _held_is_consistent(r)
    # A duplicate arriving after completion starts a new partial (the gateway drops those chunks itself
    # because the event is already stored); what matters is the first result per photo.
    for n, (blob, _cs) in enumerate(photos):
        first = done[n][0]
        assert isinstance(first, Complete) and first.photo == blob and first.event.id == f"event-{n:04d}"
    for n, outs in done.items():
        for later in outs[1:]:
            assert isinstance(later, Complete) and later.photo == photos[n][0]


op = st.one_of(
    st.tuples(st.just("event"), st.integers(0, 3), st.sampled_from(["honest", "lying_sha", "other_cs"])),
    st.tuples(
        st.just("chunk"),
        st.integers(0, 3),
        st.integers(0, 12),
        st.sampled_from(["exact", "exact", "exact", "longer", "shorter", "empty", "past_end"]),
    ),
    st.tuples(st.just("tick"), st.floats(0, 40)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("discard"), st.integers(0, 3)),
)


@FUZZ
@given(
    photos=photos,
    ops=st.lists(op, max_size=60),
    max_bytes=st.integers(0, 12000),
    device=st.sampled_from(["box-1", "box-2"]),
    device_max_partials=st.integers(1, 4),
    device_max_bytes=st.integers(0, 8000),
)
def test_hostile_traffic_only_protocol_errors_and_invariants_hold(
    photos, ops, max_bytes, device, device_max_partials, device_max_bytes
):
    clock = Clock()
    r = Reassembler(
        timeout_s=30.0,
        max_bytes=max_bytes,
        device_max_partials=device_max_partials,
        device_max_bytes=device_max_bytes,
        clock=clock,
    )
    claimed: dict[str, Event] = {}
    for o in ops:
        out: Complete | Dropped | Refused | list[Dropped] | None = None
        kind = o[0]
        if kind in ("event", "chunk", "discard"):
            n = o[1] % len(photos)
            blob, cs = photos[n]
            eid = f"event-{n:04d}"
        if kind == "event":
            mode = o[2]
            if mode == "lying_sha":
                ev = _event(n, blob, cs, sha=hashlib.sha256(blob + b"!").hexdigest())
            elif mode == "other_cs":
                ev = _event(n, blob, max(1, cs // 2))
            else:
                ev = _event(n, blob, cs)
            claimed[eid] = ev
            out = r.add_event(device, ev)
        elif kind == "chunk":
            idx, mode = o[2], o[3]
            parts = _chunks(blob, cs)
            if mode == "past_end":
                idx = len(parts) + idx
                payload = b"\x00" * cs
            else:
                idx = idx % len(parts)
                payload = parts[idx]
                if mode == "longer":
                    payload += b"\x01"
                elif mode == "shorter":
                    payload = payload[:-1]
                elif mode == "empty":
                    payload = b""
            try:
                out = r.add_chunk(device, eid, idx, payload)
            except ProtocolError as exc:
                assert exc.reason == "bad_chunk"
                r.discard(device, eid)  # what the gateway does
        elif kind == "tick":
            clock.t += o[1]
        elif kind == "expire":
            out = r.expire()
            # the memory caps hold after every expire(), counting bookkeeping, in total and per box
            assert r.held_bytes <= r.accounted_bytes <= max_bytes
            assert r.device_usage(device)[1] <= device_max_bytes
        else:
            r.discard(device, eid)
        for res in out if isinstance(out, list) else [out]:
            if isinstance(res, Complete):
                ev = res.event
                assert res.device == device and res.photo is not None
                assert len(res.photo) == ev.photo.size
                assert hashlib.sha256(res.photo).hexdigest() == ev.photo.sha256
                assert ev == claimed[ev.id]  # the event it completed is the one last announced
                assert r._partials.get((device, ev.id)) is None  # released
            elif isinstance(res, Dropped):
                assert res.reason in DROP_REASONS and res.device == device
            elif isinstance(res, Refused):
                assert res.reason in ("reassembly_device_busy", "reassembly_full") and res.device == device
                assert r._partials.get((device, res.event_id)) is None  # nothing kept
            else:
                assert res is None
        _held_is_consistent(r)
    r.expire()
    assert r.held_bytes <= max_bytes
    clock.t += 31.0
    assert all(d.reason in DROP_REASONS for d in r.expire())
    assert len(r) == 0 and r.held_bytes == 0
