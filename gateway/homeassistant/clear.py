"""Taking a box out of Home Assistant from outside the running bridge (`parcelbox device remove`), and
the paho client both make.

Why apart from the bridge: the CLI clears a removed box at once over a short-lived connection of its
own, with no worker, bus or state file; what it publishes is `discovery`'s (every config a box can have,
then its retained state, availability and image topics, all emptied).
"""

from __future__ import annotations

import logging
import time
import uuid

import paho.mqtt.client as mqtt

from gateway.brokeraddr import BrokerAddress, parse_broker_url
from gateway.homeassistant import discovery as d
from gateway.homeassistant.discovery import HAConfig
from gateway.protocol import valid_device_id

log = logging.getLogger(__name__)


def make_client(addr: BrokerAddress, client_id: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if addr.username is not None:
        c.username_pw_set(addr.username, addr.password)
    if addr.tls:
        c.tls_set()
    return c


def clear_device(
    target: mqtt.Client | str,
    device: str,
    cfg: HAConfig,
    *,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,
) -> int:
    """Remove a box from Home Assistant: empty retained payloads on all its discovery configs, then on
    its state, availability and image topics. Returns how many topics were cleared.

    `target` is a connected paho client or a broker URL (a short-lived connection is made). Used by
    `parcelbox device remove`; safe to call for a box that was never announced.
    """
    if not valid_device_id(device):
        raise ValueError(f"invalid device id {device!r}")
    topics = d.box_config_topics(cfg, device) + d.retained_box_topics(cfg, device)
    own = isinstance(target, str)
    client = target if isinstance(target, mqtt.Client) else None
    if client is None:
        addr = parse_broker_url(str(target), username, password)
        client = make_client(addr, f"parcelbox-ha-clear-{uuid.uuid4().hex[:8]}")
        client.connect(addr.host, addr.port, keepalive=30)
        client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not client.is_connected():
            if time.monotonic() > deadline:
                raise TimeoutError("could not connect to the broker to clear Home Assistant configs")
            time.sleep(0.02)
        infos = [client.publish(t, b"", qos=1, retain=True) for t in topics]
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError("the broker did not confirm clearing the Home Assistant configs")
    finally:
        if own:
            client.disconnect()
            client.loop_stop()
    log.info("homeassistant: cleared %d topics of box %s", len(topics), device)
    return len(topics)
