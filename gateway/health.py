"""Thread-safe counters for `health()` / `parcelbox status --json`."""

from __future__ import annotations

import threading
from collections import Counter


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
