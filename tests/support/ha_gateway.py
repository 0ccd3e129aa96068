"""The in-memory gateway and the MQTT mirror the Home Assistant tests share, and their fixtures.

`MemoryPort` plays the gateway (the `GatewayPort` contract the bridge reads: devices, events, photo
files) and a box; `Mirror` keeps everything published under a filter; `FakeRegistry` is the part of
`gateway.devices.DeviceRegistry` the bridge uses. The fixtures (`cfg`, `port`, `mirror`, `bridge`, stopped
at teardown) are taken into a test module by name: `cfg, port = has.cfg, has.port`.
"""

from __future__ import annotations

import io
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gateway.bus import DEVICE_CHANGED, DEVICE_REGISTERED, DEVICE_REMOVED, EVENT_STORED, Bus
from gateway.homeassistant import HAConfig, HomeAssistantBridge
from gateway.homeassistant import discovery as d
from tests.support.mqtt import Collector, client

# --- an in-memory gateway (the GatewayPort contract) --------------------------------------------------------


def make_jpeg(path: Path, size: tuple[int, int], seed: int, quality: int = 85) -> bytes:
    """A photo-like JPEG (gradient plus texture, so it does not compress to nothing)."""
    w, h = size
    im = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    # Seeded texture (Image.effect_noise draws from the C library's unseeded rand(): other bytes every run).
    noise = Image.frombytes("L", (w, h), random.Random(seed).randbytes(w * h)).convert("RGB")
    im = Image.blend(im, noise, 0.35)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


class MemoryPort:
    """A small in-memory `GatewayPort`: devices, events and photo files, plus helpers that play a box."""

    def __init__(self, root: Path) -> None:
        self.bus = Bus()
        self.root = root
        self.devices: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.commands: list[tuple[str, str, dict[str, Any] | None]] = []
        self.fail_list_devices = 0  # make list_devices raise this many times
        self._n = 0
        self._lock = threading.Lock()

    # GatewayPort ---------------------------------------------------------------------
    def list_devices(self) -> list[dict[str, Any]]:
        with self._lock:
            if self.fail_list_devices:
                self.fail_list_devices -= 1
                raise RuntimeError("store is busy (simulated)")
            return [dict(r) for r in self.devices.values()]

    def list_events(self, *, device=None, type=None, since=None, until=None, before=None, limit=50):
        with self._lock:
            rows = [
                e
                for e in self.events
                if (device is None or e["device"] == device) and (type is None or e["type"] == type)
            ]
        return [dict(e) for e in reversed(rows)][:limit]

    def get_event(self, device: str, event_id: str):
        return next((dict(e) for e in self.events if e["device"] == device and e["id"] == event_id), None)

    def photo_path(self, device: str, event_id: str, variant: str) -> Path | None:
        suffix = {"original": ".jpg", "alert": ".alert.jpg", "thumb": ".thumb.jpg"}[variant]
        p = self.root / device / f"{event_id}{suffix}"
        return p if p.exists() else None

    def health(self) -> dict[str, Any]:
        return {}

    def list_outbox(self, state=None, limit=100) -> list:
        return []

    def retry_alert(self, alert_id: str) -> bool:
        return False

    def send_command(self, device: str, cmd: str, args: dict[str, Any] | None = None) -> str:
        with self._lock:
            self.commands.append((device, cmd, args))
            return f"cmd-{len(self.commands):08d}"

    def command_result(self, cmd_id: str):
        return None

    def whatsapp_state(self):
        return {"state": "disabled"}

    # playing a box -----------------------------------------------------------------------
    def add_device(self, device: str, **fields: Any) -> dict[str, Any]:
        rec = {
            "device": device,
            "name": fields.pop("name", device.replace("-", " ").title()),
            "online": True,
            "last_seen": time.time(),
            "fw": "0.1.0",
            "rssi": -61,
            "battery_mv": None,
            "heap_free": 81234,
            "uptime_s": 10,
            "spooled": 0,
            "waiting": 0,
            "lid_open": False,
            "last_delivery_ts": None,
            "last_event_id": None,
        }
        rec.update(fields)
        with self._lock:
            self.devices[device] = rec
        self.bus.publish(DEVICE_CHANGED, dict(rec))
        return rec

    def update(self, device: str, **fields: Any) -> None:
        with self._lock:
            self.devices[device].update(fields)
            rec = dict(self.devices[device])
        self.bus.publish(DEVICE_CHANGED, rec)

    def event(
        self, device: str, type: str, *, photo: bool = True, alert: bool = True, cmd: str | None = None
    ) -> dict[str, Any]:
        self._n += 1
        eid = f"{device.replace('-', '')[:8]:0<8}-{self._n:06d}"
        info = None
        if photo:
            original = make_jpeg(self.root / device / f"{eid}.jpg", (1600, 1200), self._n)
            if alert:
                copy = make_jpeg(self.root / device / f"{eid}.alert.jpg", (1280, 960), self._n, quality=70)
                assert len(copy) < len(original)
            make_jpeg(self.root / device / f"{eid}.thumb.jpg", (320, 240), self._n, quality=60)
            info = {"size": len(original), "sha256": "0" * 64, "width": 1600, "height": 1200}
        ts = time.time()
        ev = {
            "device": device,
            "id": eid,
            "type": type,
            "ts": ts,
            "received_at": ts,
            "seq": self._n,
            "sensors": {},
            "photo": info,
            "cmd": cmd,
        }
        with self._lock:
            self.events.append(ev)
            rec = self.devices[device]
            rec["last_event_id"] = eid
            if type == "delivery":
                rec["waiting"] += 1
                rec["last_delivery_ts"] = ts
            elif type == "pickup":
                rec["waiting"] = 0
            rec = dict(rec)
        # The real service publishes the stored event, then the changed device.
        self.bus.publish(EVENT_STORED, dict(ev))
        self.bus.publish(DEVICE_CHANGED, rec)
        return ev


# --- MQTT observation helpers ----------------------------------------------------------------------------------


class Mirror:
    """Everything published under a filter: the latest message per topic and the full log."""

    def __init__(self, url: str, topic_filter: str) -> None:
        self.col = Collector(url, topic_filter)
        self.latest: dict[str, Any] = {}
        self.log: list[Any] = []

    def _drain(self, timeout: float) -> None:
        try:
            m = self.col.get(timeout=timeout)
        except Exception:
            return
        self.latest[m.topic] = m
        self.log.append(m)

    def wait(self, pred, timeout: float = 15.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if pred():
                    return
            except (KeyError, ValueError, TypeError):
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; topics seen: {sorted(self.latest)[:40]}")
            self._drain(min(left, 0.2))

    def payload(self, topic: str) -> bytes:
        return self.latest[topic].payload

    def json(self, topic: str) -> dict[str, Any]:
        return json.loads(self.latest[topic].payload)

    def close(self) -> None:
        self.col.close()


@pytest.fixture
def cfg(prefix: str) -> HAConfig:
    return HAConfig(prefix=f"{prefix}/homeassistant", protocol_prefix=prefix, gateway_id="gw-test")


@pytest.fixture
def port(tmp_path: Path) -> MemoryPort:
    return MemoryPort(tmp_path / "photos")


@pytest.fixture
def mirror(mosquitto, prefix):
    m = Mirror(mosquitto.url, f"{prefix}/#")
    yield m
    m.close()


@pytest.fixture
def bridge(mosquitto, port, cfg):
    b = HomeAssistantBridge(port, mosquitto.url, cfg)
    yield b
    b.stop()


def publish_birth(url: str, cfg: HAConfig) -> None:
    """Home Assistant's birth message: its MQTT integration publishes `online` on `<prefix>/status`."""
    ha = client(url)
    try:
        ha.publish(cfg.birth_topic, "online", qos=1).wait_for_publish(5)
    finally:
        ha.disconnect()
        ha.loop_stop()


def all_configs_present(mirror: Mirror, cfg: HAConfig, devices: dict[str, bool]) -> bool:
    """devices: id -> whether its battery sensor is expected."""
    for ent in d.gateway_entities(cfg):
        if ent.topic(cfg) not in mirror.latest:
            return False
    for device, battery in devices.items():
        for key, component in d.BOX_ENTITY_KEYS:
            if key == "battery" and not battery:
                continue
            t = d.config_topic(cfg, component, d.box_identifier(cfg, device), key)
            if not mirror.latest.get(t) or not mirror.latest[t].payload:
                return False
    return True


class FakeRegistry:
    """The two calls the bridge makes on `gateway.devices.DeviceRegistry`. With `bus`, `set` also
    publishes what the running service publishes when it notices the change (gateway.registry_watch's
    `RegistryWatch._refresh`): DEVICE_REMOVED / DEVICE_REGISTERED with the whole registered list."""

    def __init__(self, devices: set[str], bus: Any = None) -> None:
        self.devices = set(devices)
        self._mtime = 1.0
        self.bus = bus

    def mtime(self) -> float:
        return self._mtime

    def list(self) -> list[Any]:
        from types import SimpleNamespace

        return [SimpleNamespace(device=x) for x in sorted(self.devices)]

    def set(self, devices: set[str]) -> None:
        before, self.devices = self.devices, set(devices)
        self._mtime += 1.0
        if self.bus is not None:
            now = sorted(self.devices)
            for device in sorted(before - self.devices):
                self.bus.publish(DEVICE_REMOVED, {"device": device, "registered": now})
            for device in sorted(self.devices - before):
                self.bus.publish(DEVICE_REGISTERED, {"device": device, "registered": now})
