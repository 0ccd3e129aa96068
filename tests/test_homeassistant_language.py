"""Home Assistant names in English and Bahasa Indonesia (`[homeassistant] language`): only the names
change; every id an automation or Home Assistant's registry holds on to is the same in both."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.config import ConfigError, load_config
from gateway.homeassistant.discovery import (
    ENTITY_NAMES,
    HAConfig,
    box_config_topics,
    box_entities,
    gateway_entities,
    whatsapp_entity,
)

RECORDS = [
    {"device": "front-door", "name": "Pintu depan", "battery_mv": 3900, "fw": "1.2.0"},
    {"device": "gate", "name": None, "battery_mv": None},
]


def ids(language: str) -> dict[str, set]:
    cfg = HAConfig(language=language, dashboard_url="http://parcelbox.lan")
    ents = (
        gateway_entities(cfg)
        + [whatsapp_entity(cfg)]
        + [e for r in RECORDS for e in box_entities(cfg, r, with_battery=True)]
    )
    return {
        "unique_id": {e.config["unique_id"] for e in ents},
        "object_id": {(e.component, e.node_id, e.object_id) for e in ents},
        "topic": {e.topic(cfg) for e in ents},
        "default_entity_id": {e.config["default_entity_id"] for e in ents},
        "device_identifiers": {tuple(e.config["device"]["identifiers"]) for e in ents},
        "names": {e.config["name"] for e in ents},
        "device_names": {e.config["device"]["name"] for e in ents},
    }


def test_switching_language_keeps_every_id() -> None:
    en, id_ = ids("en"), ids("id")
    for key in ("unique_id", "object_id", "topic", "default_entity_id", "device_identifiers"):
        assert en[key] == id_[key], key
    assert len(en["unique_id"]) == 4 + 2 * 11  # nothing collapsed into one id
    # ...and the names did change: an Indonesian Home Assistant shows Indonesian names.
    assert {"Tutup", "Paket menunggu", "Paket terakhir", "Ambil foto", "Baterai"} <= id_["names"]
    assert not ({"Lid", "Deliveries waiting", "Take snapshot"} & id_["names"])
    assert "WhatsApp tertaut" in id_["names"]
    assert "Gateway parcelbox" in id_["device_names"] and "parcelbox gateway" in en["device_names"]
    # Box names are the owner's, never translated.
    assert {"Pintu depan", "gate"} <= id_["device_names"]


def test_entity_ids_come_from_box_id_and_english_name() -> None:
    """The ids Home Assistant made from the English names before (README's automation example)."""
    got = {
        e.object_id: e.config["default_entity_id"] for e in box_entities(HAConfig(language="id"), RECORDS[0])
    }
    assert got["waiting"] == "sensor.front_door_deliveries_waiting"
    assert got["delivery_photo"] == "image.front_door_last_delivery_photo"
    assert got["snapshot"] == "button.front_door_take_snapshot"
    assert got["firmware"] == "update.front_door_firmware"


def test_both_languages_name_every_entity_the_removal_list_knows() -> None:
    cfg = HAConfig(language="id")
    keys = {topic.rsplit("/", 2)[1] for topic in box_config_topics(cfg, "gate")}
    assert (
        keys | {"status", "whatsapp", "storage", "disk_free"}
        == set(ENTITY_NAMES["en"])
        == set(ENTITY_NAMES["id"])
    )


def test_owner_gateway_name_is_kept_in_both_languages() -> None:
    for ent in gateway_entities(HAConfig(language="id", gateway_name="Rumah")):
        assert ent.config["device"]["name"] == "Rumah"


def test_language_comes_from_config_and_is_checked(tmp_path) -> None:
    from gateway.homeassistant.bridge import HAConfig as BridgeHAConfig  # the class the bridge builds

    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[homeassistant]\nlanguage = "id"\n')
    config = load_config(cfg_file, env={})
    values = {
        k: v
        for k, v in dataclasses.asdict(config.homeassistant).items()
        if k in BridgeHAConfig.__dataclass_fields__
    }
    assert BridgeHAConfig.from_mapping(values).language == "id"
    cfg_file.write_text('[homeassistant]\nlanguage = "fr"\n')
    with pytest.raises(ConfigError, match="homeassistant.language"):
        load_config(cfg_file, env={})
    with pytest.raises(ValueError, match="homeassistant.language"):
        HAConfig(language="de")
