# Runs first at every reset: keep the flash LED (GPIO 4 on the AI-Thinker) dark and
# release the deep-sleep pin hold so main.py can drive it. Kept tiny on purpose: an
# error here must never stop main.py from printing its own diagnostics.
try:
    import machine

    machine.Pin(4, machine.Pin.OUT, value=0, hold=False)
except Exception:
    pass
