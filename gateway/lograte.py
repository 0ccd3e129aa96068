"""Rate-limited log lines: a flood of bad input must cost a counter, not a disk of logs.

`LogThrottle.allow(key)` says whether a line for `key` (e.g. a rejection reason) may be written now:
at most `burst` lines per `per_s` seconds per key. When a window opens again after lines were held
back, `allow` returns how many were suppressed so the next line can say so. Pure logic with an
injected clock; keys are few (reasons), and the table is bounded anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MAX_KEYS = 1024


class LogThrottle:
    def __init__(
        self, burst: int = 10, per_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.per_s = per_s
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, list[float | int]] = {}  # key -> [window start, lines, suppressed]

    def allow(self, key: str) -> tuple[bool, int]:
        """(may log now, lines suppressed for `key` since the last one written)."""
        now = self.clock()
        with self._lock:
            w = self._windows.get(key)
            if w is None or now - w[0] >= self.per_s:
                suppressed = int(w[2]) if w is not None else 0
                if w is None and len(self._windows) >= MAX_KEYS:
                    self._windows.clear()
                self._windows[key] = [now, 1, 0]
                return True, suppressed
            if w[1] < self.burst:
                w[1] += 1
                suppressed, w[2] = int(w[2]), 0
                return True, suppressed
            w[2] += 1
            return False, 0
