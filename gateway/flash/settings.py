"""What the gateway already knows that the box needs: broker port, topic prefix, data folder,
and the box's MQTT credentials from the device registry (`parcelbox device add NAME`).

The gateway's config and registry modules are optional here: the flash tool also works with
only command-line flags (an external broker, or a checkout without a configured gateway).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.flash.errors import FlashError

DEFAULT_PREFIX = "parcelbox"
DEFAULT_MQTT_PORT = 1883


@dataclass
class GatewayView:
    data_dir: Path | None
    broker_port: int
    prefix: str
    username: str | None  # the gateway's own broker login, used to watch for the box's status
    password: str | None


def _first(obj: Any, paths: tuple[str, ...]) -> Any:
    for dotted in paths:
        node = obj
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
            if node is None:
                break
        if node is not None:
            return node
    return None


def gateway_view(config_path: str | None, data_dir: str | None) -> GatewayView:
    """The gateway's settings, or defaults when the gateway has no config module/file yet."""
    cfg = None
    try:
        from gateway.config import load_config
    except ImportError:
        load_config = None
    if load_config is not None:
        try:
            cfg = load_config(config_path) if config_path else load_config()
        except FileNotFoundError as e:
            raise FlashError("settings", f"gateway config not found: {e}") from None
        except Exception as e:  # the gateway's own validation errors: show them as they are
            raise FlashError("settings", f"cannot read the gateway config: {e}") from None
    port = _first(cfg, ("broker.port", "broker_port", "mqtt.port", "mqtt_port"))
    # A managed broker may report its port as 0 ("pick one"); the box needs a real one.
    return GatewayView(
        data_dir=Path(data_dir) if data_dir else _path_or_none(_first(cfg, ("data_dir",))),
        broker_port=int(port) if isinstance(port, int) and port > 0 else DEFAULT_MQTT_PORT,
        prefix=str(_first(cfg, ("prefix", "broker.prefix", "mqtt.prefix", "topic_prefix")) or DEFAULT_PREFIX),
        username=_first(cfg, ("broker.username", "broker.user", "mqtt.username", "broker_username")),
        password=_first(cfg, ("broker.password", "mqtt.password", "broker_password")),
    )


def _path_or_none(value: Any) -> Path | None:
    return Path(value) if value else None


def box_credentials(device: str, data_dir: Path | None) -> tuple[str, str] | None:
    """(username, password) from the registry; None when no registry exists to ask."""
    try:
        from gateway.devices import DeviceRegistry
    except ImportError:
        return None
    if data_dir is None:
        raise FlashError("settings", "no gateway data folder known", "pass --data-dir or --config")
    creds = DeviceRegistry(data_dir).get(device)
    if creds is None:
        raise FlashError(
            "settings",
            f"unknown device {device!r}: it has no MQTT credentials yet",
            f"create them first: parcelbox device add {device}",
        )
    return creds.username, creds.password
