"""firmware/main.py under CPython with the board's modules faked at the edge (machine,
network, camera, umqtt.simple -> the simulator's paho-backed client) against a real broker."""

from __future__ import annotations

import json
import sys
import time
import types

import pytest

from tests.support.mqtt import Collector
from tools.sim.board import EXT0_WAKE, TIMER_WAKE, DeepSleep, Machine, SimWlan, network_module
from tools.sim.lens import PhotoSource, camera_driver
from tools.sim.paho_umqtt import PahoMQTTClient


def _fake_modules(monkeypatch, **board):
    """The board's modules for main(): `machine` and `esp32` are tools/sim/board's (the one fake of
    them, also the simulator's); `board` goes to its Machine (wake=, cause=, clock=). Returns it."""
    machine = Machine(**board)
    network = network_module(SimWlan())
    umqtt = types.ModuleType("umqtt")
    simple = types.ModuleType("umqtt.simple")
    simple.MQTTClient = PahoMQTTClient
    umqtt.simple = simple
    photos = PhotoSource(None)
    cam = camera_driver("lemariva", lambda w, h, q: photos.frame(0, True), warmup=1)
    for name, mod in (
        ("machine", machine),
        ("esp32", machine.esp32),
        ("network", network),
        ("umqtt", umqtt),
        ("umqtt.simple", simple),
        ("camera", cam),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    start = time.monotonic()
    monkeypatch.setattr(time, "ticks_ms", lambda: int((time.monotonic() - start) * 1000), raising=False)
    monkeypatch.setattr(time, "ticks_diff", lambda a, b: a - b, raising=False)
    monkeypatch.setattr(time, "ticks_add", lambda a, b: a + b, raising=False)
    monkeypatch.setattr(time, "sleep_ms", lambda ms: time.sleep(ms / 1000), raising=False)
    monkeypatch.setattr(time, "sleep_us", lambda us: None, raising=False)
    import gc

    monkeypatch.setattr(gc, "mem_free", lambda: 100000, raising=False)
    return machine


def test_missing_config_prints_why_and_idles(tmp_path, capsys):
    import main

    assert main.main(str(tmp_path / "config.json"), max_steps=1, idle_forever=False) is None
    out = capsys.readouterr().out
    assert "cannot start" in out and "config.json not found" in out


def test_invalid_config_lists_every_problem(tmp_path, capsys):
    import main

    p = tmp_path / "config.json"
    p.write_text(json.dumps({"device_id": "BAD ID", "pins": {"lid": 12}, "wifi": {"ssid": ""}}))
    assert main.main(str(p), max_steps=1, idle_forever=False) is None
    out = capsys.readouterr().out
    assert "device_id" in out and "GPIO12" in out and "wifi.ssid is empty" in out


def test_missing_umqtt_is_a_clear_message(tmp_path, capsys, monkeypatch):
    import main

    _fake_modules(monkeypatch)
    monkeypatch.setitem(sys.modules, "umqtt.simple", None)
    p = tmp_path / "config.json"
    p.write_text(
        json.dumps({"wifi": {"ssid": "x"}, "broker": {"host": "127.0.0.1"}, "spool_dir": str(tmp_path / "s")})
    )
    assert main.main(str(p), max_steps=1, idle_forever=False) is None
    assert "umqtt.simple is missing" in capsys.readouterr().out


def test_main_wires_the_board_and_comes_online(tmp_path, monkeypatch, mosquitto, prefix):
    import main

    machine = _fake_modules(monkeypatch)
    cfg = {
        "device_id": "box-5",
        "prefix": prefix,
        "wifi": {"ssid": "home", "password": "pw"},
        "broker": {"host": mosquitto.host, "port": mosquitto.port},
        "spool_dir": str(tmp_path / "spool"),
        "sensor": "ir",
    }
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    app = main.main(str(p), max_steps=10, idle_forever=False)
    assert app is not None and app.mqtt.connected
    assert machine.wdt is not None and machine.wdt.timeout_ms == 60000 and machine.wdt.feeds  # wdt_s 60
    status = Collector(mosquitto.url, f"{prefix}/box-5/status")
    try:
        m = status.get()
        assert m.retain and json.loads(m.payload)["online"] is True
    finally:
        status.close()
    assert machine.pins[13].pull == machine.PULL_UP and machine.pins[4].level == 0
    assert app.camera is not None and app.camera.ok  # lemariva path through main's `import camera`
    app.mqtt.disconnect()


@pytest.mark.parametrize("synced", [False, True])
def test_ntp_clock_ts_null_until_synced(synced, monkeypatch):
    import main

    if not synced:  # a cold boot: the RTC starts at 2000-01-01
        monkeypatch.setattr(time, "time", lambda: 946684800.0 + 12)
    c = main.NtpClock("pool.ntp.org")
    c.synced = synced
    t = c.unix_time()
    assert (t is None) if not synced else abs(t - time.time()) < 5


def test_battery_mode_sleeps_when_done_with_camera_off_led_held_and_lid_wake(
    tmp_path, monkeypatch, mosquitto, prefix
):
    import main

    machine = _fake_modules(monkeypatch)
    cfg = {
        "device_id": "box-6",
        "prefix": prefix,
        "mode": "battery",
        "heartbeat_s": 1800,
        "wifi": {"ssid": "home", "password": "pw"},
        "broker": {"host": mosquitto.host, "port": mosquitto.port},
        "spool_dir": str(tmp_path / "spool"),
    }
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    with pytest.raises(DeepSleep) as slept:
        main.main(str(p), max_steps=50, idle_forever=False)
    # the timer, the lid (GPIO13 opening: level 1) and the pads held through the sleep
    assert (slept.value.ms, slept.value.ext0, slept.value.pad_hold) == (1800 * 1000, (13, 1), True)
    led = machine.pins[4]
    assert led.level == 0 and led.held
    assert sys.modules["camera"].inited is False  # powered down before sleep
    pwdn = machine.pins[32]  # and kept down: PWDN held high through the sleep (issue 13 item 8)
    assert pwdn.level == 1 and pwdn.held


def test_sd_spool_falls_back_to_flash_when_no_card(tmp_path, monkeypatch, mosquitto, prefix, capsys):
    import main

    _fake_modules(monkeypatch)

    def no_card(**kw):
        raise OSError("no SD card")

    sys.modules["machine"].SDCard = no_card
    made = []
    import spool

    real = spool.Spool

    def spy(path, *a, **kw):
        made.append(path)
        return real(str(tmp_path / path.strip("/")), *a, **kw)

    monkeypatch.setattr(spool, "Spool", spy)
    cfg = {
        "device_id": "box-8",
        "prefix": prefix,
        "wifi": {"ssid": "home"},
        "broker": {"host": mosquitto.host, "port": mosquitto.port},
        "spool_dir": "/sd/spool",
        "pins": {"lid_open_level": 0},  # the reed wired so GPIO13 (SD DAT3) is high with the lid closed
    }
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    app = main.main(str(p), max_steps=2, idle_forever=False)
    assert made == ["/spool"]
    out = capsys.readouterr().out
    assert "sd: mount failed" in out and "spooling to internal flash" in out
    app.mqtt.disconnect()


def test_a_failing_step_is_logged_and_the_loop_goes_on(tmp_path, monkeypatch, mosquitto, prefix, capsys):
    import app as fw_app
    import main

    _fake_modules(monkeypatch)
    calls = []
    real_step = fw_app.App.step

    def flaky_step(self):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("driver hiccup")
        return real_step(self)

    monkeypatch.setattr(fw_app.App, "step", flaky_step)
    cfg = {
        "device_id": "box-9",
        "prefix": prefix,
        "wifi": {"ssid": "home"},
        "broker": {"host": mosquitto.host, "port": mosquitto.port},
        "spool_dir": str(tmp_path / "spool"),
    }
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    app = main.main(str(p), max_steps=5, idle_forever=False)
    assert len(calls) == 5
    assert "step failed (1 in a row): ValueError('driver hiccup')" in capsys.readouterr().out
    app.mqtt.disconnect()


def test_quiet_window_marker_starts_neither_app_nor_watchdog(tmp_path, monkeypatch, capsys):
    """/noapp at boot: provisioning gets a board whose watchdog never started (it cannot be stopped)."""
    import main

    machine = _fake_modules(monkeypatch)
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"wifi": {"ssid": "x"}, "broker": {"host": "127.0.0.1", "port": 9}}))
    marker = tmp_path / "noapp"
    marker.write_text("")
    assert main.main(str(p), max_steps=3, idle_forever=False, quiet_marker=str(marker)) is None
    out = capsys.readouterr().out
    assert f"quiet window: {marker} is present" in out and "watchdog are not started" in out
    assert machine.wdt is None  # no watchdog
    assert "cannot start" not in out  # not an error: nothing else ran (the config was not even read)

    # the marker gone: the same config starts the app and arms the watchdog
    marker.unlink()
    monkeypatch.setattr(main, "build", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("built")))
    with pytest.raises(RuntimeError, match="built"):
        main.main(str(p), max_steps=1, idle_forever=False, quiet_marker=str(marker))
    assert "quiet window" not in capsys.readouterr().out


def test_quiet_window_check_runs_under_micropython(micropython, tmp_path):
    (tmp_path / "noapp").write_text("")
    res = micropython(
        "import main\nprint(main.quiet_window('/data/noapp'))\nprint(main.quiet_window('/data/absent'))\n",
        data_dir=tmp_path,
    ).check()
    lines = res.stdout.splitlines()
    assert lines[0].startswith("parcelbox: quiet window: /data/noapp is present")
    assert lines[-2:] == ["True", "False"]


class VirtualTime:
    """main's loop clock, advanced by its own sleep_ms: no test waits for it."""

    def __init__(self, monkeypatch):
        self.now = 0
        monkeypatch.setattr(time, "ticks_ms", lambda: self.now, raising=False)
        monkeypatch.setattr(time, "sleep_ms", self.sleep_ms, raising=False)

    def sleep_ms(self, ms):
        self.now += ms


def _battery_cfg(tmp_path, mosquitto, prefix, device, **extra):
    cfg = {
        "device_id": device,
        "prefix": prefix,
        "mode": "battery",
        "wifi": {"ssid": "home", "password": "pw"},
        "broker": {"host": mosquitto.host, "port": mosquitto.port},
        "spool_dir": str(tmp_path / "spool"),
    }
    cfg.update(extra)
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return p


def test_heartbeat_wake_leaves_the_camera_off(tmp_path, monkeypatch, mosquitto, prefix):
    """A timer wake only sends a status: the camera is not initialised (it was, every hour)."""
    import main

    _fake_modules(monkeypatch, wake=TIMER_WAKE, cause=Machine.DEEPSLEEP_RESET)
    VirtualTime(monkeypatch)
    p = _battery_cfg(tmp_path, mosquitto, prefix, "box-10")
    with pytest.raises(DeepSleep):
        main.main(str(p), max_steps=200, idle_forever=False)
    assert [c for c in sys.modules["camera"].calls if c[0] == "init"] == []


def test_lid_cycle_during_the_boot_from_deep_sleep_is_reported(tmp_path, monkeypatch, mosquitto, prefix):
    """Woken by the lid, which is closed again by the time the app starts (a courier is quick,
    the boot takes ~1-1.5 s): the opening is measured, the parcel is a delivery. It was lost,
    and the IR reading silently became the new baseline."""
    import main

    _fake_modules(monkeypatch, wake=EXT0_WAKE, cause=Machine.DEEPSLEEP_RESET)  # woken by the lid pin
    VirtualTime(monkeypatch)
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "state.json").write_text(json.dumps({"seq": 4, "level": 0}))  # empty before the sleep
    p = _battery_cfg(tmp_path, mosquitto, prefix, "box-11", sensor="ir", settle_s=1)
    # Unwired pins read 0 (board.SimPin): lid closed (open level 1), IR active-low = a parcel inside.
    app = main.main(str(p), max_steps=150, idle_forever=False)
    assert app is not None and app.counters["events"] == 1
    (order,) = app.spool.orders()
    rec = app.spool.record(order)
    assert rec["type"] == "delivery" and rec["sensors"]["before"] == 0 and rec["sensors"]["level"] == 1
    assert rec["photo"] is not None
    app.mqtt.disconnect()


def test_persistent_memory_error_resets_the_board(tmp_path, monkeypatch, mosquitto, prefix, capsys):
    """MemoryError in every step: collecting does not help (a fragmented heap), so reset; the
    spool keeps every event. It used to log and carry on for ever."""
    import app as fw_app
    import main

    _fake_modules(monkeypatch)
    VirtualTime(monkeypatch)

    def oom(self):
        raise MemoryError("memory allocation failed, allocating 8192 bytes")

    monkeypatch.setattr(fw_app.App, "step", oom)
    p = tmp_path / "config.json"
    p.write_text(
        json.dumps(
            {
                "device_id": "box-12",
                "prefix": prefix,
                "wifi": {"ssid": "home"},
                "broker": {"host": mosquitto.host, "port": mosquitto.port},
                "spool_dir": str(tmp_path / "spool"),
            }
        )
    )
    main.main(str(p), max_steps=12, idle_forever=False)
    assert sys.modules["machine"].resets == 2  # after 5 in a row, twice in 12 steps
    assert "out of memory 5 times in a row: resetting" in capsys.readouterr().out


def test_one_memory_error_does_not_reset(tmp_path, monkeypatch, mosquitto, prefix):
    import app as fw_app
    import main

    _fake_modules(monkeypatch)
    VirtualTime(monkeypatch)
    real = fw_app.App.step
    n = []

    def sometimes(self):
        n.append(1)
        if len(n) % 3 == 0:
            raise MemoryError()
        return real(self)

    monkeypatch.setattr(fw_app.App, "step", sometimes)
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"device_id": "box-13", "prefix": prefix, "wifi": {"ssid": "x"},
                             "broker": {"host": mosquitto.host, "port": mosquitto.port},
                             "spool_dir": str(tmp_path / "spool")}))  # fmt: skip
    app = main.main(str(p), max_steps=12, idle_forever=False)
    assert sys.modules["machine"].resets == 0
    app.mqtt.disconnect()


@pytest.mark.parametrize("rtc_s,expect", [(1765000000.0, 1765000000), (946684800.0 + 35, None)])
def test_events_keep_their_timestamp_after_a_deep_sleep_wake(monkeypatch, rtc_s, expect):
    """The RTC keeps NTP's time through deep sleep: after a wake (NTP not asked yet in this
    boot) the clock is good, so events carry ts (they carried null after every wake). A cold
    boot's RTC (2000-01-01, here as Unix seconds) still gives null until NTP answers."""
    import main

    monkeypatch.setattr(time, "time", lambda: rtc_s)
    c = main.NtpClock("pool.ntp.org")
    assert c.synced is False and c.unix_time() == expect


def test_a_non_rtc_lid_pin_does_not_crash_the_sleep(tmp_path, monkeypatch, capsys):
    """settings refuses it; should one get through, deep_sleep logs and sleeps on the timer."""
    import main

    machine = _fake_modules(monkeypatch)
    lid = machine.Pin(3, machine.Pin.IN)  # U0RXD: a GPIO, but not an RTC one

    class Lid:
        is_open = False

    class App:
        lid = Lid()

        class mqtt:
            @staticmethod
            def disconnect(offline_status=True):
                pass

    cfg = {"pins": {"flash": 4, "lid_open_level": 1}, "heartbeat_s": 60, "camera": True}
    with pytest.raises(DeepSleep):
        main.deep_sleep(cfg, machine, App(), {"camera": None, "lid_pin": lid})
    assert "sleep: no ext0 wake (ValueError('invalid pin'))" in capsys.readouterr().out


def test_sd_mount_hint_when_dat3_was_low(tmp_path, monkeypatch, mosquitto, prefix, capsys):
    """The SD card starts in SPI mode when DAT3 (GPIO13) is low at its first command (the fake
    SDCard fails then, like the card): the log names the reason instead of a bare failure."""
    import main
    import spool

    machine = _fake_modules(monkeypatch)
    VirtualTime(monkeypatch)

    def sdcard(slot=1, width=1):
        if 13 in machine.pins and machine.pins[13].level == 0:
            raise OSError(116)  # the SDMMC host times out on a card that answers in SPI mode
        raise AssertionError("DAT3 high: not this test")

    sys.modules["machine"].SDCard = sdcard
    import os

    monkeypatch.setattr(os, "mount", lambda dev, path: None, raising=False)  # MicroPython's os.mount
    real = spool.Spool
    monkeypatch.setattr(
        spool, "Spool", lambda path, *a, **kw: real(str(tmp_path / path.strip("/")), *a, **kw)
    )
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"device_id": "box-14", "prefix": prefix, "wifi": {"ssid": "x"},
                             "broker": {"host": mosquitto.host, "port": mosquitto.port},
                             "spool_dir": "/sd/spool", "pins": {"lid_open_level": 0}}))  # fmt: skip
    app = main.main(str(p), max_steps=2, idle_forever=False)  # lid open at boot: GPIO13 low
    out = capsys.readouterr().out
    assert "GPIO13 (the card's DAT3) was low at mount" in out
    app.mqtt.disconnect()


def _sim_cfg(tmp_path, device, **extra):
    import settings

    cfg = settings.copy_defaults()
    cfg.update({"device_id": device, "spool_dir": str(tmp_path / device), "sensor": "ir", "camera": False})
    cfg["wifi"] = {"ssid": "sim", "password": "sim"}
    cfg["broker"].update({"host": "127.0.0.1", "port": 9})  # nothing listens: connects are refused
    cfg.update(extra)
    return cfg


def test_build_runs_each_box_on_its_own_injected_clock(tmp_path):
    """Two boxes in one process, each on its own virtual clock (the simulator's case): build() takes
    the clock, the heap reading, the app folder and the log as arguments, and CPython's `time` (which
    has no ticks_ms) is never read for them. build() read `time.ticks_ms` & co. itself, so only a
    monkeypatched `time` module worked: one clock for every box in the process."""
    import main

    from tools.sim import fake_net
    from tools.sim.board import Machine, SimClock, network_module

    boxes = []
    for device, start in (("box-a", 1_000), ("box-b", 500_000)):
        clock = SimClock()
        clock.now = start
        lines: list[str] = []
        machine = Machine({}, reset=lambda: None, clock=clock)
        wlan = fake_net.WLAN(clock, ap=("sim", "sim"), join_ms=300)
        app, parts = main.build(
            _sim_cfg(tmp_path, device),
            machine,
            network_module(wlan),
            PahoMQTTClient,
            None,
            str(tmp_path / device / "config.json"),
            clock=clock,
            heap_free=lambda: 123_456,
            app_dir=None,
            log=lines.append,
        )
        assert app.board.ticks_ms() == start and app.board.heap_free() == 123_456
        assert app.updater is None  # no app folder given
        assert parts["wdt"] is machine.wdt and machine.wdt.timeout_ms == 60000  # the task watchdog, wdt_s
        boxes.append((clock, app, lines))
    for clock, app, lines in boxes:
        app.start()
        app.step()  # the station starts joining: it takes 300 virtual ms
        clock.advance(400)
        app.step()
        now = clock.ticks_ms()
        assert app.wifi.up and app.mqtt.failures == 1  # port 9: refused
        # The board's backoff (1 s first), counted on this box's clock, not the other's.
        assert not app.mqtt.backoff.ready(now + 999) and app.mqtt.backoff.ready(now + 1000)
        assert any(f"app: {app.cfg['device_id']} fw" in line for line in lines)


def test_build_has_the_app_folder_it_is_given(tmp_path):
    """Over-the-air updates write to `app_dir` ("/" on the board); the simulator gives each box its own."""
    import main

    from tools.sim import fake_net
    from tools.sim.board import Machine, SimClock, network_module

    clock = SimClock()
    folder = tmp_path / "flash"
    folder.mkdir()
    app, _parts = main.build(
        _sim_cfg(tmp_path, "box-c"),
        Machine({}, reset=lambda: None),
        network_module(fake_net.WLAN(clock, ap=("sim", "sim"))),
        PahoMQTTClient,
        None,
        clock=clock,
        heap_free=lambda: 1,
        app_dir=str(folder),
        log=lambda line: None,
    )
    assert app.updater is not None and app.updater.fl.root == str(folder)


_MP_BUILD = """
import json
import main
import settings
import time
import fake_net

import board  # tools/sim/board.py, the simulator's board modules, under MicroPython itself

machine = board.Machine()

class Network(fake_net.Network):
    @staticmethod
    def WLAN(iface):
        return fake_net.WLAN(fake_net.Clock(), ap=("sim", "sim"))

class Client:
    def __init__(self, *a):
        self.args = a
    def set_callback(self, f):
        pass
    def set_last_will(self, *a, **k):
        pass

cfg = settings.copy_defaults()
cfg["device_id"] = "box-mp"
cfg["sensor"] = "ir"
cfg["camera"] = False
cfg["spool_dir"] = "/data/spool"
cfg["wifi"] = {"ssid": "sim", "password": "sim"}
cfg["broker"]["host"] = "127.0.0.1"
app, parts = main.build(cfg, machine, Network, Client, None, "/data/config.json", app_dir="/data")
b = app.board
print(json.dumps({
    "pins": [machine.pins[4].mode, machine.pins[4].level, machine.pins[13].pull],
    "wdt": parts["wdt"] is machine.wdt and machine.wdt.timeout_ms,
    "ticks": b.ticks_ms is time.ticks_ms and b.ticks_diff is time.ticks_diff and b.ticks_add is time.ticks_add,
    "heap": b.heap_free() > 0,
    "updater": app.updater.fl.root,
    "client": list(app.mqtt.client.args),
}))
app.start()
for _ in range(3):
    app.step()
print("stepped")
"""


def test_build_under_micropython_defaults_to_the_boards_time_module(micropython, tmp_path):
    """Under real MicroPython, with no clock given: the board's `time` module (ticks_ms, ticks_diff,
    ticks_add, sleep_ms, sleep_us, time) and gc.mem_free, exactly what build() used before it took
    them as arguments; `app_dir` puts the updater's files where it is told."""
    res = micropython(_MP_BUILD, data_dir=tmp_path).check()
    lines = res.stdout.splitlines()
    got = json.loads(next(line for line in lines if line.startswith("{")))
    assert got == {
        "pins": [3, 0, 2],  # the flash LED an output driven low, the lid pulled up
        "wdt": 60000,
        "ticks": True,
        "heap": True,
        "updater": "/data",
        "client": ["box-mp", "127.0.0.1", 1883, None, None, 60],
    }
    assert lines[-1] == "stepped"


class _RefusingWdtMachine(Machine):
    """Fault injection, not a MicroPython release: WDT() raises OSError(ESP_ERR_INVALID_STATE) (no
    release seen does: v1.20 reconfigures through esp_task_wdt_init, v1.21+ through
    esp_task_wdt_reconfigure), so main keeps boot.py's trial watchdog and says so in its log."""

    def WDT(self, id=0, timeout=5000):
        raise OSError(259)


def test_build_logs_every_line_through_the_log_it_is_given(tmp_path, monkeypatch, capsys):
    """The SD mount, the watchdog and NTP print through build()'s `log` (the simulator's per-box log),
    not the module's print: `mount_sd`, `start_watchdog` and NtpClock used main.log, so their lines
    went to stdout, with no box name, whatever build() was given."""
    import main
    import otaboot
    import spool

    from tools.sim import fake_net
    from tools.sim.board import SimClock, SimWdt

    real = spool.Spool
    monkeypatch.setattr(
        spool, "Spool", lambda path, *a, **kw: real(str(tmp_path / path.strip("/")), *a, **kw)
    )
    clock = SimClock()
    boot_wdt = SimWdt(clock)
    monkeypatch.setattr(otaboot, "BOOT_WDT", boot_wdt)  # boot.py started it: an update's trial is running
    lines: list[str] = []
    # No SDCard on the fake board (as on a build without one): the mount fails, the spool moves to flash.
    app, parts = main.build(
        _sim_cfg(tmp_path, "box-l", spool_dir="/sd/spool"),
        _RefusingWdtMachine(clock=clock),
        network_module(fake_net.WLAN(clock, ap=("sim", "sim"))),
        PahoMQTTClient,
        None,
        clock=clock,
        heap_free=lambda: 1,
        app_dir=None,
        log=lines.append,
    )
    parts["clock"].maybe_sync(0)  # no ntptime module here: "not synced"
    assert parts["wdt"] is boot_wdt
    text = "\n".join(lines)
    for said in ("sd: mount failed", "spooling to internal flash", "wdt: kept boot.py's trial watchdog",
                 "ntp: not synced"):  # fmt: skip
        assert said in text, said
    assert capsys.readouterr().out == ""
