"""Collapse floods of one log line into a count.

With its file descriptors gone, asyncio logged "socket.accept() out of system resource" 229,319
times in 25 s (100 MB of log). `RepeatFilter`, on the gateway's log handler, lets the first
`burst` copies of an identical message through per `per_s` window and counts the rest; the first
copy let through after that says how many were held back. Only exact repeats (same logger, level
and text) collapse, so distinct events are never merged. Pure logic with an injected clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

MAX_KEYS = 1024  # distinct messages tracked; beyond this the table starts over (bounded memory)
KEY_CHARS = 300


class RepeatFilter(logging.Filter):
    def __init__(
        self, burst: int = 5, per_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst = burst
        self.per_s = per_s
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [window start, copies let through in this window, copies held back]
        self._seen: dict[tuple[str, int, str], list[float]] = {}
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string is the handler's to report, not ours
            return True
        key = (record.name, record.levelno, text[:KEY_CHARS])
        now = self._clock()
        with self._lock:
            w = self._seen.get(key)
            if w is None or now - w[0] >= self.per_s:
                held = int(w[2]) if w is not None else 0
                if w is None and len(self._seen) >= MAX_KEYS:
                    self._seen.clear()
                self._seen[key] = [now, 1, 0]
                if held:
                    elapsed = now - w[0]  # type: ignore[index]
                    record.msg = f"{text} [and {held} more identical lines in {elapsed:.0f} s, not logged]"
                    record.args = None
                return True
            if w[1] < self.burst:
                w[1] += 1
                return True
            w[2] += 1
            self.suppressed += 1
            return False


def install(handlers: list[logging.Handler], **kw: float) -> RepeatFilter:
    """Put one shared `RepeatFilter` on each of `handlers`."""
    f = RepeatFilter(**kw)  # type: ignore[arg-type]
    for h in handlers:
        h.addFilter(f)
    return f
