"""The Home Assistant bridge: keeps Home Assistant's view of every box current over MQTT.

It has its own MQTT connection, whose last will marks the gateway `offline` for Home Assistant.
Bus handlers (called on the publisher's thread) and paho callbacks (on paho's network thread) only
record what needs doing; one worker thread does every read from the gateway and every publish.
Pending work is coalesced (latest state per box, latest photo per box and kind), so a burst of
status messages costs one publish and memory stays bounded by the number of boxes.

What it publishes and why is in `gateway.homeassistant.discovery` and docs/homeassistant.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from gateway.brokeraddr import BrokerAddress, parse_broker_url
from gateway.bus import (
    DEVICE_CHANGED,
    DEVICE_REGISTERED,
    DEVICE_REMOVED,
    EVENT_STORED,
    OTA_CHANGED,
    STORAGE_STATE,
    WHATSAPP_STATE,
)
from gateway.homeassistant import discovery as d
from gateway.homeassistant.discovery import HAConfig
from gateway.ports import GatewayPort
from gateway.protocol import valid_device_id, valid_msg_id
from gateway.storage import atomic_write_bytes

log = logging.getLogger(__name__)


_MAX_BACKOFF_S = 30.0
# The sync probe normally returns within milliseconds; a broker that silently drops our publishes to it
# (an ACL without write access there) must not keep Home Assistant from being told anything.
_PROBE_TIMEOUT_S = 5.0


# --- MQTT connection helpers ---------------------------------------------------------------------


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


class RegistryLike(Protocol):
    """What the bridge needs of `gateway.devices.DeviceRegistry`."""

    def mtime(self) -> float: ...

    def list(self) -> list[Any]: ...


# --- the bridge ---------------------------------------------------------------------------------------


class HomeAssistantBridge:
    """Publishes discovery configs, states and photos for every box; turns button presses into commands.

    `start()` connects (paho's own reconnect backoff takes over from then on) and starts the worker;
    `stop()` marks the gateway offline and disconnects. Never raises into the bus or paho.
    """

    name = "homeassistant"
    summary: str | None = None

    def __init__(
        self,
        port: GatewayPort,
        broker: str | Callable[[], BrokerAddress],
        cfg: HAConfig | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        registry: RegistryLike | None = None,
        state_path: Path | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`broker` is a URL, or a function returning the address at `start()` (the gateway knows its
        managed broker's address and password only once it runs). With a device `registry`, a box
        removed from it (`parcelbox device remove`) is cleared from Home Assistant; with a `state_path`
        too, that also holds for a box removed while the gateway was not running."""
        self.port = port
        self.cfg = cfg or HAConfig()
        self.log = logger or log
        self._clock = clock
        if isinstance(broker, str):
            fixed = parse_broker_url(broker, username, password)
            self._resolve: Callable[[], BrokerAddress] = lambda: fixed
        else:
            self._resolve = broker
        self._client_id = client_id or f"parcelbox-ha-{self.cfg.gateway_id}"
        self._client = self._new_client(BrokerAddress("127.0.0.1", 1883, False, None, None))
        self._registry = registry
        self._state_path = Path(state_path) if state_path is not None else None
        # Registered boxes (None: the registry was unreadable at start); kept up to date from the bus.
        self._registry_seen: set[str] | None = None
        self._registry_names: dict[str, str] = {}  # registered box -> its name, for boxes never heard from
        self._removed: set[str] = set()  # removed while running: not announced again from the port's list
        # Removed boxes whose removal Home Assistant may not have seen (it was down): sent again at every
        # start and after its birth message, which confirms it (see `discovery.removal_messages`).
        self._tombstones: set[str] = set()
        self._ha_online: bool | None = None  # from Home Assistant's birth / last will; None: not known

        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._busy = False
        # Pending work, coalesced; guarded by _lock.
        self._full_resync = False  # configs + states + photos (after each connect)
        self._discovery_resync = False  # configs + states (Home Assistant came back)
        self._devices: dict[str, dict[str, Any] | None] = {}  # None: read it from the port
        self._images: dict[tuple[str, str], str] = {}  # (device, kind) -> event id
        self._presses: dict[str, bytes] = {}
        self._installs: dict[str, bytes] = {}  # update entity's install action, per box
        self._firmware: set[str] = set()  # boxes whose firmware or update progress moved
        self._removals: set[str] = set()
        self._restores: set[str] = set()
        self._whatsapp: bytes | None = None  # "WhatsApp linked" ON/OFF; None: WhatsApp not enabled
        self._whatsapp_dirty = False
        self._storage: dict[str, Any] | None = None  # the service's last STORAGE_STATE, to publish
        self._storage_dirty = False
        self._ha_birth = False  # Home Assistant (re)started: it has seen nothing we sent before
        # sha256 of each image retained on the broker, read back through our own subscription; an image
        # is published only when it differs (Home Assistant's image entity changes state on every
        # message, so a re-sent photo fired automations). Written by paho's thread, under _lock.
        self._retained_images: dict[tuple[str, str], str] = {}
        self._probe: str | None = None  # sync probe in flight: the retained images are not all in yet
        self._probe_at = 0.0
        self._sub_mid: int | None = None
        # Worker-only state.
        self._published: dict[str, bytes] = {}  # topic -> payload last published this session
        self._image_sent: dict[tuple[str, str], str] = {}
        self._battery_seen: set[str] = set()
        self._known: set[str] = set()
        self._last_press: dict[str, float] = {}
        self._retry_at = 0.0
        self._backoff = 1.0

        self.counters: Counter[str] = Counter()
        self._counters_lock = threading.Lock()  # bumped from the bus, paho and worker threads
        self._unsubscribe: list[Callable[[], None]] = []
        self._worker: threading.Thread | None = None

    def _new_client(self, addr: BrokerAddress) -> mqtt.Client:
        c = make_client(addr, self._client_id)
        # A stable client id: a restarted gateway takes over its old session, so the old connection's
        # last will ("offline") fires before the new "online", never after it.
        c.will_set(d.gateway_availability_topic(self.cfg), d.PAYLOAD_OFFLINE, qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.enable_logger(logging.getLogger(__name__ + ".paho"))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        return c

    @classmethod
    def for_service(cls, service: Any, ha: HAConfig) -> HomeAssistantBridge:
        """The bridge as a `parcelbox run` component: the gateway's broker, login and device registry."""

        def resolve() -> BrokerAddress:
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

        data_dir = getattr(service, "data_dir", None)
        bridge = cls(
            service,
            resolve,
            ha,
            registry=getattr(service, "registry", None),
            state_path=Path(data_dir) / "homeassistant.json" if data_dir else None,
        )
        bridge.summary = f"home assistant  discovery on {ha.prefix}/, states on {ha.base}/"
        return bridge

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the bus, connect, start the worker. A broker that is down is retried in the background."""
        if self._worker is not None:
            return
        addr = self._resolve()
        self._client = self._new_client(addr)
        if self._registry is not None:
            try:
                self._load_registry_state()
            except Exception as exc:  # an unreadable registry must not stop the gateway from starting
                self._registry_seen = None
                self._count("registry_errors")
                self.log.warning("homeassistant: not following device removals (registry: %s)", exc)
        bus = self.port.bus
        self._unsubscribe = [
            bus.subscribe(self._on_device_changed, DEVICE_CHANGED),
            bus.subscribe(self._on_event_stored, EVENT_STORED),
            bus.subscribe(self._on_device_removed, DEVICE_REMOVED),
            bus.subscribe(self._on_device_registered, DEVICE_REGISTERED),
            bus.subscribe(self._on_whatsapp_state, WHATSAPP_STATE),
            bus.subscribe(self._on_storage_state, STORAGE_STATE),
            bus.subscribe(self._on_ota_changed, OTA_CHANGED),
        ]
        latest = getattr(self.port, "storage_state", None)
        if callable(latest):  # published before we subscribed
            state = latest()
            if state:
                self._on_storage_state(STORAGE_STATE, state)
        self._stop.clear()
        self._worker = threading.Thread(target=self._run, name="homeassistant-bridge", daemon=True)
        self._worker.start()
        try:
            self._client.connect_async(addr.host, addr.port, keepalive=30)
        except (OSError, ValueError) as exc:
            self.log.warning("homeassistant: cannot reach broker %s:%s yet (%s)", addr.host, addr.port, exc)
        self._client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Mark the gateway offline (a clean disconnect sends no last will) and disconnect."""
        for unsub in self._unsubscribe:
            unsub()
        self._unsubscribe = []
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout)
            self._worker = None
        try:
            if self._client.is_connected():
                info = self._client.publish(
                    d.gateway_availability_topic(self.cfg), d.PAYLOAD_OFFLINE, qos=1, retain=True
                )
                info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            # The connection dropped between the check and the publish (paho raises for a message it
            # could not send): the broker publishes our last will ("offline") instead. Stop all the same,
            # or paho's network thread would go on reconnecting and logging for the rest of the process.
            self.log.info(
                "homeassistant: gateway not marked offline at stop (%s); the last will does it", exc
            )
        finally:
            # paho's network thread may run once more after DISCONNECT and log a "not connected" error;
            # nothing it says after this point is news.
            self._client.disable_logger()
            self._client.disconnect()
            self._client.loop_stop()

    close = stop

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def health(self) -> dict[str, Any]:
        """Counters (published, presses.*, press_rejected.<reason>, errors) and the connection state."""
        with self._counters_lock:
            out: dict[str, Any] = dict(self.counters)
        out["connected"] = self.connected
        return out

    def _count(self, key: str) -> None:
        with self._counters_lock:
            self.counters[key] += 1

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once connected with no work pending or in progress (for tests and orderly shutdowns)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while True:
                if self.connected and self._probe is None and not self._busy and not self._has_work():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))

    def remove_device(self, device: str) -> None:
        """Clear a box from Home Assistant and stop announcing it (done by the worker) until
        `restore_device` (the registry watch calls it when the box is registered again)."""
        if valid_device_id(device):
            self._mark(lambda: self._removals.add(device))

    def restore_device(self, device: str) -> None:
        """Announce a previously removed box again."""

        def change() -> None:
            self._restores.add(device)
            self._devices[device] = None

        if valid_device_id(device):
            self._mark(change)

    # --- producers: bus and paho threads (record only, never block) -----------------------------------------

    def _mark(self, change: Callable[[], object]) -> None:
        with self._lock:
            change()
        self._wake.set()

    def _on_device_changed(self, _topic: str, data: dict[str, Any]) -> None:
        device = data.get("device") if isinstance(data, dict) else None
        if not valid_device_id(device):
            self._count("bus_rejected.bad_device")
            return
        self._mark(lambda: self._devices.__setitem__(device, dict(data)))

    def _on_event_stored(self, _topic: str, data: dict[str, Any]) -> None:
        device = data.get("device") if isinstance(data, dict) else None
        eid = data.get("id") if isinstance(data, dict) else None
        if not valid_device_id(device) or not valid_msg_id(eid):
            self._count("bus_rejected.bad_event")
            return
        kind = data.get("type")

        def change() -> None:
            # Waiting count and last delivery change with the event: read the fresh record from the port.
            self._devices[device] = None
            if kind in d.IMAGE_KINDS and data.get("photo"):
                self._images[(device, kind)] = eid

        self._mark(change)

    def _on_storage_state(self, _topic: str, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            return

        def change() -> None:
            self._storage = dict(data)
            self._storage_dirty = True

        self._mark(change)

    def _on_ota_changed(self, _topic: str, data: dict[str, Any]) -> None:
        device = data.get("device") if isinstance(data, dict) else None
        if not valid_device_id(device):
            self._count("bus_rejected.bad_device")
            return
        self._mark(lambda: self._firmware.add(device))

    def _registry_change(self, data: dict[str, Any]) -> str | None:
        """The device a DEVICE_REMOVED / DEVICE_REGISTERED is about; its `registered` list becomes ours."""
        device = data.get("device") if isinstance(data, dict) else None
        if not isinstance(device, str) or not valid_device_id(device):
            self._count("bus_rejected.bad_registry_change")
            return None
        registered = data.get("registered")
        # While still None (unreadable at start) the worker keeps reading it, to clear boxes removed offline.
        if isinstance(registered, list) and self._registry_seen is not None:
            with self._lock:
                self._registry_seen = {x for x in registered if isinstance(x, str) and valid_device_id(x)}
        return device

    def _on_device_removed(self, _topic: str, data: dict[str, Any]) -> None:
        device = self._registry_change(data)
        if device is not None:
            self.remove_device(device)  # the worker saves the state file with it

    def _on_device_registered(self, _topic: str, data: dict[str, Any]) -> None:
        device = self._registry_change(data)
        if device is None:
            return
        if device in self._removed:
            self.restore_device(device)
            return
        # Newly registered: announced at once (unavailable until it connects), under its name.
        if self._registry is not None:
            try:
                for c in self._registry.list():
                    if c.device == device:
                        self._registry_names[device] = getattr(c, "name", None) or device
            except Exception:  # unreadable right now: the id is a fine name until then
                self._count("registry_errors")
        self._mark(lambda: self._devices.__setitem__(device, None))

    def _on_whatsapp_state(self, _topic: str, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            self._count("bus_rejected.bad_whatsapp")
            return
        payload = d.whatsapp_payload(data)

        def change() -> None:
            if payload != self._whatsapp:
                self._whatsapp, self._whatsapp_dirty = payload, True

        self._mark(change)

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if getattr(reason, "is_failure", False):
            self.log.warning("homeassistant: broker refused the connection: %s", reason)
            return
        client.publish(d.gateway_availability_topic(self.cfg), d.PAYLOAD_ONLINE, qos=1, retain=True)
        with self._lock:
            self._ha_online = None
            self._retained_images.clear()
            self._probe = uuid.uuid4().hex
            self._probe_at = self._clock()
        _rc, self._sub_mid = client.subscribe(
            [
                (self.cfg.birth_topic, 1),
                (d.press_subscription(self.cfg), 1),
                (d.install_subscription(self.cfg), 1),
                (d.image_subscription(self.cfg), 1),
                (d.sync_probe_topic(self.cfg), 1),
            ]
        )
        self.log.info(
            "homeassistant: connected; discovery on %s/, states on %s/", self.cfg.prefix, self.cfg.base
        )

    def _on_subscribe(self, client: mqtt.Client, _userdata: Any, mid: int, reasons: Any, _props: Any) -> None:
        if mid != self._sub_mid:
            return
        if any(getattr(r, "is_failure", False) for r in reasons):
            # A broker ACL without read access to our own topics: we cannot tell which photos the
            # broker already holds, so every connect sends them again (as before).
            self.log.warning(
                "homeassistant: the broker refused a subscription (%s); photos are re-sent on every "
                "connect. Let this login read %s/#",
                [str(r) for r in reasons],
                self.cfg.base,
            )
            self._probe = None
            self._mark(lambda: setattr(self, "_full_resync", True))
            return
        # Comes back after every retained image of the subscription (see `discovery.sync_probe_topic`).
        client.publish(d.sync_probe_topic(self.cfg), (self._probe or "").encode(), qos=1, retain=False)

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if not self._stop.is_set():
            self.log.warning("homeassistant: disconnected from broker (%s); paho reconnects", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic, payload = msg.topic, bytes(msg.payload)
        if topic == self.cfg.birth_topic:
            if payload.strip() == d.PAYLOAD_ONLINE.encode():

                def birth() -> None:
                    self._ha_online = True
                    self._discovery_resync = self._ha_birth = True

                self._mark(birth)
            elif payload.strip() == d.PAYLOAD_OFFLINE.encode():
                with self._lock:
                    self._ha_online = False
            return
        if topic == d.sync_probe_topic(self.cfg):
            if self._probe is not None and payload.decode("ascii", "replace") == self._probe:

                def synced() -> None:
                    # The broker may have restarted without its retained messages: publish everything
                    # again (photos only where the broker's copy differs).
                    self._probe = None
                    self._full_resync = True

                self._mark(synced)
            return
        image = d.image_from_topic(self.cfg, topic)
        if image is not None:
            with self._lock:
                if payload:
                    self._retained_images[image] = hashlib.sha256(payload).hexdigest()
                else:
                    self._retained_images.pop(image, None)
            return
        installing = d.device_from_install_topic(self.cfg, topic)
        if installing is not None:
            self._mark(lambda: self._installs.__setitem__(installing, payload[:64]))
            return
        device = d.device_from_press_topic(self.cfg, topic)
        if device is None:
            self._count("press_rejected.bad_topic")
            self.log.warning("homeassistant: ignored message on %r", topic[:120])
            return
        self._mark(lambda: self._presses.__setitem__(device, payload[:64]))

    # --- worker ---------------------------------------------------------------------------------------------

    def _has_work(self) -> bool:
        return bool(
            self._full_resync
            or self._discovery_resync
            or self._devices
            or self._images
            or self._presses
            or self._installs
            or self._firmware
            or self._removals
            or self._restores
            or self._whatsapp_dirty
            or self._storage_dirty
            or self._ha_birth
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self._stop.is_set():
                break
            if not self._client.is_connected() or self._clock() < self._retry_at:
                continue
            if self._probe is not None and self._clock() - self._probe_at > _PROBE_TIMEOUT_S:
                self.log.warning(
                    "homeassistant: no answer on %s (broker ACL?); photos are re-sent on every connect",
                    d.sync_probe_topic(self.cfg),
                )
                with self._lock:
                    self._probe = None
                    self._full_resync = True
            if self._registry is not None and self._registry_seen is None:
                self._retry_registry()
            with self._lock:
                work = (
                    self._full_resync,
                    self._discovery_resync,
                    self._devices,
                    self._images,
                    self._presses,
                    self._removals,
                    self._restores,
                    self._ha_birth,
                )
                self._full_resync = self._discovery_resync = self._ha_birth = False
                self._devices, self._images, self._presses = {}, {}, {}
                self._removals, self._restores = set(), set()
                whatsapp, self._whatsapp_dirty = self._whatsapp if self._whatsapp_dirty else None, False
                # After a (re)connect or an HA restart the storage state is sent again with the configs.
                storage = self._storage if (self._storage_dirty or work[0] or work[1]) else None
                self._storage_dirty = False
                installs, self._installs = self._installs, {}
                firmware, self._firmware = self._firmware, set()
                self._busy = True
            try:
                self._process(*work)
                for device in sorted(firmware - set(installs)):
                    if device in self._known:
                        self._publish_update(device, force=False)
                for device, payload in installs.items():
                    self._install(device, payload)
                if whatsapp is not None and not (work[0] or work[1]):  # a resync already sent it
                    self._publish_whatsapp(whatsapp, force=False)
                if storage is not None:
                    payload = d.storage_payload(storage)
                    self._publish(d.gateway_storage_topic(self.cfg), payload, force=work[0] or work[1])
                self._backoff = 1.0
            except Exception as exc:  # a failing port or disk must not kill the worker
                self._count("errors")
                presses = work[4]
                self.log.exception(
                    "homeassistant: update failed (%s); retrying everything in %.0f s", exc, self._backoff
                )
                self._retry_at = self._clock() + self._backoff
                self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)
                with self._lock:
                    self._full_resync = True  # states and photos are rebuilt from the port
                    for device, payload in presses.items():  # presses are not: keep them
                        self._presses.setdefault(device, payload)
                    for device, payload in installs.items():
                        self._installs.setdefault(device, payload)
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()
        with self._idle:
            self._idle.notify_all()

    def _load_registry_state(self) -> None:
        """Registry snapshot at start, compared with the one saved last time: boxes removed while the
        gateway was down are cleared now."""
        assert self._registry is not None
        creds = self._registry.list()
        now = {c.device for c in creds}
        self._registry_names = {c.device: getattr(c, "name", None) or c.device for c in creds}
        self._registry_seen = now
        if self._state_path is None:
            return
        try:
            saved = json.loads(self._state_path.read_bytes())
            before = {x for x in saved.get("registered", []) if valid_device_id(x)}
            removed = {x for x in saved.get("removed", []) if valid_device_id(x)}
            unseen = {x for x in saved.get("unconfirmed_removals", []) if valid_device_id(x)}
        except FileNotFoundError:
            before, removed, unseen = set(), set(), set()
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            self.log.warning("homeassistant: ignoring unreadable %s: %s", self._state_path, exc)
            self._count("state_file_errors")
            before, removed, unseen = set(), set(), set()
        self._removed = (removed - now) | (before - now)
        self._tombstones = unseen - now
        with self._lock:
            self._removals |= before - now
        self._save_registry_state()

    def _save_registry_state(self) -> None:
        if self._state_path is None or self._registry_seen is None:
            return
        body = json.dumps(
            {
                "v": 1,
                "registered": sorted(self._registry_seen),
                "removed": sorted(self._removed),
                "unconfirmed_removals": sorted(self._tombstones),
            }
        ).encode()
        try:
            atomic_write_bytes(self._state_path, body, make_parent=True)
        except OSError as exc:
            self._count("state_file_errors")
            self.log.warning("homeassistant: cannot write %s: %s", self._state_path, exc)

    def _retry_registry(self) -> None:
        """The registry was unreadable at start: read it once it is readable, to clear the boxes removed
        while the gateway was down. Changes while running come from the bus (DEVICE_REMOVED,
        DEVICE_REGISTERED, published by the service): the bridge never watches devices.json itself."""
        try:
            self._load_registry_state()
            self.log.info("homeassistant: device registry readable again")
        except Exception:
            self._count("registry_errors")

    def _process(
        self,
        full: bool,
        discovery: bool,
        devices: dict[str, dict[str, Any] | None],
        images: dict[tuple[str, str], str],
        presses: dict[str, bytes],
        removals: set[str],
        restores: set[str],
        ha_birth: bool = False,
    ) -> None:
        for device in sorted(removals):
            self._removed.add(device)
            self._clear(device)
            devices.pop(device, None)
            presses.pop(device, None)
            for key in [k for k in images if k[0] == device]:
                del images[key]
        self._removed -= restores
        self._tombstones -= restores
        for device in restores:
            devices.setdefault(device, None)
            # Its images were cleared with it: send the last photos again, or both image entities
            # stay "unknown" until the box's next photo.
            for kind in d.IMAGE_KINDS:
                eid = self._latest_event_with_photo(device, kind)
                if eid:
                    images.setdefault((device, kind), eid)
        if (full or ha_birth) and self._tombstones:
            # Home Assistant may have been down when these boxes were removed: remove them again. After
            # its birth message it is listening, so that removal is the one it sees.
            for device in sorted(self._tombstones):
                self._send_removal(device)
            if ha_birth:
                self.log.info("homeassistant: removal of %s confirmed", ", ".join(sorted(self._tombstones)))
                self._tombstones.clear()
        if removals or restores or ha_birth:
            self._save_registry_state()
        if full or discovery:
            records = self._list_devices()
            self._publish_gateway(force=True)
            current = {r["device"] for r in records}
            for gone in sorted(self._known - current):
                # Removed from the gateway while we were running: take it out of Home Assistant too.
                self._clear(gone)
            for rec in records:
                self._publish_box(rec, force=True)
                devices.pop(rec["device"], None)
            if full:
                self._image_sent.clear()
                for rec in records:
                    for kind in d.IMAGE_KINDS:
                        if (rec["device"], kind) not in images:
                            eid = self._latest_event_with_photo(rec["device"], kind)
                            if eid:
                                images[(rec["device"], kind)] = eid
        if devices:
            fresh: dict[str, dict[str, Any]] | None = None
            for device, box in sorted(devices.items()):
                if device in self._removed:
                    self._count("skipped.removed_device")
                    continue
                if box is None:
                    if fresh is None:
                        fresh = {r["device"]: dict(r) for r in self._list_devices()}
                    box = fresh.get(device)
                    if box is None:
                        self._count("skipped.unknown_device")
                        continue
                self._publish_box(box, force=False)
        for (device, kind), eid in sorted(images.items()):
            if device in self._known:
                self._publish_image(device, kind, eid)
        for device, payload in presses.items():
            self._press(device, payload)

    # --- worker helpers -----------------------------------------------------------------------------------------

    def _list_devices(self) -> list[dict[str, Any]]:
        # The gateway's store keeps the history of removed boxes; Home Assistant should not show them.
        out = [
            dict(r)
            for r in self.port.list_devices()
            if valid_device_id(r.get("device")) and r["device"] not in self._removed
        ]
        if self._registry_seen is not None:
            # Registered but never heard from: announced now, unavailable until it connects.
            have = {r["device"] for r in out}
            for device in sorted(self._registry_seen - have - self._removed):
                if valid_device_id(device):
                    name = self._registry_names.get(device) or device
                    out.append({"device": device, "name": name, "online": False, "waiting": 0})
        return out

    def _publish(self, topic: str, payload: bytes, *, force: bool, retain: bool = True) -> None:
        if not force and self._published.get(topic) == payload:
            return
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            # Lost connection: on_connect schedules a full resync, which repeats this.
            self._count("publish_failed")
            self._published.pop(topic, None)
            return
        self._published[topic] = payload
        self._count("published")

    def _publish_gateway(self, *, force: bool) -> None:
        for ent in d.gateway_entities(self.cfg):
            self._publish(ent.topic(self.cfg), ent.payload(), force=force)
        with self._lock:
            whatsapp = self._whatsapp
        if whatsapp is not None:
            self._publish_whatsapp(whatsapp, force=force)

    def _publish_whatsapp(self, payload: bytes, *, force: bool) -> None:
        ent = d.whatsapp_entity(self.cfg)
        self._publish(ent.topic(self.cfg), ent.payload(), force=force)  # config first, then its state
        self._publish(d.whatsapp_topic(self.cfg), payload, force=force)

    def _publish_box(self, rec: dict[str, Any], *, force: bool) -> None:
        device = rec["device"]
        if rec.get("battery_mv") is not None:
            self._battery_seen.add(device)
        # Configs first, so Home Assistant has the entity before its state arrives.
        for ent in d.box_entities(self.cfg, rec, with_battery=device in self._battery_seen):
            self._publish(ent.topic(self.cfg), ent.payload(), force=force)
        self._publish(d.availability_topic(self.cfg, device), d.availability_payload(rec), force=force)
        self._publish(d.state_topic(self.cfg, device), d.state_payload(rec), force=force)
        self._publish_update(device, force=force)
        self._known.add(device)

    def _publish_update(self, device: str, *, force: bool) -> None:
        """The update entity's state: the box's firmware against this checkout's, and the progress."""
        status = getattr(self.port, "firmware_status", None)
        if not callable(status):  # a gateway without over-the-air updates: the entity stays unknown
            return
        self._publish(d.update_topic(self.cfg, device), d.update_payload(status(device)), force=force)

    def _install(self, device: str, payload: bytes) -> None:
        """Home Assistant's install action: the offer `parcelbox device update DEVICE` makes."""
        if payload.strip() != d.PAYLOAD_INSTALL.encode():
            self._reject_install(device, "bad_payload", repr(payload[:32]))
            return
        if device not in {r["device"] for r in self._list_devices()}:
            self._reject_install(device, "unknown_device", device)
            return
        offer = getattr(self.port, "offer_update", None)
        if not callable(offer):
            self._reject_install(device, "unsupported", "this gateway does not send updates")
            return
        try:
            sent = offer(device)
        except Exception as exc:  # UpdateRefused says why (no OTA firmware, no room, already running)
            self._reject_install(device, "refused", str(exc))
            self._publish_update(device, force=True)  # Home Assistant's "installing" spinner stops
            return
        self._count("installs.sent")
        self.log.info("homeassistant: update %s queued for %s", sent.get("id"), device)
        self._publish_update(device, force=False)

    def _reject_install(self, device: str, reason: str, detail: str) -> None:
        self._count(f"install_rejected.{reason}")
        self.log.warning("homeassistant: install for %s ignored: %s (%s)", device, reason, detail)

    def _latest_event_with_photo(self, device: str, kind: str) -> str | None:
        for ev in self.port.list_events(device=device, type=kind, limit=5):
            if ev.get("photo"):
                return ev["id"]
        return None

    def _publish_image(self, device: str, kind: str, eid: str) -> None:
        if self._image_sent.get((device, kind)) == eid:
            return
        data = self._image_bytes(device, eid)
        if data is None:
            self._count("image_missing")
            self.log.warning("homeassistant: no photo file for %s event %s; image not updated", device, eid)
            return
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            unchanged = self._retained_images.get((device, kind)) == sha
        if unchanged:  # the broker already holds exactly this photo: Home Assistant has it
            self._image_sent[(device, kind)] = eid
            self._count("images_unchanged")
            return
        with self._lock:
            self._retained_images[(device, kind)] = sha
        self._publish(d.image_topic(self.cfg, device, kind), data, force=True)
        self._published.pop(d.image_topic(self.cfg, device, kind), None)  # keep big payloads out of memory
        self._image_sent[(device, kind)] = eid
        self._count(f"images.{kind}")

    def _image_bytes(self, device: str, eid: str) -> bytes | None:
        """The alert copy as is (already compressed); from the original, a copy no larger than an alert copy."""
        alert = self.port.photo_path(device, eid, "alert")
        if alert is not None:
            try:
                return Path(alert).read_bytes()
            except OSError as exc:
                self.log.warning("homeassistant: cannot read %s: %s", alert, exc)
        original = self.port.photo_path(device, eid, "original")
        if original is None:
            return None
        try:
            return shrink_jpeg(Path(original).read_bytes(), self.cfg.image_max_px)
        except (OSError, ValueError) as exc:
            self.log.warning("homeassistant: cannot make an image from %s: %s", original, exc)
            return None

    def _press(self, device: str, payload: bytes) -> None:
        if payload.strip() != d.PAYLOAD_PRESS.encode():
            self._reject_press(device, "bad_payload", repr(payload[:32]))
            return
        if device not in {r["device"] for r in self._list_devices()}:
            self._reject_press(device, "unknown_device", device)
            return
        now = self._clock()
        last = self._last_press.get(device)
        if last is not None and now - last < self.cfg.snapshot_min_interval_s:
            self._reject_press(device, "too_soon", f"{now - last:.1f} s after the previous one")
            return
        self._last_press[device] = now
        try:
            cmd_id = self.port.send_command(device, "snapshot")
        except Exception as exc:
            self._count("presses.failed")
            self.log.warning("homeassistant: snapshot command for %s failed: %s", device, exc)
            return
        self._count("presses.sent")
        self.log.info("homeassistant: snapshot requested for %s (command %s)", device, cmd_id)

    def _reject_press(self, device: str, reason: str, detail: str) -> None:
        self._count(f"press_rejected.{reason}")
        self.log.warning("homeassistant: snapshot button for %s ignored: %s (%s)", device, reason, detail)

    def _clear(self, device: str) -> None:
        self._send_removal(device)
        if not self._ha_online:  # down, or not known to be up: repeat after its next birth message
            self._tombstones.add(device)
        with self._lock:
            for kind in d.IMAGE_KINDS:
                self._retained_images.pop((device, kind), None)
        self._known.discard(device)
        self._battery_seen.discard(device)
        for key in [k for k in self._image_sent if k[0] == device]:
            del self._image_sent[key]
        self._count("removed")

    def _send_removal(self, device: str) -> None:
        for topic, payload, retain in d.removal_messages(self.cfg, device):
            self._publish(topic, payload, force=True, retain=retain)
            self._published.pop(topic, None)


def shrink_jpeg(data: bytes, max_px: int, quality: int = 80) -> bytes:
    """A JPEG whose long edge is at most `max_px`, decoded at a DCT-reduced scale when possible."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                raise ValueError(f"not a JPEG ({im.format})")
            im.draft("RGB", (max_px, max_px))
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            rgb.thumbnail((max_px, max_px))
            out = io.BytesIO()
            rgb.save(out, "JPEG", quality=quality, optimize=True)
            return out.getvalue()
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(str(exc)) from None


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
    values = {k: v for k, v in dataclasses.asdict(section).items() if k in HAConfig.__dataclass_fields__}
    try:
        ha = HAConfig.from_mapping(values, protocol_prefix=config.broker.prefix)
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
        values = {k: v for k, v in dataclasses.asdict(section).items() if k in HAConfig.__dataclass_fields__}
        ha = HAConfig.from_mapping(values, protocol_prefix=config.broker.prefix)
        clear_device(
            config.broker.url,
            device,
            ha,
            username=config.broker.username or None,
            password=config.broker.password or None,
            timeout=timeout,
        )
    except Exception as exc:  # broker down, refused, bad settings: the gateway catches up later
        return f"Home Assistant: not cleared now ({exc}); the gateway clears it when it next runs."
    return f"Home Assistant: {device!r} and its entities removed."
