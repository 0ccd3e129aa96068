"""Home Assistant MQTT discovery: payloads checked against Home Assistant's documentation, and the
bridge run against a real Mosquitto with an in-memory gateway (the `GatewayPort` contract).

The required keys and allowed values below are taken from Home Assistant's MQTT documentation
(home-assistant.io, source/_integrations/*.markdown) and the MQTT integration's schemas
(home-assistant/core, homeassistant/components/mqtt/{schemas,image}.py); each table cites its section.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from PIL import Image

from gateway.bus import DEVICE_CHANGED, DEVICE_REGISTERED, DEVICE_REMOVED, EVENT_STORED
from gateway.homeassistant import HAConfig, HomeAssistantBridge, clear_device
from gateway.homeassistant import discovery as d
from gateway.homeassistant.image import shrink_jpeg
from tests.support import ha_gateway as has
from tests.support.ha_gateway import (
    FakeRegistry,
    Mirror,
    all_configs_present,
    memory_port,
    publish_birth,
)
from tests.support.mqtt import client
from tests.support.web import make_jpeg

REPO = Path(__file__).resolve().parents[1]

# --- what Home Assistant's documentation requires -------------------------------------------------------

# "MQTT Discovery" > "Discovery topic" (integrations/mqtt/#discovery-topic):
#   <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, ids from [a-zA-Z0-9_-].
ID_CHARS = re.compile(r"[a-zA-Z0-9_-]+")

# Options every MQTT entity platform accepts: "Configuration Variables" common to
# binary_sensor.mqtt, sensor.mqtt, image.mqtt, button.mqtt (availability*, device, entity_category,
# enabled_by_default, icon, json_attributes_*, name, object_id/default_entity_id, unique_id, qos, encoding)
# and the discovery-only `origin` block ("Discovery payload" > origin; core mqtt/schemas.py).
COMMON_KEYS = {
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "payload_available",
    "payload_not_available",
    "device",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "icon",
    "json_attributes_template",
    "json_attributes_topic",
    "name",
    "object_id",
    "default_entity_id",
    "origin",
    "qos",
    "unique_id",
}

# Per platform: required keys, the other keys it documents, and the allowed device classes.
# binary_sensor.mqtt "Configuration Variables": state_topic required: true.
# binary_sensor "Device class" (integrations/binary_sensor/#device-class).
BINARY_SENSOR_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door", "gas",
    "heat", "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug", "power",
    "presence", "problem", "running", "safety", "smoke", "sound", "tamper", "update", "vibration", "window",
}  # fmt: skip
# sensor "Device class" (integrations/sensor/#device-class): the classes we use and their allowed units.
SENSOR_CLASS_UNITS: dict[str, set[str | None]] = {
    "voltage": {"V", "mV", "µV", "kV", "MV"},
    "signal_strength": {"dB", "dBm"},
    "timestamp": {None},  # "Datetime object or timestamp string (ISO 8601)", no unit
    "battery": {"%"},
    # data_size: UnitOfInformation (core homeassistant/const.py), the byte units.
    "data_size": {"B", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"},
}
PLATFORMS: dict[str, dict[str, Any]] = {
    "binary_sensor": {
        "required": {"state_topic"},
        "keys": {"device_class", "expire_after", "force_update", "off_delay", "payload_off", "payload_on",
                 "state_topic", "value_template"},
        "device_classes": BINARY_SENSOR_CLASSES,
    },
    # sensor.mqtt "Configuration Variables": state_topic required: true.
    "sensor": {
        "required": {"state_topic"},
        "keys": {"device_class", "expire_after", "force_update", "last_reset_value_template", "options",
                 "state_class", "state_topic", "suggested_display_precision", "unit_of_measurement",
                 "value_template"},
        "device_classes": set(SENSOR_CLASS_UNITS),
    },
    # image.mqtt "Configuration Variables": image_topic / url_topic "required: exclusive" (one of them);
    # content_type only with image_topic (core mqtt/image.py validate_topic_required).
    "image": {
        "required": set(),
        "keys": {"content_type", "image_encoding", "image_topic", "url_template", "url_topic"},
        "device_classes": set(),
    },
    # button.mqtt "Configuration Variables": command_topic; button "Device class": identify, restart, update.
    "button": {
        "required": {"command_topic"},
        "keys": {"command_template", "command_topic", "device_class", "payload_press", "retain"},
        "device_classes": {"identify", "restart", "update"},
    },
    # update.mqtt "Configuration Variables" (core mqtt/update.py PLATFORM_SCHEMA_MODERN on MQTT_RO_SCHEMA:
    # state_topic required); update "Device class": firmware.
    "update": {
        "required": {"state_topic"},
        "keys": {"command_topic", "device_class", "display_precision", "entity_picture",
                 "latest_version_template", "latest_version_topic", "payload_install", "release_summary",
                 "release_url", "retain", "state_topic", "title", "value_template"},
        "device_classes": {"firmware"},
    },
}  # fmt: skip
# "device" map keys (every platform's `device` option; core mqtt/schemas.py MQTT_ENTITY_DEVICE_INFO_SCHEMA).
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "name",
    "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
# "availability" list items: topic required; payload_available, payload_not_available, value_template.
AVAILABILITY_ITEM_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
AVAILABILITY_MODES = {"all", "any", "latest"}  # availability_mode
ENTITY_CATEGORIES = {"config", "diagnostic"}  # entity_category
STATE_CLASSES = {"measurement", "total", "total_increasing"}  # sensor state_class


def valid_topic(t: object) -> bool:
    return isinstance(t, str) and 0 < len(t) and "#" not in t and "+" not in t and "\0" not in t


def check_discovery(topic: str, payload: bytes, cfg: HAConfig) -> tuple[str, dict[str, Any]]:
    """Assert one discovery message is what Home Assistant's docs require; returns (component, config)."""
    assert topic.startswith(cfg.prefix + "/"), topic
    parts = topic[len(cfg.prefix) + 1 :].split("/")
    assert len(parts) == 4 and parts[3] == "config", f"topic shape: {topic}"
    component, node_id, object_id = parts[:3]
    assert component in PLATFORMS, f"unexpected component {component}"
    assert ID_CHARS.fullmatch(node_id) and ID_CHARS.fullmatch(object_id), topic
    conf = json.loads(payload)
    assert isinstance(conf, dict)
    spec = PLATFORMS[component]
    unknown = set(conf) - COMMON_KEYS - spec["keys"]
    assert not unknown, f"{topic}: keys Home Assistant does not document for {component}: {unknown}"
    missing = spec["required"] - set(conf)
    assert not missing, f"{topic}: required keys missing: {missing}"
    # unique_id and device: "Only works through MQTT discovery and when unique_id is set. At least one of
    # identifiers or connections must be present to identify the device."
    assert isinstance(conf.get("unique_id"), str) and conf["unique_id"], topic
    dev = conf["device"]
    assert set(dev) <= DEVICE_KEYS, f"{topic}: unknown device keys {set(dev) - DEVICE_KEYS}"
    assert isinstance(dev["identifiers"], list) and dev["identifiers"]
    assert all(isinstance(i, str) and i for i in dev["identifiers"])
    for key in ("name", "model", "manufacturer"):
        assert isinstance(dev.get(key), str) and dev[key], f"{topic}: device.{key}"
    if "sw_version" in dev:
        assert isinstance(dev["sw_version"], str)
    if "configuration_url" in dev:
        assert dev["configuration_url"].startswith(("http://", "https://"))
    # origin: name required, sw_version / support_url optional.
    if "origin" in conf:
        assert isinstance(conf["origin"].get("name"), str) and conf["origin"]["name"]
        assert set(conf["origin"]) <= {"name", "sw_version", "support_url"}
    # availability: a list; must not be combined with availability_topic.
    if "availability" in conf:
        assert "availability_topic" not in conf
        assert isinstance(conf["availability"], list) and conf["availability"]
        for item in conf["availability"]:
            assert set(item) <= AVAILABILITY_ITEM_KEYS and valid_topic(item["topic"]), item
        assert conf.get("availability_mode", "latest") in AVAILABILITY_MODES
    if "device_class" in conf:
        assert conf["device_class"] in spec["device_classes"], f"{topic}: device_class {conf['device_class']}"
    if component == "sensor" and conf.get("device_class"):
        assert conf.get("unit_of_measurement") in SENSOR_CLASS_UNITS[conf["device_class"]], topic
    if "state_class" in conf:
        assert conf["state_class"] in STATE_CLASSES
        assert conf.get("device_class") != "timestamp", "a timestamp sensor has no state_class"
    if "entity_category" in conf:
        assert conf["entity_category"] in ENTITY_CATEGORIES
    if "qos" in conf:
        assert conf["qos"] in (0, 1, 2)
    for key, value in conf.items():
        if key.endswith("_topic"):
            assert valid_topic(value), f"{topic}: {key}={value!r}"
    if component == "image":
        assert ("image_topic" in conf) != ("url_topic" in conf), "exactly one of image_topic / url_topic"
        if "url_topic" in conf:
            assert "content_type" not in conf
        else:
            assert conf.get("content_type", "image/jpeg") == "image/jpeg"
    if component in ("button", "update"):
        assert conf.get("retain", False) is False, "a press must not be retained (it would re-fire)"
    return component, conf


# The shared fixtures (tests/support/ha_gateway.py).
cfg, port, mirror, bridge = has.cfg, has.port, has.mirror, has.bridge


# --- pure payload tests -----------------------------------------------------------------------------------------------


def test_every_discovery_payload_follows_home_assistant_docs(cfg):
    port = memory_port(Path("/nonexistent"))
    mains = port.add_device("front-door", name="Front door")
    battery = port.add_device("gate-2", battery_mv=3910, fw="0.2.1")
    seen_ids: set[str] = set()
    seen_topics: set[str] = set()
    gw = d.gateway_entities(cfg)
    for ent in gw:
        component, conf = check_discovery(ent.topic(cfg), ent.payload(), cfg)
        assert conf["device"]["identifiers"] == [d.gateway_identifier(cfg)]
        seen_ids.add(conf["unique_id"])
    for rec, expect_battery in ((mains, False), (battery, True)):
        ents = d.box_entities(cfg, rec)
        keys = {(e.object_id, e.component) for e in ents}
        expected = {k for k in d.BOX_ENTITY_KEYS if expect_battery or k[0] != "battery"}
        assert keys == expected
        assert set(d.box_config_topics(cfg, rec["device"])) >= {e.topic(cfg) for e in ents}
        by_key = {}
        for ent in ents:
            topic = ent.topic(cfg)
            component, conf = check_discovery(topic, ent.payload(), cfg)
            assert conf["unique_id"] not in seen_ids and topic not in seen_topics
            seen_ids.add(conf["unique_id"])
            seen_topics.add(topic)
            by_key[ent.object_id] = conf
            dev = conf["device"]
            # One device per box, linked to the gateway's device by a real identifier.
            assert dev["identifiers"] == [d.box_identifier(cfg, rec["device"])]
            assert dev["model"] == "parcelbox ESP32-CAM"
            assert dev["via_device"] == d.gateway_identifier(cfg)
            assert dev["sw_version"] == rec["fw"]
            assert dev["name"] == rec["name"]
        both = [d.availability_topic(cfg, rec["device"]), d.gateway_availability_topic(cfg)]
        for key in ("lid", "package", "waiting", "last_delivery", "rssi", "snapshot"):
            assert [a["topic"] for a in by_key[key]["availability"]] == both
            assert by_key[key]["availability_mode"] == "all"
        assert [a["topic"] for a in by_key["online"]["availability"]] == [d.gateway_availability_topic(cfg)]
        assert by_key["online"]["device_class"] == "connectivity"
        assert by_key["lid"]["device_class"] == "opening"
        assert by_key["package"]["device_class"] == "occupancy"
        assert by_key["last_delivery"]["device_class"] == "timestamp"
        assert by_key["rssi"]["device_class"] == "signal_strength"
        assert by_key["rssi"]["unit_of_measurement"] == "dBm"
        assert by_key["rssi"]["entity_category"] == "diagnostic"
        assert by_key["waiting"]["name"] == "Deliveries waiting"
        assert by_key["snapshot"]["command_topic"] == d.press_topic(cfg, rec["device"])
        assert by_key["snapshot"]["name"] == "Take snapshot"
        for kind in ("delivery", "snapshot"):
            conf = by_key[f"{kind}_photo"]
            assert conf["image_topic"] == d.image_topic(cfg, rec["device"], kind)
            assert conf["content_type"] == "image/jpeg"
        fw = by_key["firmware"]
        assert fw["state_topic"] == d.update_topic(cfg, rec["device"])
        assert fw["command_topic"] == d.install_topic(cfg, rec["device"])
        assert fw["payload_install"] == "INSTALL" and fw["retain"] is False
        assert fw["device_class"] == "firmware" and fw["name"] == "Firmware"
        # An asleep box takes an offer at its next wake: the entity follows the gateway only.
        assert [a["topic"] for a in fw["availability"]] == [d.gateway_availability_topic(cfg)]
        if expect_battery:
            assert by_key["battery"]["device_class"] == "voltage"
            assert by_key["battery"]["unit_of_measurement"] == "V"
        for key in ("online", "lid", "package", "waiting", "last_delivery", "rssi"):
            assert by_key[key]["state_topic"] == d.state_topic(cfg, rec["device"])


def test_state_payload_renders_every_entity(cfg):
    rec = {
        "device": "box-1",
        "online": True,
        "waiting": 2,
        "lid_open": None,
        "last_delivery_ts": 1_700_000_000.5,
        "battery_mv": 3912,
        "rssi": -70,
        "fw": "0.1.0",
    }
    st = json.loads(d.state_payload(rec))
    assert st == {
        "online": True,
        "lid_open": None,
        "package": True,
        "waiting": 2,
        "last_delivery": "2023-11-14T22:13:20+00:00",
        "battery_v": 3.912,
        "rssi": -70,
        "fw": "0.1.0",
    }
    # timestamp device class: ISO 8601 with a timezone.
    assert datetime.fromisoformat(st["last_delivery"]).utcoffset() is not None
    empty = json.loads(d.state_payload({"device": "box-1", "online": False, "waiting": -3}))
    assert empty["package"] is False and empty["waiting"] == 0 and empty["last_delivery"] is None
    assert empty["battery_v"] is None and empty["lid_open"] is None
    assert d.availability_payload(rec) == b"online" and d.availability_payload(empty) == b"offline"
    # Every value_template reads a key the state JSON has.
    for ent in d.box_entities(cfg, rec):
        tpl = ent.config.get("value_template")
        if tpl:
            for key in re.findall(r"value_json\.(\w+)", tpl):
                assert key in st, (ent.object_id, key)


@pytest.mark.parametrize(
    "rec",
    [
        {"device": "b", "online": True, "waiting": 2, "lid_open": True, "last_delivery_ts": 1.7e9,
         "battery_mv": 3912, "rssi": -70},
        {"device": "b", "online": False, "waiting": 0, "lid_open": None, "last_delivery_ts": None,
         "battery_mv": None, "rssi": None},
    ],
)  # fmt: skip
def test_value_templates_render_what_home_assistant_accepts(cfg, rec):
    """Home Assistant renders value_template with Jinja (sandboxed), `value_json` being the parsed payload.
    binary_sensor.mqtt: the result must be payload_on ("ON"), payload_off ("OFF") or "None" (unknown);
    sensor.mqtt: a number for a measurement, ISO 8601 with a timezone for a timestamp, or "None"."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment()
    payload = d.state_payload(rec)
    st = json.loads(payload)
    for ent in d.box_entities(cfg, rec, with_battery=True):
        tpl = ent.config.get("value_template")
        if tpl is None:
            continue
        out = env.from_string(tpl).render(value_json=st, value=payload.decode()).strip()
        key = re.findall(r"value_json\.(\w+)", tpl)[0]
        if ent.component == "binary_sensor":
            expected = "None" if st[key] is None else ("ON" if st[key] else "OFF")
            assert out == expected, (ent.object_id, out)
            assert out in (ent.config.get("payload_on", "ON"), ent.config.get("payload_off", "OFF"), "None")
        elif st[key] is None:
            assert out == "None", (ent.object_id, out)
        elif ent.config.get("device_class") == "timestamp":
            assert datetime.fromisoformat(out).utcoffset() is not None
        else:
            assert float(out) == st[key], (ent.object_id, out)


def test_config_is_validated():
    with pytest.raises(ValueError):
        HAConfig(prefix="home/#")
    with pytest.raises(ValueError):
        HAConfig(gateway_id="Has_Underscore")
    with pytest.raises(ValueError):
        HAConfig.from_mapping({"enabled": True, "prefx": "x"})
    c = HAConfig.from_mapping({"prefix": "ha", "gateway_id": "shed"}, protocol_prefix="pb")
    assert c.birth_topic == "ha/status" and c.base == "pb/_ha" and c.gateway_id == "shed"
    with pytest.raises(ValueError):
        d.box_entities(c, {"device": "../x"})
    assert d.device_from_press_topic(c, "pb/_ha/box/front/snapshot/press") == "front"
    assert d.device_from_press_topic(c, "pb/_ha/box/Bad_Id/snapshot/press") is None
    assert d.device_from_press_topic(c, "pb/_ha/box/a/b/snapshot/press") is None


def test_state_topics_never_overlap_the_box_protocol(cfg):
    """A box may only use <prefix>/<device>/...; '_' is not allowed in device ids, and no topic the bridge
    writes matches the gateway's ingest subscriptions."""
    from gateway.protocol import subscriptions

    topics = [d.gateway_availability_topic(cfg), d.press_subscription(cfg).replace("+", "photo")]
    for device in ("photo", "cmd", "status", "gateway", "box"):
        topics += d.retained_box_topics(cfg, device) + [d.press_topic(cfg, device)]
    for t in topics:
        for sub in subscriptions(cfg.protocol_prefix):
            assert not mqtt.topic_matches_sub(sub, t), (sub, t)


def test_shrink_jpeg_makes_a_small_copy(tmp_path):
    make_jpeg(tmp_path / "big.jpg", (2000, 1500), "big")
    data = (tmp_path / "big.jpg").read_bytes()
    out = shrink_jpeg(data, 640)
    with Image.open(io.BytesIO(out)) as im:
        assert im.format == "JPEG" and max(im.size) == 640
    with pytest.raises(ValueError):
        shrink_jpeg(b"not a jpeg", 640)


# --- against a real Mosquitto -----------------------------------------------------------------------------------------


def test_bridge_announces_gateway_and_boxes(mosquitto, port, cfg, mirror, bridge):
    port.add_device("front-door", name="Front door")
    port.add_device("gate-2", battery_mv=3910, rssi=-80)
    bridge.start()
    mirror.wait(
        lambda: all_configs_present(mirror, cfg, {"front-door": False, "gate-2": True}), what="configs"
    )
    assert bridge.wait_idle()
    configs = {
        t: m for t, m in mirror.latest.items() if t.startswith(cfg.prefix + "/") and t.endswith("/config")
    }
    assert len(configs) == len(d.gateway_entities(cfg)) + 10 + 11 == 3 + 10 + 11
    for topic, msg in configs.items():
        check_discovery(topic, msg.payload, cfg)
    # Every discovery message was published retained (so Home Assistant finds them after a restart).
    fresh = Mirror(mosquitto.url, f"{cfg.prefix}/#")
    try:
        fresh.wait(lambda: set(fresh.latest) >= set(configs), what="retained configs")
        assert all(m.retain for m in fresh.latest.values())
    finally:
        fresh.close()
    gw_avail = d.gateway_availability_topic(cfg)
    mirror.wait(lambda: mirror.payload(gw_avail) == b"online", what="gateway online")
    mirror.wait(
        lambda: mirror.payload(d.availability_topic(cfg, "front-door")) == b"online", what="box online"
    )
    mirror.wait(lambda: d.state_topic(cfg, "gate-2") in mirror.latest, what="state")
    st = mirror.json(d.state_topic(cfg, "gate-2"))
    assert st["battery_v"] == 3.91 and st["rssi"] == -80 and st["waiting"] == 0 and st["package"] is False
    # via_device points at an identifier that exists: the gateway's own announced device.
    gw_conf = json.loads(mirror.payload(d.gateway_entities(cfg)[0].topic(cfg)))
    box_conf = json.loads(
        mirror.payload(d.config_topic(cfg, "sensor", d.box_identifier(cfg, "gate-2"), "waiting"))
    )
    assert box_conf["device"]["via_device"] in gw_conf["device"]["identifiers"]
    # The gateway's status entity reads the topic its last will writes.
    assert gw_conf["state_topic"] == gw_avail and gw_conf["payload_on"] == "online"


def test_delivery_pickup_and_snapshot(mosquitto, port, cfg, mirror, bridge):
    port.add_device("front-door")
    bridge.start()
    st_topic = d.state_topic(cfg, "front-door")
    img_delivery = d.image_topic(cfg, "front-door", "delivery")
    img_snapshot = d.image_topic(cfg, "front-door", "snapshot")
    mirror.wait(lambda: mirror.json(st_topic)["waiting"] == 0, what="initial state")
    assert img_delivery not in mirror.latest  # no delivery yet: no image

    # Delivery: the lid opens, closes, a parcel is in.
    port.update("front-door", lid_open=True)
    mirror.wait(lambda: mirror.json(st_topic)["lid_open"] is True, what="lid open")
    port.update("front-door", lid_open=False)
    ev1 = port.add_event("front-door", "delivery")
    mirror.wait(lambda: mirror.json(st_topic)["waiting"] == 1, what="one waiting")
    st = mirror.json(st_topic)
    assert st["package"] is True and st["lid_open"] is False
    assert datetime.fromisoformat(st["last_delivery"]).timestamp() == pytest.approx(ev1["ts"], abs=1)
    alert1 = port.photo_path("front-door", ev1["id"], "alert").read_bytes()
    mirror.wait(lambda: mirror.payload(img_delivery) == alert1, what="delivery image")
    data = mirror.payload(img_delivery)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.format == "JPEG" and max(im.size) <= 1280
    assert len(data) <= len(alert1) < ev1["photo"]["size"]

    # A second delivery replaces the image and counts up.
    ev2 = port.add_event("front-door", "delivery")
    alert2 = port.photo_path("front-door", ev2["id"], "alert").read_bytes()
    mirror.wait(lambda: mirror.json(st_topic)["waiting"] == 2, what="two waiting")
    mirror.wait(lambda: mirror.payload(img_delivery) == alert2, what="second delivery image")

    # Pickup: count back to zero, occupancy off; the last delivery photo stays.
    port.add_event("front-door", "pickup", photo=False)
    mirror.wait(lambda: mirror.json(st_topic)["waiting"] == 0, what="picked up")
    assert mirror.json(st_topic)["package"] is False
    assert mirror.payload(img_delivery) == alert2

    # Home Assistant presses "Take snapshot": the gateway sends the command to the box.
    ha = client(mosquitto.url)
    try:
        ha.publish(d.press_topic(cfg, "front-door"), "PRESS", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while not port.commands and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [c[1:] for c in port.commands] == [("front-door", "snapshot", None)]
    finally:
        ha.disconnect()
        ha.loop_stop()
    snap = port.add_event("front-door", "snapshot", cmd=port.commands[0][0])
    alert_snap = port.photo_path("front-door", snap["id"], "alert").read_bytes()
    mirror.wait(lambda: mirror.payload(img_snapshot) == alert_snap, what="snapshot image")
    assert mirror.payload(img_delivery) == alert2  # the snapshot does not replace the delivery photo

    # What a restarted Home Assistant would read: retained images and state.
    assert bridge.wait_idle()
    fresh = Mirror(mosquitto.url, f"{cfg.base}/#")
    try:
        fresh.wait(lambda: {img_delivery, img_snapshot, st_topic} <= set(fresh.latest), what="retained")
        assert fresh.payload(img_delivery) == alert2 and fresh.latest[img_delivery].retain
        assert fresh.payload(img_snapshot) == alert_snap
        assert fresh.json(st_topic)["waiting"] == 0
    finally:
        fresh.close()
    h = bridge.health()
    assert h["presses.sent"] == 1 and h["images.delivery"] == 2 and h["images.snapshot"] == 1


def test_image_falls_back_to_a_small_copy_of_the_original(mosquitto, port, cfg, mirror, bridge):
    port.add_device("box-1")
    bridge.start()
    assert bridge.wait_idle()
    ev = port.add_event("box-1", "delivery", alert=False)  # the pipeline kept no alert copy
    assert port.photo_path("box-1", ev["id"], "alert") is None
    original = port.photo_path("box-1", ev["id"], "original").read_bytes()
    topic = d.image_topic(cfg, "box-1", "delivery")
    mirror.wait(lambda: topic in mirror.latest, what="fallback image")
    data = mirror.payload(topic)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and max(im.size) <= cfg.image_max_px
    assert len(data) < len(original)


def test_button_presses_are_checked(mosquitto, port, cfg, bridge):
    port.add_device("box-1")
    bridge.start()
    assert bridge.wait_idle()
    ha = client(mosquitto.url)
    try:

        def handled() -> int:
            h = bridge.health()
            return sum(v for k, v in h.items() if k.startswith(("presses.", "press_rejected.")))

        def press(topic: str, payload: str = "PRESS") -> None:
            before = handled()
            ha.publish(topic, payload, qos=1).wait_for_publish(5)
            deadline = time.monotonic() + 10
            while handled() == before and time.monotonic() < deadline:
                time.sleep(0.01)
            assert handled() == before + 1

        press(d.press_topic(cfg, "box-1"), "HACK")  # not the button's payload
        press(d.press_topic(cfg, "nobody"))  # not a known box
        press(d.press_topic(cfg, "box-1"))  # sent
        press(d.press_topic(cfg, "box-1"))  # too soon after the previous one: the snapshot is on its way
        press(f"{cfg.base}/box/Bad_Id/snapshot/press")  # not a valid box id
    finally:
        ha.disconnect()
        ha.loop_stop()
    assert [c[1:] for c in port.commands] == [("box-1", "snapshot", None)]
    h = bridge.health()
    assert h["press_rejected.bad_payload"] == 1
    assert h["press_rejected.unknown_device"] == 1
    assert h["press_rejected.too_soon"] == 1
    assert h["press_rejected.bad_topic"] == 1
    assert h["presses.sent"] == 1


def test_home_assistant_birth_republishes_discovery(mosquitto, port, cfg, mirror, bridge):
    port.add_device("box-1")
    bridge.start()
    mirror.wait(lambda: all_configs_present(mirror, cfg, {"box-1": False}), what="configs")
    assert bridge.wait_idle()
    mirror.latest.clear()
    ha = client(mosquitto.url)
    try:
        ha.publish(cfg.birth_topic, "offline", qos=1).wait_for_publish(5)  # HA's last will: nothing to do
        time.sleep(0.2)
        assert bridge.wait_idle()
        assert not [t for t in mirror.latest if t.endswith("/config")]
        ha.publish(cfg.birth_topic, "online", qos=1).wait_for_publish(5)  # HA's birth message
    finally:
        ha.disconnect()
        ha.loop_stop()
    mirror.wait(lambda: all_configs_present(mirror, cfg, {"box-1": False}), what="configs again")
    mirror.wait(lambda: d.state_topic(cfg, "box-1") in mirror.latest, what="state again")
    for t, m in mirror.latest.items():
        if t.endswith("/config"):
            check_discovery(t, m.payload, cfg)


def test_offline_box_and_battery_appearing(mosquitto, port, cfg, mirror, bridge):
    port.add_device("box-1")
    bridge.start()
    avail = d.availability_topic(cfg, "box-1")
    battery_cfg = d.config_topic(cfg, "sensor", d.box_identifier(cfg, "box-1"), "battery")
    mirror.wait(lambda: mirror.payload(avail) == b"online", what="online")
    assert battery_cfg not in mirror.latest  # mains powered: no battery entity
    port.update("box-1", online=False)
    mirror.wait(lambda: mirror.payload(avail) == b"offline", what="offline")
    mirror.wait(lambda: mirror.json(d.state_topic(cfg, "box-1"))["online"] is False, what="state offline")
    port.update("box-1", online=True, battery_mv=3700)
    mirror.wait(lambda: mirror.payload(avail) == b"online", what="online again")
    mirror.wait(lambda: battery_cfg in mirror.latest, what="battery entity")
    check_discovery(battery_cfg, mirror.payload(battery_cfg), cfg)
    mirror.wait(lambda: mirror.json(d.state_topic(cfg, "box-1"))["battery_v"] == 3.7, what="battery state")
    # A later status without a battery reading keeps the entity (state unknown), not a flapping config.
    n_before = sum(1 for m in mirror.log if m.topic == battery_cfg)
    port.update("box-1", battery_mv=None)
    mirror.wait(lambda: mirror.json(d.state_topic(cfg, "box-1"))["battery_v"] is None, what="battery unknown")
    assert bridge.wait_idle()
    assert sum(1 for m in mirror.log if m.topic == battery_cfg) == n_before
    assert mirror.payload(battery_cfg)  # not cleared


def test_unchanged_status_is_not_republished(mosquitto, port, cfg, mirror, bridge):
    port.add_device("box-1")
    bridge.start()
    mirror.wait(lambda: all_configs_present(mirror, cfg, {"box-1": False}), what="configs")
    assert bridge.wait_idle()
    published = bridge.health()["published"]
    for _ in range(50):
        port.update("box-1", last_seen=time.time())  # status heartbeats that change nothing HA shows
    assert bridge.wait_idle()
    assert bridge.health()["published"] == published


def test_stop_when_the_connection_drops_at_that_moment_still_stops_paho(
    mosquitto, port, cfg, mirror, monkeypatch
):
    """Old stop(): a connection lost between `is_connected()` and the "offline" publish made paho's
    wait_for_publish raise ("Message publish failed: The client is not currently connected"); stop()
    raised before disconnect/loop_stop, and paho's thread went on reconnecting and logging past the test
    (the "Logging error ... I/O operation on closed file" tracebacks at the end of test runs)."""
    gw_avail = d.gateway_availability_topic(cfg)
    b = HomeAssistantBridge(port, mosquitto.url, cfg)
    b.start()
    mirror.wait(lambda: mirror.payload(gw_avail) == b"online", what="online")
    client = b._client

    def publish_after_the_drop(*_a, **_kw):  # what paho returns once the socket is gone
        info = mqtt.MQTTMessageInfo(1)
        info.rc = mqtt.MQTT_ERR_NO_CONN
        return info

    monkeypatch.setattr(client, "publish", publish_after_the_drop)
    b.stop()
    assert client._thread is None  # paho's network loop is stopped
    assert not [
        t for t in threading.enumerate() if t.name == f"paho-mqtt-client-{client._client_id.decode()}"
    ]


def test_stop_and_crash_mark_the_gateway_offline(mosquitto, port, cfg, mirror, tmp_path):
    gw_avail = d.gateway_availability_topic(cfg)
    b = HomeAssistantBridge(port, mosquitto.url, cfg)
    port.add_device("box-1")
    b.start()
    mirror.wait(lambda: mirror.payload(gw_avail) == b"online", what="online")
    b.stop()
    mirror.wait(lambda: mirror.payload(gw_avail) == b"offline", what="offline after stop")

    # A crashed gateway process: the broker publishes the bridge's last will.
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from tests.support.ha_gateway import memory_port
        from gateway.homeassistant import HAConfig, HomeAssistantBridge
        port = memory_port(Path({str(tmp_path / "child")!r}))
        port.add_device("box-1")
        cfg = HAConfig(prefix={cfg.prefix!r}, protocol_prefix={cfg.protocol_prefix!r}, gateway_id="gw-test")
        b = HomeAssistantBridge(port, {mosquitto.url!r}, cfg)
        b.start()
        assert b.wait_idle(20)
        print("ready", flush=True)
        time.sleep(120)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "ready", child.stderr.read() if child.poll() is not None else line
        mirror.wait(lambda: mirror.payload(gw_avail) == b"online", what="child online")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        mirror.wait(lambda: mirror.payload(gw_avail) == b"offline", what="last will")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    fresh = Mirror(mosquitto.url, gw_avail)
    try:
        fresh.wait(lambda: fresh.payload(gw_avail) == b"offline", what="retained offline")
        assert fresh.latest[gw_avail].retain
    finally:
        fresh.close()


def test_removing_a_box_clears_it_from_home_assistant(mosquitto, port, cfg, mirror, bridge):
    port.add_device("box-1", battery_mv=3900)
    port.add_device("box-2")
    bridge.start()
    mirror.wait(lambda: all_configs_present(mirror, cfg, {"box-1": True, "box-2": False}), what="configs")
    port.add_event("box-1", "delivery")
    port.add_event("box-1", "snapshot")
    mirror.wait(
        lambda: (
            d.image_topic(cfg, "box-1", "snapshot") in mirror.latest
            and d.image_topic(cfg, "box-1", "delivery") in mirror.latest
        ),
        what="images",
    )
    assert bridge.wait_idle()

    # `parcelbox device remove box-1` (another process): clear over its own connection.
    with port._lock:
        del port.devices["box-1"]
    n = clear_device(mosquitto.url, "box-1", cfg)
    assert n == len(d.box_config_topics(cfg, "box-1")) + len(d.retained_box_topics(cfg, "box-1"))
    node = d.box_identifier(cfg, "box-1")
    fresh = Mirror(mosquitto.url, f"{cfg.prefix.split('/')[0]}/#")
    try:
        fresh.wait(lambda: all_configs_present(fresh, cfg, {"box-2": False}), what="box-2 still there")
        time.sleep(0.3)
        fresh._drain(0.2)
        left = [t for t in fresh.latest if f"/{node}/" in t or "/box/box-1/" in t]
        assert left == [], f"retained topics of a removed box: {left}"
    finally:
        fresh.close()

    # The running bridge learns it too (bus), and never brings it back on a resync.
    port.bus.publish(DEVICE_REMOVED, {"device": "box-1"})
    publish_birth(mosquitto.url, cfg)  # Home Assistant (re)starts
    time.sleep(0.3)
    assert bridge.wait_idle()
    fresh = Mirror(mosquitto.url, f"{cfg.prefix.split('/')[0]}/#")
    try:
        fresh.wait(lambda: all_configs_present(fresh, cfg, {"box-2": False}), what="box-2 still there")
        fresh._drain(0.3)
        assert not [t for t in fresh.latest if f"/{node}/" in t or "/box/box-1/" in t]
    finally:
        fresh.close()


def test_box_gone_from_the_gateway_is_cleared_on_resync(mosquitto, port, cfg, mirror, bridge):
    port.add_device("box-1")
    port.add_device("box-2")
    bridge.start()
    mirror.wait(lambda: all_configs_present(mirror, cfg, {"box-1": False, "box-2": False}), what="configs")
    assert bridge.wait_idle()
    with port._lock:
        del port.devices["box-2"]
    publish_birth(mosquitto.url, cfg)  # Home Assistant (re)starts
    t = d.config_topic(cfg, "button", d.box_identifier(cfg, "box-2"), "snapshot")
    mirror.wait(lambda: mirror.payload(t) == b"", what="box-2 cleared")
    assert bridge.health()["removed"] == 1


def test_broker_losing_its_retained_messages_gets_everything_again(mosquitto, port, cfg, bridge):
    port.add_device("box-1")
    port.add_event("box-1", "delivery")
    bridge.start()
    assert bridge.wait_idle()
    mosquitto.kill()
    (mosquitto.data_dir / "mosquitto.db").unlink(missing_ok=True)  # a broker without its persistence
    mosquitto.start()
    m = Mirror(mosquitto.url, f"{cfg.prefix.split('/')[0]}/#")
    try:
        m.wait(
            lambda: all_configs_present(m, cfg, {"box-1": False}), timeout=40, what="configs after restart"
        )
        img = d.image_topic(cfg, "box-1", "delivery")
        m.wait(lambda: img in m.latest, timeout=20, what="image after restart")
        ev = port.list_events(device="box-1", type="delivery")[0]
        assert m.payload(img) == port.photo_path("box-1", ev["id"], "alert").read_bytes()
        assert m.payload(d.gateway_availability_topic(cfg)) == b"online"
    finally:
        m.close()


def test_bad_bus_input_and_a_failing_gateway_never_stop_the_bridge(mosquitto, port, cfg, mirror, bridge):
    port.add_device("box-1")
    bridge.start()
    mirror.wait(lambda: all_configs_present(mirror, cfg, {"box-1": False}), what="configs")
    assert bridge.wait_idle()
    port.bus.publish(DEVICE_CHANGED, {"device": "../etc"})
    port.bus.publish(DEVICE_CHANGED, {"nothing": 1})
    port.bus.publish(EVENT_STORED, {"device": "box-1", "id": "../../x", "type": "delivery", "photo": {}})
    port.bus.publish(
        EVENT_STORED, {"device": "ghost", "id": "abcdefgh-000001", "type": "delivery", "photo": {}}
    )
    assert bridge.wait_idle()
    assert bridge.health()["skipped.unknown_device"] == 1
    # The gateway's store fails twice while a resync is due: the bridge backs off and retries.
    port.fail_list_devices = 2
    publish_birth(mosquitto.url, cfg)  # Home Assistant (re)starts
    deadline = time.monotonic() + 20
    while bridge.health().get("errors", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    port.update("box-1", waiting=3)
    mirror.wait(
        lambda: mirror.json(d.state_topic(cfg, "box-1"))["waiting"] == 3, timeout=30, what="recovered"
    )
    h = bridge.health()
    assert h["bus_rejected.bad_device"] == 2
    assert h["bus_rejected.bad_event"] == 1
    assert h["errors"] == 2
    assert h["connected"] is True


def test_device_remove_in_the_registry_clears_and_keeps_the_box_out(mosquitto, port, cfg, mirror):
    port.add_device("box-1")
    port.add_device("box-2")
    registry = FakeRegistry({"box-1", "box-2"})
    bridge = HomeAssistantBridge(port, mosquitto.url, cfg, registry=registry)
    bridge.start()
    try:
        mirror.wait(
            lambda: all_configs_present(mirror, cfg, {"box-1": False, "box-2": False}), what="configs"
        )
        button = d.config_topic(cfg, "button", d.box_identifier(cfg, "box-2"), "snapshot")
        # parcelbox device remove box-2 (the store still has its history): the service publishes it.
        registry.set({"box-1"})
        port.bus.publish(DEVICE_REMOVED, {"device": "box-2", "registered": ["box-1"]})
        mirror.wait(lambda: mirror.payload(button) == b"", what="box-2 cleared")
        mirror.wait(lambda: mirror.payload(d.state_topic(cfg, "box-2")) == b"", what="box-2 state cleared")
        # Neither Home Assistant coming back nor a late status from the box brings it back.
        port.update("box-2", rssi=-50)
        publish_birth(mosquitto.url, cfg)  # Home Assistant (re)starts
        time.sleep(0.3)
        assert bridge.wait_idle()
        mirror._drain(0.3)
        assert mirror.payload(button) == b""
        assert all_configs_present(mirror, cfg, {"box-1": False})
        # Registered again: announced again.
        registry.set({"box-1", "box-2"})
        port.bus.publish(DEVICE_REGISTERED, {"device": "box-2", "registered": ["box-1", "box-2"]})
        mirror.wait(lambda: mirror.payload(button) != b"", what="box-2 back")
        check_discovery(button, mirror.payload(button), cfg)
    finally:
        bridge.stop()


def test_box_removed_while_the_gateway_was_down_is_cleared_at_start(mosquitto, port, cfg, mirror, tmp_path):
    port.add_device("box-1")
    port.add_device("box-2")
    registry = FakeRegistry({"box-1", "box-2"})
    state = tmp_path / "data" / "homeassistant.json"
    first = HomeAssistantBridge(port, mosquitto.url, cfg, registry=registry, state_path=state)
    first.start()
    try:
        mirror.wait(
            lambda: all_configs_present(mirror, cfg, {"box-1": False, "box-2": False}), what="configs"
        )
        assert first.wait_idle()
    finally:
        first.stop()
    assert json.loads(state.read_bytes())["registered"] == ["box-1", "box-2"]
    registry.set({"box-1"})  # `parcelbox device remove box-2` while the gateway is stopped
    second = HomeAssistantBridge(port, mosquitto.url, cfg, registry=registry, state_path=state)
    second.start()
    try:
        button = d.config_topic(cfg, "button", d.box_identifier(cfg, "box-2"), "snapshot")
        mirror.wait(lambda: mirror.payload(button) == b"", what="box-2 cleared at start")
        assert second.wait_idle()
        mirror._drain(0.3)
        assert mirror.payload(button) == b""
        assert mirror.payload(d.gateway_availability_topic(cfg)) == b"online"
        # Home Assistant's birth has not been seen: the removal is repeated until it is (item 12).
        assert json.loads(state.read_bytes()) == {
            "v": 1, "registered": ["box-1"], "removed": ["box-2"], "unconfirmed_removals": ["box-2"]
        }  # fmt: skip
    finally:
        second.stop()
    # A damaged state file is reported and ignored, never fatal.
    state.write_bytes(b"{not json")
    third = HomeAssistantBridge(port, mosquitto.url, cfg, registry=registry, state_path=state)
    third.start()
    try:
        assert third.wait_idle()
        assert third.health()["state_file_errors"] == 1
    finally:
        third.stop()


def test_unreadable_registry_does_not_stop_the_bridge(mosquitto, port, cfg, mirror):
    class Flaky(FakeRegistry):
        broken = True

        def list(self) -> list[Any]:
            if self.broken:
                raise ValueError("devices.json is half-written")
            return super().list()

    port.add_device("box-1")
    port.add_device("box-2")
    registry = Flaky({"box-1", "box-2"})
    bridge = HomeAssistantBridge(port, mosquitto.url, cfg, registry=registry)
    bridge.start()
    try:
        mirror.wait(
            lambda: all_configs_present(mirror, cfg, {"box-1": False, "box-2": False}), what="configs"
        )
        assert bridge.health()["registry_errors"] >= 1
        registry.broken = False
        deadline = time.monotonic() + 10
        while bridge._roster.registered is None and time.monotonic() < deadline:
            time.sleep(0.05)
        registry.set({"box-1"})
        port.bus.publish(DEVICE_REMOVED, {"device": "box-2", "registered": ["box-1"]})
        button = d.config_topic(cfg, "button", d.box_identifier(cfg, "box-2"), "snapshot")
        mirror.wait(lambda: mirror.payload(button) == b"", what="box-2 cleared once readable")
    finally:
        bridge.stop()


def test_whatsapp_linked_sensor_follows_the_whatsapp_state(mosquitto, port, cfg, mirror, bridge):
    """Issue 16 (session loss): Home Assistant gets a "WhatsApp linked" binary sensor, so an automation
    can reach the owner another way when WhatsApp alerts stop."""
    from gateway.bus import WHATSAPP_STATE

    bridge.start()
    mirror.wait(lambda: mirror.payload(d.gateway_availability_topic(cfg)) == b"online", what="gateway online")
    assert bridge.wait_idle()
    ent = d.whatsapp_entity(cfg)
    assert ent.topic(cfg) not in mirror.latest  # WhatsApp not enabled: no entity
    port.bus.publish(WHATSAPP_STATE, {"state": "connected", "detail": "Linked as +628"})
    mirror.wait(lambda: mirror.payload(d.whatsapp_topic(cfg)) == b"ON", what="WhatsApp linked ON")
    component, conf = check_discovery(ent.topic(cfg), mirror.payload(ent.topic(cfg)), cfg)
    assert component == "binary_sensor" and conf["device"]["identifiers"] == [d.gateway_identifier(cfg)]
    assert conf["state_topic"] == d.whatsapp_topic(cfg) and conf["device_class"] == "connectivity"
    port.bus.publish(WHATSAPP_STATE, {"state": "not_paired", "detail": "Logged out by WhatsApp"})
    mirror.wait(lambda: mirror.payload(d.whatsapp_topic(cfg)) == b"OFF", what="WhatsApp linked OFF")
    port.bus.publish(WHATSAPP_STATE, "garbage")  # hostile bus input is counted, never raised
    assert bridge.wait_idle() and bridge.counters["bus_rejected.bad_whatsapp"] == 1


def test_storage_problem_reaches_home_assistant(mosquitto, port, cfg, mirror, bridge):
    """The gateway's storage state (STORAGE_STATE on the bus) becomes a retained state that the
    gateway device's "Storage" problem sensor and "Disk free" sensor read (issue 14)."""
    from gateway.bus import STORAGE_STATE

    bridge.start()
    topic = d.gateway_storage_topic(cfg)
    port.bus.publish(STORAGE_STATE, {"ok": True, "problems": [], "free_mb": 5000, "free_percent": 61.0})
    mirror.wait(lambda: mirror.payload(topic) is not None, what="storage state")
    assert mirror.json(topic) == {"ok": True, "problems": [], "free_mb": 5000, "free_percent": 61.0}
    full = ["disk almost full: 80 MB free of 8000 MB (warning below 500 MB); set store.retention_days"]
    port.bus.publish(STORAGE_STATE, {"ok": False, "problems": full, "free_mb": 80, "free_percent": 1.0})
    mirror.wait(lambda: mirror.json(topic)["ok"] is False, what="the problem")
    assert mirror.json(topic)["problems"] == full
    fresh = Mirror(mosquitto.url, topic)  # retained: Home Assistant sees it after its own restart
    try:
        fresh.wait(lambda: fresh.payload(topic) is not None, what="retained storage state")
        assert fresh.latest[topic].retain and json.loads(fresh.payload(topic))["ok"] is False
    finally:
        fresh.close()
    problem = json.loads(
        mirror.payload(d.config_topic(cfg, "binary_sensor", d.gateway_identifier(cfg), "storage"))
    )
    assert problem["device_class"] == "problem" and problem["state_topic"] == topic
    # Home Assistant renders value_template with Jinja; the template must map ok -> OFF, problem -> ON.
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()
    for ok, want in ((True, "OFF"), (False, "ON")):
        assert env.from_string(problem["value_template"]).render(value_json={"ok": ok}) == want
