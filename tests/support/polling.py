"""One polling loop for the tests' `wait_for`/`wait_until` helpers.

A condition that reads a counter, a JSON field or a topic that is not there yet raises `LookupError`
(KeyError, IndexError): that means "not yet", not a failure. A plain `d["k"] == 1` flaked when the
poll came between the reply going out and its counter being created; every helper now waits through
it and names the last such error if time runs out. A LookupError raised inside the gateway's own code
(the condition called `svc.health()` or a store read, and that raised) is a bug a real caller would
hit too: it fails the test at once, even if a later call would have passed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gateway

_GATEWAY = Path(gateway.__file__).resolve().parent


def _from_gateway(exc: BaseException) -> bool:
    """True if `exc` was raised in, or passed through, a frame of the gateway package."""
    tb = exc.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_GATEWAY):
            return True
        tb = tb.tb_next
    return False


def poll(
    pred: Callable[[], Any],
    timeout: float,
    interval: float,
    what: str,
    error: type[Exception] = TimeoutError,
) -> Any:
    """Call `pred` until it returns something truthy (returned); `error` naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    last: LookupError | None = None
    while True:
        try:
            v = pred()
        except LookupError as e:
            if _from_gateway(e):
                raise
            v, last = None, e
        if v:
            return v
        if time.monotonic() >= deadline:
            more = f" (last: {last!r})" if last is not None else ""
            raise error(f"timed out after {timeout:.0f} s waiting for {what}{more}")
        time.sleep(interval)
