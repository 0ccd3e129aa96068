# Runs first at every reset: keep the flash LED (GPIO 4 on the AI-Thinker) dark and
# release the deep-sleep pin holds (LED, camera PWDN) so main.py and the camera can drive
# them. Kept tiny on purpose: an error here must never stop main.py from printing its own
# diagnostics.
try:
    import machine

    machine.Pin(4, machine.Pin.OUT, value=0, hold=False)
    # Camera PWDN (GPIO 32) was held high through deep sleep: release it, camera on.
    machine.Pin(32, machine.Pin.OUT, value=0, hold=False)
except Exception:
    pass
