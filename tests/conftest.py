"""Shared fixtures: a real Mosquitto per test, unique topic prefixes, real MicroPython."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.mosquitto import Mosquitto, find_mosquitto
from tests.support.gateway_core import Box
from tests.support.leaks import leak_guard, orphan_guard  # noqa: F401 (autouse fixtures)
from tests.support.micropython import FIRMWARE_DIR, run_micropython

# Firmware modules are flat files on the board; make them importable under CPython too.
if str(FIRMWARE_DIR) not in sys.path:
    sys.path.insert(0, str(FIRMWARE_DIR))


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto on a free 127.0.0.1 port with persistence in tmp_path.

    Tests may call .stop() / .kill() / .start() / .restart(hard=True) on it: the port stays held by
    this process in between (Mosquitto.release_port), so a restart never finds it taken.
    """
    if not find_mosquitto():
        pytest.fail(
            "mosquitto is not installed; run `make test` (it installs it) or: sudo apt-get install mosquitto"
        )
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()
        broker.release_port()


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses, so retained messages never leak between tests."""
    return f"pbt-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def micropython():
    """Run a script under real MicroPython (WASI); returns MPResult, use .check()."""
    return run_micropython


@pytest.fixture
def box(mosquitto, prefix) -> Iterator[Box]:
    """Box "box1" on the test's broker and prefix: publishes events as a box does and collects its acks."""
    b = Box(mosquitto.url, prefix, "box1")
    yield b
    b.close()
