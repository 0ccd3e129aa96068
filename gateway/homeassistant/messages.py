"""The retained messages that show the gateway and each box in Home Assistant, in the order it needs them.

Why: Home Assistant must have an entity's config before its state arrives (a state on a topic nobody
listens to yet is lost until the next change), so configs come first, then availability, state and the
firmware entity's state. `discovery` builds each payload; this lists them, so the bridge only publishes
what it gets (skipping what this session already sent). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.homeassistant import discovery as d
from gateway.homeassistant.discovery import HAConfig

Message = tuple[str, bytes]  # (topic, payload), published retained with QoS 1


def gateway_messages(cfg: HAConfig, whatsapp: bytes | None) -> list[Message]:
    """The gateway's own device; with WhatsApp enabled (`whatsapp` is its ON/OFF state), its entity too."""
    out = [(ent.topic(cfg), ent.payload()) for ent in d.gateway_entities(cfg)]
    if whatsapp is not None:
        out += whatsapp_messages(cfg, whatsapp)
    return out


def whatsapp_messages(cfg: HAConfig, state: bytes) -> list[Message]:
    """ "WhatsApp linked": its config first, then its ON/OFF state."""
    ent = d.whatsapp_entity(cfg)
    return [(ent.topic(cfg), ent.payload()), (d.whatsapp_topic(cfg), state)]


def box_messages(cfg: HAConfig, record: Mapping[str, Any], *, with_battery: bool) -> list[Message]:
    """A box's configs, availability and state from its record (`with_battery`: announce the battery
    sensor; the bridge keeps it once a battery was reported). The firmware entity's state follows
    (`update_message`)."""
    device = record["device"]
    out = [(ent.topic(cfg), ent.payload()) for ent in d.box_entities(cfg, record, with_battery=with_battery)]
    out.append((d.availability_topic(cfg, device), d.availability_payload(record)))
    out.append((d.state_topic(cfg, device), d.state_payload(record)))
    return out


def update_message(cfg: HAConfig, device: str, firmware: Mapping[str, Any]) -> Message:
    """The update entity's state from the gateway's `firmware_status(device)`: the box's firmware against
    this checkout's, and the progress."""
    return (d.update_topic(cfg, device), d.update_payload(firmware))


def storage_message(cfg: HAConfig, state: Mapping[str, Any]) -> Message:
    """The gateway's storage state (the service's STORAGE_STATE bus message)."""
    return (d.gateway_storage_topic(cfg), d.storage_payload(state))
