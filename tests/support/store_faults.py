"""A `gateway.store.Store` crashed or out of space in this process, and the event records the store tests write.

A store is "crashed" by abandoning it without `close()` after `die_after_append`: only what reached
the disk is there, as after a SIGKILL, and the test opens the folder again. (The same kill in a real
gateway process: tests/support/faults/sitecustomize.py.)
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest

import gateway.storage as storage_mod


class Killed(BaseException):
    """The process dies here: nothing after this point runs (not an Exception, so nothing catches it)."""


def die_after_append(
    monkeypatch: pytest.MonkeyPatch, when: Callable[[dict[str, Any]], bool] = lambda entry: True
) -> None:
    """`Journal.append` writes and fsyncs its line, then raises `Killed` if `when(entry)` (default: the first line)."""
    real_append = storage_mod.Journal.append

    def append_then_die(self: storage_mod.Journal, entry: dict[str, Any]) -> None:
        real_append(self, entry)
        if when(entry):
            raise Killed

    monkeypatch.setattr(storage_mod.Journal, "append", append_then_die)


def appends_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `Journal.append` fails with ENOSPC before writing anything."""

    def no_space(self: storage_mod.Journal, entry: dict[str, Any]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_mod.Journal, "append", no_space)


def event_record(device: str, eid: str, t: float, etype: str = "delivery") -> dict[str, Any]:
    """An event as the pipeline stores it (`Store.add_event`), received at `t`, lid closed, no photo."""
    return {
        "device": device,
        "id": eid,
        "type": etype,
        "ts": t,
        "received_at": t,
        "seq": 1,
        "sensors": {"lid": "closed"},
        "photo": None,
        "cmd": None,
    }
