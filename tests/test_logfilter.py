"""`RepeatFilter`: a flood of one log line becomes a count (asyncio's accept error once wrote 100 MB in 25 s)."""

from __future__ import annotations

import io
import logging

from gateway.logfilter import RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make_logger(clock: Clock) -> tuple[logging.Logger, io.StringIO, RepeatFilter]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    f = RepeatFilter(burst=3, per_s=10.0, clock=clock)
    handler.addFilter(f)
    logger = logging.getLogger(f"test.logfilter.{id(out)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, out, f


def test_identical_lines_collapse_with_a_count_and_others_pass() -> None:
    clock = Clock()
    logger, out, f = make_logger(clock)
    for _ in range(229_319 // 100):  # a (scaled-down) accept() flood
        logger.error("socket.accept() out of system resource\nsocket: <fd=7>")
        logger.warning("failed login from %s", "10.0.0.9")
    logger.warning("failed login from %s", "10.0.0.8")  # a different line is not merged
    lines = out.getvalue().splitlines()
    assert lines.count("socket.accept() out of system resource") == 3
    assert lines.count("failed login from 10.0.0.9") == 3 and "failed login from 10.0.0.8" in lines
    assert f.suppressed == 2 * (2293 - 3)
    clock.t += 10
    logger.error("socket.accept() out of system resource\nsocket: <fd=7>")
    assert "[and 2290 more identical lines in 10 s, not logged]" in out.getvalue().splitlines()[-1]
    assert len(out.getvalue()) < 1000


def test_the_table_of_lines_is_bounded() -> None:
    clock = Clock()
    logger, out, f = make_logger(clock)
    for i in range(5000):
        logger.info("line %d", i)
    assert f.tracked() <= 1024 and out.getvalue().count("\n") == 5000
