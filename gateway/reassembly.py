"""Photo chunk reassembly with bounded memory.

Chunks may come before their event, twice, or out of order (docs/protocol.md).
A partial photo is held until the event and every chunk are present; then the
bytes are joined and checked against the event's size and sha256. Memory is
capped: when the total held would go over `max_bytes`, the oldest partials are
dropped (their boxes are nacked with retry:true and send again). Partials older
than `timeout_s` are dropped the same way. Not thread-safe: the ingest worker
owns it.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.protocol import Event, PhotoMeta, ProtocolError


@dataclass
class Partial:
    device: str
    event_id: str
    started: float
    event: Event | None = None
    chunks: dict[int, bytes] = field(default_factory=dict)
    held: int = 0


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
    reason: str  # reassembly_timeout | reassembly_overflow | sha256_mismatch | size_mismatch
    detail: str


class Reassembler:
    def __init__(
        self,
        *,
        timeout_s: float = 60.0,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.clock = clock
        self._partials: OrderedDict[tuple[str, str], Partial] = OrderedDict()
        self.held_bytes = 0

    def __len__(self) -> int:
        return len(self._partials)

    def _get(self, device: str, event_id: str) -> Partial:
        key = (device, event_id)
        p = self._partials.get(key)
        if p is None:
            p = Partial(device, event_id, self.clock())
            self._partials[key] = p
        return p

    def discard(self, device: str, event_id: str) -> None:
        p = self._partials.pop((device, event_id), None)
        if p is not None:
            self.held_bytes -= p.held

    def add_event(self, device: str, event: Event) -> Complete | Dropped | None:
        if event.photo is None:
            self.discard(device, event.id)
            return Complete(device, event, None)
        p = self._get(device, event.id)
        p.event = event
        # Chunks that came first were only checked against the global limit; check them now.
        for idx, data in list(p.chunks.items()):
            bad = _chunk_problem(event.photo, idx, len(data))
            if bad:
                self.discard(device, event.id)
                return Dropped(device, event.id, "bad_chunk", bad)
        return self._maybe_complete(p)

    def add_chunk(self, device: str, event_id: str, index: int, data: bytes) -> Complete | Dropped | None:
        """Raises ProtocolError for a chunk that cannot belong to its (known) event."""
        p = self._get(device, event_id)
        if p.event is not None and p.event.photo is not None:
            bad = _chunk_problem(p.event.photo, index, len(data))
            if bad:
                raise ProtocolError("bad_chunk", bad)
        if index in p.chunks:
            return None  # a duplicate: same index, keep the first
        p.chunks[index] = data
        p.held += len(data)
        self.held_bytes += len(data)
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

    def expire(self) -> list[Dropped]:
        """Drop partials past the timeout, then the oldest ones while over the byte cap."""
        out: list[Dropped] = []
        now = self.clock()
        for key, p in list(self._partials.items()):
            if now - p.started >= self.timeout_s:
                self.discard(*key)
                have = f"{len(p.chunks)}/{p.event.photo.chunks if p.event and p.event.photo else '?'} chunks"
                out.append(Dropped(p.device, p.event_id, "reassembly_timeout", have))
        while self.held_bytes > self.max_bytes and self._partials:
            key, p = next(iter(self._partials.items()))
            self.discard(*key)
            out.append(Dropped(p.device, p.event_id, "reassembly_overflow", f"{self.held_bytes} bytes held"))
        return out


def _chunk_problem(meta: PhotoMeta, index: int, length: int) -> str | None:
    if index >= meta.chunks:
        return f"chunk {index} but the photo has {meta.chunks}"
    expected = meta.chunk_size if index < meta.chunks - 1 else meta.size - meta.chunk_size * (meta.chunks - 1)
    if length != expected:
        return f"chunk {index} is {length} bytes, expected {expected}"
    return None
