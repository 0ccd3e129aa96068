"""What reaches the Home Assistant bridge, sorted before anything acts on it: MQTT messages on its own
subscriptions and the gateway's bus messages.

Why: every input is hostile (anyone with write access to the broker can publish on these topics, and a
bus message is only as good as its publisher). Sorting is pure, so the paho callback and the bus
handlers stay one-liners and every rule here is tested by a table, without a broker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from gateway.homeassistant import discovery as d
from gateway.homeassistant.discovery import HAConfig
from gateway.protocol import valid_device_id, valid_msg_id

# Only the head of a command payload is kept: a valid one is a few bytes ("PRESS", "INSTALL").
COMMAND_PAYLOAD_MAX = 64


@dataclass(frozen=True)
class HomeAssistantStatus:
    """Home Assistant's birth (`online`) or last will (`offline`) on its status topic."""

    online: bool


@dataclass(frozen=True)
class SyncProbe:
    """Our own probe came back: the broker has delivered every retained image before it."""

    token: str


@dataclass(frozen=True)
class RetainedImage:
    """An image the broker holds for a box (read back through our own subscription); sha256 None: cleared."""

    device: str
    kind: str
    sha256: str | None


@dataclass(frozen=True)
class Press:
    """The snapshot button of a box was pressed (payload still to be checked)."""

    device: str
    payload: bytes


@dataclass(frozen=True)
class Install:
    """The update entity's install action for a box (payload still to be checked)."""

    device: str
    payload: bytes


@dataclass(frozen=True)
class Unexpected:
    """A message on none of our topics (or naming an invalid box): counted and logged, never acted on."""

    topic: str


Inbound = HomeAssistantStatus | SyncProbe | RetainedImage | Press | Install | Unexpected


def classify(cfg: HAConfig, topic: str, payload: bytes) -> Inbound | None:
    """What an MQTT message on the bridge's subscriptions is; None for one to drop silently (a status
    payload that is neither `online` nor `offline`)."""
    if topic == cfg.birth_topic:
        word = payload.strip()
        if word == d.PAYLOAD_ONLINE.encode():
            return HomeAssistantStatus(True)
        if word == d.PAYLOAD_OFFLINE.encode():
            return HomeAssistantStatus(False)
        return None
    if topic == d.sync_probe_topic(cfg):
        return SyncProbe(payload.decode("ascii", "replace"))
    image = d.image_from_topic(cfg, topic)
    if image is not None:
        sha = hashlib.sha256(payload).hexdigest() if payload else None
        return RetainedImage(image[0], image[1], sha)
    installing = d.device_from_install_topic(cfg, topic)
    if installing is not None:
        return Install(installing, payload[:COMMAND_PAYLOAD_MAX])
    pressed = d.device_from_press_topic(cfg, topic)
    if pressed is not None:
        return Press(pressed, payload[:COMMAND_PAYLOAD_MAX])
    return Unexpected(topic)


# --- bus messages ---------------------------------------------------------------------------------------


def bus_device(data: Any) -> str | None:
    """The valid box id of a DEVICE_CHANGED / OTA_CHANGED message, or None."""
    device = data.get("device") if isinstance(data, dict) else None
    return device if valid_device_id(device) else None


@dataclass(frozen=True)
class StoredEvent:
    device: str
    event_id: str
    kind: Any  # the event type as published; only the photo kinds matter here
    has_photo: bool


def bus_event(data: Any) -> StoredEvent | None:
    """An EVENT_STORED message with a valid box and event id, or None."""
    if not isinstance(data, dict):
        return None
    device, eid = data.get("device"), data.get("id")
    if not valid_device_id(device) or not valid_msg_id(eid):
        return None
    return StoredEvent(device, eid, data.get("type"), bool(data.get("photo")))


@dataclass(frozen=True)
class RegistryChange:
    device: str
    registered: set[str] | None  # every registered box after the change; None: not in the message


def bus_registry_change(data: Any) -> RegistryChange | None:
    """A DEVICE_REMOVED / DEVICE_REGISTERED message (gateway.registry_watch), or None when malformed.
    Invalid ids in its `registered` list are left out."""
    device = bus_device(data)
    if device is None:
        return None
    registered = data.get("registered")
    if not isinstance(registered, list):
        return RegistryChange(device, None)
    return RegistryChange(device, {x for x in registered if valid_device_id(x)})
