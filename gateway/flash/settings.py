"""What the gateway already knows that the box needs: the broker's port, the topic prefix, the
data folder, and the box's MQTT credentials from the device registry (`parcelbox device add NAME`).
The port of a running gateway's managed broker comes from `<data_dir>/broker.json` (it may have
moved off a taken port); otherwise from the config.

Read from the gateway's own config (`gateway.config.load_config`: TOML file, then environment), so
a box provisioned with defaults talks to the broker `parcelbox run` starts.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from gateway.broker import read_live_address
from gateway.brokeraddr import parse_broker_url
from gateway.config import ConfigError, load_config
from gateway.devices import DeviceRegistry
from gateway.flash.errors import FlashError


@dataclass
class GatewayView:
    data_dir: Path
    broker_host: str | None  # None: the managed broker on this computer (the box needs our LAN address)
    broker_port: int
    prefix: str
    managed_listen_host: str | None  # where the managed broker listens; None for an external broker
    live_broker_file: Path | None = None  # set when broker_port came from the running gateway's broker.json
    # The running managed broker's local listener (127.0.0.1): logins there keep their own client ids
    watch_url: str = ""


def gateway_view(config_path: str | None, data_dir: str | None) -> GatewayView:
    """The gateway's settings that matter for a box."""
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise FlashError(
            "settings", f"cannot read the gateway config: {e}", "fix it, or pass --config"
        ) from None
    broker = cfg.broker
    host: str | None = None
    listen: str | None = broker.listen_host
    port = broker.listen_port
    if broker.url:
        try:
            addr = parse_broker_url(broker.url)
        except ValueError as e:
            raise FlashError("settings", f"broker.url: {e}", "fix it in the gateway config") from None
        port = addr.port
        listen = None
        # An external broker on this computer is reached by the box through our LAN address.
        if not _is_local(addr.host):
            host = addr.host
    folder = Path(data_dir).expanduser() if data_dir else cfg.data_dir
    live_file = None
    watch = ""
    if not broker.url:
        # `parcelbox run` moves its broker off a taken port (a system Mosquitto on 1883) and says
        # where in <data_dir>/broker.json while it runs: that is the port the box must use.
        live = read_live_address(folder)
        if live is not None:
            port, listen, live_file = live.port, live.listen_host, live.path
            watch = live.local_url
    return GatewayView(
        data_dir=folder,
        broker_host=host,
        broker_port=port,
        prefix=broker.prefix,
        managed_listen_host=listen,
        live_broker_file=live_file,
        watch_url=watch,
    )


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def box_credentials(device: str, data_dir: Path) -> tuple[str, str]:
    """(username, password) from the device registry, or a FlashError saying how to create them."""
    try:
        creds = DeviceRegistry(data_dir).get(device)
    except (OSError, ValueError) as e:
        raise FlashError("settings", f"cannot read the device registry in {data_dir}: {e}") from None
    if creds is None:
        raise FlashError(
            "settings",
            f"unknown device {device!r}: it has no MQTT credentials in {data_dir} yet",
            f"create them first: parcelbox device add {device}  (or pass --mqtt-user/--mqtt-password)",
        )
    return creds.username, creds.password
