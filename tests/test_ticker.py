"""The gateway's periodic work (`gateway.ticker.Ticker`) and its rejection counting (`gateway.health.Rejections`),
each on its own; end to end through `GatewayService.tick` they are tests/test_gateway_alerts.py's."""

from __future__ import annotations

import logging

import pytest

from gateway.health import Counters, Rejections
from gateway.lograte import LogThrottle
from gateway.service import GatewayService
from gateway.ticker import RETENTION_EVERY_S, Ticker
from tests.support.gateway_core import gateway_config


class _Broker:
    """Records what a turn asks of the managed broker (gateway.broker.ManagedMosquitto's two calls)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def refresh(self) -> None:
        self.calls.append("refresh")

    def supervise(self) -> None:
        self.calls.append("supervise")


def test_retention_runs_hourly_by_the_given_time_last_in_its_turn(tmp_path, mosquitto, prefix):
    """The real service's parts, a ticker of the test's own: retention at the first turn, then not
    before an hour of `now` has passed; a pass that fails comes last in its turn (the broker was
    still looked after) and waits its hour like one that worked."""
    svc = GatewayService(gateway_config(tmp_path / "data", mosquitto.url, prefix))
    svc.start()
    try:
        passes: list[float] = []
        broker = _Broker()

        def retention(now: float) -> None:
            passes.append(now)
            if len(passes) == 2:
                raise OSError("disk gone")

        ticker = Ticker(
            pipeline=svc.pipeline,
            commands=svc.commands,
            notices=svc.notices,
            ota=svc.ota,
            registry_watch=svc.registry_watch,
            clock=lambda: 1000.0,
            purges=lambda: None,
            broker=lambda: broker,
            retention=retention,
            write_status=lambda: None,
        )
        ticker.tick()  # the clock's time: 1000
        ticker.tick(1000.0 + RETENTION_EVERY_S - 1)
        assert passes == [1000.0]
        broker.calls.clear()
        with pytest.raises(OSError, match="disk gone"):  # raised on the worker, raised here
            ticker.tick(1000.0 + RETENTION_EVERY_S)
        assert broker.calls == ["refresh", "supervise"]
        ticker.tick(1000.0 + 2 * RETENTION_EVERY_S - 1)
        assert passes == [1000.0, 1000.0 + RETENTION_EVERY_S]
        ticker.tick(1000.0 + 2 * RETENTION_EVERY_S)
        assert passes[-1] == 1000.0 + 2 * RETENTION_EVERY_S
    finally:
        svc.stop()


def test_every_rejection_is_counted_and_a_few_a_minute_are_logged(caplog):
    now = [0.0]
    counters = Counters()
    rejections = Rejections(counters, LogThrottle(burst=2, per_s=60, clock=lambda: now[0]))
    caplog.set_level(logging.WARNING, logger="gateway")
    for i in range(5):
        rejections.reject("bad_json", f"line {i}", "box1/event")
    rejections.reject("oversize", "70000 bytes", "box2/event")  # another reason has its own lines
    now[0] = 60.0
    rejections.reject("bad_json", "line 5", "box1/event")
    assert counters.rejected("bad_json") == 6 and counters.rejected("oversize") == 1
    assert [r.getMessage() for r in caplog.records] == [
        "rejected box1/event: bad_json (line 0)",
        "rejected box1/event: bad_json (line 1)",
        "rejected box2/event: oversize (70000 bytes)",
        "rejected box1/event: bad_json (line 5); 3 more bad_json not logged",
    ]
