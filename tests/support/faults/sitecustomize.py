"""Test-only fault hook: SIGKILL the gateway right after one event's journal line is on disk.

Python imports `sitecustomize` at start from the first folder of sys.path that has one; a test puts
this folder on the child gateway's PYTHONPATH (`GatewayProc(env=...)`, tests/e2e/test_box_state_crash.py)
and names the event in PB_TEST_KILL_AFTER_EVENT. The hook wraps `gateway.storage.Journal.append`:
once the first line naming that event (the event's own line, or any line written before it that
mentions its id, such as a change to an alert that lists it) has been written and fsync'd, the process
kills itself with SIGKILL, so nothing after that line runs (no further write, no ack), as in a power
cut at that instant. Nothing in the gateway knows about it; without the variable this file does nothing.
"""

from __future__ import annotations

import os

_EVENT = os.environ.get("PB_TEST_KILL_AFTER_EVENT")

if _EVENT:
    import json
    import signal
    import sys

    # `python -m gateway` puts its folder on sys.path only after site imports this module.
    sys.path.insert(0, os.getcwd())
    from gateway import storage

    _append = storage.Journal.append
    _NAMED = json.dumps(_EVENT)  # the id as it appears in a line's JSON, quotes included

    def _append_then_die(self: storage.Journal, entry: dict) -> None:
        _append(self, entry)
        if _NAMED in json.dumps(entry):
            os.kill(os.getpid(), signal.SIGKILL)

    storage.Journal.append = _append_then_die  # type: ignore[method-assign]  # replacing it is the point
