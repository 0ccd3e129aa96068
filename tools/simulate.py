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

Each box is built by the firmware's own `firmware/main.py` `build()`, as on the board, given
fake board modules (tools/sim/): what is simulated is only what sits at the edge of the board.
GPIO pins (lid reed switch, IR or ultrasonic occupancy sensor, flash LED), the camera driver
(`--camera-driver camera-api|lemariva`: the faithful fakes of tools/sim/fake_camera.py, which grab
a frame when the real driver's DMA would, so a photo shows what the lens saw *then*: each lid
opening is a new scene, taken from the JPEG files of `--photos` in turn or generated with Pillow,
lit while the flash LED is on and dark otherwise), the WLAN (tools/sim/fake_net.py's ESP32
station) and the clock (virtual milliseconds, `--tick-ms` per loop step with a 5 ms real pause, so
a 2 s settle takes a fraction of a second). Detection, spooling, publishing, acks, commands,
reconnects and their backoff are `firmware/` itself; the MQTT client is `PahoMQTTClient`
(tools/sim/paho_umqtt.py), which has umqtt.simple's interface and behaviour (blocking QoS 1
publish, callback from inside publish/check_msg, OSError when the connection is gone) on top of
paho-mqtt.

Exit code 0 only when every event the boxes made was acked by a gateway
before `--timeout`; 1 otherwise (a summary says what is missing).
`SimulatedBox` is importable, so tests and the gateway's end-to-end runs drive
boxes in-process.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import importlib
import importlib.util
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE_DIR = ROOT / "firmware"
for _p in (ROOT, FIRMWARE_DIR):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import app as fw_app  # noqa: E402
import main as fw_main  # noqa: E402
import protocol as fw_protocol  # noqa: E402
import settings as fw_settings  # noqa: E402

from gateway.brokeraddr import parse_broker_url  # noqa: E402
from tools.sim import fake_net  # noqa: E402
from tools.sim.board import Machine, SimClock, SimPin, network_module  # noqa: E402
from tools.sim.fake_camera import RESOLUTION, jpeg_buffer_bytes  # noqa: E402
from tools.sim.lens import CAMERA_DRIVERS, PhotoSource, camera_driver, camera_frame_size  # noqa: E402
from tools.sim.paho_umqtt import PahoMQTTClient  # noqa: E402

# --- the app folder of a box (over-the-air updates) --------------------------------------------


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


@contextlib.contextmanager
def flash_modules(folder: Path) -> Iterator[None]:
    """Import the firmware modules from the box's app folder, in isolation: inside, `import main`
    (and the imports build() makes) find the folder's files; afterwards sys.modules and sys.path are
    put back, so the modules of this process (and other boxes) are untouched. The loaded modules
    keep the references their own imports made."""
    names = {p.stem for p in folder.glob("*.py")} | {p.stem for p in FIRMWARE_DIR.glob("*.py")}
    saved = {n: sys.modules.pop(n) for n in list(names) if n in sys.modules}
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
        sys.path.remove(str(folder))


def _observe(app: Any, made: list[tuple[str, str]], acked: list[str], refused: list[str]) -> None:
    """Record the ids `app` makes and sees acked or refused (the summary, the tests), by wrapping
    two of its methods on this instance: the App is the firmware's own, as build() made it."""
    record_event, on_ack = app.record_event, app._on_ack

    def recorded(etype, sensors, cmd=None):
        eid = record_event(etype, sensors, cmd)
        if eid is not None:
            made.append((eid, etype))
        return eid

    def seen(msg):
        try:
            eid, ok, _err, retry = fw_protocol.decode_ack(msg)
            known = app.spool.order_of(eid) is not None
        except fw_protocol.ProtocolError:
            eid, ok, retry, known = None, False, False, False
        on_ack(msg)
        if known and ok:
            acked.append(eid)
        elif known and not retry:
            refused.append(eid)

    app.record_event = recorded
    app._on_ack = seen


class SimulatedBox:
    """One simulated ESP32-CAM box running the firmware's App against a broker.

    The app is built by the firmware's `main.build()` on this box's fake board modules
    (tools/sim/board.py). Drive it with `step()` (or `run_until`) and script the lid and the
    occupancy sensor with `deliver()`, `pickup()`, `leave_lid_open()`, `peek()`; every action
    is queued and played in virtual time. `reboot()` builds the box again over the same spool
    folder and pins, like a power cycle."""

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
        # The access point of the simulated station (tools/sim/fake_net.py WLAN) is ("sim", "sim").
        cfg["wifi"] = {"ssid": "sim", "password": "sim"}
        for k, v in (overrides or {}).items():
            cfg[k] = v
        problems = fw_settings.validate(cfg, need_network=False)
        if problems:
            raise ValueError("; ".join(problems))
        self.cfg = cfg
        if self.flash_dir is not None:
            # The box's config.json is written once, like provision.
            conf = self.flash_dir / "config.json"
            if not conf.exists():
                conf.write_text(json.dumps(cfg))
        # The wiring, by GPIO: machine.Pin hands these out at every boot, so the world's levels (lid
        # closed, box empty) survive a reboot like real wiring.
        pins = cfg["pins"]
        self.lid_pin = SimPin(1 - pins["lid_open_level"])
        self.ir_pin = SimPin(1 - pins["ir_active_level"])
        self.trig_pin = SimPin(0)
        self.echo_pin = SimPin(0)
        self.flash_pin = SimPin(0)
        self.pins = {
            pins["lid"]: self.lid_pin,
            pins["ir"]: self.ir_pin,
            pins["trig"]: self.trig_pin,
            pins["echo"]: self.echo_pin,
            pins["flash"]: self.flash_pin,
        }
        self.parcels = 0
        self.parcel_mm = 50
        self.wlan: fake_net.WLAN | None = None  # the radio restarts with every boot (_build)
        self.driver: Any = None  # the camera driver's fake, new at every boot (_build)
        self.reboots = 0
        self._actions: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        self._script_end = 0
        self.made: list[tuple[str, str]] = []
        self.acked: list[str] = []
        self.refused: list[str] = []
        self._build()

    # -- the board: boot.py, then main.py's build() with this box's fake board modules --

    def log(self, msg: str) -> None:
        line = f"[{self.device}] {msg}"
        self.lines.append(line)
        if self._log_sink is not None:
            self._log_sink(line)

    def _build(self) -> None:
        """Power on. With an app folder: boot.py's switch or rollback (otaboot.at_boot), then the
        folder's main.py builds the app; a crash at start during an update's trial is given up and
        the box resets, as main.py's last-resort handler does."""
        if self.flash_dir is None:
            self._start(fw_main, fw_settings, fw_app)
            return
        for _ in range(12):  # bounded: every crash in a trial ends in a rollback within trial_boots
            boot = load_flash_modules_boot(self.flash_dir)
            fl = boot.Flash(str(self.flash_dir), os)
            boot.at_boot(fl, self.log)
            try:
                with flash_modules(self.flash_dir):
                    mods = [importlib.import_module(n) for n in ("main", "settings", "app")]
                    self._start(*mods)
                return
            except Exception as e:  # on import or at start: what main.py's last-resort handler sees
                self.log(f"main: crashed at start: {e!r}")
                if not boot.give_up(fl, f"crashed: {e!r}"):
                    raise
                self.log("parcelbox: the new firmware crashed in its trial: rolling back")
                self.reboots += 1
        raise RuntimeError("the box never started")

    def _start(self, main_mod: Any, settings_mod: Any, app_mod: Any) -> None:
        """main.py at power-on: the config (a `config` command's saved one), build(), start()."""
        self.fw_version = app_mod.FW_VERSION
        saved = Path(self.spool_dir) / "config.json"
        if self.flash_dir is not None:
            saved = self.flash_dir / "config.json"  # the box's own config, as on the board
        if saved.exists():
            # A `config` command persisted settings: a reboot runs with them, as on the board.
            cfg, problems = settings_mod.load(str(saved), need_network=False, warn=self.log)
            if problems:
                self.log("config.json ignored: " + "; ".join(problems))
            else:
                self.cfg = cfg
        cfg = self.cfg
        # The station is the faithful ESP32 one (tools/sim/fake_net.py): it joins after 300 virtual ms.
        self.wlan = fake_net.WLAN(self.clock, ap=("sim", "sim"), join_ms=300)
        self.driver = camera_driver(self.camera_driver, self._lens, warmup=cfg["warmup_frames"])
        app, _parts = main_mod.build(
            cfg,
            Machine(self.pins, reset=self._reboot_from_firmware, time_pulse_us=self._time_pulse_us),
            network_module(self.wlan),
            functools.partial(PahoMQTTClient, timeout=self.client_timeout),
            self.driver,
            str(saved),
            clock=self.clock,
            heap_free=lambda: 4_000_000,  # CPython has no gc.mem_free; a number the status can carry
            app_dir=None if self.flash_dir is None else str(self.flash_dir),
            log=self.log,
        )
        _observe(app, self.made, self.acked, self.refused)
        self.app = app
        app.start()

    def _lens(self, _width: int, _height: int, _quality: int) -> bytes:
        """What the sensor sees when the driver grabs a frame: this scene, lit or dark."""
        return self.photos.frame(self.scene, self.flash_pin.level == 1)

    def _reboot_from_firmware(self) -> None:
        self.log("reboot requested")
        self.reboot()

    def reboot(self) -> None:
        """A power cycle: RAM state gone, the spool folder and pins stay."""
        try:
            self.app.mqtt.client.disconnect()
        except Exception:
            pass
        self.reboots += 1
        self._build()

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
    ap.add_argument(
        "--sensor", choices=[s for s in fw_settings.SENSORS if s != "hx711"], default="ultrasonic"
    )
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
    overrides: dict[str, Any] = {}
    if photos is not None:
        # The camera runs at the photos' size: at the firmware's default (SVGA) a UXGA photo overflows the
        # driver's JPEG buffer and every event would go out without its photo, silently.
        shots = [p.read_bytes() for p in photos.files]
        try:
            overrides["frame_size"] = camera_frame_size(shots)
        except ValueError as e:
            # Not one ESP32-CAM frame size: fine as long as each photo fits the default frame's buffer.
            w, h = RESOLUTION[fw_settings.DEFAULTS["frame_size"]]
            if max(map(len, shots)) > jpeg_buffer_bytes(w, h):
                ap.error(f"--photos {a.photos}: {e}")
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
            overrides=overrides,
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
