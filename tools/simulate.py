#!/usr/bin/env python3
"""Simulated parcel boxes: the real firmware modules on CPython, simulated hardware.

    python tools/simulate.py --broker mqtt://127.0.0.1:1884 --device box-1 --deliveries 5 --photos DIR
    python tools/simulate.py --broker mqtt://127.0.0.1:1884 --devices 3 --deliveries 2
    python tools/simulate.py --broker mqtt://127.0.0.1:1884 --device box-1 --stay   # until Ctrl-C
    python tools/simulate.py --broker mqtt://127.0.0.1:1883 --device box-1 --username box-1 --password PW

Port 1884 is the gateway's local listener, where anonymous simulated boxes are welcome (when
`broker.allow_anonymous`, the default); port 1883, the box listener, takes registered logins only
(`parcelbox device add box-1` prints the password), and there the broker makes the login the client
id, as for a real box: the simulated box's client id is its device id, which must be its user name.

What is simulated is only what sits at the edge of the board: GPIO pins (lid
reed switch, IR occupancy sensor, flash LED), the camera driver (`--camera-driver
camera-api|lemariva`: the faithful fakes of tests/mp/fake_camera.py, which grab a frame
when the real driver's DMA would, so a photo shows what the lens saw *then*: each lid
opening is a new scene, taken from the JPEG files of `--photos` in turn or generated with
Pillow, lit while the flash LED is on and dark otherwise), the
WLAN and the clock (virtual milliseconds, `--tick-ms` per loop step with a 5 ms
real pause, so a 2 s settle takes a fraction of a second). Detection, spooling, publishing, acks,
commands and reconnects are `firmware/` itself; the MQTT client is
`PahoMQTTClient`, which has umqtt.simple's interface and behaviour (blocking
QoS 1 publish, callback from inside publish/check_msg, OSError when the
connection is gone) on top of paho-mqtt.

Exit code 0 only when every event the boxes made was acked by a gateway
before `--timeout`; 1 otherwise (a summary says what is missing).
`SimulatedBox` is importable, so tests and the gateway's end-to-end runs drive
boxes in-process.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import importlib.util
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE_DIR = ROOT / "firmware"
for _p in (ROOT, FIRMWARE_DIR):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import app as fw_app  # noqa: E402
import cam as fw_cam  # noqa: E402
import link as fw_link  # noqa: E402
import protocol as fw_protocol  # noqa: E402
import sensors as fw_sensors  # noqa: E402
import settings as fw_settings  # noqa: E402
import spool as fw_spool  # noqa: E402

from gateway.brokeraddr import parse_broker_url  # noqa: E402
from tests.mp import fake_camera, fake_net  # noqa: E402  (faithful board fakes; MicroPython-compatible)

# --- umqtt.simple on paho ------------------------------------------------------------


class MQTTException(Exception):
    pass


class PahoMQTTClient:
    """umqtt.simple's MQTTClient interface, backed by paho-mqtt driven from the caller's
    thread (no network thread: like umqtt, nothing happens between calls).

    Topics and payloads may be bytes, bytearray or memoryview (paho gets a bytes copy:
    CPython has RAM to spare; the board's umqtt writes the memoryview itself)."""

    def __init__(
        self,
        client_id,
        server,
        port=0,
        user=None,
        password=None,
        keepalive=0,
        ssl=None,
        timeout: float = 10.0,
    ) -> None:
        self.client_id = client_id.decode() if isinstance(client_id, (bytes, bytearray)) else client_id
        self.server = server
        self.port = port or (8883 if ssl else 1883)
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.timeout = timeout
        self.cb = None
        self.lw: tuple[str, bytes, int, bool] | None = None
        self.sock = None  # umqtt exposes its socket; the link closes it on errors
        self._c: paho.Client | None = None
        self._inbox: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._subacks: set[int] = set()
        self._connack: int | None = None
        self._session_present = False
        self._dead = False
        self.published = 0

    @staticmethod
    def _str(t) -> str:
        return bytes(t).decode() if not isinstance(t, str) else t

    def set_callback(self, f) -> None:
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0) -> None:
        assert 0 <= qos <= 2 and topic
        self.lw = (self._str(topic), bytes(msg), qos, bool(retain))

    def connect(self, clean_session=True, timeout=None):
        # `timeout` as umqtt.simple >= 1.5 takes it (the connect's socket timeout, seconds).
        if timeout is not None:
            self.timeout = min(self.timeout, float(timeout))
        self._teardown()
        c = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=bool(clean_session),
            protocol=paho.MQTTv311,
        )
        if self.user:
            c.username_pw_set(self._str(self.user), self._str(self.pswd or ""))
        if self.lw:
            c.will_set(*self.lw)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self._connack = None
        self._dead = False
        self._c = c
        try:
            c.connect(self.server, self.port, keepalive=self.keepalive or 60)
        except OSError:
            self._c = None
            raise
        self.sock = c.socket()
        self._loop_until(lambda: self._connack is not None, "CONNACK")
        if self._connack != 0:
            rc = self._connack
            self._teardown()
            raise MQTTException(rc)
        return 1 if self._session_present else 0

    def _on_connect(self, _c, _u, flags, reason_code, _props) -> None:
        self._connack = reason_code.value if hasattr(reason_code, "value") else int(reason_code)
        self._session_present = bool(getattr(flags, "session_present", False))

    def _on_disconnect(self, *_a) -> None:
        self._dead = True

    def _on_message(self, _c, _u, m) -> None:
        self._inbox.append((m.topic.encode(), bytes(m.payload)))

    def _on_subscribe(self, _c, _u, mid, _rc, _props) -> None:
        self._subacks.add(mid)

    def _io(self, timeout: float = 0.0) -> None:
        c = self._c
        if c is None or self._dead:
            raise OSError(-1, "not connected")
        rc = c.loop(timeout)
        if rc != paho.MQTT_ERR_SUCCESS or self._dead:
            self._dead = True
            raise OSError(-1, f"connection lost ({paho.error_string(rc)})")

    def _loop_until(self, cond: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not cond():
            if time.monotonic() > deadline:
                self._dead = True
                raise OSError(110, f"timed out waiting for {what}")
            self._io(0.01)

    def _deliver(self) -> bool:
        if not self._inbox:
            return False
        topic, msg = self._inbox.popleft()
        if self.cb is not None:
            self.cb(topic, msg)
        return True

    def publish(self, topic, msg, retain=False, qos=0) -> None:
        if self._c is None or self._dead:
            raise OSError(-1, "not connected")
        info = self._c.publish(self._str(topic), bytes(msg), qos, bool(retain))
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self._dead = True
            raise OSError(-1, f"publish failed ({paho.error_string(info.rc)})")
        self.published += 1
        if qos == 1:
            # umqtt.simple waits for the PUBACK and hands any message that arrives
            # meanwhile to the callback; do the same.
            deadline = time.monotonic() + self.timeout
            while not info.is_published():
                if time.monotonic() > deadline:
                    self._dead = True
                    raise OSError(110, "timed out waiting for PUBACK")
                self._io(0.01)
                while self._deliver():
                    pass
        else:
            self._io(0)

    def subscribe(self, topic, qos=0) -> None:
        assert self.cb is not None, "Subscribe callback is not set"
        if self._c is None:
            raise OSError(-1, "not connected")
        rc, mid = self._c.subscribe(self._str(topic), qos)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise OSError(-1, "subscribe failed")
        self._loop_until(lambda: mid in self._subacks, "SUBACK")

    def check_msg(self):
        if not self._inbox:
            self._io(0)
        return 0x30 if self._deliver() else None

    def wait_msg(self):
        self._loop_until(lambda: bool(self._inbox), "a message")
        self._deliver()
        return 0x30

    def ping(self) -> None:
        self._io(0)

    def disconnect(self) -> None:
        c = self._c
        if c is not None and not self._dead:
            try:
                c.disconnect()
                c.loop(0.05)
            except Exception:
                pass
        self._teardown()

    def _teardown(self) -> None:
        c = self._c
        self._c = None
        self.sock = None
        if c is not None:
            try:
                s = c.socket()
                if s is not None:
                    s.close()
            except Exception:
                pass


# --- simulated hardware --------------------------------------------------------------


class SimClock:
    """Virtual milliseconds, advanced by the simulation loop (`tick_ms` per step), so a
    slow step (a big photo, a busy machine) never makes the scripted lid skip a state."""

    def __init__(self, tick_ms: int = 50) -> None:
        self.tick_ms = tick_ms
        self.now = 0

    def advance(self, ms: int | None = None) -> None:
        self.now += self.tick_ms if ms is None else ms

    def ticks_ms(self) -> int:
        return self.now

    @staticmethod
    def ticks_diff(a: int, b: int) -> int:
        return a - b


class SimPin:
    def __init__(self, level: int = 0) -> None:
        self.level = level
        self.history: list[int] = []

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = 1 if v else 0
        self.history.append(self.level)
        return None


class SimWlan:
    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.connect_calls = 0
        self.disconnect_calls = 0

    def active(self, *_a):
        return True

    def isconnected(self) -> bool:
        return self.up

    def connect(self, ssid, password) -> None:
        self.connect_calls += 1

    def disconnect(self) -> None:
        self.disconnect_calls += 1

    def status(self, what=None):
        return -55 if what == "rssi" else 1010


def generated_jpeg(index: int, size=(640, 480), seed: int = 0) -> bytes:
    """A distinct, realistic-size JPEG for event `index` (Pillow; no files needed)."""
    from PIL import Image, ImageDraw

    rnd = random.Random(seed * 100003 + index)
    w, h = size
    img = Image.new("RGB", (w, h), (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    d = ImageDraw.Draw(img)
    for _ in range(60):
        x, y = rnd.randrange(w), rnd.randrange(h)
        d.rectangle(
            (x, y, x + rnd.randrange(20, 160), y + rnd.randrange(20, 120)),
            fill=(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)),
        )
    noise = Image.effect_noise((w // 2, h // 2), 60).convert("RGB")
    img.paste(noise, (rnd.randrange(w // 2), rnd.randrange(h // 2)))
    d.text((10, 10), f"parcelbox simulated photo {index}", fill=(255, 255, 255))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


class PhotoSource:
    """What the camera sees: one JPEG per scene (the files of a folder, sorted and cycled, or
    generated ones), lit by the flash or dark without it.

    A scene is what is in the box between two lid openings (`SimulatedBox.scene`). The first
    time a scene is photographed lit, its JPEG is taken from the folder (or generated) and
    appended to `served`: so `served[i]` is the photo the i-th photographed scene must arrive
    with, and a dark or stale frame (what the real drivers give when used wrongly) matches
    nothing in it."""

    def __init__(self, folder: str | Path | None = None, seed: int = 0) -> None:
        self.files: list[Path] = []
        if folder:
            self.files = sorted(
                p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file()
            )
            if not self.files:
                raise SystemExit(f"no .jpg files in {folder}")
        self.seed = seed
        self.n = 0
        self.served: list[bytes] = []
        self._lit: dict[object, bytes] = {}
        self._dark: dict[object, bytes] = {}

    def next(self) -> bytes:
        """The next photo in turn (recorded in `served`)."""
        if self.files:
            data = self.files[self.n % len(self.files)].read_bytes()
        else:
            data = generated_jpeg(self.n, seed=self.seed)
        self.n += 1
        self.served.append(data)
        return data

    def frame(self, scene: object, lit: bool) -> bytes:
        """The JPEG of `scene` as the lens sees it now: lit by the flash, or dark."""
        if lit:
            if scene not in self._lit:
                self._lit[scene] = self.next()
            return self._lit[scene]
        if scene not in self._lit:
            return black_jpeg()  # never lit: nothing to see (and no photo used up)
        if scene not in self._dark:
            self._dark[scene] = dark_jpeg(self._lit[scene])
        return self._dark[scene]


def dark_jpeg(data: bytes) -> bytes:
    """The same view without the flash: a closed box is nearly black inside."""
    from PIL import Image, ImageEnhance, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data)).convert("RGB")
    except (UnidentifiedImageError, OSError):
        return data[:2] + b"dark" + data[2:]  # not decodable (a test's stand-in bytes): still different
    out = io.BytesIO()
    ImageEnhance.Brightness(img).enhance(0.06).save(out, "JPEG", quality=70)
    return out.getvalue()


_BLACK_JPEG: bytes | None = None


def black_jpeg() -> bytes:
    """The inside of a closed box without the flash."""
    global _BLACK_JPEG
    if _BLACK_JPEG is None:
        from PIL import Image

        out = io.BytesIO()
        Image.new("RGB", (640, 480), (3, 3, 3)).save(out, "JPEG")
        _BLACK_JPEG = out.getvalue()
    return _BLACK_JPEG


_WARMUP_JPEG: bytes | None = None


def warmup_jpeg() -> bytes:
    """A green frame, like the sensor's first frames after init (must never be sent)."""
    global _WARMUP_JPEG
    if _WARMUP_JPEG is None:
        from PIL import Image

        out = io.BytesIO()
        Image.new("RGB", (160, 120), (0, 255, 0)).save(out, "JPEG")
        _WARMUP_JPEG = out.getvalue()
    return _WARMUP_JPEG


CAMERA_DRIVERS = ("camera-api", "lemariva")


def camera_driver(
    name: str, scene: Callable[[int, int, int], bytes], warmup: int = 2, fail_init: bool = False
):
    """The faithful fake of a camera driver (tests/mp/fake_camera.py: sources cited there):
    `camera-api` (cnadler86's `camera.Camera`, signed memoryview over its one buffer) or
    `lemariva` (module-level functions; one buffer refilled as soon as capture() returns)."""
    drv: fake_camera.CameraApi | fake_camera.LemarivaCamera
    if name in ("camera-api", "camera"):
        drv = fake_camera.CameraApi(scene, fail_init=fail_init, warmup_frames=warmup)
    elif name == "lemariva":
        drv = fake_camera.LemarivaCamera(scene, fail_init=fail_init, warmup_frames=warmup)
    else:
        raise ValueError(f"unknown camera driver {name!r} (use one of {', '.join(CAMERA_DRIVERS)})")
    drv.warmup_source = warmup_jpeg
    return drv


# --- the box ---------------------------------------------------------------------------


# --- the app folder of a box (over-the-air updates) --------------------------------------------

# What main.build() imports; loaded from the box's app folder when it has one.
_FLASH_MODULES = ("protocol", "settings", "sensors", "cam", "spool", "link", "app", "ota", "otaboot")


def provision_flash(folder: Path) -> None:
    """A fresh box's app folder: the firmware's sources, as `flash provision --no-compile` copies them
    (the simulator runs on CPython, which cannot load .mpy)."""
    from gateway.flash.bundle import firmware_sources

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "main.py").exists():
        return
    for src in firmware_sources(FIRMWARE_DIR):
        (folder / src.name).write_bytes(src.read_bytes())


def load_flash_modules_boot(folder: Path):
    """The box's own otaboot.py (a boot file: never replaced by an update), loaded alone."""
    spec = importlib.util.spec_from_file_location("_sim_otaboot", folder / "otaboot.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {folder / 'otaboot.py'}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_flash_modules(folder: Path) -> dict:
    """Import the firmware modules from the box's app folder, in isolation: sys.modules and sys.path
    are put back afterwards, so the modules of this process (and other boxes) are untouched; the
    loaded modules keep the references their own top-level imports made."""
    names = (
        {p.stem for p in folder.glob("*.py")}
        | set(_FLASH_MODULES)
        | {p.stem for p in FIRMWARE_DIR.glob("*.py")}
    )
    saved = {n: sys.modules.pop(n) for n in list(names) if n in sys.modules}
    sys.path.insert(0, str(folder))
    try:
        return {n: importlib.import_module(n) for n in _FLASH_MODULES}
    finally:
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
        sys.path.remove(str(folder))


class _SimAppMixin:
    """The firmware's App, with the ids it makes and sees acked recorded for reporting."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.made: list[tuple[str, str]] = []
        self.acked_ids: list[str] = []
        self.refused_ids: list[str] = []

    def record_event(self, etype, sensors, cmd=None):
        eid = super().record_event(etype, sensors, cmd)
        if eid is not None:
            self.made.append((eid, etype))
        return eid

    def _on_ack(self, msg):
        try:
            eid, ok, _err, retry = fw_protocol.decode_ack(msg)
            known = self.spool.order_of(eid) is not None
        except fw_protocol.ProtocolError:
            eid, ok, retry, known = None, False, False, False
        super()._on_ack(msg)
        if known and ok:
            self.acked_ids.append(eid)
        elif known and not retry:
            self.refused_ids.append(eid)


class _SimApp(_SimAppMixin, fw_app.App):
    pass


class SimulatedBox:
    """One simulated ESP32-CAM box running the firmware's App against a broker.

    Drive it with `step()` (or `run_for` / `run_until`) and script the lid and the
    occupancy sensor with `deliver()`, `pickup()`, `leave_lid_open()`; every action is
    queued and played in virtual time. `reboot()` rebuilds the firmware objects over
    the same spool folder, like a power cycle."""

    def __init__(
        self,
        broker: str,
        device: str = "box-1",
        *,
        prefix: str = "parcelbox",
        username: str | None = None,
        password: str | None = None,
        spool_dir: str | Path | None = None,
        photos: PhotoSource | str | Path | None = None,
        camera_driver: str = "camera-api",
        camera_api: str | None = None,
        sensor: str = "ultrasonic",
        tick_ms: int = 50,
        overrides: dict | None = None,
        seed: int = 0,
        log: Callable[[str], None] | None = None,
        client_timeout: float = 5.0,
        flash_dir: str | Path | None = None,
    ) -> None:
        addr = parse_broker_url(broker, username, password)
        if addr.tls:  # the simulated box speaks plain MQTT, as the firmware does
            raise ValueError(f"unsupported broker URL {addr.endpoint} (use mqtt://host:port)")
        self.device = device
        self.host = addr.host
        self.port = addr.port
        self.username = addr.username
        self.password = addr.password
        self.clock = SimClock(tick_ms)
        self.spool_dir = str(spool_dir or tempfile.mkdtemp(prefix=f"parcelbox-sim-{device}-"))
        self.photos = photos if isinstance(photos, PhotoSource) else PhotoSource(photos, seed)
        # `camera_api` is the old name of the argument ("camera" = the camera API).
        self.camera_driver = camera_api or camera_driver
        if self.camera_driver == "camera":
            self.camera_driver = "camera-api"
        self.scene = 0  # what is in the box: a new scene at every lid opening
        # The box's app folder: given, the firmware runs from it and takes over-the-air updates
        # (boot: otaboot.at_boot, as boot.py; a crash at start in a trial: give up and reset, as main.py).
        self.flash_dir = Path(flash_dir) if flash_dir is not None else None
        if self.flash_dir is not None:
            provision_flash(self.flash_dir)
        self.fw_version = fw_app.FW_VERSION
        self.client_timeout = client_timeout
        self.lines: list[str] = []
        self._log_sink = log
        cfg = fw_settings.copy_defaults()
        cfg.update(
            {
                "device_id": device,
                "prefix": prefix,
                "sensor": sensor,
                "settle_s": 1,
                "cooldown_s": 5,
                "left_open_s": 30,
                "ack_timeout_s": 20,
                "status_interval_s": 60,
                "spool_dir": self.spool_dir,
                "warmup_frames": 2,
                "flash_ms": 0,
                # A deep simulated box: dozens of parcels still read as a rise in fill.
                "empty_range_mm": 3000,
            }
        )
        cfg["broker"].update(
            {
                "host": self.host,
                "port": self.port,
                "username": self.username or "",
                "password": self.password or "",
            }
        )
        for k, v in (overrides or {}).items():
            cfg[k] = v
        problems = fw_settings.validate(cfg, need_network=False)
        if problems:
            raise ValueError("; ".join(problems))
        self.cfg = cfg
        if self.flash_dir is not None:
            # The access point is ("sim", "sim"); the box's config.json is written once, like provision.
            cfg["wifi"] = {"ssid": "sim", "password": "sim"}
            conf = self.flash_dir / "config.json"
            if not conf.exists():
                conf.write_text(json.dumps(cfg))
        # Pins keep their level across reboots, like real wiring.
        self.lid_pin = SimPin(1 - cfg["pins"]["lid_open_level"])
        self.ir_pin = SimPin(1 - cfg["pins"]["ir_active_level"])
        self.trig_pin = SimPin(0)
        self.echo_pin = SimPin(0)
        self.parcels = 0
        self.parcel_mm = 50
        self.flash_pin = SimPin(0)
        self.wlan: fake_net.WLAN | None = None  # the radio restarts with every boot (_build)
        self.reboots = 0
        self._actions: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        self._script_end = 0
        self.made: list[tuple[str, str]] = []
        self.acked: list[str] = []
        self.refused: list[str] = []
        self._build()

    # -- firmware wiring (what main.py does on the board) --

    def log(self, msg: str) -> None:
        line = f"[{self.device}] {msg}"
        self.lines.append(line)
        if self._log_sink is not None:
            self._log_sink(line)

    def _boot(self) -> dict:
        """boot.py + main.py's imports on the box's app folder: the modules to build the app from."""
        if self.flash_dir is None:
            return {"protocol": fw_protocol, "settings": fw_settings, "sensors": fw_sensors, "cam": fw_cam,
                    "spool": fw_spool, "link": fw_link, "app": fw_app, "ota": None, "otaboot": None}  # fmt: skip
        for _ in range(12):  # bounded: every crash in a trial ends in a rollback within trial_boots
            boot = load_flash_modules_boot(self.flash_dir)
            fl = boot.Flash(str(self.flash_dir), os)
            boot.at_boot(fl, self.log)
            try:
                return load_flash_modules(self.flash_dir)
            except Exception as e:  # an exception on import: what main.py's last-resort handler sees
                self.log(f"main: crashed at start: {e!r}")
                if not boot.give_up(fl, f"crashed: {e!r}"):
                    raise
                self.log("parcelbox: the new firmware crashed in its trial: rolling back")
                self.reboots += 1
        raise RuntimeError("the box never started")

    def _build(self) -> None:
        mods = self._boot()
        fw_settings, fw_sensors, fw_cam, fw_spool = (
            mods["settings"],
            mods["sensors"],
            mods["cam"],
            mods["spool"],
        )
        fw_link, fw_protocol, fw_app_ = mods["link"], mods["protocol"], mods["app"]
        self.fw_version = fw_app_.FW_VERSION
        saved = Path(self.spool_dir) / "config.json"
        if self.flash_dir is not None:
            saved = self.flash_dir / "config.json"  # the box's own config, as on the board
        if saved.exists():
            # A `config` command persisted settings: a reboot runs with them, as on the board.
            cfg, problems = fw_settings.load(str(saved), need_network=False, warn=self.log)
            if problems:
                self.log("config.json ignored: " + "; ".join(problems))
            else:
                self.cfg = cfg
        cfg = self.cfg
        clock = self.clock
        board = fw_app_.Board(
            ticks_ms=clock.ticks_ms,
            ticks_diff=clock.ticks_diff,
            unix_time=lambda: int(time.time()),
            rand_bytes=os.urandom,
            heap_free=lambda: 4_000_000,
            reboot=self._reboot_from_firmware,
        )
        lid = fw_sensors.Reed(
            self.lid_pin, cfg["pins"]["lid_open_level"], cfg["debounce_ms"], clock.ticks_diff
        )
        occ = None
        if cfg["sensor"] == "ir":
            occ = fw_sensors.IRSensor(self.ir_pin, cfg["pins"]["ir_active_level"])
        elif cfg["sensor"] == "ultrasonic":
            occ = fw_sensors.Ultrasonic(
                self.trig_pin, self.echo_pin, self._time_pulse_us, lambda _us: None, cfg["empty_range_mm"]
            )
        self.driver = camera_driver(self.camera_driver, self._lens, warmup=cfg["warmup_frames"])
        camera = fw_cam.CameraAdapter(
            self.driver,
            cfg["frame_size"],
            cfg["jpeg_quality"],
            cfg["warmup_frames"],
            self.flash_pin,
            cfg["flash"],
            cfg["flash_ms"],
            None,
            self.log,
        )
        spool = fw_spool.Spool(
            cfg["spool_dir"], os, cfg["spool_max_events"], cfg["spool_max_bytes"], log=self.log
        )
        client = PahoMQTTClient(
            self.device,
            self.host,
            self.port,
            cfg["broker"]["username"] or None,
            cfg["broker"]["password"] or None,
            cfg["broker"]["keepalive_s"],
            timeout=self.client_timeout,
        )
        topics = fw_protocol.Topics(cfg["device_id"], cfg["prefix"])
        backoff = fw_link.Backoff(200, 4000, clock.ticks_diff)
        mqtt = fw_link.Mqtt(client, topics, cfg["broker"]["keepalive_s"], backoff, clock.ticks_diff, self.log)
        # The faithful ESP32 station (tests/mp/fake_net.py): joins after 300 virtual ms.
        self.wlan = fake_net.WLAN(clock, ap=("sim", "sim"), join_ms=300)
        ssid, password = "sim", "sim"
        if self.flash_dir is not None:  # the config's Wi-Fi (an update can get it wrong) against the AP's
            ssid, password = cfg["wifi"]["ssid"], cfg["wifi"]["password"]
        wifi = fw_link.Wifi(
            self.wlan, ssid, password, 20000, None, clock.ticks_diff, self.log, network=fake_net.Network
        )
        updater = None
        app_cls: type = _SimApp
        if mods["ota"] is not None:
            fl = mods["otaboot"].Flash(str(self.flash_dir), os)
            updater = mods["ota"].Updater(fl, fw_app_.FW_VERSION, self.log, clock.ticks_diff)
            app_cls = type("_SimApp", (_SimAppMixin, fw_app_.App), {})
        self.app = app_cls(
            cfg,
            board,
            lid,
            spool,
            mqtt,
            wifi=wifi,
            occupancy=occ,
            camera=camera,
            config_path=str(saved),
            os_mod=os,
            log=self.log,
            updater=updater,
        )
        self.app.start()

    def _lens(self, _width: int, _height: int, _quality: int) -> bytes:
        """What the sensor sees when the driver grabs a frame: this scene, lit or dark."""
        return self.photos.frame(self.scene, self.flash_pin.level == 1)

    def _reboot_from_firmware(self) -> None:
        self.log("reboot requested")
        self.reboot()

    def reboot(self) -> None:
        """A power cycle: RAM state gone, the spool folder and pins stay."""
        self._collect()
        try:
            self.app.mqtt.client.disconnect()
        except Exception:
            pass
        self.reboots += 1
        self._build()

    def _collect(self) -> None:
        a = self.app
        self.made += [m for m in a.made if m not in self.made]
        self.acked += [i for i in a.acked_ids if i not in self.acked]
        self.refused += [i for i in a.refused_ids if i not in self.refused]
        a.made.clear()
        a.acked_ids.clear()
        a.refused_ids.clear()

    # -- scripted world --

    def _at(self, delay_ms: int, fn: Callable[[], None]) -> None:
        start = max(self._script_end, self.clock.ticks_ms())
        self._actions.append((start + delay_ms, fn))
        self._script_end = start + delay_ms

    def _lid(self, is_open: bool) -> None:
        if is_open:
            self.scene += 1
        lvl = self.cfg["pins"]["lid_open_level"]
        self.lid_pin.value(lvl if is_open else 1 - lvl)

    def _set_parcels(self, n: int) -> None:
        self.parcels = n
        act = self.cfg["pins"]["ir_active_level"]
        self.ir_pin.value(act if n > 0 else 1 - act)

    def _time_pulse_us(self, pin, level, timeout_us) -> int:
        """HC-SR04 echo: the distance from the lid to the top of the parcels."""
        fill = min(self.parcels * self.parcel_mm, self.cfg["empty_range_mm"] - 40)
        return (self.cfg["empty_range_mm"] - fill) * 2000 // 343

    def _after_cycle_ms(self) -> int:
        return self.cfg["settle_s"] * 1000 + 600

    def deliver(self) -> None:
        """Courier: open the lid, drop a parcel in, close it."""
        self._at(200, lambda: self._lid(True))
        self._at(800, lambda: self._set_parcels(self.parcels + 1))
        self._at(700, lambda: self._lid(False))
        self._at(self._after_cycle_ms(), lambda: None)

    def pickup(self) -> None:
        """Owner: open the lid, take everything out, close it."""
        self._at(200, lambda: self._lid(True))
        self._at(800, lambda: self._set_parcels(0))
        self._at(700, lambda: self._lid(False))
        self._at(self._after_cycle_ms(), lambda: None)

    def peek(self) -> None:
        """Someone opens and closes the lid without changing what is inside (lid_closed,
        unless it falls inside the cooldown of the previous close event)."""
        self._at(200, lambda: self._lid(True))
        self._at(1200, lambda: self._lid(False))
        self._at(self._after_cycle_ms(), lambda: None)

    def leave_lid_open(self) -> None:
        """Open the lid past `left_open_s`, then close it (lid_left_open, then lid_closed)."""
        self._at(200, lambda: self._lid(True))
        self._at(self.cfg["left_open_s"] * 1000 + 1000, lambda: self._lid(False))
        self._at(self._after_cycle_ms() + self.cfg["cooldown_s"] * 1000, lambda: None)

    @property
    def script_done(self) -> bool:
        return not self._actions and self.clock.ticks_ms() >= self._script_end

    # -- running --

    def step(self) -> None:
        self.clock.advance()
        now = self.clock.ticks_ms()
        while self._actions and self._actions[0][0] <= now:
            self._actions.popleft()[1]()
        self.app.step()
        self._collect()

    def run_until(self, cond: Callable[[], bool], timeout: float, tick: float = 0.005) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.step()
            if cond():
                return True
            time.sleep(tick)
        return cond()

    def all_acked(self) -> bool:
        return (
            self.script_done and len(self.app.spool) == 0 and all(eid in self.acked for eid, _ in self.made)
        )

    def summary(self) -> dict:
        return {
            "device": self.device,
            "events": [{"id": e, "type": t, "acked": e in self.acked} for e, t in self.made],
            "spooled": len(self.app.spool),
            "refused": list(self.refused),
            "reboots": self.reboots,
            "counters": dict(self.app.counters),
            "mqtt_connects": self.app.mqtt.connects,
        }

    def close(self, goodbye: bool = True) -> None:
        self._collect()
        self.app.mqtt.disconnect(offline_status=goodbye)
        try:
            self.app.mqtt.client.disconnect()
        except Exception:
            pass


def run_boxes(boxes: list[SimulatedBox], timeout: float, stay: bool = False, tick: float = 0.005) -> bool:
    """Step every box until all scripts ran and every event is acked (or, with `stay`,
    until the timeout). True when everything was acked."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for b in boxes:
            b.step()
        if not stay and all(b.all_acked() for b in boxes):
            return True
        time.sleep(tick)
    return all(b.all_acked() for b in boxes)


def run_timeout(timeout: float | None, stay: bool) -> float:
    """--stay means "until Ctrl-C": no deadline unless one is given; otherwise 120 s by default."""
    if timeout is not None:
        return timeout
    return math.inf if stay else 120.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", required=True, help="mqtt://host:port")
    ap.add_argument(
        "--device", default="box-1", help="device id (with --devices N: the stem, box-1 -> box-1-1...)"
    )
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--prefix", default="parcelbox")
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--deliveries", type=int, default=1)
    ap.add_argument("--pickups", type=int, default=0, help="pickups after the deliveries")
    ap.add_argument("--lid-left-open", type=int, default=0, help="times the lid is left open at the end")
    ap.add_argument(
        "--random",
        type=int,
        default=0,
        metavar="N",
        help="N more random lid cycles (delivery / pickup / peek)",
    )
    ap.add_argument(
        "--photos", help="folder of .jpg files served by the simulated camera (default: generated)"
    )
    ap.add_argument(
        "--camera-driver",
        choices=CAMERA_DRIVERS,
        default="camera-api",
        help="which driver's faithful fake the box runs on (default: camera-api, the README's first choice)",
    )
    ap.add_argument("--camera-api", choices=("lemariva", "camera"), help=argparse.SUPPRESS)  # old name
    # The firmware's sensor kinds (firmware/settings.py SENSORS = gateway/vocabulary.py OCCUPANCY_SENSORS),
    # but the load cell, which the simulated box has no fake for.
    ap.add_argument("--sensor", choices=[s for s in fw_settings.SENSORS if s != "hx711"], default="ultrasonic")
    ap.add_argument("--spool-dir", help="spool folder (per device: <dir>/<device>); default: a temp folder")
    ap.add_argument(
        "--flash-dir",
        help="the box's app folder (per device: <dir>/<device>): the firmware runs from it and takes "
        "over-the-air updates (parcelbox device update --no-compile); kept between runs",
    )
    ap.add_argument(
        "--stay", action="store_true", help="stay connected answering commands until Ctrl-C (or --timeout)"
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds before giving up (default 120; with --stay: none, it runs until Ctrl-C)",
    )
    ap.add_argument("--tick-ms", type=int, default=50, help="virtual milliseconds per simulation step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = ap.parse_args(argv)
    if a.devices < 1:
        ap.error("--devices must be >= 1")
    names = [a.device] if a.devices == 1 else [f"{a.device}-{i}" for i in range(1, a.devices + 1)]
    for n in names:
        if not fw_protocol.valid_device_id(n):
            ap.error(f"bad device id {n!r}: 1-32 of a-z 0-9 -")
    log = None if a.quiet else (lambda line: print(line, flush=True))
    photos = PhotoSource(a.photos, a.seed) if a.photos else None
    boxes = []
    for i, n in enumerate(names):
        spool = str(Path(a.spool_dir) / n) if a.spool_dir else None
        b = SimulatedBox(
            a.broker,
            n,
            flash_dir=Path(a.flash_dir) / n if a.flash_dir else None,
            prefix=a.prefix,
            username=a.username,
            password=a.password,
            spool_dir=spool,
            photos=photos if photos is not None else PhotoSource(None, a.seed * 1000 + i),
            camera_driver=a.camera_driver if a.camera_api is None else a.camera_api,
            sensor=a.sensor,
            tick_ms=a.tick_ms,
            log=log,
        )
        for _ in range(a.deliveries):
            b.deliver()
        for _ in range(a.pickups):
            b.pickup()
        for _ in range(a.lid_left_open):
            b.leave_lid_open()
        rnd = random.Random(a.seed * 7919 + i)
        for _ in range(a.random):
            rnd.choice((b.deliver, b.deliver, b.pickup, b.peek))()
        boxes.append(b)
    try:
        ok = run_boxes(boxes, run_timeout(a.timeout, a.stay), stay=a.stay)
    except KeyboardInterrupt:
        ok = all(b.all_acked() for b in boxes)
    finally:
        for b in boxes:
            b.close()
    summary: dict[str, Any] = {"ok": ok, "boxes": [b.summary() for b in boxes]}
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        for s in summary["boxes"]:
            acked = sum(1 for e in s["events"] if e["acked"])
            print(f"{s['device']}: {len(s['events'])} events, {acked} acked, {s['spooled']} still spooled")
        print("OK: every event acked" if ok else "NOT OK: some events were not acked before the timeout")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
