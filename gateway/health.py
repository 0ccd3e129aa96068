"""Thread-safe counters for `health()` / `parcelbox status --json`, and the rejections counted in them."""

from __future__ import annotations

import logging
import threading
from collections import Counter

from gateway.lograte import LogThrottle

log = logging.getLogger("gateway")


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._c[name] += n

    def reject(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1

    def get(self, name: str) -> int:
        with self._lock:
            return self._c[name]

    def rejected(self, reason: str) -> int:
        with self._lock:
            return self._rejected[reason]

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            out: dict[str, object] = dict(self._c)
            out["rejected"] = dict(self._rejected)
            out["rejected_total"] = sum(self._rejected.values())
            return out


class Rejections:
    """Input the gateway refused: `reject(reason, detail, where)` is the `reject` callable the parts get
    (`gateway.ingest.Reject`: ingest, commands, over-the-air replies, retained junk on the link)."""

    def __init__(self, counters: Counters, throttle: LogThrottle | None = None) -> None:
        self.counters = counters
        self.throttle = throttle if throttle is not None else LogThrottle()

    def reject(self, reason: str, detail: str, where: str) -> None:
        self.counters.reject(reason)
        # Every rejection is counted; the log gets a few lines per reason a minute, so a box flooding
        # bad input fills a counter instead of the disk (issue 14 items 4 and 5).
        ok, suppressed = self.throttle.allow(reason)
        if ok:
            more = f"; {suppressed} more {reason} not logged" if suppressed else ""
            log.warning("rejected %s: %s (%s)%s", where, reason, detail, more)
