"""Helpers for the gateway-core tests: JPEGs, a paho-based stand-in for a box, a config factory."""

from __future__ import annotations

import hashlib
import io
import json
import queue
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from PIL import Image

from gateway.config import Config, load_config
from tests.support.polling import poll


def make_jpeg(width: int = 640, height: int = 480, seed: int = 0, quality: int = 85) -> bytes:
    """A real JPEG with some structure (gradients), different per seed."""
    im = Image.new("RGB", (width, height))
    px = im.load()
    for y in range(0, height, 4):
        for x in range(0, width, 4):
            c = ((x * 3 + seed * 40) % 256, (y * 2 + seed * 17) % 256, ((x + y) + seed * 7) % 256)
            for dy in range(4):
                for dx in range(4):
                    if x + dx < width and y + dy < height:
                        px[x + dx, y + dy] = c
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality)
    return out.getvalue()


def new_event_id() -> str:
    return f"{uuid.uuid4().hex[:16]}-{int(time.time() * 1000) % 1000000:06d}"


def event_payload(
    eid: str,
    photo: bytes | None = None,
    *,
    etype: str = "delivery",
    chunk_size: int = 4096,
    seq: int = 1,
    sha256: str | None = None,
    ts: float | None = None,
    **extra: Any,
) -> bytes:
    obj: dict[str, Any] = {
        "v": 1,
        "id": eid,
        "type": etype,
        "ts": ts if ts is not None else time.time(),
        "seq": seq,
        "sensors": {"lid": "closed"},
        "photo": None,
    }
    if photo is not None:
        obj["photo"] = {
            "size": len(photo),
            "sha256": sha256 or hashlib.sha256(photo).hexdigest(),
            "chunks": -(-len(photo) // chunk_size),
            "chunk_size": chunk_size,
        }
    obj.update(extra)
    return json.dumps(obj).encode()


def chunks(photo: bytes, chunk_size: int = 4096) -> list[bytes]:
    return [photo[i : i + chunk_size] for i in range(0, len(photo), chunk_size)]


class Box:
    """Publishes like a box (QoS 1, persistent session) and collects its acks on the same connection."""

    def __init__(
        self, url: str, prefix: str, device: str, *, username: str | None = None, password: str | None = None
    ) -> None:
        self.prefix = prefix
        self.device = device
        self._acks: dict[str, list[dict[str, Any]]] = {}
        self._q: queue.Queue[bytes] = queue.Queue()
        u = urlparse(url)
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"box-{device}-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        if username:
            self.c.username_pw_set(username, password)
        subscribed: queue.Queue[bool] = queue.Queue()

        def on_connect(c, _u, _f, rc, _p):
            if not rc.is_failure:
                c.subscribe(f"{prefix}/{device}/ack", 1)

        self.c.on_connect = on_connect
        self.c.on_subscribe = lambda *a: subscribed.put(True)
        self.c.on_message = lambda _c, _u, m: self._q.put(bytes(m.payload))
        self.c.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=30)
        self.c.loop_start()
        subscribed.get(timeout=10)

    def pub(self, sub: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(f"{self.prefix}/{self.device}/{sub}", payload, qos=1, retain=retain).wait_for_publish(
            10
        )

    def event(self, eid: str, payload: bytes) -> None:
        self.pub("event", payload)

    def chunk(self, eid: str, index: int, data: bytes) -> None:
        self.pub(f"photo/{eid}/{index}", data)

    def send(
        self,
        eid: str,
        photo: bytes | None,
        order: list[int] | None = None,
        event_at: int = 0,
        chunk_size: int = 4096,
        **kw: Any,
    ) -> None:
        """Publish the event at position `event_at` among the chunks, chunks in `order` (with repeats)."""
        parts = chunks(photo, chunk_size) if photo else []
        order = list(range(len(parts))) if order is None else order
        payload = event_payload(eid, photo, chunk_size=chunk_size, **kw)
        for pos, idx in enumerate(order):
            if pos == event_at:
                self.event(eid, payload)
            self.chunk(eid, idx, parts[idx])
        if event_at >= len(order):
            self.event(eid, payload)

    def wait_ack(self, eid: str, timeout: float = 20.0) -> dict[str, Any]:
        """The next ack for `eid`; acks for other events are kept for their own wait_ack."""
        deadline = time.monotonic() + timeout
        while True:
            pending = self._acks.get(eid)
            if pending:
                return pending.pop(0)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no ack for {eid}")
            try:
                payload = self._q.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            ack = json.loads(payload)
            self._acks.setdefault(ack["id"], []).append(ack)

    def next_ack(self, timeout: float = 0.2) -> dict[str, Any] | None:
        """Any ack (for stream tests); None if none came within `timeout`."""
        try:
            return json.loads(self._q.get(timeout=timeout))
        except queue.Empty:
            return None

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class JumpClock:
    """The wall clock, plus jumps: `advance(s)` makes `s` seconds pass at once. Give it to
    `GatewayService(clock=...)` and call `svc.tick()` instead of sleeping: offline checks, grouping
    windows and retention then see the time the test says. The broker's messages are stamped with
    the real wall clock (gateway/ingest.py), which this never runs behind."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def gateway_config(data_dir: Path, url: str, prefix: str, **env: str) -> Config:
    base = {
        "PARCELBOX_DATA_DIR": str(data_dir),
        "PARCELBOX_BROKER_URL": url,
        "PARCELBOX_BROKER_PREFIX": prefix,
        "PARCELBOX_OUTBOX_POLL_S": "0.1",
        "PARCELBOX_CONFIG": "",
    }
    base.update(env)
    return load_config(None, env=base)


def wait_for(pred, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    return poll(pred, timeout, interval, what)
