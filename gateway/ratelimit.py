"""Sliding-window send limits, overall and per recipient.

One implementation for the outbox (per notifier: the one owner of alert send limits, e.g. the
WhatsApp notifier's, as WhatsApp bans numbers that send in bursts), the WhatsApp command handler (per
sender) and the dashboard's test messages and API tokens.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from gateway.notify.base import RateLimit


class SlidingWindow:
    """At most `count` events in any `per_s`-second window."""

    def __init__(self, count: int, per_s: float) -> None:
        if count < 1 or per_s <= 0:
            raise ValueError("a rate limit needs count >= 1 and per_s > 0")
        self.count = count
        self.per_s = per_s
        self._times: deque[float] = deque()

    def wait_s(self, now: float) -> float:
        """0 if an event may happen now, else seconds until one may."""
        while self._times and now - self._times[0] >= self.per_s:
            self._times.popleft()
        if len(self._times) < self.count:
            return 0.0
        return self._times[0] + self.per_s - now

    def record(self, now: float) -> None:
        self._times.append(now)


class SendLimiter:
    """The overall window and one window per recipient; `try_acquire` books a slot in both or neither."""

    def __init__(
        self,
        per_recipient: tuple[int, float] | None,
        overall: tuple[int, float] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_recipient = per_recipient
        self._overall = SlidingWindow(*overall) if overall else None
        self._by_recipient: dict[str, SlidingWindow] = {}
        self._clock = clock
        self._lock = threading.Lock()
        self.limited = 0  # how many sends were held back

    @classmethod
    def for_limit(cls, limit: RateLimit | None, clock: Callable[[], float] = time.monotonic) -> SendLimiter:
        """A limiter for a notifier's `RateLimit` (None: unlimited)."""
        if limit is None:
            return cls(None, None, clock)
        return cls(limit.per_recipient, limit.overall, clock)

    def _windows(self, recipient: str) -> list[SlidingWindow]:
        windows = []
        if self._overall is not None:
            windows.append(self._overall)
        if self.per_recipient is not None:
            w = self._by_recipient.get(recipient)
            if w is None:
                w = self._by_recipient[recipient] = SlidingWindow(*self.per_recipient)
            windows.append(w)
        return windows

    def wait_s(self, recipient: str, now: float | None = None) -> float:
        """Seconds until a send to `recipient` is allowed (0: now); books nothing."""
        with self._lock:
            now = self._clock() if now is None else now
            return max((w.wait_s(now) for w in self._windows(recipient)), default=0.0)

    def record(self, recipient: str, now: float | None = None) -> None:
        """Count a send to `recipient` in every window."""
        with self._lock:
            now = self._clock() if now is None else now
            for w in self._windows(recipient):
                w.record(now)

    def try_acquire(self, recipient: str, now: float | None = None) -> float:
        """0.0 when the send may go now (and it is counted), else seconds to wait before retrying."""
        with self._lock:
            now = self._clock() if now is None else now
            windows = self._windows(recipient)
            wait = max((w.wait_s(now) for w in windows), default=0.0)
            if wait > 0:
                self.limited += 1
                return wait
            for w in windows:
                w.record(now)
            return 0.0
