"""The gateway's MQTT link: paho-mqtt 2.x with a persistent session and thin callbacks.

Callbacks never touch disk, Pillow or the network: `on_message` only copies the
topic and payload onto the service's queue, so the network loop keeps its
keepalive whatever the workers are doing. Reconnects use paho's own backoff.
The session is persistent (MQTT 3.1.1, clean_session=False) with a client id that
is stable per data folder, so QoS 1 messages published while the gateway was
down are delivered when it comes back.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from gateway.brokeraddr import BrokerAddress, parse_broker_url
from gateway.protocol import subscriptions
from gateway.retained import RetainedGuard, Verdict

log = logging.getLogger(__name__)

# (topic, payload, received at, retained): `retained` marks a copy the broker replays from its
# retained store because we (re)subscribed, said by the box at some earlier, unknown time.
Deliver = Callable[[str, bytes, float, bool], None]
# (reason, detail, where): how a rejected message is counted and logged (gateway.health.Rejections).
Reject = Callable[[str, str, str], None]


def _no_delay(client: mqtt.Client) -> None:
    """Turn Nagle off on paho's socket (paho leaves it on). An ack is a small packet written right
    after the small PUBACKs of the photo's chunks; with Nagle it waits for the broker to ACK those,
    which a delayed ACK postpones by up to 40 ms (bench/latency.py measured it on the floor)."""
    sock = client.socket()
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            log.debug("TCP_NODELAY not set: %s", exc)


class MqttLink:
    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        prefix: str,
        deliver: Deliver,
        username: str = "",
        password: str = "",
        keepalive: int = 30,
        reject: Reject | None = None,
    ) -> None:
        addr = parse_broker_url(url, username, password)
        self.host = addr.host
        self.port = addr.port
        self.tls = addr.tls
        self.username = addr.username or ""
        self.password = addr.password or ""
        self.prefix = prefix
        self.deliver = deliver
        self.reject = reject
        # Retained junk on topics the protocol never retains (gateway/retained.py); paho's thread only.
        self.retained = RetainedGuard(prefix)
        self.keepalive = keepalive
        self.connected = threading.Event()
        self.connects = 0
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.enable_logger(logging.getLogger("gateway.mqtt"))
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        # No client-side limit on QoS 1 messages in flight or queued while offline: acks must not be dropped.
        self.client.max_queued_messages_set(0)
        if self.username:
            self.client.username_pw_set(self.username, self.password or None)
        if self.tls:
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self._sub_mid: int | None = None
        self.client.on_message = self._on_message

    @property
    def endpoint(self) -> str:
        return BrokerAddress(self.host, self.port, self.tls).endpoint

    def _on_connect(self, client: mqtt.Client, _ud, _flags, reason_code, _props) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self.endpoint, reason_code)
            return
        self.connects += 1
        _no_delay(client)
        # `connected` is set on SUBACK, not here: a box publishing between CONNACK and the broker
        # processing our SUBSCRIBE would otherwise be lost on a fresh session.
        _rc, self._sub_mid = client.subscribe([(t, 1) for t in subscriptions(self.prefix)])
        log.info("connected to broker %s (session present: %s)", self.endpoint, _flags.session_present)

    def _on_subscribe(self, _client, _ud, mid, reason_codes, _props) -> None:
        if mid != self._sub_mid:
            return
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker %s refused our subscriptions: %s", self.endpoint, failed)
            return
        self.connected.set()

    def _on_disconnect(self, _client, _ud, _flags, reason_code, _props) -> None:
        self.connected.clear()
        if reason_code.is_failure or reason_code.value != 0:
            log.warning(
                "disconnected from broker %s: %s; paho reconnects with backoff", self.endpoint, reason_code
            )

    def _on_message(self, client: mqtt.Client, _ud, msg: mqtt.MQTTMessage) -> None:
        payload, retained = bytes(msg.payload), bool(msg.retain)
        verdict = self.retained.check(msg.topic, payload, retained)
        if verdict is Verdict.JUNK:
            # An empty retained publish deletes it from the broker: replayed this once, never again.
            # The gateway's login may write every topic (gateway/broker.py acl_text: `readwrite #`).
            client.publish(msg.topic, b"", qos=1, retain=True)
            detail = f"{len(payload)} bytes retained where the protocol never retains; cleared on the broker"
            if self.reject is not None:
                self.reject("retained_junk", detail, msg.topic[:120])
            else:
                log.warning("rejected %s: retained_junk (%s)", msg.topic[:120], detail)
            return
        if verdict is Verdict.ECHO:
            return  # our own clearing publish, forwarded back to us
        self.deliver(msg.topic, payload, time.time(), retained)

    def start(self, wait_s: float = 0.0) -> None:
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        if wait_s:
            self.connected.wait(wait_s)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))

    def stop(self) -> None:
        # paho 2.2's network thread may run its loop once more after DISCONNECT and log "Client is not
        # connected" at ERROR on every clean stop; nothing it says from here on is news.
        self.client.disable_logger()
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            self.connected.clear()
