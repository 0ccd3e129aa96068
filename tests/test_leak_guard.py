"""The suite's leak guard (tests/support/leaks.py), which runs after every test."""

from __future__ import annotations

import io
import logging
import subprocess
import threading

import pytest

from gateway.app import setup_logging
from tests.support import leaks


def test_a_root_handler_left_by_parcelbox_run_is_removed_and_the_level_put_back():
    """`parcelbox run` in-process (cli.main(["run"]) in tests/test_cli.py) left a StreamHandler on the
    root logger over that test's captured stderr; once closed, every later log line from any thread
    printed "--- Logging error --- ValueError: I/O operation on closed file"."""
    logging.getLogger("gateway.mqtt")  # exists before, as in a suite that has run the gateway
    state = leaks.root_logger_state()
    stream = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stderr", stream)
        setup_logging("DEBUG")
    added = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is stream]
    assert added, "setup_logging should have put a handler on the root logger"
    removed = leaks.restore_root_logger(state)
    assert added[0] in removed and added[0] not in logging.getLogger().handlers
    assert logging.getLogger().level == state[1]
    assert logging.getLogger("gateway.mqtt").level == state[2].get("gateway.mqtt", logging.NOTSET)
    stream.close()
    logging.getLogger("gateway.homeassistant.bridge.paho").warning("after the test")  # nothing to break


def test_a_thread_left_running_is_reported():
    before = set(threading.enumerate())
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="left-behind", daemon=True)
    t.start()
    try:
        with pytest.warns(leaks.LeakWarning, match="left-behind"):
            leaks.check(before, leaks._children(), "t", grace=0.1)
    finally:
        stop.set()
        t.join()
    leaks.check(before, leaks._children(), "t", grace=0.1)  # finished threads are fine


def test_a_child_process_left_running_is_reported():
    children = leaks._children()
    proc = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.warns(leaks.LeakWarning, match="sleep 30"):
            leaks.check(set(threading.enumerate()), children, "t", grace=0.1)
    finally:
        proc.kill()
        proc.wait()
