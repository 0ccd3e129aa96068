# Runs first at every reset: keep the flash LED (GPIO 4 on the AI-Thinker) dark and
# release the deep-sleep pin holds (LED, camera PWDN) so main.py and the camera can drive
# them; then finish or start an over-the-air update (otaboot.boot_hook) before main.py
# imports the app. Kept tiny on purpose: an error here must never stop main.py from
# printing its own diagnostics. An update never replaces this file or otaboot.py.
try:
    import machine

    machine.Pin(4, machine.Pin.OUT, value=0, hold=False)
    # Camera PWDN (GPIO 32) was held high through deep sleep: release it, camera on.
    machine.Pin(32, machine.Pin.OUT, value=0, hold=False)
except Exception:
    machine = None
try:
    import os

    import otaboot

    otaboot.boot_hook(os, machine)
except Exception as e:
    print("boot: ota: %r" % (e,))
