"""Test-only gateway stand-in for firmware tests: a paho client that reassembles photos,
checks their sha256 and acks, like the real gateway will (no durability: tests only).

Decoding uses the gateway's own `gateway/protocol.py`, so a box that passes here speaks
the protocol the real ingest accepts.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time

from gateway import protocol as gw
from tests.support.mqtt import client


class Acker:
    """Subscribe to `<prefix>/+/event` and `<prefix>/+/photo/+/+`; ack each event once its
    photo is complete and matches its sha256. `nack_first` maps event ids (or "*" for
    every first photo) to a count of `retry: true` nacks to send before acking;
    `refuse` is a set of types to nack with `retry: false`."""

    def __init__(self, url: str, prefix: str, *, nack_first: int = 0, refuse: tuple[str, ...] = ()) -> None:
        self.prefix = prefix
        self.lock = threading.RLock()
        self.events: dict[tuple[str, str], gw.Event] = {}
        self.event_msgs: list[tuple[str, str]] = []  # (device, id) per event message received
        self.chunks: dict[tuple[str, str], dict[int, bytes]] = {}
        self.photos: dict[tuple[str, str], bytes] = {}
        self.acked: list[tuple[str, str]] = []
        self.nacked: list[tuple[str, str, bool]] = []
        self.results: list[tuple[str, dict]] = []
        self.statuses: list[tuple[str, dict, bool]] = []
        self.nack_first = nack_first
        self._nacks_left: dict[tuple[str, str], int] = {}
        self.refuse = refuse
        self.errors: list[str] = []
        self._subscribed = threading.Event()
        self.c = client(url, on_message=self._on_message)
        # Subscribe on every (re)connect: tests kill and restart the broker under us.
        self.c.on_connect = lambda *a: self._subscribe()
        self.c.on_subscribe = lambda *a: self._subscribed.set()
        self._subscribe()
        if not self._subscribed.wait(10):
            raise TimeoutError("acker could not subscribe")

    def _subscribe(self) -> None:
        p = self.prefix
        self.c.subscribe(
            [(f"{p}/+/event", 1), (f"{p}/+/photo/+/+", 1), (f"{p}/+/cmd/result", 1), (f"{p}/+/status", 1)]
        )

    def _on_message(self, _c, _u, m) -> None:
        try:
            t = gw.parse_topic(self.prefix, m.topic)
            payload = bytes(m.payload)
            with self.lock:
                if t.kind == "event":
                    ev = gw.decode_event(payload)
                    key = (t.device, ev.id)
                    self.events[key] = ev
                    self.event_msgs.append(key)
                    self.chunks.setdefault(key, {})
                    if ev.photo is None:
                        self.photos.pop(key, None)
                elif t.kind == "photo":
                    self.chunks.setdefault((t.device, t.event_id), {})[t.index] = payload
                elif t.kind == "cmd_result":
                    self.results.append((t.device, json.loads(payload)))
                    return
                elif t.kind == "status":
                    self.statuses.append((t.device, json.loads(payload), bool(m.retain)))
                    return
                else:
                    return
                key = (t.device, t.event_id if t.kind == "photo" else ev.id)
                self._maybe_ack(key)
        except Exception as e:  # a test helper: record, never kill paho's thread
            self.errors.append(f"{m.topic}: {e!r}")

    def _maybe_ack(self, key: tuple[str, str]) -> None:
        ev = self.events.get(key)
        if ev is None:
            return
        if ev.type in self.refuse:
            self._send(key, {"v": 1, "id": key[1], "ok": False, "error": "refused by test", "retry": False})
            self.nacked.append((key[0], key[1], False))
            return
        if ev.photo is not None:
            got = self.chunks.get(key, {})
            if len(got) < ev.photo.chunks:
                return
            data = b"".join(got[i] for i in range(ev.photo.chunks))
            left = self._nacks_left.setdefault(key, self.nack_first)
            if hashlib.sha256(data).hexdigest() != ev.photo.sha256 or len(data) != ev.photo.size:
                self.chunks[key] = {}
                self._send(
                    key, {"v": 1, "id": key[1], "ok": False, "error": "sha256 mismatch", "retry": True}
                )
                self.nacked.append((key[0], key[1], True))
                return
            if left > 0:
                self._nacks_left[key] = left - 1
                self.chunks[key] = {}
                self._send(key, {"v": 1, "id": key[1], "ok": False, "error": "test nack", "retry": True})
                self.nacked.append((key[0], key[1], True))
                return
            self.photos[key] = data
        self._send(key, {"v": 1, "id": key[1], "ok": True})
        self.acked.append(key)

    def _send(self, key: tuple[str, str], obj: dict) -> None:
        self.c.publish(f"{self.prefix}/{key[0]}/ack", json.dumps(obj), qos=1)

    def send_cmd(
        self, device: str, cmd_id: str, cmd: str, args: dict | None = None, raw: bytes | None = None
    ) -> None:
        payload = (
            raw if raw is not None else json.dumps({"v": 1, "id": cmd_id, "cmd": cmd, "args": args or {}})
        )
        self.c.publish(f"{self.prefix}/{device}/cmd", payload, qos=1)

    def result(self, cmd_id: str) -> dict | None:
        with self.lock:
            for _d, r in self.results:
                if r.get("id") == cmd_id:
                    return r
        return None

    def wait(self, cond, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if cond():
                    return True
            time.sleep(0.02)
        with self.lock:
            return cond()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
