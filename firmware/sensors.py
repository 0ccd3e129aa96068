"""Sensor front ends: the lid reed switch and the optional occupancy sensor.

Every class takes its pins (anything with `value()`), and for the ultrasonic
sensor the `time_pulse_us` / `sleep_us` functions, as arguments: `main.py`
passes `machine.Pin` objects and `machine.time_pulse_us`, the simulator and the
tests pass simulated ones.

Occupancy sensors share one small interface: `read_level()` returns a number
the detector compares against its thresholds (IR: 0/1; ultrasonic: mm of fill
below the empty-box distance; load cell: grams), or raises OSError when the
sensor does not answer; `info` holds the raw reading for the event's
`sensors` object.
"""


def _diff(a, b):
    return a - b


class Reed:
    """Debounced lid switch. `open_level` is the pin level when the lid is open
    (1 for a normally-open reed to GND with the pull-up, the default wiring)."""

    def __init__(self, pin, open_level=1, debounce_ms=50, ticks_diff=_diff):
        self.pin = pin
        self.open_level = open_level
        self.debounce_ms = debounce_ms
        self._diff = ticks_diff
        self.is_open = pin.value() == open_level
        self._candidate = self.is_open
        self._since = None

    def read(self, now):
        """The debounced state at `now` (ms): True when the lid is open."""
        raw = self.pin.value() == self.open_level
        if raw == self.is_open:
            self._since = None
            return self.is_open
        if self._since is None or raw != self._candidate:
            self._candidate = raw
            self._since = now
        if self._diff(now, self._since) >= self.debounce_ms:
            self.is_open = raw
            self._since = None
        return self.is_open


class IRSensor:
    """Digital IR proximity / break-beam module: 1 when something is in the box."""

    def __init__(self, pin, active_level=0):
        self.pin = pin
        self.active_level = active_level
        self.info = {}

    def read_level(self):
        level = 1 if self.pin.value() == self.active_level else 0
        self.info = {"ir": level}
        return level


class Ultrasonic:
    """HC-SR04 looking down from the lid. Level = mm of fill above the floor,
    i.e. `empty_range_mm` minus the measured distance (never negative)."""

    def __init__(self, trig, echo, time_pulse_us, sleep_us, empty_range_mm=300, pings=3, timeout_us=30000):
        self.trig = trig
        self.echo = echo
        self._pulse = time_pulse_us
        self._sleep_us = sleep_us
        self.empty_range_mm = empty_range_mm
        self.pings = pings
        self.timeout_us = timeout_us
        self.info = {}
        trig.value(0)

    def range_mm(self):
        """Median distance of a few pings; OSError when no echo comes back."""
        vals = []
        for _ in range(self.pings):
            self.trig.value(0)
            self._sleep_us(5)
            self.trig.value(1)
            self._sleep_us(10)
            self.trig.value(0)
            t = self._pulse(self.echo, 1, self.timeout_us)
            if t > 0:
                # Sound travels 0.343 mm/us; the echo covers the distance twice.
                vals.append(t * 343 // 2000)
            self._sleep_us(60)
        if not vals:
            raise OSError(110)  # ETIMEDOUT: no echo (wiring, or nothing in range)
        vals.sort()
        return vals[len(vals) // 2]

    def read_level(self):
        r = self.range_mm()
        self.info = {"range_mm": r}
        level = self.empty_range_mm - r
        return level if level > 0 else 0


class LoadCell:
    """An HX711 (firmware/hx711.py) with a calibration: grams = (raw - offset) / scale."""

    def __init__(self, hx, scale=420.0, offset=0, samples=5):
        self.hx = hx
        self.scale = scale
        self.offset = offset
        self.samples = samples
        self.info = {}

    def read_level(self):
        raw = self.hx.read_average(self.samples)
        grams = int((raw - self.offset) / self.scale)
        self.info = {"weight_g": grams}
        return grams if grams > 0 else 0

    def tare(self):
        self.offset = self.hx.read_average(self.samples)
        return self.offset


def make_occupancy(cfg, make_pin_in, make_pin_out, time_pulse_us=None, sleep_us=None, irq=None):
    """The occupancy sensor named by cfg["sensor"], or None.

    `make_pin_in(gpio)` / `make_pin_out(gpio)` build pins (machine.Pin on the
    board); `irq` is an optional (disable_irq, enable_irq) pair for the HX711."""
    kind = cfg["sensor"]
    pins = cfg["pins"]
    if kind == "ir":
        return IRSensor(make_pin_in(pins["ir"]), pins["ir_active_level"])
    if kind == "ultrasonic":
        return Ultrasonic(
            make_pin_out(pins["trig"]),
            make_pin_in(pins["echo"]),
            time_pulse_us,
            sleep_us,
            cfg["empty_range_mm"],
        )
    if kind == "hx711":
        from hx711 import HX711

        dis, en = irq if irq else (None, None)
        hx = HX711(make_pin_in(pins["hx_dout"]), make_pin_out(pins["hx_sck"]), 128, dis, en, sleep_us)
        return LoadCell(hx, cfg["hx_scale"], cfg["hx_offset"])
    return None
