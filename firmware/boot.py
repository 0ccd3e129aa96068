# Runs first at every reset: keep the flash LED (GPIO 4 on the AI-Thinker) dark and
# release the deep-sleep pin holds (LED, camera PWDN) so main.py and the camera can drive
# them; then finish or start an over-the-air update (otaboot.py) before main.py imports the
# app. Kept tiny on purpose: an error here must never stop main.py from printing its own
# diagnostics. An update never replaces this file or otaboot.py.
try:
    import machine

    machine.Pin(4, machine.Pin.OUT, value=0, hold=False)
    # Camera PWDN (GPIO 32) was held high through deep sleep: release it, camera on.
    machine.Pin(32, machine.Pin.OUT, value=0, hold=False)
except Exception:
    pass
try:
    import os

    try:
        os.stat("/noapp")  # the quiet window (main.py): no switch, no trial count, no watchdog
    except OSError:
        import otaboot

        if otaboot.at_boot(otaboot.Flash("/", os)) is not None:
            # A new set on trial: should its main.py never get as far as starting the watchdog
            # (a syntax error drops to the REPL), this one resets the board, and the boot count
            # rolls it back. main.py's own WDT(timeout=wdt_s) reconfigures it.
            import machine

            machine.WDT(timeout=120000)
except Exception as e:
    print("boot: ota: %r" % (e,))
