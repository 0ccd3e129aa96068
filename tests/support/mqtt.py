"""Small paho helpers for tests: connect to the fixture broker, collect messages, wait bounded."""

from __future__ import annotations

import queue
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import paho.mqtt.client as mqtt


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool
    qos: int


def client(
    url: str, client_id: str | None = None, *, clean: bool = True, on_message=None, **kw
) -> mqtt.Client:
    """A connected paho client (MQTT 3.1.1) with its network loop running.

    `on_message` is set before connecting: a persistent session's queued messages
    arrive right after CONNACK, before a later assignment would take effect.
    """
    u = urlparse(url)
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"t-{uuid.uuid4().hex[:10]}",
        clean_session=clean,
        **kw,
    )
    c.on_message = on_message
    c.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=30)
    c.loop_start()
    deadline = time.monotonic() + 10
    while not c.is_connected():
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not connect to {url}")
        time.sleep(0.01)
    return c


class Collector:
    """Subscribe to a filter and gather messages in a queue."""

    def __init__(self, url: str, topic_filter: str, qos: int = 1, **kw) -> None:
        self.q: queue.Queue[Msg] = queue.Queue()
        self.c = client(
            url,
            on_message=lambda _c, _u, m: self.q.put(Msg(m.topic, bytes(m.payload), bool(m.retain), m.qos)),
            **kw,
        )
        subscribed = queue.Queue()
        self.c.on_subscribe = lambda *a: subscribed.put(True)
        self.c.subscribe(topic_filter, qos)
        subscribed.get(timeout=10)

    def get(self, timeout: float = 10.0) -> Msg:
        return self.q.get(timeout=timeout)

    def take(self, n: int, timeout: float = 10.0) -> list[Msg]:
        deadline = time.monotonic() + timeout
        out: list[Msg] = []
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"got {len(out)} of {n} messages")
            try:
                out.append(self.q.get(timeout=left))
            except queue.Empty:
                continue
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
