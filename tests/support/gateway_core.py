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

from PIL import Image

from gateway.config import Config, load_config
from tests.support.mqtt import Collector, client


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
    """Publishes like a box (QoS 1) and collects its acks."""

    def __init__(self, url: str, prefix: str, device: str, **kw: Any) -> None:
        self.prefix = prefix
        self.device = device
        # A persistent session, like a real box: acks survive a broker restart.
        self.acks = Collector(
            url, f"{prefix}/{device}/ack", clean=False, client_id=f"ack-{device}-{uuid.uuid4().hex[:8]}", **kw
        )
        self.c = client(url, **kw)

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
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no ack for {eid}")
            try:
                m = self.acks.get(timeout=left)
            except queue.Empty:
                continue
            ack = json.loads(m.payload)
            if ack["id"] == eid:
                return ack

    def close(self) -> None:
        self.acks.close()
        self.c.disconnect()
        self.c.loop_stop()


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")
