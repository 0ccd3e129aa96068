"""The box's `config.json`: built from `firmware/config.example.json`, the gateway's settings and
the device registry, so its keys always match what the firmware reads.

Values are placed at the first key path the example file actually has (`wifi.ssid`, `mqtt.host`,
...). A value with no place in the example is an error, not a silently missing setting.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.flash.errors import FlashError

# For each setting, the key paths a firmware config may use, most likely first.
KEY_PATHS: dict[str, tuple[str, ...]] = {
    "device": ("device_id", "device", "id", "mqtt.client_id"),
    "prefix": ("prefix", "mqtt.prefix", "topic_prefix", "mqtt.topic_prefix"),
    "wifi_ssid": ("wifi.ssid", "wifi_ssid", "ssid"),
    "wifi_password": ("wifi.password", "wifi_password", "wifi.psk", "wifi_psk"),
    "broker_host": ("mqtt.host", "broker.host", "mqtt_host", "broker_host", "mqtt.server", "mqtt.broker"),
    "broker_port": ("mqtt.port", "broker.port", "mqtt_port", "broker_port"),
    "mqtt_user": (
        "mqtt.user",
        "mqtt.username",
        "broker.username",
        "broker.user",
        "mqtt_user",
        "mqtt_username",
    ),
    "mqtt_password": ("mqtt.password", "broker.password", "mqtt_password"),
}
SECRET_SETTINGS = ("wifi_password", "mqtt_password")


@dataclass
class BoxSettings:
    device: str
    prefix: str
    wifi_ssid: str
    wifi_password: str
    broker_host: str
    broker_port: int
    mqtt_user: str | None
    mqtt_password: str | None


def load_template(firmware_dir: Path) -> dict[str, Any]:
    path = firmware_dir / "config.example.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FlashError("config", f"{path} not found", "the firmware folder is incomplete") from None
    except ValueError as e:
        raise FlashError("config", f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise FlashError("config", f"{path} must hold a JSON object")
    return data


def _has_path(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[leaf] = value


def key_path(template: dict[str, Any], setting: str) -> str:
    for candidate in KEY_PATHS[setting]:
        if _has_path(template, candidate):
            return candidate
    raise FlashError(
        "config",
        f"firmware/config.example.json has no key for {setting} (looked for {', '.join(KEY_PATHS[setting])})",
        "the firmware and the flash tool disagree on config keys; update gateway/flash/devconfig.py",
    )


def check_template(template: dict[str, Any]) -> None:
    """Every setting the tool fills has a place in the example config (else a FlashError)."""
    for name in KEY_PATHS:
        key_path(template, name)


def parse_overrides(template: dict[str, Any], items: list[str]) -> list[tuple[str, Any]]:
    """`--set KEY=VALUE` items as (dotted key, value); VALUE is JSON, else a plain string."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FlashError("config", f"--set {item!r}: use KEY=VALUE, e.g. --set sensor=ir")
        if not _has_path(template, key):
            raise FlashError("config", f"--set {key}: no such key in firmware/config.example.json")
        owned = {path for paths in KEY_PATHS.values() for path in paths}
        if key in owned:
            raise FlashError("config", f"--set {key}: set by the tool; use its own option instead")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.append((key, value))
    return out


def _overlay_known(base: dict[str, Any], update: dict[str, Any]) -> None:
    """Copy values from `update` whose keys (and shape) exist in `base`; drop the rest."""
    for key, value in update.items():
        if key not in base:
            continue
        if isinstance(base[key], dict):
            if isinstance(value, dict):
                _overlay_known(base[key], value)
        elif not isinstance(value, dict):
            base[key] = value


def build_config(
    template: dict[str, Any],
    settings: BoxSettings,
    existing: dict[str, Any] | None = None,
    overrides: Sequence[tuple[str, Any]] = (),
) -> dict[str, Any]:
    """The example config, then the board's current values (a re-provision keeps what the user set
    there), then `--set` overrides, then this box's identity, Wi-Fi and broker settings."""
    config = copy.deepcopy(template)
    if existing:
        _overlay_known(config, existing)
    for dotted, value in overrides:
        _set_path(config, dotted, value)
    for name, value in vars(settings).items():
        if value is None:
            value = ""  # anonymous broker: the firmware sees an empty user and connects without
        _set_path(config, key_path(template, name), value)
    return config


def masked(config: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    """The config with its secrets replaced, for printing."""
    shown = copy.deepcopy(config)
    for name in SECRET_SETTINGS:
        path = key_path(template, name)
        node: Any = shown
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        if node.get(leaf):
            node[leaf] = "********"
    return shown


def config_bytes(config: dict[str, Any]) -> bytes:
    return (json.dumps(config, indent=2, sort_keys=False) + "\n").encode()


def read_path(config: dict[str, Any], template: dict[str, Any], setting: str) -> Any:
    node: Any = config
    for part in key_path(template, setting).split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def lan_address() -> str | None:
    """This computer's LAN IPv4 address: the source address of its default route.

    A UDP `connect` only asks the kernel for a route; no packet is sent. The target is in the
    TEST-NET-1 documentation range, so nothing would answer even if something were sent.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            address = s.getsockname()[0]
        except OSError:
            return None
    if ipaddress.ip_address(address).is_loopback or address == "0.0.0.0":
        return None
    return address


def valid_device_id(name: str) -> bool:
    import re

    return re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", name) is not None
