"""umqtt.simple's `MQTTClient` on paho-mqtt, for the firmware running under CPython.

The interface and behaviour copied are micropython-lib's umqtt.simple 1.8.0
(micropython/umqtt.simple/umqtt/simple.py, ee4bb8ff; the file itself is tests/mp/umqtt/simple.py):
a blocking QoS 1 `publish` that waits for its PUBACK and hands any message arriving meanwhile to
the callback, `check_msg` / `wait_msg` calling the callback from inside, `connect(clean_session,
timeout)` returning the session-present flag, `MQTTException(rc)` on a refused CONNACK and OSError
when the connection is gone. paho-mqtt is driven from the caller's thread (no network thread:
like umqtt, nothing happens between calls).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import paho.mqtt.client as paho


class MQTTException(Exception):
    pass


class PahoMQTTClient:
    """umqtt.simple's MQTTClient interface, backed by paho-mqtt driven from the caller's
    thread (no network thread: like umqtt, nothing happens between calls).

    Topics and payloads may be bytes, bytearray or memoryview (paho gets a bytes copy:
    CPython has RAM to spare; the board's umqtt writes the memoryview itself)."""

    def __init__(
        self,
        client_id,
        server,
        port=0,
        user=None,
        password=None,
        keepalive=0,
        ssl=None,
        timeout: float = 10.0,
    ) -> None:
        self.client_id = client_id.decode() if isinstance(client_id, (bytes, bytearray)) else client_id
        self.server = server
        self.port = port or (8883 if ssl else 1883)
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.timeout = timeout
        self.cb = None
        self.lw: tuple[str, bytes, int, bool] | None = None
        self.sock = None  # umqtt exposes its socket; the link closes it on errors
        self._c: paho.Client | None = None
        self._inbox: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._subacks: set[int] = set()
        self._connack: int | None = None
        self._session_present = False
        self._dead = False
        self.published = 0

    @staticmethod
    def _str(t) -> str:
        return bytes(t).decode() if not isinstance(t, str) else t

    def set_callback(self, f) -> None:
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0) -> None:
        assert 0 <= qos <= 2 and topic
        self.lw = (self._str(topic), bytes(msg), qos, bool(retain))

    def connect(self, clean_session=True, timeout=None):
        # `timeout` as umqtt.simple >= 1.5 takes it (the connect's socket timeout, seconds).
        if timeout is not None:
            self.timeout = min(self.timeout, float(timeout))
        self._teardown()
        c = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=bool(clean_session),
            protocol=paho.MQTTv311,
        )
        if self.user:
            c.username_pw_set(self._str(self.user), self._str(self.pswd or ""))
        if self.lw:
            c.will_set(*self.lw)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self._connack = None
        self._dead = False
        self._c = c
        try:
            c.connect(self.server, self.port, keepalive=self.keepalive or 60)
        except OSError:
            self._c = None
            raise
        self.sock = c.socket()
        self._loop_until(lambda: self._connack is not None, "CONNACK")
        if self._connack != 0:
            rc = self._connack
            self._teardown()
            raise MQTTException(rc)
        return 1 if self._session_present else 0

    def _on_connect(self, _c, _u, flags, reason_code, _props) -> None:
        self._connack = reason_code.value if hasattr(reason_code, "value") else int(reason_code)
        self._session_present = bool(getattr(flags, "session_present", False))

    def _on_disconnect(self, *_a) -> None:
        self._dead = True

    def _on_message(self, _c, _u, m) -> None:
        self._inbox.append((m.topic.encode(), bytes(m.payload)))

    def _on_subscribe(self, _c, _u, mid, _rc, _props) -> None:
        self._subacks.add(mid)

    def _io(self, timeout: float = 0.0) -> None:
        c = self._c
        if c is None or self._dead:
            raise OSError(-1, "not connected")
        rc = c.loop(timeout)
        if rc != paho.MQTT_ERR_SUCCESS or self._dead:
            self._dead = True
            raise OSError(-1, f"connection lost ({paho.error_string(rc)})")

    def _loop_until(self, cond: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not cond():
            if time.monotonic() > deadline:
                self._dead = True
                raise OSError(110, f"timed out waiting for {what}")
            self._io(0.01)

    def _deliver(self) -> bool:
        if not self._inbox:
            return False
        topic, msg = self._inbox.popleft()
        if self.cb is not None:
            self.cb(topic, msg)
        return True

    def publish(self, topic, msg, retain=False, qos=0) -> None:
        if self._c is None or self._dead:
            raise OSError(-1, "not connected")
        info = self._c.publish(self._str(topic), bytes(msg), qos, bool(retain))
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self._dead = True
            raise OSError(-1, f"publish failed ({paho.error_string(info.rc)})")
        self.published += 1
        if qos == 1:
            # umqtt.simple waits for the PUBACK and hands any message that arrives
            # meanwhile to the callback; do the same.
            deadline = time.monotonic() + self.timeout
            while not info.is_published():
                if time.monotonic() > deadline:
                    self._dead = True
                    raise OSError(110, "timed out waiting for PUBACK")
                self._io(0.01)
                while self._deliver():
                    pass
        else:
            self._io(0)

    def subscribe(self, topic, qos=0) -> None:
        assert self.cb is not None, "Subscribe callback is not set"
        if self._c is None:
            raise OSError(-1, "not connected")
        rc, mid = self._c.subscribe(self._str(topic), qos)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise OSError(-1, "subscribe failed")
        self._loop_until(lambda: mid in self._subacks, "SUBACK")

    def check_msg(self):
        if not self._inbox:
            self._io(0)
        return 0x30 if self._deliver() else None

    def wait_msg(self):
        self._loop_until(lambda: bool(self._inbox), "a message")
        self._deliver()
        return 0x30

    def ping(self) -> None:
        self._io(0)

    def disconnect(self) -> None:
        c = self._c
        if c is not None and not self._dead:
            try:
                c.disconnect()
                c.loop(0.05)
            except Exception:
                pass
        self._teardown()

    def _teardown(self) -> None:
        c = self._c
        self._c = None
        self.sock = None
        if c is not None:
            try:
                s = c.socket()
                if s is not None:
                    s.close()
            except Exception:
                pass
