"""The Home Assistant bridge: keeps Home Assistant's view of every box current over MQTT.

It has its own MQTT connection, whose last will marks the gateway `offline` for Home Assistant.
Bus handlers (called on the publisher's thread) and paho callbacks (on paho's network thread) only
record what needs doing (`pending`, after `inbound` sorted the message); one worker thread takes it
all at once and hands it to `publisher`, which does every read from the gateway and every publish.
This module is the plumbing: connection, subscriptions, threads, lifecycle. The decisions are pure
modules beside it, each tested by tables: `sync` (the steps of a turn), `messages` and `discovery`
(what is published), `image` (which photo bytes), `commands` (whether a press or install is acted on),
`roster` (which boxes to show or clear as the device registry changes, across restarts).

What it publishes and why is in docs/homeassistant.md.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from gateway.homeassistant import inbound
from gateway.homeassistant.clear import make_client
from gateway.homeassistant.discovery import HAConfig
from gateway.homeassistant.image import PhotoLedger
from gateway.homeassistant.pending import PendingWork
from gateway.homeassistant.publisher import Publisher
from gateway.homeassistant.roster import RegistryLike, Roster
from gateway.ports import GatewayPort
from gateway.protocol import valid_device_id

__all__ = ["HAConfig", "HomeAssistantBridge"]

log = logging.getLogger(__name__)


_MAX_BACKOFF_S = 30.0
# The sync probe normally returns within milliseconds; a broker that silently drops our publishes to it
# (an ACL without write access there) must not keep Home Assistant from being told anything.
_PROBE_TIMEOUT_S = 5.0


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
        self._roster = Roster()  # registered, removed and unconfirmed-removed boxes; kept from the bus
        self._ha_online: bool | None = None  # from Home Assistant's birth / last will; None: not known

        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._busy = False
        self._pending = PendingWork()  # guarded by _lock
        # What the broker holds of each image (written by paho's thread, under _lock) and what this session
        # sent: an image is published only when it differs (see `image`).
        self._photos = PhotoLedger()
        self._probe: str | None = None  # sync probe in flight: the retained images are not all in yet
        self._probe_at = 0.0
        self._sub_mid: int | None = None
        self._retry_at = 0.0
        self._backoff = 1.0

        self.counters: Counter[str] = Counter()
        self._counters_lock = threading.Lock()  # bumped from the bus, paho and worker threads
        self._unsubscribe: list[Callable[[], None]] = []
        self._worker: threading.Thread | None = None
        self._turns = Publisher(  # everything the worker thread does with a batch
            port,
            self.cfg,
            send=self._send,
            lock=self._lock,
            pending=self._pending,
            roster=self._roster,
            photos=self._photos,
            ha_online=lambda: self._ha_online,
            count=self._count,
            logger=self.log,
            clock=clock,
            registry=registry,
            state_path=self._state_path,
        )

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
        from gateway.homeassistant.component import bridge_for_service

        return bridge_for_service(cls, service, ha)

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the bus, connect, start the worker. A broker that is down is retried in the background."""
        if self._worker is not None:
            return
        addr = self._resolve()
        self._client = self._new_client(addr)
        if self._registry is not None:
            try:
                self._turns.load_registry()
            except Exception as exc:  # an unreadable registry must not stop the gateway from starting
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

    def _send(self, topic: str, payload: bytes, retain: bool) -> bool:
        """Hand a message to paho (QoS 1); False when it could not (lost connection: on_connect
        schedules a full resync, which repeats it)."""
        return self._client.publish(topic, payload, qos=1, retain=retain).rc == mqtt.MQTT_ERR_SUCCESS

    def _count(self, key: str) -> None:
        with self._counters_lock:
            self.counters[key] += 1

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once connected with no work pending or in progress (for tests and orderly shutdowns)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while True:
                if self.connected and self._probe is None and not self._busy and not self._pending.has_work():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))

    def remove_device(self, device: str) -> None:
        """Clear a box from Home Assistant and stop announcing it (done by the worker) until
        `restore_device` (the registry watch calls it when the box is registered again)."""
        if valid_device_id(device):
            self._mark(lambda: self._pending.remove(device))

    def restore_device(self, device: str) -> None:
        """Announce a previously removed box again."""
        if valid_device_id(device):
            self._mark(lambda: self._pending.restore(device))

    # --- producers: bus and paho threads (record only, never block) -----------------------------------------

    def _mark(self, change: Callable[[], object]) -> None:
        with self._lock:
            change()
        self._wake.set()

    def _on_device_changed(self, _topic: str, data: dict[str, Any]) -> None:
        device = inbound.bus_device(data)
        if device is None:
            self._count("bus_rejected.bad_device")
            return
        self._mark(lambda: self._pending.device_changed(device, dict(data)))

    def _on_event_stored(self, _topic: str, data: dict[str, Any]) -> None:
        ev = inbound.bus_event(data)
        if ev is None:
            self._count("bus_rejected.bad_event")
            return
        self._mark(lambda: self._pending.event_stored(ev.device, ev.kind, ev.event_id, ev.has_photo))

    def _on_storage_state(self, _topic: str, data: dict[str, Any]) -> None:
        if isinstance(data, dict):
            self._mark(lambda: self._pending.storage_state(data))

    def _on_ota_changed(self, _topic: str, data: dict[str, Any]) -> None:
        device = inbound.bus_device(data)
        if device is None:
            self._count("bus_rejected.bad_device")
            return
        self._mark(lambda: self._pending.firmware_moved(device))

    def _registry_change(self, data: dict[str, Any]) -> str | None:
        """The device a DEVICE_REMOVED / DEVICE_REGISTERED is about; its `registered` list becomes ours."""
        change = inbound.bus_registry_change(data)
        if change is None:
            self._count("bus_rejected.bad_registry_change")
            return None
        with self._lock:
            self._roster.follow(change.registered)
        return change.device

    def _on_device_removed(self, _topic: str, data: dict[str, Any]) -> None:
        device = self._registry_change(data)
        if device is not None:
            self.remove_device(device)  # the worker saves the state file with it

    def _on_device_registered(self, _topic: str, data: dict[str, Any]) -> None:
        device = self._registry_change(data)
        if device is None:
            return
        if device in self._roster.removed:
            self.restore_device(device)
            return
        # Newly registered: announced at once (unavailable until it connects), under its name.
        if self._registry is not None:
            try:
                for c in self._registry.list():
                    if c.device == device:
                        self._roster.names[device] = getattr(c, "name", None) or device
            except Exception:  # unreadable right now: the id is a fine name until then
                self._count("registry_errors")
        self._mark(lambda: self._pending.device_changed(device, None))

    def _on_whatsapp_state(self, _topic: str, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            self._count("bus_rejected.bad_whatsapp")
            return
        payload = d.whatsapp_payload(data)
        self._mark(lambda: self._pending.whatsapp_state(payload))

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if getattr(reason, "is_failure", False):
            self.log.warning("homeassistant: broker refused the connection: %s", reason)
            return
        client.publish(d.gateway_availability_topic(self.cfg), d.PAYLOAD_ONLINE, qos=1, retain=True)
        with self._lock:
            self._ha_online = None
            self._photos.retained.clear()
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
            self._mark(self._pending.full_resync)
            return
        # Comes back after every retained image of the subscription (see `discovery.sync_probe_topic`).
        client.publish(d.sync_probe_topic(self.cfg), (self._probe or "").encode(), qos=1, retain=False)

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if not self._stop.is_set():
            self.log.warning("homeassistant: disconnected from broker (%s); paho reconnects", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        match inbound.classify(self.cfg, msg.topic, bytes(msg.payload)):
            case inbound.HomeAssistantStatus(online=True):

                def birth() -> None:
                    self._ha_online = True
                    self._pending.ha_birth()

                self._mark(birth)
            case inbound.HomeAssistantStatus(online=False):
                with self._lock:
                    self._ha_online = False
            case inbound.SyncProbe(token=token) if self._probe is not None and token == self._probe:

                def synced() -> None:
                    # The broker may have restarted without its retained messages: publish everything
                    # again (photos only where the broker's copy differs).
                    self._probe = None
                    self._pending.full_resync()

                self._mark(synced)
            case inbound.RetainedImage(device=device, kind=kind, sha256=sha):
                with self._lock:
                    self._photos.broker_holds((device, kind), sha)
            case inbound.Install(device=device, payload=payload):
                self._mark(lambda: self._pending.install(device, payload))
            case inbound.Press(device=device, payload=payload):
                self._mark(lambda: self._pending.press(device, payload))
            case inbound.Unexpected(topic=topic):
                self._count("press_rejected.bad_topic")
                self.log.warning("homeassistant: ignored message on %r", topic[:120])

    # --- worker ---------------------------------------------------------------------------------------------

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
                    self._pending.full_resync()
            if self._registry is not None and self._roster.registered is None:
                self._turns.retry_registry()
            with self._lock:
                batch = self._pending.take()
                self._busy = True
            try:
                self._turns.turn(batch)
                self._backoff = 1.0
            except Exception as exc:  # a failing port or disk must not kill the worker
                self._count("errors")
                self.log.exception(
                    "homeassistant: update failed (%s); retrying everything in %.0f s", exc, self._backoff
                )
                self._retry_at = self._clock() + self._backoff
                self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)
                with self._lock:
                    self._pending.retry(batch)  # states and photos are rebuilt from the port; presses kept
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()
        with self._idle:
            self._idle.notify_all()
