"""HX711 load-cell amplifier, bit-banged over two pins passed in.

`dout` is an input pin and `sck` an output pin (anything with `value()` and
`value(v)`), so the driver runs against a simulated chip in the tests. The
chip signals a ready conversion by pulling DOUT low; 24 clock pulses shift the
reading out MSB first, and 1-3 extra pulses select the gain/channel of the
*next* conversion (128 -> 1, 32 -> 2, 64 -> 3). SCK held high for more than
60 us powers the chip down, so on the board pass `disable_irq`/`enable_irq`
(machine's) to keep an interrupt from stretching a pulse.
"""

_GAIN_PULSES = {128: 1, 64: 3, 32: 2}


class HX711Error(OSError):
    pass


class HX711:
    def __init__(self, dout, sck, gain=128, disable_irq=None, enable_irq=None, sleep_us=None):
        if gain not in _GAIN_PULSES:
            raise ValueError("gain must be 128, 64 or 32")
        self.dout = dout
        self.sck = sck
        self._extra = _GAIN_PULSES[gain]
        self._disable_irq = disable_irq
        self._enable_irq = enable_irq
        self._sleep_us = sleep_us
        sck.value(0)

    def ready(self):
        return self.dout.value() == 0

    def read_raw(self, polls=100000):
        """One signed 24-bit conversion. Raises HX711Error if the chip never
        becomes ready within `polls` checks (unplugged or powered down)."""
        n = polls
        while self.dout.value() != 0:
            n -= 1
            if n <= 0:
                raise HX711Error(110)  # ETIMEDOUT
        sck = self.sck
        dout = self.dout
        state = self._disable_irq() if self._disable_irq is not None else None
        try:
            v = 0
            for _ in range(24):
                sck.value(1)
                sck.value(0)
                v = (v << 1) | dout.value()
            for _ in range(self._extra):
                sck.value(1)
                sck.value(0)
        finally:
            if self._enable_irq is not None:
                self._enable_irq(state)
        if v & 0x800000:
            v -= 0x1000000
        return v

    def read_average(self, times=5, polls=100000):
        """Median of `times` readings: one glitch cannot move the result."""
        vals = []
        for _ in range(times):
            vals.append(self.read_raw(polls))
        vals.sort()
        return vals[len(vals) // 2]

    def power_down(self):
        self.sck.value(0)
        self.sck.value(1)
        if self._sleep_us is not None:
            self._sleep_us(80)

    def power_up(self):
        self.sck.value(0)
