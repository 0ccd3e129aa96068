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
- `homeassistant/components/mqtt/update.py` at 4a776668ef6d, `_handle_state_message_received`: a JSON
  object on `state_topic` sets the keys it has (installed_version, latest_version, title, ...); newer
  cores (2024.11+, developers.home-assistant.io/blog/2024/10/31/update-entity-changes and the
  update.mqtt docs) also take `in_progress` (bool) and `update_percentage`. `async_install` publishes
  `payload_install` on `command_topic` with the entity's `retain`.
- `homeassistant/components/update/__init__.py`, `UpdateEntity.state`: unknown without both versions;
  off when latest equals installed; else `AwesomeVersion(latest) > installed`, and on when the two
  cannot be compared (a version that is not semver-like, e.g. "0.2.0 (1a2b3c4d)"). Here: dotted
  numbers compare as numbers, anything else counts as "cannot compare".
- The MQTT integration publishes its birth (`online`) on `<prefix>/status` once subscribed, and has
  `offline` as its last will; a device whose last MQTT entity is removed is removed with it.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt

from tests.support.mqtt import client
from tests.support.polling import poll


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
        # update entities: unique_id -> their config and the state attributes their state topic set
        self.updates: dict[str, dict[str, Any]] = {}
        self._update_topics: dict[str, str] = {}  # state topic -> unique_id, this run only

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
            self._update_topics.clear()

    # --- what it shows -----------------------------------------------------------------------------

    def devices(self) -> set[str]:
        with self._lock:
            return {i for _t, ids in self.entities.values() for i in ids}

    def update_entity(self, uid: str) -> dict[str, Any]:
        """An update entity as Home Assistant shows it: `state` (on/off/None) and its attributes."""
        with self._lock:
            ent = dict(self.updates[uid]["attrs"])
        ent["state"] = update_state(ent.get("installed_version"), ent.get("latest_version"))
        return ent

    def install(self, uid: str) -> None:
        """The user presses Install (the `update.install` service)."""
        with self._lock:
            conf = self.updates[uid]["config"]
        assert self._client is not None
        self._client.publish(
            conf["command_topic"],
            conf["payload_install"],
            qos=conf.get("qos", 0),
            retain=conf.get("retain", False),
        ).wait_for_publish(5)

    def wait(self, pred, timeout: float = 15.0, what: str = "condition") -> None:
        try:
            poll(pred, timeout, 0.02, what, AssertionError)
        except AssertionError as e:
            raise AssertionError(f"fake Home Assistant: {e}; devices {self.devices()}") from None

    # --- discovery (paho's thread) -------------------------------------------------------------------

    def _on_message(self, c: mqtt.Client, topic: str, payload: bytes) -> None:
        with self._lock:
            upd = self._update_topics.get(topic)
            if upd is not None and payload:
                try:
                    data = json.loads(payload)
                except ValueError:
                    data = {"installed_version": payload.decode("utf-8", "replace")}
                if not isinstance(data, dict):
                    data = {"installed_version": str(data)}
                attrs = self.updates[upd]["attrs"]
                for key in ("installed_version", "latest_version", "title", "release_summary", "release_url",
                            "entity_picture", "in_progress", "update_percentage"):  # fmt: skip
                    if key in data:
                        attrs[key] = data[key]
                return
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
            update_topic = config.get("state_topic") if topic.split("/")[-4] == "update" else None
            if update_topic:
                self.updates.setdefault(uid, {"attrs": {}})["config"] = config
                new_update = update_topic not in self._update_topics
                self._update_topics[update_topic] = uid
        if update_topic and new_update:
            c.subscribe(update_topic, 0)
        if image_topic and topic.split("/")[-4] == "image":
            with self._lock:
                new = image_topic not in self._image_topics
                self._image_topics.setdefault(image_topic, set()).add(uid)
            if new:
                c.subscribe(image_topic, 0)  # the entity subscribes once added; a retained image follows


_NUMERIC = re.compile(r"v?(\d+(?:\.\d+)*)")


def update_state(installed: Any, latest: Any) -> str | None:
    """`UpdateEntity.state` (see the module docstring)."""
    if installed is None or latest is None:
        return None
    if latest == installed:
        return "off"
    a, b = _NUMERIC.fullmatch(str(latest)), _NUMERIC.fullmatch(str(installed))
    if a is None or b is None:
        return "on"  # AwesomeVersionCompareException: "Can't compare versions, already tried exact match"
    la, lb = [int(x) for x in a.group(1).split(".")], [int(x) for x in b.group(1).split(".")]
    width = max(len(la), len(lb))
    return "on" if la + [0] * (width - len(la)) > lb + [0] * (width - len(lb)) else "off"
