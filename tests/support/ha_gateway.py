"""The in-memory gateway and the MQTT mirror the Home Assistant tests share, and their fixtures.

`memory_port` sets up the one in-memory `GatewayPort` (tests/support/web.py) to play the gateway the
bridge reads (devices, events, photo files) and a box; `Mirror` keeps everything published under a
filter; `FakeRegistry` is the part of `gateway.devices.DeviceRegistry` the bridge uses. The fixtures (`cfg`, `port`, `mirror`, `bridge`, stopped
at teardown) are taken into a test module by name: `cfg, port = has.cfg, has.port`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.bus import DEVICE_REGISTERED, DEVICE_REMOVED
from gateway.homeassistant import HAConfig, HomeAssistantBridge
from gateway.homeassistant import discovery as d
from tests.support.mqtt import Collector, client
from tests.support.web import MemoryPort

# --- the gateway: the one in-memory GatewayPort ------------------------------------------------------------


def memory_port(root: Path, **kw: Any) -> MemoryPort:
    """The in-memory gateway (tests/support/web.py `MemoryPort`, checked against the real one by
    tests/test_port_contract.py) as these tests play a box: the box never answers a command by itself
    (a test plays the answer, `add_event(..., cmd=...)`), a box is mains powered unless told
    (`battery_mv=...`), and photos are the camera's size (1600x1200) so the bridge has one to shrink."""
    opts: dict[str, Any] = {"box_answers": False, "photo_size": (1600, 1200)}
    return MemoryPort(root, **{**opts, "device_defaults": {"battery_mv": None}, **kw})


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
    return memory_port(tmp_path / "photos")


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
