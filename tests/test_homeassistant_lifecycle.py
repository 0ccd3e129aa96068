"""Home Assistant across restarts, removals and registrations (issue 15 items 12-15), against a real
Mosquitto, with a stand-in for Home Assistant's discovery written from its source
(`tests.support.homeassistant`)."""

from __future__ import annotations

import json

import pytest

from gateway.homeassistant import HAConfig, HomeAssistantBridge
from gateway.homeassistant import discovery as d
from tests.support import ha_gateway as has
from tests.support.ha_gateway import FakeRegistry, all_configs_present
from tests.support.homeassistant import FakeHomeAssistant
from tests.test_homeassistant import check_discovery

cfg, port, mirror = has.cfg, has.port, has.mirror  # the shared fixtures (tests/support/ha_gateway.py)


@pytest.fixture
def ha(mosquitto, cfg):
    h = FakeHomeAssistant(mosquitto.url, cfg.prefix, cfg.birth_topic)
    yield h
    h.stop()


def box_ids(cfg: HAConfig, *devices: str) -> set[str]:
    return {d.gateway_identifier(cfg), *(d.box_identifier(cfg, x) for x in devices)}


def test_box_removed_while_home_assistant_is_down_leaves_no_orphan(mosquitto, port, cfg, ha, tmp_path):
    """Item 12: Home Assistant ignores an empty config for an entity it has not seen this run, so old
    code's removal (empty retained configs) left the box behind as an orphan device."""
    port.add_device("box-1")
    port.add_device("box-2")
    registry = FakeRegistry({"box-1", "box-2"}, bus=port.bus)
    state = tmp_path / "data" / "homeassistant.json"
    ha.start()
    bridge = HomeAssistantBridge(port, mosquitto.url, cfg, registry=registry, state_path=state)
    bridge.start()
    try:
        ha.wait(lambda: ha.devices() == box_ids(cfg, "box-1", "box-2"), what="both boxes")
        ha.stop()
        registry.set({"box-1"})  # parcelbox device remove box-2, Home Assistant down
        ha.wait(lambda: bridge.health().get("removed") == 1, what="the bridge to remove box-2")
        assert bridge.wait_idle()
        ha.start()  # sees box-1's retained configs, not box-2's; says "online"
        ha.wait(lambda: ha.devices() == box_ids(cfg, "box-1"), what="box-2 gone from Home Assistant")
        assert bridge.wait_idle()
        assert json.loads(state.read_bytes())["unconfirmed_removals"] == []  # its birth confirmed it
    finally:
        bridge.stop()


def test_removal_while_the_gateway_and_home_assistant_are_down_reaches_it_later(
    mosquitto, port, cfg, ha, tmp_path
):
    """The tombstone outlives a gateway restart: removed with both down, Home Assistant starting last."""
    port.add_device("box-1")
    port.add_device("box-2")
    registry = FakeRegistry({"box-1", "box-2"}, bus=port.bus)
    state = tmp_path / "data" / "homeassistant.json"
    ha.start()
    first = HomeAssistantBridge(port, mosquitto.url, cfg, registry=registry, state_path=state)
    first.start()
    try:
        ha.wait(lambda: ha.devices() == box_ids(cfg, "box-1", "box-2"), what="both boxes")
        assert first.wait_idle()
    finally:
        first.stop()
    ha.stop()
    registry.set({"box-1"})
    second = HomeAssistantBridge(port, mosquitto.url, cfg, registry=registry, state_path=state)
    second.start()
    try:
        assert second.wait_idle()
        ha.start()
        ha.wait(lambda: ha.devices() == box_ids(cfg, "box-1"), what="box-2 gone from Home Assistant")
    finally:
        second.stop()
    third = HomeAssistantBridge(port, mosquitto.url, cfg, registry=registry, state_path=state)
    third.start()  # confirmed: nothing is sent for box-2 any more
    try:
        assert third.wait_idle()
        assert json.loads(state.read_bytes())["unconfirmed_removals"] == []
    finally:
        third.stop()


def test_reregistered_box_gets_its_last_photos_back(mosquitto, port, cfg, mirror):
    """Item 13: old code left both image entities empty ("unknown") after a box came back."""
    port.add_device("box-1")
    delivery = port.add_event("box-1", "delivery")
    snapshot = port.add_event("box-1", "snapshot", cmd="cmd-00000001")
    registry = FakeRegistry({"box-1"}, bus=port.bus)
    bridge = HomeAssistantBridge(port, mosquitto.url, cfg, registry=registry)
    bridge.start()
    try:
        img = {k: d.image_topic(cfg, "box-1", k) for k in d.IMAGE_KINDS}
        alert = {
            "delivery": port.photo_path("box-1", delivery["id"], "alert").read_bytes(),
            "snapshot": port.photo_path("box-1", snapshot["id"], "alert").read_bytes(),
        }
        mirror.wait(lambda: all(mirror.payload(img[k]) == alert[k] for k in img), what="photos")
        registry.set(set())
        mirror.wait(lambda: all(mirror.payload(img[k]) == b"" for k in img), what="photos cleared")
        registry.set({"box-1"})
        mirror.wait(lambda: all(mirror.payload(img[k]) == alert[k] for k in img), what="photos back")
    finally:
        bridge.stop()


def test_restarts_and_reconnects_do_not_resend_unchanged_photos(mosquitto, port, cfg, mirror, ha):
    """Item 14: every message on an image topic is a state change in Home Assistant (an automation on
    the image fires); old code re-sent every photo at each start and reconnect."""
    port.add_device("box-1")
    ev = port.add_event("box-1", "delivery")
    ha.start()
    uid = f"{d.box_identifier(cfg, 'box-1')}_delivery_photo"
    topic = d.image_topic(cfg, "box-1", "delivery")
    for _ in range(3):  # three gateway runs
        bridge = HomeAssistantBridge(port, mosquitto.url, cfg)
        bridge.start()
        try:
            mirror.wait(lambda: topic in mirror.latest, what="photo")
            assert bridge.wait_idle()
        finally:
            bridge.stop()
    ha.sync()  # every stopped bridge's publishes have reached Home Assistant
    mirror._drain(0.3)
    assert sum(1 for m in mirror.log if m.topic == topic) == 1
    assert ha.image_updates[uid] == 1
    # A new photo is still sent at once, and only once.
    bridge = HomeAssistantBridge(port, mosquitto.url, cfg)
    bridge.start()
    try:
        assert bridge.wait_idle()
        ev2 = port.add_event("box-1", "delivery")
        want = port.photo_path("box-1", ev2["id"], "alert").read_bytes()
        mirror.wait(lambda: mirror.payload(topic) == want, what="new photo")
        ha.wait(lambda: ha.image_updates[uid] == 2, what="the new photo in Home Assistant")
        assert bridge.wait_idle()
        ha.sync()
        assert ha.image_updates[uid] == 2
        assert bridge.health()["images_unchanged"] >= 1
    finally:
        bridge.stop()
    assert ev["id"] != ev2["id"]


def test_registered_box_is_announced_unavailable_before_it_connects(mosquitto, port, cfg, mirror):
    """Item 15: old code announced a box only once the gateway had a record of it (its first message)."""
    port.add_device("box-1")
    registry = FakeRegistry({"box-1", "box-9"}, bus=port.bus)
    bridge = HomeAssistantBridge(port, mosquitto.url, cfg, registry=registry)
    bridge.start()
    try:
        mirror.wait(
            lambda: all_configs_present(mirror, cfg, {"box-1": False, "box-9": False}), what="configs"
        )
        mirror.wait(
            lambda: mirror.payload(d.availability_topic(cfg, "box-9")) == b"offline", what="unavailable"
        )
        for key, component in d.BOX_ENTITY_KEYS:
            t = d.config_topic(cfg, component, d.box_identifier(cfg, "box-9"), key)
            if t in mirror.latest and mirror.payload(t):
                check_discovery(t, mirror.payload(t), cfg)
        # Registered while running: announced within a registry check, too.
        registry.set({"box-1", "box-9", "box-10"})
        mirror.wait(lambda: all_configs_present(mirror, cfg, {"box-10": False}), what="box-10 announced")
        # And once it talks, it is the gateway's record that counts.
        port.add_device("box-9", name="Back gate")
        mirror.wait(lambda: mirror.payload(d.availability_topic(cfg, "box-9")) == b"online", what="online")
    finally:
        bridge.stop()


def test_a_probe_that_never_returns_does_not_keep_home_assistant_uninformed(mosquitto, port, cfg, mirror):
    """A broker ACL may drop our publishes to the sync topic without a word (MQTT 3.1.1 still acks them):
    after a few seconds the bridge publishes everything as before."""

    class Deaf(HomeAssistantBridge):
        def _on_subscribe(self, client, userdata, mid, reasons, props):  # the probe is lost
            return None

    port.add_device("box-1")
    port.add_event("box-1", "delivery")
    bridge = Deaf(port, mosquitto.url, cfg)
    bridge.start()
    try:
        mirror.wait(lambda: all_configs_present(mirror, cfg, {"box-1": False}), timeout=20, what="configs")
        mirror.wait(
            lambda: d.image_topic(cfg, "box-1", "delivery") in mirror.latest, timeout=20, what="photo"
        )
        assert bridge.wait_idle()
    finally:
        bridge.stop()
