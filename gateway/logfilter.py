"""Collapse floods of one log line into a count.

With its file descriptors gone, asyncio logged "socket.accept() out of system resource" 229,319
times in 25 s (100 MB of log). `RepeatFilter`, on the gateway's log handler, lets the first
`burst` copies of an identical message through per `per_s` window and counts the rest; the first
copy let through after that says how many were held back. Only exact repeats (same logger, level
and text) collapse, so distinct events are never merged. The window logic is
`gateway.lograte.LogThrottle`'s (also used for the ingest's per-reason rejection lines).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gateway.lograte import LogThrottle

KEY_CHARS = 300


class RepeatFilter(logging.Filter):
    def __init__(
        self, burst: int = 5, per_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._throttle = LogThrottle(burst=burst, per_s=per_s, clock=clock)
        self._count_lock = threading.Lock()
        self.suppressed = 0

    def tracked(self) -> int:
        """Distinct lines tracked now (bounded)."""
        return len(self._throttle)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string is the handler's to report, not ours
            return True
        ok, held, elapsed = self._throttle.admit((record.name, record.levelno, text[:KEY_CHARS]))
        if not ok:
            with self._count_lock:
                self.suppressed += 1
            return False
        if held:
            record.msg = f"{text} [and {held} more identical lines in {elapsed:.0f} s, not logged]"
            record.args = None
        return True


def install(handlers: list[logging.Handler], burst: int = 5, per_s: float = 60.0) -> RepeatFilter:
    """Put one shared `RepeatFilter` on each of `handlers`."""
    f = RepeatFilter(burst=burst, per_s=per_s)
    for h in handlers:
        h.addFilter(f)
    return f
