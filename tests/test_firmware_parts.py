"""Firmware parts at the hardware edge, under CPython with simulated drivers and pins:
camera adapter (both drivers), reed switch, occupancy sensors, HX711, settings, Wi-Fi/MQTT link."""

from __future__ import annotations

import json

import cam
import hx711
import link
import protocol
import pytest
import sensors
import settings

from tools.sim import fake_camera
from tools.sim.board import SimPin, SimWlan
from tools.sim.lens import PhotoSource, camera_driver, warmup_jpeg

# --- camera ----------------------------------------------------------------------------


def _scene(tmp_path, flash=None, n=3):
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(n):
        (d / f"p{i}.jpg").write_bytes(b"\xff\xd8" + bytes([i]) * (1000 + i) + b"\xff\xd9")
    src = PhotoSource(d)
    world = {"scene": 0}
    return src, world, lambda w, h, q: src.frame(world["scene"], flash is None or flash.level == 1)


def test_lemariva_driver_init_settings_warmup_and_bytes_frames(tmp_path):
    flash = SimPin(0)
    src, world, lens = _scene(tmp_path, flash)
    drv = camera_driver("lemariva", lens, warmup=2)
    lines = []
    c = cam.CameraAdapter(drv, "UXGA", 100, 2, flash, True, 0, None, lines.append)
    assert c.init() is True and c.api == "lemariva", lines
    # size and quality at init: the driver sizes its one frame buffer there
    assert drv.calls[0] == (
        "init",
        0,
        {"format": drv.JPEG, "framesize": drv.FRAME_UXGA, "quality": 10, "fb_location": drv.PSRAM},
    )
    world["scene"] = 1
    f = c.capture()
    assert isinstance(f, bytes) and f == src.served[0]  # lit, this scene; warm-up frames discarded
    assert warmup_jpeg() not in src.served
    assert flash.history == [0, 1, 0] and flash.level == 0
    c.deinit()
    assert ("deinit",) in drv.calls and flash.level == 0


def test_camera_api_driver_returns_a_signed_memoryview_of_the_frame_buffer(tmp_path):
    flash = SimPin(0)
    src, world, lens = _scene(tmp_path, flash)
    drv = camera_driver("camera-api", lens, warmup=1)
    c = cam.CameraAdapter(drv, "SVGA", 85, 1, flash, True, 0)
    assert c.init() and c.api == "camera.Camera"
    assert drv.created == [{"pixel_format": 4, "frame_size": drv.FrameSize.SVGA, "jpeg_quality": 85}]
    world["scene"] = 1
    f = c.capture()
    assert isinstance(f, memoryview) and f.format == "b" and bytes(f) == src.served[0]
    world["scene"] = 2
    assert bytes(c.capture()) == src.served[1]


@pytest.mark.parametrize("api", ["lemariva", "camera-api"])
def test_camera_init_failure_is_reported_not_fatal(api, tmp_path):
    src, world, lens = _scene(tmp_path)
    drv = camera_driver(api, lens, fail_init=True)
    lines = []
    c = cam.CameraAdapter(drv, log=lines.append)
    assert c.init() is False and not c.ok
    assert "OSError" in c.error and any("camera: init failed" in x for x in lines)
    assert c.capture() is None  # retries init, fails again, still no exception


def test_camera_without_driver_and_non_jpeg_frames():
    c = cam.CameraAdapter(None, log=lambda m: None)
    assert c.init() is False and c.capture() is None

    class Garbage:
        JPEG = 1

        def init(self, *a, **k):
            return True

        def framesize(self, v):
            pass

        def quality(self, v):
            pass

        def capture(self):
            return b"\x00\x01not a jpeg"

        FRAME_SVGA = 3

    c = cam.CameraAdapter(Garbage(), warmup=0, log=lambda m: None)
    assert c.init() and c.capture() is None and c.failures == 1


# --- sensors ---------------------------------------------------------------------------


def test_reed_debounce_ignores_bounces_and_follows_real_changes():
    pin = SimPin(0)
    r = sensors.Reed(pin, open_level=1, debounce_ms=50)
    assert r.read(0) is False
    pin.value(1)
    assert r.read(10) is False
    pin.value(0)  # bounce back within the debounce time
    assert r.read(20) is False
    pin.value(1)
    assert r.read(30) is False and r.read(70) is False
    assert r.read(80) is True  # stable for 50 ms
    pin.value(0)
    assert r.read(100) is True and r.read(150) is False


def test_reed_active_low_wiring():
    pin = SimPin(1)
    r = sensors.Reed(pin, open_level=0, debounce_ms=0)
    assert r.read(0) is False
    pin.value(0)
    assert r.read(1) is True


def test_ir_sensor_active_level():
    pin = SimPin(0)
    s = sensors.IRSensor(pin, active_level=0)
    assert s.read_level() == 1 and s.info == {"ir": 1}
    pin.value(1)
    assert s.read_level() == 0


def test_ultrasonic_median_range_and_level():
    echoes = [1166, 99999, 1170]  # ~200 mm, one wild echo, ~200 mm
    calls = []

    def pulse(pin, level, timeout):
        calls.append((level, timeout))
        return echoes[len(calls) - 1]

    trig = SimPin(0)
    u = sensors.Ultrasonic(trig, SimPin(0), pulse, lambda us: None, empty_range_mm=300)
    assert u.read_level() == 300 - 200 and u.info == {"range_mm": 200}
    assert calls == [(1, 30000)] * 3
    assert trig.history.count(1) == 3  # one 10 us trigger pulse per ping


def test_ultrasonic_no_echo_raises_oserror():
    u = sensors.Ultrasonic(SimPin(0), SimPin(0), lambda p, lvl, t: -1, lambda us: None)
    with pytest.raises(OSError):
        u.read_level()


class SimHX711Chip:
    """The chip's side of the two wires: DOUT low when ready; SCK rising edges shift bits out."""

    def __init__(self, values):
        self.values = list(values)
        self.current = None
        self.bits = 0
        self.pulses_after = 0
        self.ready = True
        chip = self

        class Dout:
            def value(self, v=None):
                if chip.current is None:
                    return 0 if chip.ready and chip.values else 1
                return (chip.current >> (23 - chip.bits + 1)) & 1 if chip.bits else 0

        class Sck:
            level = 0

            def value(self, v=None):
                if v is None:
                    return self.level
                if v and not self.level:
                    chip._edge()
                self.level = 1 if v else 0

        self.dout = Dout()
        self.sck = Sck()

    def _edge(self):
        if self.current is None:
            self.current = self.values.pop(0) & 0xFFFFFF
            self.bits = 0
            self.pulses_after = 0
        if self.bits < 24:
            self.bits += 1
        else:
            self.pulses_after += 1


def test_hx711_reads_signed_24_bit_and_selects_gain():
    chip = SimHX711Chip([0x000123, 0xFFFFFE])
    hx = hx711.HX711(chip.dout, chip.sck, gain=128)
    assert hx.read_raw() == 0x123
    assert chip.pulses_after == 1  # gain 128: one extra pulse
    chip.current = None
    assert hx.read_raw() == -2


def test_hx711_not_ready_times_out():
    chip = SimHX711Chip([])
    hx = hx711.HX711(chip.dout, chip.sck)
    with pytest.raises(hx711.HX711Error):
        hx.read_raw(polls=100)


def test_load_cell_grams_from_median():
    class FakeHX:
        def __init__(self):
            self.vals = [1000 + 420 * 250, 1000 + 420 * 250, 99999999, 1000 + 420 * 251, 0]

        def read_average(self, n):
            vals = sorted(self.vals[:n])
            return vals[len(vals) // 2]

    lc = sensors.LoadCell(FakeHX(), scale=420.0, offset=1000)
    assert lc.read_level() == 250 and lc.info == {"weight_g": 250}


def test_make_occupancy_builds_the_configured_sensor():
    cfg = settings.copy_defaults()
    built = []

    def pin_in(g):
        built.append(("in", g))
        return SimPin(0)

    def pin_out(g):
        built.append(("out", g))
        return SimPin(0)

    assert sensors.make_occupancy(cfg, pin_in, pin_out) is None
    cfg["sensor"] = "ultrasonic"
    assert isinstance(
        sensors.make_occupancy(cfg, pin_in, pin_out, lambda *a: 1000, lambda us: None), sensors.Ultrasonic
    )
    assert built == [("out", 14), ("in", 15)]
    cfg["sensor"] = "hx711"
    assert isinstance(sensors.make_occupancy(cfg, pin_in, pin_out), sensors.LoadCell)


# --- settings --------------------------------------------------------------------------


def _write(tmp_path, obj):
    p = tmp_path / "config.json"
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(p)


def test_example_config_is_valid_and_documents_every_key(tmp_path):
    from pathlib import Path

    example = Path(settings.__file__).with_name("config.example.json")
    raw = json.loads(example.read_text())
    assert set(raw) == set(settings.DEFAULTS)
    for sec in settings.SECTIONS:
        assert set(raw[sec]) == set(settings.DEFAULTS[sec])
    raw["wifi"]["ssid"] = "home"
    raw["broker"]["host"] = "192.168.1.10"
    cfg, problems = settings.load(_write(tmp_path, raw))
    assert problems == []
    readme = example.with_name("README.md").read_text()
    for key in settings.DEFAULTS:
        assert f"`{key}`" in readme, key


def test_missing_and_broken_config_give_clear_problems(tmp_path):
    cfg, problems = settings.load(str(tmp_path / "nope.json"))
    assert problems and "not found" in problems[0] and cfg == settings.copy_defaults()
    _, problems = settings.load(_write(tmp_path, "{broken"))
    assert "not valid JSON" in problems[0]
    _, problems = settings.load(_write(tmp_path, "[1,2]"))
    assert "JSON object" in problems[0]


def test_bad_values_are_listed_not_raised(tmp_path):
    warnings = []
    raw = {
        "device_id": "Box 1",
        "wifi": {"ssid": ""},
        "pins": {"lid": 12},
        "settle_s": "2",
        "sensor": "laser",
        "typo_key": 1,
    }
    cfg, problems = settings.load(_write(tmp_path, raw), warn=warnings.append)
    assert any("settle_s has the wrong type" in p for p in problems)
    assert any("typo_key" in w for w in warnings)
    raw.pop("settle_s")
    cfg, problems = settings.load(_write(tmp_path, raw), warn=warnings.append)
    text = "\n".join(problems)
    assert (
        "device_id" in text and "wifi.ssid is empty" in text and "GPIO12" in text and "sensor must be" in text
    )


def test_pin_conflicts_with_camera_and_flash_are_rejected():
    cfg = settings.copy_defaults()
    cfg["pins"]["lid"] = 4
    assert any("flash LED" in p for p in settings.validate(cfg, False))
    cfg["pins"]["lid"] = 26
    assert any("camera" in p for p in settings.validate(cfg, False))
    cfg = settings.copy_defaults()
    cfg["sensor"] = "ir"
    cfg["pins"]["ir"] = 13
    assert any("both GPIO13" in p for p in settings.validate(cfg, False))


def test_sd_spool_reserves_the_sd_pins():
    cfg = settings.copy_defaults()
    cfg["spool_dir"] = "/sd/spool"
    cfg["pins"]["lid_open_level"] = 0  # GPIO13 (DAT3) high while the lid is closed
    assert settings.validate(cfg, False) == []
    cfg["sensor"] = "ultrasonic"  # trig 14 / echo 15 are the SD card's CLK / CMD
    problems = settings.validate(cfg, False)
    assert any("pins.trig=GPIO14 is used by the SD card" in p for p in problems)


def test_sd_spool_with_the_reed_holding_dat3_low_is_refused():
    """Issue 13 item 6: the default reed on GPIO13 grounds the card's DAT3 while the lid is
    closed (the normal case at boot): the card starts in SPI mode and the mount fails, so the
    box silently spooled to flash. Was accepted."""
    cfg = settings.copy_defaults()
    cfg["spool_dir"] = "/sd/spool"
    problems = settings.validate(cfg, False)
    assert any("GPIO13 is the SD card's DAT3" in p and "SPI mode" in p for p in problems), problems
    cfg["pins"]["lid_open_level"] = 0
    cfg["sensor"] = "ir"
    cfg["pins"]["lid"] = 13
    cfg["pins"]["ir"] = 13
    assert any("pins.ir=GPIO13 is the SD card's DAT3" in p for p in settings.validate(cfg, False))


@pytest.mark.parametrize(
    "sensor,pin,level",
    [("hx711", "hx_dout", None), ("ir", "ir", 1), ("ir", "ir", 0)],
)
def test_nothing_that_can_hold_gpio12_high_at_reset_is_accepted(sensor, pin, level):
    """An HX711's DOUT idles high and an active-high IR module is high with a parcel inside:
    GPIO12 high at reset selects 1.8 V flash and the board does not boot. Only the lid and an
    active-low IR were checked before."""
    cfg = settings.copy_defaults()
    cfg["sensor"] = sensor
    cfg["pins"][pin] = 12
    if level is not None:
        cfg["pins"]["ir_active_level"] = level
    assert any(f"pins.{pin}=GPIO12" in p for p in settings.validate(cfg, False))
    if sensor == "hx711":
        cfg["pins"]["hx_dout"], cfg["pins"]["hx_sck"] = 14, 12  # SCK is an output: fine on 12
        assert settings.validate(cfg, False) == []


@pytest.mark.parametrize("gpio", [16, 17, 6, 11])
def test_psram_and_flash_gpios_are_refused_even_with_the_camera_off(gpio):
    """An ESP32-CAM's MicroPython build has PSRAM (CONFIG_SPIRAM), and then no Pin object for GPIO
    16/17 (ports/esp32/machine_pin.h); 6-11 are the SPI flash. With the camera off they were accepted,
    and the box failed at boot with ValueError('invalid pin') from Pin(16)."""
    cfg = settings.copy_defaults()
    cfg["camera"] = False
    cfg["sensor"] = "ir"
    cfg["pins"]["ir"] = gpio
    assert any(f"pins.ir=GPIO{gpio} is the" in p for p in settings.validate(cfg, False))
    cfg["pins"]["ir"] = 3  # U0R: free with the camera (and the serial console) off
    assert settings.validate(cfg, False) == []


def test_battery_mode_needs_an_rtc_lid_pin():
    """esp32.wake_on_ext0 raises ValueError('invalid pin') for a non-RTC GPIO (modesp32.c):
    a battery box with its lid on, say, GPIO 3 crashed at its first sleep."""
    cfg = settings.copy_defaults()
    cfg["mode"] = "battery"
    cfg["camera"] = False  # camera off frees GPIO 1/3...: 3 (U0R) is not an RTC GPIO
    cfg["pins"]["lid"] = 3
    assert any("needs an RTC GPIO" in p for p in settings.validate(cfg, False))
    cfg["pins"]["lid"] = 13
    assert settings.validate(cfg, False) == []
    cfg["mode"] = "always_on"
    cfg["pins"]["lid"] = 3
    assert settings.validate(cfg, False) == []


def test_apply_remote_changes_only_safe_keys():
    cfg = settings.copy_defaults()
    assert settings.apply_remote(cfg, {"cooldown_s": 9, "jpeg_quality": 70}) == ["cooldown_s", "jpeg_quality"]
    assert cfg["cooldown_s"] == 9
    for bad in ({"wifi": {"password": "x"}}, {"broker": {}}, {"pins": {}}, {"device_id": "x"}, {"nope": 1}):
        with pytest.raises(ValueError, match="not settable"):
            settings.apply_remote(cfg, bad)
    with pytest.raises(ValueError, match="wrong type"):
        settings.apply_remote(cfg, {"settle_s": "3"})
    with pytest.raises(ValueError, match="outside"):
        settings.apply_remote(cfg, {"jpeg_quality": 500})
    assert cfg["jpeg_quality"] == 70  # a refused change leaves everything as it was


def test_save_is_atomic_and_loads_back(tmp_path):
    import os

    cfg = settings.copy_defaults()
    cfg["wifi"]["ssid"] = "x"
    cfg["broker"]["host"] = "h"
    p = str(tmp_path / "config.json")
    settings.save(p, cfg, os)
    assert os.listdir(tmp_path) == ["config.json"]
    again, problems = settings.load(p)
    assert problems == [] and again == cfg


def test_save_on_a_full_disk_leaves_no_tmp_file(tmp_path):
    import os
    import types

    full = types.SimpleNamespace(rename=lambda a, b: (_ for _ in ()).throw(OSError(28)), remove=os.remove)
    p = str(tmp_path / "config.json")
    with pytest.raises(OSError):
        settings.save(p, settings.copy_defaults(), full)
    assert os.listdir(tmp_path) == []  # was: config.json.tmp until someone deleted it


def test_thresholds_per_sensor():
    cfg = settings.copy_defaults()
    cfg["sensor"] = "hx711"
    assert settings.thresholds(cfg) == (50, 20)
    cfg["rise_threshold"] = 80
    assert settings.thresholds(cfg) == (80, 20)


# --- link ------------------------------------------------------------------------------


def test_wifi_disconnects_before_every_connect_and_backs_off():
    w = SimWlan(up=False)
    calls = []
    w.connect = lambda s, p: calls.append(("connect", s, p))
    w.disconnect = lambda: calls.append(("disconnect",))
    wifi = link.Wifi(w, "home", "pw", timeout_ms=1000, backoff=link.Backoff(500, 2000), log=lambda m: None)
    assert wifi.poll(0) is False
    assert calls == [("disconnect",), ("connect", "home", "pw")]
    assert wifi.poll(900) is False and len(calls) == 2  # still within the timeout
    assert wifi.poll(1000) is False and wifi.failures == 1  # timed out: back off 500 ms
    assert wifi.poll(1200) is False and calls[-1] == ("disconnect",)
    n = len(calls)
    assert wifi.poll(1500) is False and calls[n:] == [("disconnect",), ("connect", "home", "pw")]
    assert wifi.poll(2500) is False and wifi.backoff.delay == 1000  # second failure doubles
    w.up = True
    assert wifi.poll(4000) is True and wifi.backoff.delay == 0


def test_wifi_connect_error_is_caught():
    w = SimWlan(up=False)

    def boom(s, p):
        raise OSError("Wifi Internal Error")

    w.connect = boom
    lines = []
    wifi = link.Wifi(w, "home", "pw", log=lines.append)
    assert wifi.poll(0) is False and wifi.failures == 1 and "Wifi Internal Error" in lines[0]


class FlakyClient:
    """umqtt-shaped client whose connect fails `fail` times, then works."""

    def __init__(self, fail):
        self.fail = fail
        self.calls = []
        self.cb = None
        self.sock = None

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.calls.append(("will", topic, msg, retain, qos))

    def connect(self, clean_session=True):
        self.calls.append(("connect", clean_session))
        if self.fail:
            self.fail -= 1
            raise OSError(111)
        return 0

    def subscribe(self, topic, qos=0):
        self.calls.append(("sub", topic, qos))

    def check_msg(self):
        return None

    def ping(self):
        self.calls.append(("ping",))

    def publish(self, topic, msg, retain=False, qos=0):
        raise OSError(104)


def test_mqtt_persistent_session_will_subscriptions_and_backoff():
    c = FlakyClient(fail=2)
    t = protocol.Topics("box-1")
    m = link.Mqtt(c, t, keepalive_s=10, backoff=link.Backoff(100, 1000), log=lambda s: None)
    assert m.poll(0) is False and m.backoff.delay == 100
    assert m.poll(50) is False and len([x for x in c.calls if x[0] == "connect"]) == 1  # waiting
    assert m.poll(100) is False and m.backoff.delay == 200
    assert m.poll(300) is True
    assert ("will", t.status, protocol.will_payload(), True, 1) in c.calls
    assert ("connect", False) in c.calls  # clean_session=False: a persistent session
    assert ("sub", t.ack, 1) in c.calls and ("sub", t.cmd, 1) in c.calls
    assert m.poll(5300) is True and ("ping",) in c.calls
    # A failed publish marks the link down and schedules a reconnect.
    assert m.publish(t.event, b"{}", False, 1, 6000) is False and not m.connected
    c.cb(t.ack, b"x")
    assert m.inbox == [(t.ack, b"x")]


def test_camera_api_generic_firmware_gets_ai_thinker_pins(tmp_path):
    src, world, lens = _scene(tmp_path)
    drv = fake_camera.CameraApi(lens, needs_pins=True)
    lines = []
    c = cam.CameraAdapter(drv, warmup=0, log=lines.append)
    assert c.init() and bytes(c.capture()) == src.served[0]
    assert drv.created[-1]["data_pins"] == [5, 18, 19, 21, 36, 39, 34, 35]
    assert drv.created[-1]["powerdown_pin"] == 32
    assert any("AI-Thinker pins" in x for x in lines)
