"""Rate-limited log lines: a flood of bad input must cost a counter, not a disk of logs.

`LogThrottle.allow(key)` says whether a line for `key` (a rejection reason, or a whole message in
`gateway.logfilter.RepeatFilter`) may be written now: at most `burst` lines per `per_s` seconds per
key. When a window opens again after lines were held back, `allow` returns how many were suppressed
so the next line can say so. Pure logic with an injected clock; the table of keys is bounded
(`MAX_KEYS`: past it, it starts over), so a flood of distinct keys costs no memory either.
The one home of this window logic: the call-site throttle (ingest rejections) and the handler
filter (identical lines from any logger) both use it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

MAX_KEYS = 1024


class LogThrottle:
    def __init__(
        self, burst: int = 10, per_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.per_s = per_s
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [window start, lines let through in it, lines held back]
        self._windows: dict[Hashable, list[float]] = {}

    def allow(self, key: Hashable) -> tuple[bool, int]:
        """(may log now, lines suppressed for `key` since the last one written)."""
        ok, suppressed, _ = self.admit(key)
        return ok, suppressed

    def admit(self, key: Hashable) -> tuple[bool, int, float]:
        """`allow`, plus how long the window that held the suppressed lines back lasted (s)."""
        now = self.clock()
        with self._lock:
            w = self._windows.get(key)
            if w is None or now - w[0] >= self.per_s:
                suppressed = int(w[2]) if w is not None else 0
                elapsed = now - w[0] if w is not None else 0.0
                if w is None and len(self._windows) >= MAX_KEYS:
                    self._windows.clear()
                self._windows[key] = [now, 1, 0]
                return True, suppressed, elapsed
            if w[1] < self.burst:
                w[1] += 1
                suppressed, w[2] = int(w[2]), 0
                return True, suppressed, now - w[0]
            w[2] += 1
            return False, 0, 0.0

    def __len__(self) -> int:
        """Keys tracked now (bounded by MAX_KEYS)."""
        return len(self._windows)
