"""gateway/registry_watch.py: the one reader of devices.json changes, over a real registry file.

Each change is published once on the bus (DEVICE_REMOVED, DEVICE_REGISTERED, with the whole registered
list); the registry as found at the first look is no change; a damaged file is counted and logged once
per version, the registry as last read well stays in force, and the file is read again once it changes. The file's mtime is set by hand after each change (os.utime), so two
changes within one timestamp tick are still two changes, with no sleeping.
"""

from __future__ import annotations

import os
from typing import Any

from gateway.bus import DEVICE_REGISTERED, DEVICE_REMOVED, Bus
from gateway.devices import DeviceRegistry
from gateway.health import Counters
from gateway.lograte import LogThrottle
from gateway.registry_watch import RegistryWatch


class _Changes:
    def __init__(self, bus: Bus) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        bus.subscribe(lambda t, d: self.seen.append((t, d)), DEVICE_REMOVED)
        bus.subscribe(lambda t, d: self.seen.append((t, d)), DEVICE_REGISTERED)


def _touch(registry: DeviceRegistry, mtime: float) -> None:
    os.utime(registry.path, (mtime, mtime))


def _watch(
    tmp_path, names: dict[str, str] | None = None
) -> tuple[DeviceRegistry, RegistryWatch, _Changes, Counters]:
    registry = DeviceRegistry(tmp_path)
    bus, counters = Bus(), Counters()
    watch = RegistryWatch(registry, bus, counters, names=names or {}, throttle=LogThrottle())
    return registry, watch, _Changes(bus), counters


def test_each_change_is_published_once(tmp_path):
    registry, watch, changes, _ = _watch(tmp_path)
    registry.add("porch")
    registry.add("shed")
    _touch(registry, 1000.0)
    watch.poll()
    assert changes.seen == []  # the registry as found at start is no change
    assert watch.is_registered("porch") and watch.is_registered("shed")

    registry.remove("shed")
    _touch(registry, 1001.0)
    watch.poll()
    watch.poll()
    assert watch.removed().keys() == {"shed"}  # the pipeline's look: no second publication either
    assert changes.seen == [(DEVICE_REMOVED, {"device": "shed", "registered": ["porch"]})]

    registry.add("shed")
    registry.add("garage")
    _touch(registry, 1002.0)
    assert watch.is_registered("garage")  # noticed by whoever looks first
    watch.poll()
    assert changes.seen[1:] == [
        (DEVICE_REGISTERED, {"device": "garage", "registered": ["garage", "porch", "shed"]}),
        (DEVICE_REGISTERED, {"device": "shed", "registered": ["garage", "porch", "shed"]}),
    ]


def test_a_damaged_registry_is_counted_and_read_again_later(tmp_path, caplog):
    registry, watch, changes, counters = _watch(tmp_path)
    registry.add("porch")
    _touch(registry, 1000.0)
    watch.poll()
    good = registry.path.read_bytes()
    registry.path.write_bytes(b'{"devices": {"porch": ')  # a hand edit saved half-way
    _touch(registry, 1001.0)
    watch.poll()
    watch.poll()  # the same damaged file: not read (nor counted) again until it changes
    assert counters.snapshot()["registry_errors"] == 1
    assert "cannot read the device registry" in caplog.text
    assert changes.seen == []
    # Meanwhile every look answers from the registry as last read well: a box's messages are not
    # refused (nor crash the ingest worker) because someone is half-way through editing the file.
    assert watch.is_registered("porch") and not watch.is_registered("shed")
    assert watch.removed() == {} and watch.device_name("porch") == "porch"
    registry.path.write_bytes(b'{"devices": [')  # saved again, still broken
    _touch(registry, 1001.5)
    assert watch.is_registered("porch")
    assert counters.snapshot()["registry_errors"] == 2
    registry.path.write_bytes(good)  # repaired, and a box added meanwhile
    registry.add("shed")
    _touch(registry, 1002.0)
    watch.poll()
    assert changes.seen == [(DEVICE_REGISTERED, {"device": "shed", "registered": ["porch", "shed"]})]
    assert counters.snapshot()["registry_errors"] == 2


def test_names_come_from_the_config_then_the_registry_then_the_id(tmp_path):
    registry, watch, _, _ = _watch(tmp_path, names={"porch": "Front gate"})
    registry.add("porch", name="Porch box")
    registry.add("shed", name="Garden shed")
    assert watch.device_name("porch") == "Front gate"
    assert watch.device_name("shed") == "Garden shed"
    assert watch.device_name("stranger") == "stranger"


def test_a_removed_box_is_hidden_until_heard_from_again(tmp_path):
    registry, watch, _, _ = _watch(tmp_path)
    registry.add("shed")
    registry.remove("shed")
    removed_at = watch.removed()["shed"]
    assert watch.is_removed({"device": "shed", "last_seen": removed_at - 1})
    assert not watch.is_removed({"device": "shed", "last_seen": removed_at + 1})
    assert not watch.is_removed({"device": "porch", "last_seen": None})
