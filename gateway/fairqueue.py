"""The ingest queue: one bounded sub-queue per box, served in turn, so one box cannot make others wait.

paho's network thread puts every message here and the ingest worker takes them out. With one shared
FIFO, a box publishing 500k junk chunks put each of another box's events behind its whole backlog
(issue 14 item 5: an ack 30 s late), and once the queue was full paho's thread blocked, stalling
every box. Here:

- each box (the device id in the topic) has its own sub-queue, bounded by count and bytes; a message
  over its box's share is refused at once (counted, nothing kept), so a flood costs the flooding box;
- the worker takes one message per box in turn (round-robin), so a box's message waits behind at
  most one message of each other busy box, however long their backlogs;
- the total is bounded too; when it is full, room is made by dropping the newest message of the
  longest sub-queue, never by blocking paho's thread (which also carries keepalives and acks);
- control items (photo results, ticks) have their own queue, served first and never refused: they
  are bounded by the photo pool and the ticker, and they finish work that is already paid for.

Dropping a message is safe for the "nothing acked is lost" promise: a message that is not processed is
not acked, and a box re-sends what was not acked. Thread-safe.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Any

DEVICE_QUEUE_MESSAGES = 2_000  # a box with 4 photos in flight sends ~200 messages (8 KiB chunks)
DEVICE_QUEUE_BYTES = 32 * 1024 * 1024


class FairQueue:
    def __init__(
        self,
        *,
        max_messages: int = 10_000,
        max_bytes: int = 256 * 1024 * 1024,
        device_max_messages: int = DEVICE_QUEUE_MESSAGES,
        device_max_bytes: int = DEVICE_QUEUE_BYTES,
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.device_max_messages = device_max_messages
        self.device_max_bytes = device_max_bytes
        self._cond = threading.Condition(threading.Lock())
        self._control: deque[Any] = deque()
        self._subs: dict[str, deque[tuple[Any, int]]] = {}
        self._sub_bytes: dict[str, int] = {}
        self._turns: deque[str] = deque()  # keys with something queued, in serving order
        self._longest: str | None = None  # see _longest_key
        self._messages = 0
        self._bytes = 0

    def qsize(self) -> int:
        with self._cond:
            return self._messages + len(self._control)

    def empty(self) -> bool:
        return self.qsize() == 0

    def depth(self, key: str) -> int:
        with self._cond:
            sub = self._subs.get(key)
            return len(sub) if sub else 0

    def put_control(self, item: Any) -> None:
        with self._cond:
            self._control.append(item)
            self._cond.notify()

    def put(self, key: str, item: Any, size: int) -> list[tuple[str, str]]:
        """Queue `item` (`size` bytes) for box `key`. Returns what was refused or dropped to make room,
        as (box, reason) pairs: `device_queue_full` (this message: its box is over its share) or
        `queue_full` (the newest message of the longest sub-queue, dropped for this one)."""
        out: list[tuple[str, str]] = []
        with self._cond:
            sub = self._subs.get(key)
            n = len(sub) if sub else 0
            if n >= self.device_max_messages or self._sub_bytes.get(key, 0) + size > self.device_max_bytes:
                return [(key, "device_queue_full")]
            while self._messages and (
                self._messages >= self.max_messages or self._bytes + size > self.max_bytes
            ):
                longest = self._longest_key()
                if longest == key or len(self._subs[longest]) <= n:
                    return [*out, (key, "queue_full")]  # this box is (one of) the biggest: refuse its own
                self._drop_newest(longest)
                out.append((longest, "queue_full"))
            if sub is None:
                sub = self._subs[key] = deque()
                self._sub_bytes[key] = 0
                self._turns.append(key)
            sub.append((item, size))
            if self._longest is None or len(sub) > len(self._subs.get(self._longest, ())):
                self._longest = key
            self._messages += 1
            self._bytes += size
            self._sub_bytes[key] += size
            self._cond.notify()
        return out

    def _longest_key(self) -> str:
        """The box with the longest backlog. Kept as a candidate updated on every put (a flooding box
        puts the most, so it stays the candidate) and found by a full scan only when the candidate's
        sub-queue is gone: a scan per message over thousands of boxes would slow paho's thread."""
        if self._longest not in self._subs:
            self._longest = max(self._subs, key=lambda k: len(self._subs[k]))
        return self._longest

    def _drop_newest(self, key: str) -> None:
        sub = self._subs[key]
        _, size = sub.pop()
        self._messages -= 1
        self._bytes -= size
        self._sub_bytes[key] -= size
        if not sub:
            del self._subs[key]
            del self._sub_bytes[key]
            self._turns.remove(key)

    def get(self, timeout: float | None = None) -> Any:
        """The next control item, else the next message in round-robin order; raises queue.Empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._control and not self._turns:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise queue.Empty
                self._cond.wait(left)
            if self._control:
                return self._control.popleft()
            key = self._turns.popleft()
            sub = self._subs[key]
            item, size = sub.popleft()
            self._messages -= 1
            self._bytes -= size
            self._sub_bytes[key] -= size
            if sub:
                self._turns.append(key)  # its next message waits for everyone else's turn
            else:
                del self._subs[key]
                del self._sub_bytes[key]
            return item
