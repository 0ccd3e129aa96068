"""The board's `machine` and `network` modules and its clock, for `firmware/main.build()` in the
simulator (tools/simulate.py) and the tests.

`main.build(cfg, machine, network, ...)` takes the board's modules as arguments; these stand in
for them on CPython, one set per simulated box (several boxes run in one process, each on its own
virtual clock):
- `SimClock`: what build() reads from MicroPython's `time` (ticks_ms/ticks_diff/ticks_add,
  sleep_ms/sleep_us, time), with virtual milliseconds. A sleep advances the clock instead of
  waiting, as the box's loop would have lost that time.
- `Machine`: `machine.Pin(id, mode, pull, value=...)` returns the one `SimPin` of that GPIO, as
  micropython ports/esp32/machine_pin.c (00586ac) `mp_pin_make_new` returns the one static pin
  object `machine_pin_find` looks up, so a level set by the world (the reed switch, the IR sensor)
  survives a reboot like real wiring; `value=` drives the pin (`machine_pin_obj_init_helper` sets
  it before the mode); IN / OUT / PULL_UP are that file's constants. `reset()` and
  `time_pulse_us()` are the simulator's hooks; there is no `WDT`, `SDCard`, `deepsleep` or
  `wake_reason` (build() and main() check with hasattr / try, as on a port without them). Not
  modelled: pull resistors (an unwired input reads 0), `hold`, `irq`, drive strength.
- `network_module(wlan)`: the `network` module build() reads: `WLAN(STA_IF)` and the STAT_*
  names (fake_net.Network, the ESP32's numbering).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tools.sim import fake_net


class SimClock:
    """Virtual milliseconds, advanced by the simulation loop (`tick_ms` per step), so a
    slow step (a big photo, a busy machine) never makes the scripted lid skip a state."""

    def __init__(self, tick_ms: int = 50) -> None:
        self.tick_ms = tick_ms
        self.now = 0

    def advance(self, ms: int | None = None) -> None:
        self.now += self.tick_ms if ms is None else ms

    def ticks_ms(self) -> int:
        return self.now

    @staticmethod
    def ticks_diff(a: int, b: int) -> int:
        return a - b

    @staticmethod
    def ticks_add(a: int, b: int) -> int:
        return a + b

    def sleep_ms(self, ms: int) -> None:
        self.now += ms

    def sleep_us(self, us: int) -> None:
        self.now += us // 1000

    @staticmethod
    def time() -> float:
        """Unix seconds: the host's (the box's RTC after NTP answered)."""
        return time.time()


class SimPin:
    """One GPIO: `value()` reads the level, `value(v)` drives it (recorded in `history`). An input's
    level is the world's (the simulator sets it: the lid, the parcels)."""

    def __init__(self, level: int = 0) -> None:
        self.level = level
        self.history: list[int] = []

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = 1 if v else 0
        self.history.append(self.level)
        return None


class SimWlan:
    """A station that is up or down and nothing else, for parts tests that need no join sequence
    (status() as ports/esp32/network_wlan.c reports a joined station: STAT_GOT_IP 1010, RSSI). The
    faithful station, with join time and failure reasons, is `fake_net.WLAN`."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.connect_calls = 0
        self.disconnect_calls = 0

    def active(self, *_a):
        return True

    def isconnected(self) -> bool:
        return self.up

    def connect(self, ssid, password) -> None:
        self.connect_calls += 1

    def disconnect(self) -> None:
        self.disconnect_calls += 1

    def status(self, what=None):
        return -55 if what == "rssi" else 1010


class Machine:
    """The `machine` module of one simulated box (see the module doc)."""

    IN, OUT, PULL_UP = 1, 3, 2  # ports/esp32/machine_pin.c: GPIO_MODE_INPUT, _INPUT_OUTPUT, GPIO_PULLUP_ONLY

    def __init__(
        self,
        pins: dict[int, SimPin],
        reset: Callable[[], None],
        time_pulse_us: Callable[[Any, int, int], int] | None = None,
    ) -> None:
        self.pins = pins
        self.reset = reset
        if time_pulse_us is not None:
            self.time_pulse_us = time_pulse_us
        machine = self

        class Pin:
            IN, OUT, PULL_UP = machine.IN, machine.OUT, machine.PULL_UP

            def __new__(cls, gpio: int, mode: int = -1, pull: int = -1, value: int | None = None, **_kw: Any):
                pin = machine.pins.setdefault(gpio, SimPin(0))
                if value is not None:
                    pin.value(value)
                return pin

        self.Pin = Pin


def network_module(wlan: Any) -> Any:
    """The `network` module build() reads: `WLAN(STA_IF)` gives `wlan`, STAT_* as on the ESP32."""

    class Network(fake_net.Network):
        @staticmethod
        def WLAN(_iface: int) -> Any:
            return wlan

    return Network
