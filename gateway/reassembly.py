"""Photo chunk reassembly with bounded memory, per box and in total.

Chunks may come before their event, twice, or out of order (docs/protocol.md).
A partial photo is held until the event and every chunk are present; then the
bytes are joined and checked against the event's size and sha256.

Memory is accounted, not just chunk bytes: every partial costs its bookkeeping
(`PARTIAL_OVERHEAD`, measured with tracemalloc: ~510 B for the object, its key and
its chunk table, plus the id strings), every chunk `CHUNK_OVERHEAD` on top of its
bytes, and an event held while its chunks arrive `EVENT_FACTOR` x its JSON size (a
16 KiB event decodes to up to ~210 KB of Python objects). Issue 14 item 5: 500k
empty chunks with made-up ids were 0 bytes to the old cap and 270 MB of RAM.

Bounds (a box that breaks them only hurts itself):
- per box: at most `device_max_partials` partials and `device_max_bytes` accounted;
  a message that would start one more partial is refused (`Refused`, nothing kept),
  and a box over its bytes loses its own oldest partials (`Dropped`, box nacked
  with retry:true);
- in total: at most `max_partials` partials (new ones refused) and `max_bytes`
  accounted, shed from the box holding the most, so a flood from one box never
  evicts another box's photo while the flooding box still holds more;
- partials older than `timeout_s` are dropped.

Not thread-safe: the ingest worker owns it.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.protocol import Event, PhotoMeta, ProtocolError

PARTIAL_OVERHEAD = 1024
CHUNK_OVERHEAD = 64
EVENT_FACTOR = 16
# A box sends at most `max_inflight` (firmware settings: 4, at most 32) photos at a time.
DEVICE_MAX_PARTIALS = 32
DEVICE_MAX_BYTES = 16 * 1024 * 1024
MAX_PARTIALS = 1024


@dataclass
class Partial:
    device: str
    event_id: str
    started: float
    event: Event | None = None
    chunks: dict[int, bytes] = field(default_factory=dict)
    held: int = 0  # chunk bytes
    cost: int = PARTIAL_OVERHEAD  # everything accounted: bytes, bookkeeping, the event


@dataclass
class _Usage:
    """What one box holds: the event ids of its partials and their accounted bytes."""

    ids: set[str] = field(default_factory=set)
    cost: int = 0


@dataclass(frozen=True)
class Complete:
    device: str
    event: Event
    photo: bytes | None


@dataclass(frozen=True)
class Dropped:
    """A partial given up on: the box should send the photo again."""

    device: str
    event_id: str
    reason: str  # reassembly_timeout | reassembly_overflow | sha256_mismatch | size_mismatch | bad_chunk
    detail: str


@dataclass(frozen=True)
class Refused:
    """A message that would have started a partial over a bound: nothing is kept. No nack: a box
    that is not flooding never gets here, and one that is should not get a message back per message
    (it re-sends what was not acked after its ack timeout)."""

    device: str
    event_id: str
    reason: str  # reassembly_device_busy | reassembly_full
    detail: str


class Reassembler:
    def __init__(
        self,
        *,
        timeout_s: float = 60.0,
        max_bytes: int = 64 * 1024 * 1024,
        max_partials: int = MAX_PARTIALS,
        device_max_partials: int = DEVICE_MAX_PARTIALS,
        device_max_bytes: int = DEVICE_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_partials = max_partials
        self.device_max_partials = device_max_partials
        self.device_max_bytes = device_max_bytes
        self.clock = clock
        self._partials: OrderedDict[tuple[str, str], Partial] = OrderedDict()  # oldest first
        self._devices: dict[str, _Usage] = {}
        self.held_bytes = 0  # chunk bytes held
        self.accounted_bytes = 0  # what the caps apply to: bytes + bookkeeping + events

    def __len__(self) -> int:
        return len(self._partials)

    def device_usage(self, device: str) -> tuple[int, int]:
        """(partials, accounted bytes) held for `device`."""
        u = self._devices.get(device)
        return (len(u.ids), u.cost) if u else (0, 0)

    def partial_ids(self, device: str) -> frozenset[str]:
        """The event ids `device` has unfinished photos for."""
        u = self._devices.get(device)
        return frozenset(u.ids) if u else frozenset()

    def busy(self, device: str) -> bool:
        """True when a message starting one more partial for `device` would be refused."""
        n, cost = self.device_usage(device)
        return n >= self.device_max_partials or cost + PARTIAL_OVERHEAD > self.device_max_bytes

    def _charge(self, p: Partial, cost: int) -> None:
        p.cost += cost
        self.accounted_bytes += cost
        self._devices[p.device].cost += cost

    def _get(self, device: str, event_id: str) -> Partial | Refused:
        key = (device, event_id)
        p = self._partials.get(key)
        if p is not None:
            return p
        if self.busy(device):
            n, cost = self.device_usage(device)
            return Refused(
                device,
                event_id,
                "reassembly_device_busy",
                f"{device} already holds {n} unfinished photos ({cost} bytes)",
            )
        if len(self._partials) >= self.max_partials:
            return Refused(
                device, event_id, "reassembly_full", f"{len(self._partials)} unfinished photos held"
            )
        p = Partial(device, event_id, self.clock())
        self._partials[key] = p
        u = self._devices.setdefault(device, _Usage())
        u.ids.add(event_id)
        u.cost += p.cost
        self.accounted_bytes += p.cost
        return p

    def discard(self, device: str, event_id: str) -> None:
        p = self._partials.pop((device, event_id), None)
        if p is None:
            return
        self.held_bytes -= p.held
        self.accounted_bytes -= p.cost
        u = self._devices[device]
        u.ids.discard(event_id)
        u.cost -= p.cost
        if not u.ids:
            del self._devices[device]

    def add_event(self, device: str, event: Event, size: int = 0) -> Complete | Dropped | Refused | None:
        """`size`: the event's JSON size, to account for the decoded event while it is held."""
        if event.photo is None:
            self.discard(device, event.id)
            return Complete(device, event, None)
        p = self._get(device, event.id)
        if isinstance(p, Refused):
            return p
        if p.event is None:
            self._charge(p, EVENT_FACTOR * size)
        p.event = event
        # Chunks that came first were only checked against the global limit; check them now.
        for idx, data in list(p.chunks.items()):
            bad = _chunk_problem(event.photo, idx, len(data))
            if bad:
                self.discard(device, event.id)
                return Dropped(device, event.id, "bad_chunk", bad)
        return self._maybe_complete(p)

    def add_chunk(
        self, device: str, event_id: str, index: int, data: bytes
    ) -> Complete | Dropped | Refused | None:
        """Raises ProtocolError for a chunk that cannot belong to its (known) event. Call `shed()`
        afterwards: a chunk is what grows memory."""
        p = self._get(device, event_id)
        if isinstance(p, Refused):
            return p
        if p.event is not None and p.event.photo is not None:
            bad = _chunk_problem(p.event.photo, index, len(data))
            if bad:
                raise ProtocolError("bad_chunk", bad)
        if index in p.chunks:
            return None  # a duplicate: same index, keep the first
        p.chunks[index] = data
        p.held += len(data)
        self.held_bytes += len(data)
        self._charge(p, len(data) + CHUNK_OVERHEAD)
        return self._maybe_complete(p)

    def _maybe_complete(self, p: Partial) -> Complete | Dropped | None:
        ev = p.event
        if ev is None or ev.photo is None or len(p.chunks) < ev.photo.chunks:
            return None
        self.discard(p.device, p.event_id)
        data = b"".join(p.chunks[i] for i in range(ev.photo.chunks))
        if len(data) != ev.photo.size:
            return Dropped(
                p.device, p.event_id, "size_mismatch", f"{len(data)} bytes, event says {ev.photo.size}"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != ev.photo.sha256:
            return Dropped(
                p.device,
                p.event_id,
                "sha256_mismatch",
                f"got {digest[:12]}…, event says {ev.photo.sha256[:12]}…",
            )
        return Complete(p.device, ev, data)

    def _oldest_of(self, device: str) -> Partial:
        return next(p for p in self._partials.values() if p.device == device)

    def shed(self) -> list[Dropped]:
        """Enforce the byte caps: a box over its own share loses its oldest partials; while the total
        is over, the box holding the most loses its oldest. Cheap when nothing is over."""
        out: list[Dropped] = []
        for device in [d for d, u in self._devices.items() if u.cost > self.device_max_bytes]:
            while self.device_usage(device)[1] > self.device_max_bytes:
                p = self._oldest_of(device)
                self.discard(device, p.event_id)
                out.append(
                    Dropped(
                        device,
                        p.event_id,
                        "reassembly_overflow",
                        f"{device} over {self.device_max_bytes} bytes",
                    )
                )
        while self.accounted_bytes > self.max_bytes and self._partials:
            device = max(self._devices, key=lambda d: self._devices[d].cost)
            p = self._oldest_of(device)
            self.discard(device, p.event_id)
            out.append(
                Dropped(
                    device, p.event_id, "reassembly_overflow", f"{self.accounted_bytes} bytes held in total"
                )
            )
        return out

    def expire(self) -> list[Dropped]:
        """Drop partials past the timeout, then shed while over a byte cap."""
        out: list[Dropped] = []
        now = self.clock()
        for key, p in list(self._partials.items()):
            if now - p.started < self.timeout_s:
                break  # oldest first: the rest are younger
            self.discard(*key)
            have = f"{len(p.chunks)}/{p.event.photo.chunks if p.event and p.event.photo else '?'} chunks"
            out.append(Dropped(p.device, p.event_id, "reassembly_timeout", have))
        return out + self.shed()


def _chunk_problem(meta: PhotoMeta, index: int, length: int) -> str | None:
    if index >= meta.chunks:
        return f"chunk {index} but the photo has {meta.chunks}"
    expected = meta.chunk_size if index < meta.chunks - 1 else meta.size - meta.chunk_size * (meta.chunks - 1)
    if length != expected:
        return f"chunk {index} is {length} bytes, expected {expected}"
    return None
