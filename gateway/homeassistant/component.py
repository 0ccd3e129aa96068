"""The Home Assistant parts `parcelbox` builds from its config: the bridge for `parcelbox run`, and the
immediate clean-up `parcelbox device remove` does.

Why apart from the bridge: deciding whether the bridge runs at all, and which broker and login it uses,
is wiring read from the gateway's config; the bridge only needs the result.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from gateway.brokeraddr import BrokerAddress, parse_broker_url
from gateway.homeassistant.bridge import HomeAssistantBridge
from gateway.homeassistant.clear import clear_device
from gateway.homeassistant.discovery import HAConfig

log = logging.getLogger("gateway.homeassistant.bridge")  # one logger for the bridge and its wiring


def ha_config(config: Any) -> HAConfig:
    """`[homeassistant]` of a gateway config as an `HAConfig` (its topics under the broker's prefix)."""
    section = config.homeassistant
    values = {k: v for k, v in dataclasses.asdict(section).items() if k in HAConfig.__dataclass_fields__}
    return HAConfig.from_mapping(values, protocol_prefix=config.broker.prefix)


def service_broker(service: Any) -> BrokerAddress:
    """The broker and login of a running gateway, known only once it runs (its managed broker's port and
    password)."""
    from gateway.devices import GATEWAY_USER

    broker = service.config.broker
    if getattr(service, "broker", None) is not None:  # the gateway's own managed broker
        # Caution: on the managed box listener a login is its client id, so this connection and the
        # gateway's own would take turns kicking each other off; `parcelbox run` never does this.
        user = getattr(service.broker, "gateway_username", GATEWAY_USER)
        return parse_broker_url(service.broker_url, user, service.broker.gateway_password)
    return parse_broker_url(
        service.broker_url or broker.url, broker.username or None, broker.password or None
    )


def bridge_for_service(cls: type[HomeAssistantBridge], service: Any, ha: HAConfig) -> HomeAssistantBridge:
    """`HomeAssistantBridge.for_service`: the gateway's broker and login (`service_broker`, resolved at
    start), its device registry, and `<data>/homeassistant.json` for the roster's state."""
    data_dir = getattr(service, "data_dir", None)
    bridge = cls(
        service,
        lambda: service_broker(service),
        ha,
        registry=getattr(service, "registry", None),
        state_path=Path(data_dir) / "homeassistant.json" if data_dir else None,
    )
    bridge.summary = f"home assistant  discovery on {ha.prefix}/, states on {ha.base}/"
    return bridge


def homeassistant_component(service: Any, config: Any) -> HomeAssistantBridge | None:
    """The bridge for `parcelbox run` (`gateway.app.build_components`), or None when it should not run.

    It runs when `[homeassistant] enabled` (the default) and the gateway uses an external broker: the one
    Home Assistant shares. The gateway's own managed broker has no login for Home Assistant, so
    discovery there would only be noise.
    """
    from gateway.config import ConfigError

    section = config.homeassistant
    if not section.enabled:
        log.info("homeassistant: off ([homeassistant] enabled = false)")
        return None
    if not config.broker.url:
        log.info(
            "homeassistant: off with the gateway's own broker; set broker.url to the broker Home Assistant "
            "uses (see docs/homeassistant.md)"
        )
        return None
    try:
        ha = ha_config(config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return HomeAssistantBridge.for_service(service, ha)


def clear_removed_box(config: Any, device: str, timeout: float = 5.0) -> str:
    """For `parcelbox device remove`: take the box out of Home Assistant right away when the gateway
    shares an external broker with it. Never raises; returns a line for the user.

    The running gateway's bridge does the same when it sees the registry change, and a gateway that was
    stopped does it at its next start, so a failure here loses nothing.
    """
    section = config.homeassistant
    if not section.enabled or not config.broker.url:
        return ""
    try:
        clear_device(
            config.broker.url,
            device,
            ha_config(config),
            username=config.broker.username or None,
            password=config.broker.password or None,
            timeout=timeout,
        )
    except Exception as exc:  # broker down, refused, bad settings: the gateway catches up later
        return f"Home Assistant: not cleared now ({exc}); the gateway clears it when it next runs."
    return f"Home Assistant: {device!r} and its entities removed."
