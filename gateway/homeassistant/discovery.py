"""Home Assistant MQTT discovery payloads for parcelbox boxes: pure functions, no I/O.

Follows Home Assistant's MQTT discovery documentation
(https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery and the per-platform pages
binary_sensor.mqtt, sensor.mqtt, image.mqtt, button.mqtt, update.mqtt):

- one retained config per entity on ``<discovery prefix>/<component>/<node_id>/<object_id>/config``;
- every entity has a ``unique_id`` and a ``device`` block, so the entities of one box are grouped as
  one device, linked by ``via_device`` to the gateway's own device;
- full key names, never the abbreviations (``stat_t``...): payloads stay readable and the gateway has
  memory to spare;
- an empty retained payload on a config topic deletes the entity.

The states come from topics the gateway writes (never the boxes), under ``state_prefix``
(``parcelbox/_ha`` by default). ``_`` is not allowed in a device id, so no box can ever be granted
this namespace by a per-box ACL, and no topic here matches the gateway's own ingest subscriptions:

| topic | retained | payload |
|---|---|---|
| ``<state_prefix>/gateway/availability`` | yes | ``online`` / ``offline`` (the bridge's last will) |
| ``<state_prefix>/gateway/storage`` | yes | storage JSON, see `storage_payload` |
| ``<state_prefix>/box/<device>/availability`` | yes | ``online`` / ``offline`` (the box's status) |
| ``<state_prefix>/box/<device>/state`` | yes | state JSON, see `box_state` |
| ``<state_prefix>/box/<device>/image/delivery`` | yes | raw JPEG: the last delivery's alert copy |
| ``<state_prefix>/box/<device>/image/snapshot`` | yes | raw JPEG: the last snapshot's alert copy |
| ``<state_prefix>/box/<device>/snapshot/press`` | no | ``PRESS`` from Home Assistant's button |
| ``<state_prefix>/box/<device>/update`` | yes | update JSON, see `update_state` (firmware entity) |
| ``<state_prefix>/box/<device>/update/install`` | no | ``INSTALL`` from Home Assistant's update entity |
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway import __version__
from gateway.protocol import DEFAULT_PREFIX, PREFIX_RE, valid_device_id

MODEL = "parcelbox ESP32-CAM"
GATEWAY_MODEL = "parcelbox gateway"
MANUFACTURER = "parcelbox"
PAYLOAD_ONLINE = "online"
PAYLOAD_OFFLINE = "offline"
PAYLOAD_PRESS = "PRESS"
PAYLOAD_INSTALL = "INSTALL"
IMAGE_KINDS: tuple[str, ...] = ("delivery", "snapshot")

GATEWAY_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
LANGUAGES: tuple[str, ...] = ("en", "id")
DEFAULT_GATEWAY_NAME = "parcelbox gateway"

# Entity names by language (`[homeassistant] language`). Only names change with the language: unique ids,
# discovery object ids and `default_entity_id` come from the keys and the English names, so switching
# language never renames an entity id and never breaks an automation. Indonesian wording follows the
# WhatsApp captions (gateway/captions.py, gateway/whatsapp/texts.py): "Tutup", "Paket terakhir", "foto".
ENTITY_NAMES: dict[str, dict[str, str]] = {
    "en": {
        "status": "Status",
        "whatsapp": "WhatsApp linked",
        "storage": "Storage",
        "disk_free": "Disk free",
        "online": "Online",
        "lid": "Lid",
        "package": "Package waiting",
        "waiting": "Deliveries waiting",
        "last_delivery": "Last delivery",
        "battery": "Battery",
        "rssi": "Signal strength",
        "delivery_photo": "Last delivery photo",
        "snapshot_photo": "Last snapshot",
        "snapshot": "Take snapshot",
        "firmware": "Firmware",
    },
    "id": {
        "status": "Status",
        "whatsapp": "WhatsApp tertaut",
        "storage": "Penyimpanan",
        "disk_free": "Sisa ruang disk",
        "online": "Online",
        "lid": "Tutup",
        "package": "Ada paket",
        "waiting": "Paket menunggu",
        "last_delivery": "Paket terakhir",
        "battery": "Baterai",
        "rssi": "Kekuatan sinyal",
        "delivery_photo": "Foto paket terakhir",
        "snapshot_photo": "Foto terakhir",
        "snapshot": "Ambil foto",
        "firmware": "Firmware",  # as the dashboard says it (gateway/web/i18n/id.json box.firmware)
    },
}
GATEWAY_NAMES = {"en": DEFAULT_GATEWAY_NAME, "id": "Gateway parcelbox"}


@dataclass(frozen=True)
class HAConfig:
    """Settings of the Home Assistant bridge (`[homeassistant]` in the gateway config)."""

    enabled: bool = True
    prefix: str = "homeassistant"  # Home Assistant's discovery prefix
    # Where Home Assistant announces itself (birth `online`, will `offline`); default `<prefix>/status`.
    status_topic: str | None = None
    # Root of the topics the gateway writes for Home Assistant; default `<protocol prefix>/_ha`.
    state_prefix: str | None = None
    protocol_prefix: str = DEFAULT_PREFIX
    # Tells several gateways on one Home Assistant apart: part of every unique_id and device identifier.
    gateway_id: str = "parcelbox"
    gateway_name: str = DEFAULT_GATEWAY_NAME  # left at the default, it follows `language`
    dashboard_url: str | None = None  # shown as the devices' configuration_url when http(s)
    # A button press arriving sooner than this after the previous one for the same box is dropped (counted).
    snapshot_min_interval_s: float = 5.0
    image_max_px: int = 1280  # long edge when an image must be made from the original
    language: str = "en"  # entity and device names: en | id (ids never change with it)

    def __post_init__(self) -> None:
        if self.language not in LANGUAGES:
            raise ValueError(f"homeassistant.language must be 'en' or 'id', got {self.language!r}")
        for name in ("prefix", "protocol_prefix"):
            value = getattr(self, name)
            if not isinstance(value, str) or PREFIX_RE.fullmatch(value) is None:
                raise ValueError(
                    f"homeassistant.{name} must be a topic prefix like 'homeassistant', got {value!r}"
                )
        for name in ("status_topic", "state_prefix"):
            value = getattr(self, name)
            if value and (not isinstance(value, str) or PREFIX_RE.fullmatch(value) is None):
                raise ValueError(
                    f"homeassistant.{name} must be a plain topic without wildcards, got {value!r}"
                )
        if not isinstance(self.gateway_id, str) or GATEWAY_ID_RE.fullmatch(self.gateway_id) is None:
            raise ValueError(
                f"homeassistant.gateway_id must match {GATEWAY_ID_RE.pattern}, got {self.gateway_id!r}"
            )

    @property
    def birth_topic(self) -> str:
        return self.status_topic or f"{self.prefix}/status"

    @property
    def base(self) -> str:
        return self.state_prefix or f"{self.protocol_prefix}/_ha"

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None, **overrides: Any) -> HAConfig:
        """Build from a `[homeassistant]` TOML table; unknown keys are refused so typos do not pass silently."""
        data = dict(section or {})
        data.update({k: v for k, v in overrides.items() if v is not None})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown [homeassistant] setting(s): {', '.join(unknown)}")
        return cls(**data)


# --- topics -------------------------------------------------------------------------


def gateway_availability_topic(cfg: HAConfig) -> str:
    return f"{cfg.base}/gateway/availability"


def whatsapp_topic(cfg: HAConfig) -> str:
    """The gateway's "WhatsApp linked" state: ON while connected (retained)."""
    return f"{cfg.base}/gateway/whatsapp"


def whatsapp_payload(state: Mapping[str, Any]) -> bytes:
    return b"ON" if state.get("state") == "connected" else b"OFF"


def gateway_storage_topic(cfg: HAConfig) -> str:
    return f"{cfg.base}/gateway/storage"


def box_topic(cfg: HAConfig, device: str, leaf: str) -> str:
    return f"{cfg.base}/box/{device}/{leaf}"


def availability_topic(cfg: HAConfig, device: str) -> str:
    return box_topic(cfg, device, "availability")


def state_topic(cfg: HAConfig, device: str) -> str:
    return box_topic(cfg, device, "state")


def image_topic(cfg: HAConfig, device: str, kind: str) -> str:
    if kind not in IMAGE_KINDS:
        raise ValueError(f"unknown image kind {kind!r}")
    return box_topic(cfg, device, f"image/{kind}")


def press_topic(cfg: HAConfig, device: str) -> str:
    return box_topic(cfg, device, "snapshot/press")


def press_subscription(cfg: HAConfig) -> str:
    return f"{cfg.base}/box/+/snapshot/press"


def device_from_press_topic(cfg: HAConfig, topic: str) -> str | None:
    """The box id in a button command topic, or None when the topic is not one (or the id is invalid)."""
    head, tail = f"{cfg.base}/box/", "/snapshot/press"
    if not (topic.startswith(head) and topic.endswith(tail)):
        return None
    device = topic[len(head) : -len(tail)]
    return device if valid_device_id(device) else None


def update_topic(cfg: HAConfig, device: str) -> str:
    return box_topic(cfg, device, "update")


def install_topic(cfg: HAConfig, device: str) -> str:
    return box_topic(cfg, device, "update/install")


def install_subscription(cfg: HAConfig) -> str:
    return f"{cfg.base}/box/+/update/install"


def device_from_install_topic(cfg: HAConfig, topic: str) -> str | None:
    """The box id in an update entity's command topic, or None when the topic is not one."""
    head, tail = f"{cfg.base}/box/", "/update/install"
    if not (topic.startswith(head) and topic.endswith(tail)):
        return None
    device = topic[len(head) : -len(tail)]
    return device if valid_device_id(device) else None


def image_subscription(cfg: HAConfig) -> str:
    """The bridge reads its own retained images back, to publish a photo only when it changed."""
    return f"{cfg.base}/box/+/image/+"


def image_from_topic(cfg: HAConfig, topic: str) -> tuple[str, str] | None:
    """(device, kind) of an image topic, or None."""
    head = f"{cfg.base}/box/"
    if not topic.startswith(head):
        return None
    device, sep, rest = topic[len(head) :].partition("/image/")
    if not sep or rest not in IMAGE_KINDS or not valid_device_id(device):
        return None
    return device, rest


def sync_probe_topic(cfg: HAConfig) -> str:
    """A non-retained message the bridge sends itself after subscribing: when it comes back, the broker
    has delivered every retained message of that subscription before it (one connection keeps order)."""
    return f"{cfg.base}/gateway/sync"


def retained_box_topics(cfg: HAConfig, device: str) -> list[str]:
    """Every retained non-discovery topic the bridge may have written for a box."""
    return [
        state_topic(cfg, device),
        availability_topic(cfg, device),
        update_topic(cfg, device),
        *(image_topic(cfg, device, k) for k in IMAGE_KINDS),
    ]


def config_topic(cfg: HAConfig, component: str, node_id: str, object_id: str) -> str:
    return f"{cfg.prefix}/{component}/{node_id}/{object_id}/config"


def gateway_identifier(cfg: HAConfig) -> str:
    return f"{cfg.gateway_id}_gateway"


def box_identifier(cfg: HAConfig, device: str) -> str:
    # Device ids never contain "_", so "<gw>_box_<device>" can never equal "<gw>_gateway".
    return f"{cfg.gateway_id}_box_{device}"


# --- payloads -------------------------------------------------------------------------


@dataclass(frozen=True)
class Entity:
    """One discovery config: where it goes and what it says."""

    component: str  # Home Assistant platform: binary_sensor, sensor, image, button
    node_id: str
    object_id: str
    config: dict[str, Any] = field(default_factory=dict)

    def topic(self, cfg: HAConfig) -> str:
        return config_topic(cfg, self.component, self.node_id, self.object_id)

    def payload(self) -> bytes:
        return json.dumps(self.config, separators=(",", ":"), sort_keys=True).encode()


# (object_id, component) of every entity a box can have; `battery` only once a battery is reported.
BOX_ENTITY_KEYS: tuple[tuple[str, str], ...] = (
    ("online", "binary_sensor"),
    ("lid", "binary_sensor"),
    ("package", "binary_sensor"),
    ("waiting", "sensor"),
    ("last_delivery", "sensor"),
    ("battery", "sensor"),
    ("rssi", "sensor"),
    ("delivery_photo", "image"),
    ("snapshot_photo", "image"),
    ("snapshot", "button"),
    ("firmware", "update"),
)


def _origin() -> dict[str, Any]:
    return {"name": "parcelbox", "sw_version": __version__}


def _configuration_url(cfg: HAConfig) -> dict[str, str]:
    url = cfg.dashboard_url
    if url and (url.startswith("http://") or url.startswith("https://")):
        return {"configuration_url": url}
    return {}


def _availability(topic: str) -> dict[str, str]:
    return {"topic": topic, "payload_available": PAYLOAD_ONLINE, "payload_not_available": PAYLOAD_OFFLINE}


def entity_name(cfg: HAConfig, key: str) -> str:
    return ENTITY_NAMES[cfg.language][key]


def default_entity_id(component: str, owner: str, key: str) -> str:
    """`<component>.<owner>_<English name>`, e.g. `sensor.front_door_deliveries_waiting`.

    Sent as `default_entity_id` (Home Assistant 2025.10+; it replaced `object_id`), so a new entity's id
    comes from the box id and the English name, never from the translated name: an automation written
    against an English install works on an Indonesian one, and the ids are the ones Home Assistant made
    from the English names before (for a box without a display name). An entity already in Home
    Assistant's registry keeps whatever id it has."""
    slug = ENTITY_NAMES["en"][key].lower().replace(" ", "_")
    return f"{component}.{owner}_{slug}".replace("-", "_")


def gateway_device_block(cfg: HAConfig) -> dict[str, Any]:
    name = cfg.gateway_name
    if name == DEFAULT_GATEWAY_NAME:
        name = GATEWAY_NAMES[cfg.language]
    return {
        "identifiers": [gateway_identifier(cfg)],
        "name": name,
        "model": GATEWAY_MODEL,
        "manufacturer": MANUFACTURER,
        "sw_version": __version__,
        **_configuration_url(cfg),
    }


def box_device_block(cfg: HAConfig, record: Mapping[str, Any]) -> dict[str, Any]:
    device = record["device"]
    block: dict[str, Any] = {
        "identifiers": [box_identifier(cfg, device)],
        "name": record.get("name") or device,
        "model": MODEL,
        "manufacturer": MANUFACTURER,
        "via_device": gateway_identifier(cfg),
        **_configuration_url(cfg),
    }
    if record.get("fw"):
        block["sw_version"] = str(record["fw"])
    return block


def gateway_entities(cfg: HAConfig) -> list[Entity]:
    """The gateway's own device: HA creates a device only together with an entity, so it gets one."""
    node = gateway_identifier(cfg)
    return [
        Entity(
            "binary_sensor",
            node,
            "status",
            {
                "name": entity_name(cfg, "status"),
                "unique_id": f"{node}_status",
                "default_entity_id": default_entity_id("binary_sensor", node, "status"),
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "state_topic": gateway_availability_topic(cfg),
                "payload_on": PAYLOAD_ONLINE,
                "payload_off": PAYLOAD_OFFLINE,
                "qos": 1,
                "device": gateway_device_block(cfg),
                "origin": _origin(),
            },
        ),
        # Storage: a problem sensor (disk almost full, writes refused, damage found; the reasons are
        # its attributes) and the free space, so an automation can warn long before the card is full.
        Entity(
            "binary_sensor",
            node,
            "storage",
            {
                "name": entity_name(cfg, "storage"),
                "unique_id": f"{node}_storage",
                "default_entity_id": default_entity_id("binary_sensor", node, "storage"),
                "device_class": "problem",
                "entity_category": "diagnostic",
                "state_topic": gateway_storage_topic(cfg),
                "value_template": "{% if value_json.ok %}OFF{% else %}ON{% endif %}",
                "json_attributes_topic": gateway_storage_topic(cfg),
                "json_attributes_template": "{{ {'problems': value_json.problems} | tojson }}",
                "availability": [_availability(gateway_availability_topic(cfg))],
                "qos": 1,
                "device": gateway_device_block(cfg),
                "origin": _origin(),
            },
        ),
        Entity(
            "sensor",
            node,
            "disk_free",
            {
                "name": entity_name(cfg, "disk_free"),
                "unique_id": f"{node}_disk_free",
                "default_entity_id": default_entity_id("sensor", node, "disk_free"),
                "device_class": "data_size",
                "unit_of_measurement": "MB",
                "state_class": "measurement",
                "entity_category": "diagnostic",
                "state_topic": gateway_storage_topic(cfg),
                "value_template": "{{ value_json.free_mb }}",
                "availability": [_availability(gateway_availability_topic(cfg))],
                "qos": 1,
                "device": gateway_device_block(cfg),
                "origin": _origin(),
            },
        ),
    ]


def whatsapp_entity(cfg: HAConfig) -> Entity:
    """ "WhatsApp linked" on the gateway's device (announced once WhatsApp is enabled): an automation
    can tell the owner another way when alerts stop (the phone offline ~14 days, a ban, a logout)."""
    node = gateway_identifier(cfg)
    return Entity(
        "binary_sensor",
        node,
        "whatsapp",
        {
            "name": entity_name(cfg, "whatsapp"),
            "unique_id": f"{node}_whatsapp",
            "default_entity_id": default_entity_id("binary_sensor", node, "whatsapp"),
            "device_class": "connectivity",
            "state_topic": whatsapp_topic(cfg),
            "payload_on": "ON",
            "payload_off": "OFF",
            "availability": [_availability(gateway_availability_topic(cfg))],
            "qos": 1,
            "device": gateway_device_block(cfg),
            "origin": _origin(),
        },
    )


def storage_payload(state: Mapping[str, Any]) -> bytes:
    """The gateway's storage state (the service's STORAGE_STATE bus message), for Home Assistant."""
    problems = state.get("problems") or []
    return json.dumps(
        {
            "ok": bool(state.get("ok")),
            "problems": [str(p) for p in problems][:10],
            "free_mb": state.get("free_mb"),
            "free_percent": state.get("free_percent"),
        },
        separators=(",", ":"),
    ).encode()


def box_entities(
    cfg: HAConfig, record: Mapping[str, Any], *, with_battery: bool | None = None
) -> list[Entity]:
    """Discovery configs for one box (a `DeviceRecord`).

    The battery sensor is only announced once the box reports a battery (`battery_mv` not null),
    unless `with_battery` says otherwise (the bridge keeps it once seen).
    """
    device = record["device"]
    if not valid_device_id(device):
        raise ValueError(f"invalid device id {device!r}")
    node = box_identifier(cfg, device)
    st = state_topic(cfg, device)
    dev = box_device_block(cfg, record)
    # The box's entities are unavailable when the box or the gateway is offline: no stale "closed lid"
    # shown as current. The connectivity sensor itself only follows the gateway, so an offline box shows
    # as "Disconnected" rather than "Unavailable".
    both = {
        "availability": [
            _availability(availability_topic(cfg, device)),
            _availability(gateway_availability_topic(cfg)),
        ],
        "availability_mode": "all",
    }
    gateway_only = {
        "availability": [_availability(gateway_availability_topic(cfg))],
        "availability_mode": "all",
    }

    def common(key: str, component: str, avail: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": entity_name(cfg, key),
            "unique_id": f"{node}_{key}",
            "default_entity_id": default_entity_id(component, device, key),
            "device": dev,
            "origin": _origin(),
            "qos": 1,
            **avail,
        }

    if with_battery is None:
        with_battery = record.get("battery_mv") is not None

    def flag(key: str) -> str:
        # binary_sensor.mqtt: the state follows payload_on, payload_off or `None` (unknown), e.g. no lid
        # reading yet.
        return f"{{% if value_json.{key} is none %}}None{{% elif value_json.{key} %}}ON{{% else %}}OFF{{% endif %}}"

    def value(key: str) -> str:
        # A JSON null renders as "None", Home Assistant's payload for "unknown".
        return f"{{{{ value_json.{key} }}}}"

    out = [
        Entity(
            "binary_sensor",
            node,
            "online",
            {
                **common("online", "binary_sensor", gateway_only),
                "device_class": "connectivity",
                "state_topic": st,
                "value_template": flag("online"),
            },
        ),
        Entity(
            "binary_sensor",
            node,
            "lid",
            {
                **common("lid", "binary_sensor", both),
                "device_class": "opening",
                "state_topic": st,
                "value_template": flag("lid_open"),
            },
        ),
        Entity(
            "binary_sensor",
            node,
            "package",
            {
                **common("package", "binary_sensor", both),
                "device_class": "occupancy",
                "state_topic": st,
                "value_template": flag("package"),
            },
        ),
        Entity(
            "sensor",
            node,
            "waiting",
            {
                **common("waiting", "sensor", both),
                "state_topic": st,
                "value_template": value("waiting"),
                "state_class": "measurement",
                "icon": "mdi:package-variant-closed",
            },
        ),
        Entity(
            "sensor",
            node,
            "last_delivery",
            {
                **common("last_delivery", "sensor", both),
                "device_class": "timestamp",
                "state_topic": st,
                "value_template": value("last_delivery"),
            },
        ),
    ]
    if with_battery:
        out.append(
            Entity(
                "sensor",
                node,
                "battery",
                {
                    **common("battery", "sensor", both),
                    "device_class": "voltage",
                    "unit_of_measurement": "V",
                    "state_class": "measurement",
                    "suggested_display_precision": 2,
                    "entity_category": "diagnostic",
                    "state_topic": st,
                    "value_template": value("battery_v"),
                },
            )
        )
    out += [
        Entity(
            "sensor",
            node,
            "rssi",
            {
                **common("rssi", "sensor", both),
                "device_class": "signal_strength",
                "unit_of_measurement": "dBm",
                "state_class": "measurement",
                "entity_category": "diagnostic",
                "state_topic": st,
                "value_template": value("rssi"),
            },
        ),
        Entity(
            "image",
            node,
            "delivery_photo",
            {
                # The photo stays meaningful while the box is offline: follow the gateway only.
                **common("delivery_photo", "image", gateway_only),
                "image_topic": image_topic(cfg, device, "delivery"),
                "content_type": "image/jpeg",
            },
        ),
        Entity(
            "image",
            node,
            "snapshot_photo",
            {
                **common("snapshot_photo", "image", gateway_only),
                "image_topic": image_topic(cfg, device, "snapshot"),
                "content_type": "image/jpeg",
            },
        ),
        Entity(
            "button",
            node,
            "snapshot",
            {
                **common("snapshot", "button", both),
                "command_topic": press_topic(cfg, device),
                "payload_press": PAYLOAD_PRESS,
                "retain": False,
                "icon": "mdi:camera",
            },
        ),
        # update.mqtt: installed and latest version, progress, and an install action that becomes the
        # same offer `parcelbox device update` makes. It follows the gateway only: an asleep box takes
        # the offer at its next wake, so installing while it shows offline is useful.
        Entity(
            "update",
            node,
            "firmware",
            {
                **common("firmware", "update", gateway_only),
                "device_class": "firmware",
                "entity_category": "config",
                "state_topic": update_topic(cfg, device),
                "command_topic": install_topic(cfg, device),
                "payload_install": PAYLOAD_INSTALL,
                "retain": False,
                "title": f"{MANUFACTURER} firmware",
            },
        ),
    ]
    return out


def box_config_topics(cfg: HAConfig, device: str) -> list[str]:
    """Every discovery topic a box may have, announced or not (removal clears them all)."""
    node = box_identifier(cfg, device)
    return [config_topic(cfg, component, node, key) for key, component in BOX_ENTITY_KEYS]


def iso_utc(ts: float | None) -> str | None:
    """ISO 8601 with an explicit UTC offset, as the `timestamp` sensor device class requires."""
    if ts is None:
        return None
    return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="seconds")


def box_state(record: Mapping[str, Any]) -> dict[str, Any]:
    """The state JSON for one box, from its `DeviceRecord`.

    `null` means "not known" (rendered as Home Assistant's `None` payload, shown as unknown).
    """
    waiting = record.get("waiting")
    waiting = waiting if isinstance(waiting, int) and not isinstance(waiting, bool) and waiting >= 0 else 0
    mv = record.get("battery_mv")
    lid = record.get("lid_open")
    return {
        "online": bool(record.get("online")),
        "lid_open": None if lid is None else bool(lid),
        "package": waiting > 0,
        "waiting": waiting,
        "last_delivery": iso_utc(record.get("last_delivery_ts")),
        "battery_v": None if mv is None else round(mv / 1000.0, 3),
        "rssi": record.get("rssi"),
        "fw": record.get("fw"),
    }


def update_state(fw: Mapping[str, Any]) -> dict[str, Any]:
    """The update entity's state JSON from the gateway's `firmware_status(device)`.

    Whether an update is available is decided by the sets' sha256 (`parcelbox device update --dry-run`),
    never the version strings; but Home Assistant shows "update available" only when `latest_version`
    differs from `installed_version` (core `update/__init__.py`, `UpdateEntity.state`). So when the set
    matches, latest is the installed version itself; when the set differs under the same version string
    (a local edit), latest carries the first 8 hex digits of this checkout's set."""
    installed = fw.get("fw")
    latest = fw.get("latest_version")
    available = fw.get("update_available")
    if not available:
        # Up to date, or nothing Home Assistant could install: this checkout's set does not build, or
        # the box runs a firmware from before over-the-air updates (it needs USB once).
        latest = installed
    elif available and latest == installed and fw.get("latest_set"):
        latest = f"{latest} ({str(fw['latest_set'])[:8]})"
    upd = fw.get("update") or {}
    active = bool(upd.get("active"))
    return {
        "installed_version": installed,
        "latest_version": latest,
        "in_progress": active,
        "update_percentage": upd.get("percent") if active else None,
    }


def update_payload(fw: Mapping[str, Any]) -> bytes:
    return json.dumps(update_state(fw), separators=(",", ":"), sort_keys=True).encode()


def state_payload(record: Mapping[str, Any]) -> bytes:
    return json.dumps(box_state(record), separators=(",", ":"), sort_keys=True).encode()


def availability_payload(record: Mapping[str, Any]) -> bytes:
    return (PAYLOAD_ONLINE if record.get("online") else PAYLOAD_OFFLINE).encode()


def removal_messages(cfg: HAConfig, device: str) -> list[tuple[str, bytes, bool]]:
    """(topic, payload, retain) that take a box out of a Home Assistant that may not know it this run.

    Home Assistant ignores an empty discovery config for an entity it has not discovered since it
    started (core `mqtt/discovery.py`, `async_process_discovery_payload`: "Unhandled discovery
    message"), so an empty config alone never removes a box that was removed while it was down: it
    stays as an orphan device. A config first (not retained: it must not outlive this message) makes
    Home Assistant discover the entity again under its unique id; the empty config right after (queued
    behind the first by Home Assistant's pending-discovery deque) then removes it, and the device with
    its last entity. Every entity a box can have is listed, battery included."""
    rec = {"device": device, "name": device}
    out: list[tuple[str, bytes, bool]] = [
        (ent.topic(cfg), ent.payload(), False) for ent in box_entities(cfg, rec, with_battery=True)
    ]
    out += [(t, b"", True) for t in box_config_topics(cfg, device) + retained_box_topics(cfg, device)]
    return out
