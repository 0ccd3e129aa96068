"""Leak guard: threads and processes a test leaves running past its own teardown.

A bridge, broker, gateway or WhatsApp child left running by one test goes on logging and holding
ports during the next ones (under pytest-xdist, next to another worker's tests), which shows up as
"Logging error ... I/O operation on closed file" tracebacks and flakes far from the cause. After each
test (fixtures torn down) this checks:

- threads started during the test that are still alive after a short grace period;
- child processes of this pytest process started during the test and still running;
- handlers a test added to the root logger (removed, with the root level put back).

At the end of the session it also looks for any process whose command line names this session's
temporary folder (an orphan: a grandchild whose parent died, e.g. a gateway's broker).

Leaks are reported as warnings (the summary names the test), never as failures: a slow-to-exit
daemon thread must not fail a passing test. `PARCELBOX_LEAKS=fail` turns them into errors, to hunt.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

GRACE_S = 2.0  # threads and processes finishing their shutdown right after teardown are not leaks


class LeakWarning(UserWarning):
    pass


def _children() -> set[int]:
    """Running (not zombie) child processes of this process, from /proc (Linux); empty elsewhere."""
    out: set[int] = set()
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        try:
            pids = Path(path).read_text().split()
        except OSError:
            continue
        out.update(int(p) for p in pids if _running(int(p)))
    return out


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _target(t: threading.Thread) -> str:
    target = getattr(t, "_target", None)
    if target is None:
        return f"{type(t).__module__}.{type(t).__qualname__}"
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"


# Process-wide by design, started by whichever test first needs them: idle workers of a thread pool
# (they live as long as their executor, which may be a module-level one) and neonize's log thread
# (started when neonize is imported). Not a test's leak.
_IGNORED_TARGETS = {"concurrent.futures.thread._worker", "neonize.utils.log._worker"}


# multiprocessing's helper processes, started at the first spawned child and kept for the whole process.
_IGNORED_PROCESSES = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _describe_thread(t: threading.Thread) -> str:
    return f"{t.name} ({_target(t)}{', daemon' if t.daemon else ''})"


def _report(what: str) -> None:
    if os.environ.get("PARCELBOX_LEAKS") == "fail":
        pytest.fail(what, pytrace=False)
    warnings.warn(LeakWarning(what), stacklevel=1)


@pytest.fixture(autouse=True)
def leak_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Autouse, so set up before and torn down after every other function-scoped fixture of the test."""
    threads_before = set(threading.enumerate())
    children_before = _children()
    logging_before = root_logger_state()
    yield
    restore_root_logger(logging_before)
    check(threads_before, children_before, request.node.nodeid)


LoggingState = tuple[list[logging.Handler], int, dict[str, int]]


def root_logger_state() -> LoggingState:
    root = logging.getLogger()
    levels = {
        name: lg.level
        for name, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    return list(root.handlers), root.level, levels


def restore_root_logger(state: LoggingState) -> list[logging.Handler]:
    """Remove the handlers added to the root logger since `state` (not pytest's own, which it adds and
    removes per test phase) and put its level back; returns what was removed.

    `parcelbox run` in-process (gateway.app.setup_logging) puts a StreamHandler on the root logger over
    the test's captured stderr, which is closed after the test: every later record, from any thread of
    any later test, then printed "--- Logging error --- ValueError: I/O operation on closed file".
    """
    handlers_before, level_before, levels = state
    root = logging.getLogger()
    for name, level in levels.items():
        lg = logging.Logger.manager.loggerDict.get(name)
        if isinstance(lg, logging.Logger) and lg.level != level:
            lg.setLevel(level)
    removed = [
        h for h in root.handlers if h not in handlers_before and not type(h).__module__.startswith("_pytest")
    ]
    for h in removed:
        root.removeHandler(h)
    root.setLevel(level_before)
    return removed


@pytest.fixture(autouse=True, scope="session")
def orphan_guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    left = orphans(tmp_path_factory.getbasetemp())
    if left:
        _report("processes outlived the test session: " + "; ".join(left))


def check(
    threads_before: set[threading.Thread], children_before: set[int], test: str, grace: float = GRACE_S
) -> None:
    deadline = time.monotonic() + grace
    new = [t for t in threading.enumerate() if t not in threads_before and _target(t) not in _IGNORED_TARGETS]
    for t in new:
        t.join(max(0.0, deadline - time.monotonic()))
    left = [t for t in new if t.is_alive()]
    procs = {
        p for p in _children() - children_before if not any(x in _cmdline(p) for x in _IGNORED_PROCESSES)
    }
    while procs and time.monotonic() < deadline:
        time.sleep(0.05)
        procs = {p for p in procs if _running(p)}
    if left:
        _report(f"{test} left threads running: " + "; ".join(_describe_thread(t) for t in left))
    if procs:
        _report(f"{test} left processes running: " + "; ".join(f"{p} {_cmdline(p)[:160]}" for p in procs))


def orphans(basetemp: Path) -> list[str]:
    """Processes (not this one) whose command line names a path under `basetemp`."""
    needle = str(basetemp)
    out = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        cmd = _cmdline(int(entry))
        if needle in cmd and _running(int(entry)):
            out.append(f"{entry} {cmd[:200]}")
    return out
