"""Test-only fault hook: SIGKILL the gateway right after one event's journal line is on disk.

Python imports `sitecustomize` at start from the first folder of sys.path that has one; a test puts
this folder on the child gateway's PYTHONPATH (`GatewayProc(env=...)`, tests/e2e/test_box_state_crash.py)
and names the event in PB_TEST_KILL_AFTER_EVENT. The hook wraps `gateway.storage.Journal.append`:
once the line carrying that event has been written and fsync'd, the process kills itself with SIGKILL,
so nothing after that line runs (no second write, no ack), as in a power cut at that instant. Nothing
in the gateway knows about it; without the variable this file does nothing.
"""

from __future__ import annotations

import os

_EVENT = os.environ.get("PB_TEST_KILL_AFTER_EVENT")

if _EVENT:
    import signal
    import sys

    # `python -m gateway` puts its folder on sys.path only after site imports this module.
    sys.path.insert(0, os.getcwd())
    from gateway import storage

    _append = storage.Journal.append

    def _append_then_die(self, entry):  # type: ignore[no-untyped-def]
        _append(self, entry)
        ev = entry.get("ev")
        if isinstance(ev, dict) and ev.get("id") == _EVENT:
            os.kill(os.getpid(), signal.SIGKILL)

    storage.Journal.append = _append_then_die  # type: ignore[method-assign]
