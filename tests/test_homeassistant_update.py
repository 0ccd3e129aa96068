"""Home Assistant's firmware `update` entity per box: installed and latest version, progress, and the
install action, which becomes the same offer `parcelbox device update` makes (gateway/ota/offers.py).

The bridge runs against a real Mosquitto; Home Assistant is the stand-in written from its source
(tests/support/homeassistant.py: MQTT discovery, update.mqtt's state handling, UpdateEntity.state);
templates and states are what Home Assistant would compute. The gateway is the one in-memory port
(tests/support/web.py), whose two OTA methods are built on the same functions the service calls, with
a real `<data>/ota` folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.bus import OTA_CHANGED
from gateway.homeassistant import HAConfig
from gateway.homeassistant import discovery as d
from gateway.ota import pending
from gateway.ota.manifest import from_board_files
from tests.support import ha_gateway as has
from tests.support.homeassistant import FakeHomeAssistant
from tests.support.web import MemoryPort
from tests.test_homeassistant import check_discovery

CHECKOUT = from_board_files("0.3.0", [("/main.py", b"print('main')\n" * 40), ("/app.py", b"x = 1\n" * 900)])
OLD_SET = "ab" * 32


cfg, bridge = has.cfg, has.bridge  # the shared fixtures (tests/support/ha_gateway.py)


@pytest.fixture
def port(tmp_path: Path) -> MemoryPort:
    # port.boxes is what OtaServer.boxes holds (the boxes' reports); this checkout's firmware is 0.3.0.
    return has.memory_port(tmp_path / "photos", checkout=CHECKOUT)


@pytest.fixture
def ha(mosquitto, cfg):
    h = FakeHomeAssistant(mosquitto.url, cfg.prefix, cfg.birth_topic)
    h.start()
    yield h
    h.stop()


def uid(cfg: HAConfig, device: str) -> str:
    return f"{d.box_identifier(cfg, device)}_firmware"


def status(fw: str | None, *, available: bool | None, latest: str = "0.3.0", **update: Any) -> dict[str, Any]:
    return {
        "fw": fw,
        "latest_version": latest,
        "latest_set": CHECKOUT.set_sha,
        "update_available": available,
        "update": update or None,
    }


# --- pure -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fw", "expect"),
    [
        # (box's firmware_status, (installed, latest, in_progress, percentage)) as Home Assistant shows it
        (status("0.2.0", available=True), ("0.2.0", "0.3.0", False, None)),
        (status("0.3.0", available=False), ("0.3.0", "0.3.0", False, None)),
        # Same version string, other files (a local edit): decided by the set, so latest must differ.
        (status("0.3.0", available=True), ("0.3.0", f"0.3.0 ({CHECKOUT.set_sha[:8]})", False, None)),
        # A box from before over-the-air updates (no set): nothing Home Assistant could install.
        (status("0.1.0", available=None), ("0.1.0", "0.1.0", False, None)),
        (status("0.2.0", available=True, active=True, percent=40, state="receiving"),
         ("0.2.0", "0.3.0", True, 40)),
        (status("0.2.0", available=True, active=False, percent=100, state="failed"),
         ("0.2.0", "0.3.0", False, None)),
        (status(None, available=None), (None, None, False, None)),
    ],
)  # fmt: skip
def test_update_state_json(fw, expect):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    st = json.loads(d.update_payload(fw))
    assert (
        st["installed_version"],
        st["latest_version"],
        st["in_progress"],
        st["update_percentage"],
    ) == expect
    # No value_template: Home Assistant parses the payload itself (update.mqtt); JSON renders as is.
    assert ImmutableSandboxedEnvironment().from_string("{{ value_json.in_progress }}").render(
        value_json=st
    ) == str(expect[2])


def test_update_entity_config_follows_home_assistant_docs(cfg):
    ents = {e.object_id: e for e in d.box_entities(cfg, {"device": "box-1", "name": "Box", "fw": "0.2.0"})}
    ent = ents["firmware"]
    component, conf = check_discovery(ent.topic(cfg), ent.payload(), cfg)
    assert component == "update"
    assert conf["default_entity_id"] == "update.box_1_firmware"
    assert d.device_from_install_topic(cfg, conf["command_topic"]) == "box-1"
    assert d.device_from_install_topic(cfg, f"{cfg.base}/box/Bad_Id/update/install") is None
    assert d.update_topic(cfg, "box-1") in d.retained_box_topics(cfg, "box-1")
    ent_id = {e.object_id: e for e in d.box_entities(HAConfig(language="id"), {"device": "box-1"})}[
        "firmware"
    ]
    assert ent_id.config["unique_id"].endswith("_box_box-1_firmware")


# --- with the bridge, a real broker and the Home Assistant stand-in ----------------------------------------


def test_install_in_home_assistant_sends_the_update(mosquitto, port, cfg, bridge, ha):
    port.boxes["box-1"] = {"online": True, "fw": "0.2.0", "set": OLD_SET, "flash_free": 900_000}
    port.add_device("box-1", fw="0.2.0")
    bridge.start()
    u = uid(cfg, "box-1")
    ha.wait(
        lambda: u in ha.updates and ha.update_entity(u).get("latest_version") == "0.3.0", what="update entity"
    )
    ent = ha.update_entity(u)
    assert ent["state"] == "on" and ent["installed_version"] == "0.2.0" and ent["in_progress"] is False

    ha.install(u)
    ha.wait(lambda: ha.update_entity(u).get("in_progress") is True, what="in progress")
    offer = pending.read_offer(port.ota_root, "box-1")
    assert offer is not None and offer["set"] == CHECKOUT.set_sha and offer["from"] == "0.2.0"
    assert ha.update_entity(u)["update_percentage"] == 0
    assert bridge.health()["installs.sent"] == 1

    # The gateway serves chunks (gateway/ota/server.py writes progress.json and says OTA_CHANGED).
    total = {f.name: len(f.data) for f in CHECKOUT.files}
    prog = {"id": offer["id"], "state": "receiving", "version": "0.3.0", "total": total, "sent": {},
            "bytes": CHECKOUT.total_bytes // 2}  # fmt: skip
    pending.write_progress(port.ota_root, "box-1", prog)
    port.bus.publish(OTA_CHANGED, {"device": "box-1"})
    ha.wait(lambda: ha.update_entity(u).get("update_percentage") == 50, what="progress")

    # A second press while it is on its way is refused, not a second offer.
    ha.install(u)
    ha.wait(lambda: bridge.health().get("install_rejected.refused") == 1, what="refused")
    assert pending.read_offer(port.ota_root, "box-1")["id"] == offer["id"]

    # The box switched and reported the new set: up to date, no longer in progress.
    pending.write_progress(port.ota_root, "box-1", {**prog, "state": "done", "finished_at": 1.0})
    port.boxes["box-1"].update(fw="0.3.0", set=CHECKOUT.set_sha)
    port.bus.publish(OTA_CHANGED, {"device": "box-1"})
    ha.wait(lambda: ha.update_entity(u).get("state") == "off", what="up to date")
    assert ha.update_entity(u)["in_progress"] is False and ha.update_entity(u)["installed_version"] == "0.3.0"


def test_install_is_checked(mosquitto, port, cfg, bridge, ha):
    # Too little free flash for the set, and a box without an over-the-air firmware.
    port.boxes["small"] = {"online": True, "fw": "0.2.0", "set": OLD_SET, "flash_free": 20_000}
    port.boxes["old"] = {"online": True, "fw": "0.1.0", "set": None, "flash_free": None}
    port.add_device("small")
    port.add_device("old")
    bridge.start()
    for box in ("small", "old"):
        ha.wait(lambda box=box: uid(cfg, box) in ha.updates, what=f"{box} entity")
    ha.sync()
    assert ha.update_entity(uid(cfg, "old"))["state"] == "off"  # nothing to install over the air
    ha.install(uid(cfg, "small"))
    ha.install(uid(cfg, "old"))
    ha.wait(lambda: bridge.health().get("install_rejected.refused") == 2, what="both refused")
    assert (
        pending.read_offer(port.ota_root, "small") is None
        and pending.read_offer(port.ota_root, "old") is None
    )
    # Not Home Assistant's payload, and a box the gateway does not know.
    from tests.support.mqtt import client

    c = client(mosquitto.url)
    try:
        c.publish(d.install_topic(cfg, "small"), "HACK", qos=1).wait_for_publish(5)
        c.publish(d.install_topic(cfg, "nobody"), "INSTALL", qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()
    ha.wait(lambda: bridge.health().get("install_rejected.bad_payload") == 1, what="bad payload")
    ha.wait(lambda: bridge.health().get("install_rejected.unknown_device") == 1, what="unknown box")
    assert not (port.ota_root / "nobody").exists()
    assert "installs.sent" not in bridge.health()
