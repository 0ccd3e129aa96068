"""Board entry point (MicroPython runs main.py after boot.py): wire the real hardware
into app.App and loop.

This is the only firmware file that imports `machine`, `network`, `esp32`, the
camera driver and `umqtt.simple`, and only inside functions, so a broken or
missing config never gets as far as touching them: it prints what is wrong on
the serial console and idles with the REPL reachable (Ctrl-C), instead of
resetting in a loop.

Quiet window: when the file `/noapp` exists at boot, main() prints why and returns without
starting the app or the watchdog, leaving the REPL free. `tools/flash.py provision` creates it
(then hard-resets) before copying files and removes it right before its final reset. The reason
is the ESP32 watchdog: machine.WDT is the ESP-IDF task watchdog watching MicroPython's task; once
started it cannot be stopped or reconfigured (there is no deinit), and a soft reset (Ctrl-C /
Ctrl-D, what mpremote does to enter the raw REPL) does not restart the chip, so it keeps running
and resets the board mid-copy when nothing feeds it. Only a hard reset (machine.reset(), the RST
button, power) clears it, hence the reset after creating the marker.

Modes (config `mode`):
- `always_on`: loop forever; the watchdog resets a hung board.
- `battery`: stay awake until there is nothing left to do (lid closed, spool
  sent and acked) or `awake_s` passed, then deep sleep until the lid opens
  (ext0 on the lid pin) or `heartbeat_s` passes. Camera powered down (PWDN,
  GPIO 32, held high) and the flash LED held low while asleep. On waking,
  `machine.wake_reason()` says why: a timer (heartbeat) wake leaves the camera
  off; a lid wake whose lid is already closed again (opened and closed during
  the ~1-1.5 s boot) is measured as a lid cycle, not lost.

Time: the ESP32's RTC keeps counting through deep sleep (and a soft reset), so
a clock set by NTP before the sleep is still good after it: events carry a
timestamp from the first moment, not `ts: null` until NTP answers again.
"""

import gc
import os
import sys
import time

CONFIG = "config.json"
QUIET_MARKER = "/noapp"  # present at boot: no app, no watchdog (see the module doc)
_UNIX_2000 = 946684800  # seconds from 1970 to 2000, the ESP32 port's epoch
# A cold boot starts the RTC at 2000-01-01; a time after this (2024-01-01) was set by NTP
# (before a deep sleep or a soft reset, which the RTC survives).
_VALID_AFTER = 1704067200
_EXT0_WAKE = 2  # esp_sleep_wakeup_cause_t ESP_SLEEP_WAKEUP_EXT0 (machine.EXT0_WAKE)
_TIMER_WAKE = 4  # ESP_SLEEP_WAKEUP_TIMER (machine.TIMER_WAKE)
_CAMERA_PWDN = 32  # AI-Thinker: camera power-down, high = off
_OOM_RESET = 5  # MemoryError this many steps in a row: the heap is fragmented for good


def log(msg):
    print(msg)


def safe_idle(problems, flash_gpio=4, forever=True):
    """Print the problems and idle without the watchdog (no crash loop)."""
    print("=" * 60)
    print("parcelbox: the box cannot start:")
    for p in problems:
        print("  - " + p)
    print("Fix config.json (see config.example.json and firmware/README.md),")
    print("for example with `python tools/flash.py provision`, then reset the board.")
    print("=" * 60)
    try:
        import machine

        machine.Pin(flash_gpio, machine.Pin.OUT, value=0)
    except Exception:
        pass
    while forever:
        time.sleep(60)


def quiet_window(marker=QUIET_MARKER):
    """True (and say so on the console) when the quiet-window marker file exists."""
    try:
        os.stat(marker)
    except OSError:
        return False
    print("parcelbox: quiet window: %s is present, so the app and the watchdog are not started." % marker)
    print("Remove %s and reset the board to start the box (tools/flash.py provision does)." % marker)
    return True


class NtpClock:
    """Unix time once NTP answered (in this boot or before a deep sleep: the RTC keeps it),
    else None (events then carry ts: null)."""

    def __init__(self, host, now_s=None, log=log):
        self.host = host
        self.synced = False
        self._last_try = None
        self._now_s = now_s or time.time
        self._log = log

    def maybe_sync(self, now_ms):
        if self.synced:
            return
        if self._last_try is not None and time.ticks_diff(now_ms, self._last_try) < 600000:
            return
        self._last_try = now_ms
        try:
            import ntptime

            ntptime.host = self.host
            ntptime.settime()
            self.synced = True
            self._log("ntp: time set")
        except Exception as e:  # no network yet, DNS, timeout: try again later
            self._log("ntp: not synced (%r)" % (e,))

    def unix_time(self):
        t = self._now_s()
        if time.gmtime(0)[0] == 2000:
            t += _UNIX_2000
        if not self.synced and t < _VALID_AFTER:
            return None  # a cold boot's RTC (year 2000): not set yet
        return int(t)


def mount_sd(machine, log=log):
    """Mount the SD card at /sd in 1-bit mode (GPIO 2/14/15; GPIO 4 stays the LED). `log`: build()'s
    (a default argument, not a closure: nothing allocated per call)."""
    try:
        os.stat("/sd")
        return True  # already mounted (boot.py, or a previous run)
    except OSError:
        pass
    try:
        os.mount(machine.SDCard(slot=1, width=1), "/sd")
        return True
    except Exception as e:  # no card, no SDCard class, bad card: fall back to flash
        log("sd: mount failed (%r)" % (e,))
        return False


def wake_reason(machine):
    """machine.wake_reason() (an esp_sleep_wakeup_cause_t), or None where there is none."""
    try:
        return machine.wake_reason()
    except Exception:
        return None


def build(
    cfg,
    machine,
    network,
    mqtt_client_class,
    camera_driver,
    config_path=CONFIG,
    clock=time,
    heap_free=None,
    app_dir="/",
    log=log,
):
    """Build the App from config and the board's modules. Returns (app, parts).

    The board's modules come in as arguments, so the same wiring runs on the board, in the tests
    and in tools/simulate.py (several boxes in one process, each on its own virtual clock):
    - `clock`: ticks_ms, ticks_diff, ticks_add, sleep_ms, sleep_us and time (Unix seconds from
      the RTC); the `time` module on the board (the default: no object, no RAM).
    - `heap_free`: free heap bytes for the status; None = gc.mem_free (MicroPython's).
    - `app_dir`: the app folder over-the-air updates write to ("/" on the board); None = no
      updates (a host that has no app folder of its own).
    - `log`: where the parts print their lines (the serial console: print)."""
    import app
    import cam
    import link
    import ota
    import otaboot
    import protocol
    import sensors
    import spool

    Pin = machine.Pin
    pins = cfg["pins"]
    flash = Pin(pins["flash"], Pin.OUT, value=0)
    lid_pin = Pin(pins["lid"], Pin.IN, Pin.PULL_UP)
    lid = sensors.Reed(lid_pin, pins["lid_open_level"], cfg["debounce_ms"], clock.ticks_diff)
    occupancy = sensors.make_occupancy(
        cfg,
        lambda g: Pin(g, Pin.IN),
        lambda g: Pin(g, Pin.OUT, value=0),
        getattr(machine, "time_pulse_us", None),
        clock.sleep_us,
        (machine.disable_irq, machine.enable_irq) if hasattr(machine, "disable_irq") else None,
    )
    camera = None
    if cfg["camera"]:
        camera = cam.CameraAdapter(
            camera_driver,
            cfg["frame_size"],
            cfg["jpeg_quality"],
            cfg["warmup_frames"],
            flash,
            cfg["flash"],
            cfg["flash_ms"],
            clock.sleep_ms,
            log,
        )
    spool_dir = cfg["spool_dir"]
    if spool_dir.startswith("/sd") and not mount_sd(machine, log):
        spool_dir = "/spool"
        log("spool: SD card not available, spooling to internal flash (/spool)")
        if pins["lid"] == 13 and lid_pin.value() == 0:
            # DAT3 low at the card's CMD0 puts it in SPI mode (settings.validate explains).
            log("sd: GPIO13 (the card's DAT3) was low at mount: the reed switch held it low")
    box_spool = spool.Spool(spool_dir, os, cfg["spool_max_events"], cfg["spool_max_bytes"], log=log)
    wlan = network.WLAN(network.STA_IF)
    wifi = link.Wifi(
        wlan,
        cfg["wifi"]["ssid"],
        cfg["wifi"]["password"],
        20000,
        link.Backoff(2000, 60000, clock.ticks_diff, clock.ticks_add),
        clock.ticks_diff,
        log,
        network,  # its STAT_* names let the box say why a join failed
    )
    b = cfg["broker"]
    client = mqtt_client_class(
        cfg["device_id"], b["host"], b["port"], b["username"] or None, b["password"] or None, b["keepalive_s"]
    )
    topics = protocol.Topics(cfg["device_id"], cfg["prefix"])
    mqtt = link.Mqtt(
        client,
        topics,
        b["keepalive_s"],
        link.Backoff(1000, 60000, clock.ticks_diff, clock.ticks_add),
        clock.ticks_diff,
        log,
    )
    rtc = NtpClock(cfg["ntp_host"], clock.time, log)
    wdt = start_watchdog(machine, cfg["wdt_s"] * 1000, log)

    def rand_bytes(n):
        try:
            return os.urandom(n)
        except (AttributeError, OSError):
            return None

    board = app.Board(
        ticks_ms=clock.ticks_ms,
        ticks_diff=clock.ticks_diff,
        ticks_add=clock.ticks_add,
        unix_time=rtc.unix_time,
        rand_bytes=rand_bytes,
        heap_free=heap_free or gc.mem_free,
        reboot=machine.reset,
        feed=wdt.feed if wdt is not None else None,
    )
    updater = None
    if app_dir is not None:
        updater = ota.Updater(otaboot.Flash(app_dir, os), app.FW_VERSION, log, clock.ticks_diff)
    the_app = app.App(
        cfg, board, lid, box_spool, mqtt, wifi, occupancy, camera, config_path, os, log, updater=updater
    )
    parts = {"flash": flash, "lid_pin": lid_pin, "camera": camera, "clock": rtc, "wifi": wifi, "wdt": wdt}
    return the_app, parts


def start_watchdog(machine, timeout_ms, log=log):
    """machine.WDT(timeout), or None without one. Every release reconfigures the one task watchdog,
    boot.py's trial one included; should WDT() raise while that one runs, feed it instead."""
    if not hasattr(machine, "WDT"):
        return None
    try:
        return machine.WDT(timeout=timeout_ms)
    except OSError as e:
        import otaboot

        if otaboot.BOOT_WDT is None:
            raise
        log("wdt: kept boot.py's trial watchdog (%r)" % (e,))
        return otaboot.BOOT_WDT


def deep_sleep(cfg, machine, the_app, parts):
    """Power down for battery mode: camera off, LED held low, wake on lid or timer."""
    the_app.mqtt.disconnect(offline_status=False)  # asleep is expected, not "offline"
    cam_ = parts["camera"]
    if cam_ is not None:
        cam_.deinit()
    Pin = machine.Pin
    Pin(cfg["pins"]["flash"], Pin.OUT, value=0, hold=True)
    if cfg["camera"]:
        # The OV2640 draws current in deep sleep unless PWDN is held high (boot.py releases it).
        Pin(_CAMERA_PWDN, Pin.OUT, value=1, hold=True)
    try:
        import esp32

        esp32.gpio_deep_sleep_hold(True)
        if not the_app.lid.is_open:
            # Wake when the lid opens; an open lid would wake us at once, so then
            # only the timer wakes the box (lid_left_open was already reported).
            esp32.wake_on_ext0(pin=parts["lid_pin"], level=cfg["pins"]["lid_open_level"])
    except (ImportError, AttributeError, ValueError, OSError) as e:
        # ValueError("invalid pin"): not an RTC GPIO (settings.validate refuses that config).
        log("sleep: no ext0 wake (%r)" % (e,))
    log("sleep: %d s" % cfg["heartbeat_s"])
    machine.deepsleep(cfg["heartbeat_s"] * 1000)


def main(config_path=CONFIG, max_steps=None, idle_forever=True, quiet_marker=QUIET_MARKER):
    """Start the box. `max_steps` bounds the loop (tests); None runs forever."""
    if quiet_window(quiet_marker):
        return None  # back to the REPL, with no watchdog running
    import settings

    cfg, problems = settings.load(config_path, True, log)
    flash_gpio = cfg["pins"]["flash"] if isinstance(cfg.get("pins"), dict) else 4
    if problems:
        safe_idle(problems, flash_gpio, idle_forever)
        return None
    try:
        import machine
        import network
    except ImportError as e:
        safe_idle(["not running on an ESP32 MicroPython build (%s)" % e], flash_gpio, idle_forever)
        return None
    try:
        from umqtt.simple import MQTTClient
    except ImportError:
        safe_idle(
            ["umqtt.simple is missing: install it with mip (tools/flash.py does)"], flash_gpio, idle_forever
        )
        return None
    driver = None
    if cfg["camera"]:
        try:
            import camera as driver
        except ImportError:
            log("camera: this MicroPython build has no camera module; events go out without photos")
    the_app, parts = build(cfg, machine, network, MQTTClient, driver, config_path)
    battery = cfg["mode"] == "battery"
    woke = wake_reason(machine) if battery else None
    the_app.start(init_camera=woke != _TIMER_WAKE)
    if woke == _EXT0_WAKE and not the_app.lid.is_open:
        the_app.lid_cycle_during_boot()
    t0 = time.ticks_ms()
    steps = 0
    failures = 0
    oom = 0
    while max_steps is None or steps < max_steps:
        steps += 1
        try:
            the_app.step()
            failures = 0
            oom = 0
        except MemoryError:
            gc.collect()
            oom += 1
            log("main: out of memory in a step (%d in a row); collected" % oom)
            if oom >= _OOM_RESET:
                # Collecting did not help: the heap is too fragmented. A reset is loss-free
                # (the spool keeps every event) and beats a box that never sends again.
                log("main: out of memory %d times in a row: resetting" % oom)
                machine.reset()
                oom = 0
        except Exception as e:
            # A bug or a driver fault must not stop the box: log it, carry on, and
            # reset only if it keeps happening (the spool keeps every event).
            failures += 1
            log("main: step failed (%d in a row): %r" % (failures, e))
            if hasattr(sys, "print_exception"):
                sys.print_exception(e)
            if failures >= 20:
                machine.reset()
        now = time.ticks_ms()
        if parts["wifi"].up:
            parts["clock"].maybe_sync(now)
        if battery:
            awake = time.ticks_diff(now, t0)
            done = not the_app.busy() and the_app.mqtt.connected and the_app._last_status is not None
            if done or (awake > cfg["awake_s"] * 1000 and the_app.detector.can_sleep()):
                deep_sleep(cfg, machine, the_app, parts)
        time.sleep_ms(20)
    return the_app


def give_up_trial(e, reset, root="/"):
    """A new set that crashes (an exception on import, a bug at start) during its trial is rolled
    back: record why and reset, boot.py does the rest. False when no update is in its trial."""
    try:
        import otaboot

        if not otaboot.give_up(otaboot.Flash(root, os), "crashed: %r" % (e,)):
            return False
    except Exception:
        return False
    print("parcelbox: the new firmware crashed in its trial: rolling back")
    reset()
    return True


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        # Last resort: print why, then let the watchdog (if started) or the user reset.
        sys.print_exception(e) if hasattr(sys, "print_exception") else print(repr(e))
        try:
            import machine

            give_up_trial(e, machine.reset)
        except ImportError:
            pass
        safe_idle(["crashed: %r" % (e,)])
