"""Detection state machine: lid + occupancy readings in, events out.

Pure: it never reads a pin or a clock. The app calls `update(now_ms, lid_open,
level)` every loop tick with the debounced lid state and, when it has one, a
fresh occupancy reading (`level`: 0/1 for an IR sensor, millimetres of fill for
the ultrasonic sensor, grams for the load cell; `None` when not sampled this
tick). The same code runs on the board, in the simulator and under MicroPython
in the tests, so the decisions can be checked tick by tick.

Cycle: IDLE --lid opens--> OPEN --lid closes--> SETTLE --settle time, reading-->
IDLE, emitting one of `delivery` (level rose by `rise` or more), `pickup` (level
fell to `empty` or below from above it), `lid_closed` (no sensor, or no change).
An open lid emits `lid_left_open` once per opening after `left_open_ms`.
Cooldown: a `lid_closed` within `cooldown_ms` of the previous close event is
dropped (reed bounce, a courier fiddling with the lid); delivery and pickup are
never dropped because they are measured against the last settled level, so a
bounce cannot produce a second one.
"""

IDLE = 0
OPEN = 1
SETTLE = 2

_NOTHING = ()


def _diff(a, b):
    return a - b


class Detector:
    def __init__(
        self,
        settle_ms=2000,
        cooldown_ms=10000,
        left_open_ms=120000,
        has_sensor=False,
        rise=1,
        empty=0,
        level=None,
        measure_timeout_ms=5000,
        ticks_diff=_diff,
        sample_ms=5000,
    ):
        self.settle_ms = settle_ms
        self.cooldown_ms = cooldown_ms
        self.left_open_ms = left_open_ms
        self.has_sensor = has_sensor
        self.rise = rise
        self.empty = empty
        self.measure_timeout_ms = measure_timeout_ms
        self.sample_ms = sample_ms
        self._diff = ticks_diff
        # Last settled occupancy level while closed (persisted by the app so a
        # deep-sleep wake still knows what was in the box).
        self.level = level
        self.state = IDLE
        self._t_open = 0
        self._t_close = 0
        self._left_reported = False
        self._baseline = None
        self._last_close_event = None
        self._last_sample = None

    def wants_reading(self, now):
        """True when the app should sample the occupancy sensor this tick."""
        if not self.has_sensor:
            return False
        if self.state == SETTLE:
            return self._diff(now, self._t_close) >= self.settle_ms
        if self.state == IDLE:
            return self._last_sample is None or self._diff(now, self._last_sample) >= self.sample_ms
        return False

    def can_sleep(self):
        """True when a deep sleep loses nothing: closed and measured, or open so long
        that `lid_left_open` was already sent (battery mode must not stay awake for a
        lid someone forgot; the next timer wake measures again)."""
        return self.state == IDLE or (self.state == OPEN and self._left_reported)

    def missed_cycle(self, now):
        """The lid opened and closed while the board was booting from deep sleep (it woke on
        the lid, which is closed again): settle and measure as after any close, against the
        level from before the sleep, instead of absorbing the new level as the baseline."""
        if self.state != IDLE:
            return
        self.state = SETTLE
        self._t_open = now
        self._t_close = now
        self._left_reported = False
        self._baseline = self.level

    def update(self, now, lid_open, level=None):
        """Advance to `now`; returns a tuple/list of events, each a dict with
        `type` and `sensors`. Usually empty (no allocation then)."""
        st = self.state
        if st == IDLE:
            if lid_open:
                self.state = OPEN
                self._t_open = now
                self._left_reported = False
                self._baseline = self.level
                return _NOTHING
            if level is not None and self.has_sensor:
                self.level = level
                self._last_sample = now
            return _NOTHING
        if st == OPEN:
            if not lid_open:
                self.state = SETTLE
                self._t_close = now
                return _NOTHING
            if not self._left_reported and self._diff(now, self._t_open) >= self.left_open_ms:
                self._left_reported = True
                return [
                    {
                        "type": "lid_left_open",
                        "sensors": {"lid": "open", "open_s": self._diff(now, self._t_open) // 1000},
                    }
                ]
            return _NOTHING
        # SETTLE
        if lid_open:
            # Reopened before the reading: the same opening continues, so the
            # left-open timer and its once-only report carry on.
            self.state = OPEN
            return _NOTHING
        waited = self._diff(now, self._t_close)
        if waited < self.settle_ms:
            return _NOTHING
        if self.has_sensor and level is None:
            if waited < self.settle_ms + self.measure_timeout_ms:
                return _NOTHING
            return self._finish(now, None, "no_reading")
        return self._finish(now, level, None)

    def _finish(self, now, level, error):
        self.state = IDLE
        sensors = {"lid": "closed", "open_s": self._diff(self._t_close, self._t_open) // 1000}
        etype = "lid_closed"
        if self.has_sensor:
            before = self._baseline
            sensors["before"] = before
            sensors["level"] = level
            if error is not None:
                sensors["error"] = error
            if level is not None:
                base = 0 if before is None else before
                if level - base >= self.rise:
                    etype = "delivery"
                elif level <= self.empty < base:
                    etype = "pickup"
                self.level = level
                self._last_sample = now
        if etype == "lid_closed":
            last = self._last_close_event
            if last is not None and self._diff(now, last) < self.cooldown_ms:
                return _NOTHING
        self._last_close_event = now
        return [{"type": etype, "sensors": sensors}]
