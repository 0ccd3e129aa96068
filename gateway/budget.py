"""A per-box and total budget of things in progress (count and bytes).

Used for complete photos handed to the photo pool: they have left the reassembler (whose own bounds
no longer count them) but each still holds its bytes until it is stored. Without a bound, a box
sending complete junk photos faster than the pool decodes them queues them without limit, in memory,
ahead of every other box's photo. `take` books a slot or says why not; `give` returns it. Pure logic;
the ingest worker owns it (not thread-safe).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Use:
    count: int = 0
    size: int = 0


class Budget:
    def __init__(self, *, per_key_count: int, per_key_bytes: int, total_count: int, total_bytes: int) -> None:
        self.per_key_count = per_key_count
        self.per_key_bytes = per_key_bytes
        self.total_count = total_count
        self.total_bytes = total_bytes
        self._use: dict[str, _Use] = {}
        self.count = 0
        self.size = 0

    def used(self, key: str) -> tuple[int, int]:
        u = self._use.get(key)
        return (u.count, u.size) if u else (0, 0)

    def take(self, key: str, size: int) -> str | None:
        """Book one item of `size` bytes for `key`; None if booked, else why not (`device`, `total`).
        One item is always allowed when `key` holds nothing, however big, so a box is never shut out."""
        u = self._use.get(key) or _Use()
        if u.count and (u.count >= self.per_key_count or u.size + size > self.per_key_bytes):
            return "device"
        if self.count and (self.count >= self.total_count or self.size + size > self.total_bytes):
            return "total"
        u.count += 1
        u.size += size
        self._use[key] = u
        self.count += 1
        self.size += size
        return None

    def give(self, key: str, size: int) -> None:
        u = self._use.get(key)
        if u is None:
            return
        u.count -= 1
        u.size -= size
        self.count -= 1
        self.size -= size
        if u.count <= 0:
            del self._use[key]
