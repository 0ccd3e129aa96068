"""A stand-in for Home Assistant's MQTT discovery, for what the bridge cannot see from the broker alone:
which devices Home Assistant keeps, and when an image entity's state changes.

Written from home-assistant/core (HA is not installable here):
- `homeassistant/components/mqtt/discovery.py` at 00b08a436e4d, `async_process_discovery_payload`:
  a non-empty config for a (component, discovery id) marks it discovered for this run and creates or
  updates the entity (bound by `unique_id` to the entity registry, which outlives restarts); an empty
  config removes the entity only if it was discovered in this run ("Unhandled discovery message"
  otherwise). Messages for a hash still being discovered queue behind it, so config-then-empty
  removes. Discovery subscribes `<prefix>/+/+/config` and `<prefix>/+/+/+/config` at QoS 0.
- `homeassistant/components/mqtt/image.py` at 02e6124621fb, `_image_data_received`: every message on
  `image_topic` sets `image_last_updated = utcnow()`, the entity's state, whatever the bytes.
- The MQTT integration publishes its birth (`online`) on `<prefix>/status` once subscribed, and has
  `offline` as its last will; a device whose last MQTT entity is removed is removed with it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt

from tests.support.mqtt import client


class FakeHomeAssistant:
    def __init__(self, url: str, prefix: str, birth_topic: str) -> None:
        self.url = url
        self.prefix = prefix
        self.birth_topic = birth_topic
        self._lock = threading.Lock()
        # The entity registry (kept across restarts, like core's .storage/core.entity_registry):
        # unique_id -> (discovery topic, device identifiers).
        self.entities: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.image_updates: Counter[str] = Counter()  # unique_id -> state changes of an image entity
        self._discovered: dict[str, str] = {}  # discovery topic -> unique_id, this run only
        self._image_topics: dict[str, set[str]] = {}  # image topic -> unique ids, this run only
        self._client: mqtt.Client | None = None
        self.unhandled = 0  # empty configs for entities not discovered this run
        self._probe = f"{prefix}/fake-ha-probe/{uuid.uuid4().hex}"
        self._probe_seen = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect, take in every retained config, then say `online` (the birth message)."""

        def on_message(c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
            if m.topic == self._probe:
                self._probe_seen.set()
                return
            self._on_message(c, m.topic, bytes(m.payload))

        c = client(self.url, on_message=on_message)
        self._client = c
        c.subscribe([(f"{self.prefix}/+/+/config", 0), (f"{self.prefix}/+/+/+/config", 0), (self._probe, 0)])
        self.sync()  # comes back after the retained configs (one connection keeps order)
        c.publish(self.birth_topic, b"online", qos=0).wait_for_publish(5)

    def sync(self, timeout: float = 10.0) -> None:
        """Return once everything the broker received before now has reached this Home Assistant: a
        message to ourselves is routed after them (Mosquitto routes each publish as it arrives)."""
        assert self._client is not None
        self._probe_seen.clear()
        self._client.publish(self._probe, b"x", qos=1).wait_for_publish(timeout)
        if not self._probe_seen.wait(timeout):
            raise TimeoutError("fake Home Assistant: sync probe did not come back")

    def stop(self) -> None:
        """Home Assistant shuts down: everything discovered in this run is forgotten; the registry stays."""
        c = self._client
        if c is not None:
            c.publish(self.birth_topic, b"offline", qos=0).wait_for_publish(5)
            c.disconnect()
            c.loop_stop()
        self._client = None
        with self._lock:
            self._discovered.clear()
            self._image_topics.clear()

    # --- what it shows -----------------------------------------------------------------------------

    def devices(self) -> set[str]:
        with self._lock:
            return {i for _t, ids in self.entities.values() for i in ids}

    def wait(self, pred, timeout: float = 15.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"fake Home Assistant: timed out waiting for {what}; devices {self.devices()}"
                )
            time.sleep(0.02)

    # --- discovery (paho's thread) -------------------------------------------------------------------

    def _on_message(self, c: mqtt.Client, topic: str, payload: bytes) -> None:
        with self._lock:
            uids = self._image_topics.get(topic)
            if uids is not None:
                for uid in uids:
                    self.image_updates[uid] += 1
            if not topic.endswith("/config"):
                return
            if not payload:
                uid = self._discovered.pop(topic, None)
                if uid is None:
                    self.unhandled += 1  # "Unhandled discovery message": the registry keeps it
                    return
                self.entities.pop(uid, None)
                for uids in self._image_topics.values():
                    uids.discard(uid)
                return
            config = json.loads(payload)
            uid = config["unique_id"]
            ids = tuple(config.get("device", {}).get("identifiers", ()))
            self._discovered[topic] = uid
            self.entities[uid] = (topic, ids)
            image_topic = config.get("image_topic")
        if image_topic and topic.split("/")[-4] == "image":
            with self._lock:
                new = image_topic not in self._image_topics
                self._image_topics.setdefault(image_topic, set()).add(uid)
            if new:
                c.subscribe(image_topic, 0)  # the entity subscribes once added; a retained image follows
