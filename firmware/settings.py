"""Configuration: defaults in code, the box's own values in `config.json`.

`config.json` holds only what differs from DEFAULTS (the flash tool writes a
filled-in copy of `config.example.json`). Sections `wifi`, `broker` and `pins`
are nested; everything else is a flat key. Secrets (Wi-Fi and broker
passwords) live only in the untracked `config.json` on the board.

`load()` never raises: a missing or broken file, or a value of the wrong type
or range, comes back as a list of human-readable problems so `main.py` can
print them on the serial console and idle safely instead of crash-looping.
The `config` command may change only the keys in REMOTE_KEYS (no secrets, no
pins, no identity); the change is validated and persisted with temp + rename.
"""

import json

try:
    from protocol import valid_device_id
except ImportError:  # pragma: no cover - protocol.py is always flashed alongside
    valid_device_id = None

DEFAULTS = {
    "device_id": "box-1",
    "prefix": "parcelbox",
    "mode": "always_on",
    "wifi": {"ssid": "", "password": ""},
    "broker": {"host": "", "port": 1883, "username": "", "password": "", "keepalive_s": 60},
    "pins": {
        "lid": 13,
        "lid_open_level": 1,
        "flash": 4,
        "ir": 14,
        "ir_active_level": 0,
        "trig": 14,
        "echo": 15,
        "hx_dout": 14,
        "hx_sck": 15,
    },
    "sensor": "none",
    "empty_range_mm": 300,
    "hx_scale": 420.0,
    "hx_offset": 0,
    "rise_threshold": None,
    "empty_threshold": None,
    "debounce_ms": 50,
    "settle_s": 2,
    "cooldown_s": 10,
    "left_open_s": 120,
    "sample_s": 5,
    "camera": True,
    "frame_size": "SVGA",
    "jpeg_quality": 80,
    "warmup_frames": 2,
    "flash": True,
    "flash_ms": 150,
    "chunk_size": 8192,
    "spool_dir": "/spool",
    "spool_max_events": 50,
    "spool_max_bytes": 1000000,
    "status_interval_s": 300,
    "ack_timeout_s": 30,
    "max_inflight": 4,
    "heartbeat_s": 3600,
    "awake_s": 90,
    "wdt_s": 60,
    "ntp_host": "pool.ntp.org",
    "debug": False,
}

SECTIONS = ("wifi", "broker", "pins")
# A copy of gateway/vocabulary.py OCCUPANCY_SENSORS; tests/test_vocabulary.py compares them.
SENSORS = ("none", "ir", "ultrasonic", "hx711")
MODES = ("always_on", "battery")
FRAME_SIZES = ("QVGA", "CIF", "VGA", "SVGA", "XGA", "HD", "SXGA", "UXGA")

# Settings the `config` command may change (docs/protocol.md): behaviour only.
REMOTE_KEYS = (
    "rise_threshold",
    "empty_threshold",
    "empty_range_mm",
    "hx_scale",
    "hx_offset",
    "debounce_ms",
    "settle_s",
    "cooldown_s",
    "left_open_s",
    "sample_s",
    "camera",
    "frame_size",
    "jpeg_quality",
    "warmup_frames",
    "flash",
    "flash_ms",
    "status_interval_s",
    "ack_timeout_s",
    "heartbeat_s",
    "awake_s",
    "debug",
)

# Per sensor: (rise, empty) in the sensor's unit when the config leaves them null.
# IR: 0/1; ultrasonic: millimetres of fill; load cell: grams.
THRESHOLDS = {"ir": (1, 0), "ultrasonic": (30, 15), "hx711": (50, 20), "none": (1, 0)}

# AI-Thinker ESP32-CAM: GPIOs the camera, PSRAM and UART use; an input there breaks them.
CAMERA_PINS = (0, 1, 3, 5, 16, 17, 18, 19, 21, 22, 23, 25, 26, 27, 32, 34, 35, 36, 39)
SD_PINS = (2, 14, 15)
# Never usable, camera or not: 6-11 are the SPI flash's; 16/17 the PSRAM's, and an ESP32-CAM's
# MicroPython build (CONFIG_SPIRAM) has no Pin object for them (micropython ports/esp32/machine_pin.h:
# MICROPY_HW_ENABLE_GPIO16/17 only `#if !CONFIG_SPIRAM`), so Pin(16) raises ValueError at boot.
NO_PINS = (6, 7, 8, 9, 10, 11, 16, 17)
# The SD card's DAT3 (CD/CS). Not driven in 1-bit mode, but it must be HIGH when the card gets
# its first command: low there puts the card in SPI mode and the mount fails (SD spec; ESP-IDF
# sdmmc docs: "DAT3 must be pulled up even in 1-line mode").
SD_DAT3 = 13
# GPIOs esp32.wake_on_ext0 accepts (RTC IOs; micropython ports/esp32/modesp32.h
# RTC_VALID_EXT_PINS, ESP32): any other lid pin raises ValueError("invalid pin") at sleep.
RTC_PINS = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39)
_RANGES = {
    "debounce_ms": (0, 5000),
    "settle_s": (0, 120),
    "cooldown_s": (0, 3600),
    "left_open_s": (5, 86400),
    "sample_s": (1, 3600),
    "jpeg_quality": (1, 100),
    "warmup_frames": (0, 20),
    "flash_ms": (0, 5000),
    "chunk_size": (512, 65536),
    "spool_max_events": (1, 1000),
    "spool_max_bytes": (4096, 1 << 31),
    "status_interval_s": (10, 86400),
    "ack_timeout_s": (5, 3600),
    "max_inflight": (1, 32),
    "heartbeat_s": (60, 86400 * 7),
    "awake_s": (10, 3600),
    "wdt_s": (10, 3600),
    "empty_range_mm": (20, 4000),
}


def copy_defaults():
    d = {}
    for k in DEFAULTS:
        v = DEFAULTS[k]
        d[k] = dict(v) if isinstance(v, dict) else v
    return d


def _type_ok(default, value):
    if default is None:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def merge(raw, problems, warn):
    """DEFAULTS overlaid with `raw` (a dict from config.json)."""
    cfg = copy_defaults()
    for k in raw:
        v = raw[k]
        if k not in DEFAULTS:
            warn("config: unknown key %r ignored" % k)
            continue
        if k in SECTIONS:
            if not isinstance(v, dict):
                problems.append("%s must be an object" % k)
                continue
            for sk in v:
                if sk not in DEFAULTS[k]:
                    warn("config: unknown key %s.%s ignored" % (k, sk))
                elif not _type_ok(DEFAULTS[k][sk], v[sk]):
                    problems.append("%s.%s has the wrong type: %r" % (k, sk, v[sk]))
                else:
                    cfg[k][sk] = v[sk]
            continue
        if not _type_ok(DEFAULTS[k], v):
            problems.append("%s has the wrong type: %r" % (k, v))
            continue
        cfg[k] = v
    return cfg


def validate(cfg, need_network=True):
    """A list of problems (empty when the config is usable)."""
    problems = []
    if valid_device_id is not None and not valid_device_id(cfg["device_id"]):
        problems.append(
            "device_id %r: use 1-32 of a-z 0-9 - (starting with a letter or digit)" % cfg["device_id"]
        )
    p = cfg["prefix"]
    if not p or " " in p or "+" in p or "#" in p or p.startswith("/") or p.endswith("/"):
        problems.append("prefix %r is not a usable MQTT topic prefix" % p)
    if cfg["mode"] not in MODES:
        problems.append("mode must be one of %s" % ", ".join(MODES))
    if cfg["sensor"] not in SENSORS:
        problems.append("sensor must be one of %s" % ", ".join(SENSORS))
    if cfg["frame_size"] not in FRAME_SIZES:
        problems.append("frame_size must be one of %s" % ", ".join(FRAME_SIZES))
    for k in _RANGES:
        lo, hi = _RANGES[k]
        if not lo <= cfg[k] <= hi:
            problems.append("%s=%r is outside %d..%d" % (k, cfg[k], lo, hi))
    port = cfg["broker"]["port"]
    if not 0 < port < 65536:
        problems.append("broker.port=%r is not a TCP port" % port)
    if need_network:
        if not cfg["wifi"]["ssid"]:
            problems.append("wifi.ssid is empty")
        if not cfg["broker"]["host"]:
            problems.append("broker.host is empty")
    pins = cfg["pins"]
    for k in ("lid_open_level", "ir_active_level"):
        if pins[k] not in (0, 1):
            problems.append("pins.%s must be 0 or 1" % k)
    used = ["lid"]
    if cfg["sensor"] == "ir":
        used.append("ir")
    elif cfg["sensor"] == "ultrasonic":
        used += ["trig", "echo"]
    elif cfg["sensor"] == "hx711":
        used += ["hx_dout", "hx_sck"]
    seen = {}
    for name in used:
        g = pins[name]
        if not 0 <= g <= 39:
            problems.append("pins.%s=%r is not an ESP32 GPIO" % (name, g))
            continue
        if g in NO_PINS:
            problems.append(
                "pins.%s=GPIO%d is the %s's on an ESP32-CAM: no pin there"
                % (name, g, "PSRAM" if g in (16, 17) else "SPI flash")
            )
            continue
        if cfg["camera"] and g in CAMERA_PINS:
            problems.append(
                "pins.%s=GPIO%d is used by the camera or UART on the AI-Thinker board" % (name, g)
            )
        if g == pins["flash"]:
            problems.append("pins.%s=GPIO%d is the flash LED" % (name, g))
        if g in seen:
            problems.append("pins.%s and pins.%s are both GPIO%d" % (seen[g], name, g))
        seen[g] = name
    if cfg["spool_dir"].startswith("/sd"):
        # SD card in 1-bit mode: CLK 14, CMD 15, D0 2 (GPIO 4 stays the flash LED).
        for name in used[1:]:
            if pins[name] in SD_PINS:
                problems.append(
                    "pins.%s=GPIO%d is used by the SD card (spool_dir on /sd)" % (name, pins[name])
                )
        if pins["lid"] in SD_PINS:
            problems.append("pins.lid=GPIO%d is used by the SD card (spool_dir on /sd)" % pins["lid"])
        if pins["lid"] == SD_DAT3 and pins["lid_open_level"] == 1:
            problems.append(
                "pins.lid=GPIO13 is the SD card's DAT3, and the reed switch holds it low while the"
                " lid is closed: the card then starts in SPI mode and the mount fails. Keep"
                " spool_dir on flash (the default), or wire the reed so GPIO13 is high with the"
                " lid closed (normally-closed reed, pins.lid_open_level 0)"
            )
        for name in used[1:]:
            if pins[name] == SD_DAT3:
                problems.append(
                    "pins.%s=GPIO13 is the SD card's DAT3, which must stay high (spool_dir on /sd)" % name
                )
    # GPIO 12 is a strapping pin (flash voltage): high at reset selects 1.8 V flash and the
    # board does not boot. Refuse anything that can hold it high at reset.
    if pins["lid"] == 12:
        problems.append("pins.lid=GPIO12: the reed switch needs a pull-up, which stops GPIO12 boards booting")
    if cfg["sensor"] == "ir" and pins["ir"] == 12:
        problems.append(
            "pins.ir=GPIO12: an IR module drives its output high (idle, or with a parcel in the box),"
            " and GPIO12 high at reset stops the board booting: use another GPIO"
        )
    if cfg["sensor"] == "hx711" and pins["hx_dout"] == 12:
        problems.append(
            "pins.hx_dout=GPIO12: the HX711's DOUT idles high, and GPIO12 high at reset stops the"
            " board booting: use another GPIO (pins.hx_sck may be 12)"
        )
    if cfg["mode"] == "battery" and 0 <= pins["lid"] <= 39 and pins["lid"] not in RTC_PINS:
        problems.append(
            "pins.lid=GPIO%d: battery mode wakes on the lid (ext0), which needs an RTC GPIO"
            " (e.g. 13, the default)" % pins["lid"]
        )
    for k in ("rise_threshold", "empty_threshold"):
        if cfg[k] is not None and cfg[k] < 0:
            problems.append("%s must be >= 0" % k)
    return problems


def thresholds(cfg):
    """(rise, empty) for the configured sensor."""
    rise, empty = THRESHOLDS.get(cfg["sensor"], (1, 0))
    if cfg["rise_threshold"] is not None:
        rise = cfg["rise_threshold"]
    if cfg["empty_threshold"] is not None:
        empty = cfg["empty_threshold"]
    return rise, empty


def load(path, need_network=True, warn=print):
    """-> (cfg, problems). Never raises; `cfg` is usable only when problems == []."""
    problems = []
    raw = None
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError:
        return copy_defaults(), ["%s not found: copy config.example.json there (tools/flash.py does)" % path]
    try:
        raw = json.loads(text)
    except ValueError as e:
        return copy_defaults(), ["%s is not valid JSON (%s)" % (path, e)]
    if not isinstance(raw, dict):
        return copy_defaults(), ["%s must hold a JSON object" % path]
    cfg = merge(raw, problems, warn)
    if not problems:
        problems = validate(cfg, need_network)
    return cfg, problems


def apply_remote(cfg, args):
    """Validate and apply a `config` command. Returns the sorted changed keys;
    raises ValueError with a message for the command result otherwise."""
    new = copy_defaults()
    for k in cfg:
        v = cfg[k]
        new[k] = dict(v) if isinstance(v, dict) else v
    changed = []
    for k in args:
        if k not in REMOTE_KEYS:
            raise ValueError("not settable remotely: %s" % k)
        v = args[k]
        if not _type_ok(DEFAULTS[k], v):
            raise ValueError("wrong type for %s: %r" % (k, v))
        if new[k] != v:
            new[k] = v
            changed.append(k)
    problems = validate(new, need_network=False)
    if problems:
        raise ValueError("; ".join(problems))
    for k in changed:
        cfg[k] = new[k]
    changed.sort()
    return changed


def save(path, cfg, os_mod):
    """Write the whole config (temp + rename: a power cut keeps the old file)."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(json.dumps(cfg).encode())
        os_mod.rename(tmp, path)
    except OSError:
        try:
            os_mod.remove(tmp)  # a full disk: leave no half-written file behind
        except OSError:
            pass
        raise
