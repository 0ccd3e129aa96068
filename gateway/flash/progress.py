"""Progress lines: one numbered line per step, indented detail lines under it.

Printed to a stream (stdout by default) and flushed at once, so a person watching a slow
serial copy sees where it is, and tests can read the same lines.
"""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.n = 0
        self.stream = stream or sys.stdout

    def step(self, text: str) -> None:
        """Start the next numbered step."""
        self.n += 1
        self._print(f"[{self.n}/{self.total}] {text}")

    def detail(self, text: str) -> None:
        self._print(f"      {text}")

    def done(self, text: str) -> None:
        self._print(text)

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
