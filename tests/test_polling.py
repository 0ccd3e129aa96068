"""tests/support/polling.py: a condition that reads what is not there yet is "not yet"; an error the
gateway's own code raises is a failure, even a lookup error, even a passing one."""

from __future__ import annotations

import pytest

from gateway import boxes
from tests.support.polling import poll


def test_a_key_the_condition_reads_too_early_is_waited_through() -> None:
    seen: dict[str, int] = {}

    def pred() -> bool:
        seen["calls"] = seen.get("calls", 0) + 1
        return seen["ready"] == 1 if seen["calls"] < 3 else True  # KeyError until the 3rd call

    assert poll(pred, 10.0, 0.0, "the key") is True
    with pytest.raises(TimeoutError, match=r"the key.*KeyError\('never'\)"):
        poll(lambda: {}["never"], 0.0, 0.0, "the key")


def test_a_lookup_error_raised_inside_the_gateway_is_a_failure_not_a_wait() -> None:
    """A condition calling the gateway (`svc.health()`, a store read) that raises KeyError from the
    gateway's own code found a bug: a real caller (the web app, Home Assistant) would get it too. It
    must fail the test at once, even if the next call would have passed."""
    calls: list[int] = []

    def pred() -> bool:
        calls.append(1)
        if len(calls) == 1:
            boxes.is_removed({}, {})  # a record without its "device": KeyError in gateway/boxes.py
        return True

    with pytest.raises(KeyError, match="device"):
        poll(pred, 10.0, 0.0, "a box")
    assert len(calls) == 1
