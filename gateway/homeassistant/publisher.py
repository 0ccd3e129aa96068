"""Performs the Home Assistant bridge's worker turns: reads the gateway, publishes, passes commands on.

Why apart from the bridge: the bridge owns the connection, the threads and what arrives (`bridge`);
this is what its one worker thread does with a `pending.Batch`: the steps `sync.plan_turn` plans,
the messages `messages` builds, the photos `image` allows, the commands `commands` accepts, and the
roster's state file. It publishes through a function it is given (paho's publish in the bridge), so
everything a turn decides has one place, and the bridge stays the MQTT plumbing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.homeassistant import discovery as d
from gateway.homeassistant import messages as m
from gateway.homeassistant import sync
from gateway.homeassistant.commands import Refusal, install_refusal, press_refusal
from gateway.homeassistant.discovery import HAConfig
from gateway.homeassistant.image import PhotoLedger, shrink_jpeg
from gateway.homeassistant.pending import Batch, PendingWork
from gateway.homeassistant.roster import RegistryLike, Roster, Saved, parse_saved
from gateway.ports import GatewayPort
from gateway.storage import atomic_write_bytes

Send = Callable[[str, bytes, bool], bool]  # (topic, payload, retain) -> handed to the client


class Publisher:
    """The worker's side of the bridge. Only the worker thread calls it (`load_registry` also at start,
    before the worker runs); what it shares with the bridge's other threads is read under `lock`."""

    def __init__(
        self,
        port: GatewayPort,
        cfg: HAConfig,
        *,
        send: Send,
        lock: threading.Lock,
        pending: PendingWork,
        roster: Roster,
        photos: PhotoLedger,
        ha_online: Callable[[], bool | None],
        count: Callable[[str], None],
        logger: logging.Logger,
        clock: Callable[[], float],
        registry: RegistryLike | None = None,
        state_path: Path | None = None,
    ) -> None:
        self.port = port
        self.cfg = cfg
        self.log = logger
        self.count = count
        self._send = send
        self._lock = lock
        self._pending = pending
        self._roster = roster
        self._photos = photos  # `retained` is written by paho's thread: under `lock`
        self._ha_online = ha_online
        self._clock = clock
        self._registry = registry
        self._state_path = state_path
        self._published: dict[str, bytes] = {}  # topic -> payload last published this session
        self._battery_seen: set[str] = set()
        self.known: set[str] = set()  # announced this session (kept by `sync.plan_turn`)
        self._last_press: dict[str, float] = {}

    def turn(self, batch: Batch) -> None:
        """Publish and act on everything in `batch`; raises when the gateway cannot be read (the bridge
        retries with a full resync)."""
        self._process(batch)
        for device in sorted(batch.firmware - set(batch.installs)):
            if device in self.known:
                self._publish_update(device, force=False)
        for device, payload in batch.installs.items():
            self._install(device, payload)
        if batch.whatsapp is not None and not batch.resync:  # a resync already sent it
            self._publish_all(m.whatsapp_messages(self.cfg, batch.whatsapp), force=False)
        if batch.storage is not None:
            self._publish(*m.storage_message(self.cfg, batch.storage), force=batch.resync)

    def load_registry(self) -> None:
        """Registry snapshot at start, compared with the one saved last time: boxes removed while the
        gateway was down are cleared now."""
        assert self._registry is not None
        registry = [(c.device, getattr(c, "name", None)) for c in self._registry.list()]
        saved: Saved | None = None
        if self._state_path is not None:
            try:
                saved = parse_saved(self._state_path.read_bytes())
            except FileNotFoundError:
                saved = Saved()
            except (OSError, ValueError) as exc:
                self.log.warning("homeassistant: ignoring unreadable %s: %s", self._state_path, exc)
                self.count("state_file_errors")
                saved = Saved()
        removed_offline = self._roster.load(registry, saved)
        if saved is not None:
            with self._lock:
                self._pending.remove_all(removed_offline)
            self.save_state()

    def save_state(self) -> None:
        body = self._roster.body()
        if self._state_path is None or body is None:
            return
        try:
            atomic_write_bytes(self._state_path, body, make_parent=True)
        except OSError as exc:
            self.count("state_file_errors")
            self.log.warning("homeassistant: cannot write %s: %s", self._state_path, exc)

    def retry_registry(self) -> None:
        """The registry was unreadable at start: read it once it is readable, to clear the boxes removed
        while the gateway was down. Changes while running come from the bus (DEVICE_REMOVED,
        DEVICE_REGISTERED, published by the service): the bridge never watches devices.json itself."""
        try:
            self.load_registry()
            self.log.info("homeassistant: device registry readable again")
        except Exception:
            self.count("registry_errors")

    def _process(self, batch: Batch) -> None:
        """Perform the steps `sync.plan_turn` returns, each before asking for the next."""
        turn = sync.plan_turn(
            batch,
            self._roster,
            self.known,
            ha_online=self._ha_online,
            boxes=self._list_devices,
            latest_photo=self._latest_event_with_photo,
        )
        for step in turn:
            match step:
                case sync.ClearBox(device=device):
                    self._clear(device)
                case sync.RepeatRemoval(device=device):
                    self._send_removal(device)
                case sync.RemovalsConfirmed(devices=devices):
                    self.log.info("homeassistant: removal of %s confirmed", ", ".join(devices))
                case sync.SaveState():
                    self.save_state()
                case sync.PublishGateway():
                    with self._lock:
                        whatsapp = self._pending.whatsapp
                    self._publish_all(m.gateway_messages(self.cfg, whatsapp), force=True)
                case sync.ResendPhotos():
                    self._photos.sent.clear()
                case sync.PublishBox(record=record, force=force):
                    self._publish_box(record, force=force)
                case sync.PublishImage(device=device, kind=kind, event_id=eid):
                    self._publish_image(device, kind, eid)
                case sync.Press(device=device, payload=payload):
                    self._press(device, payload)
                case sync.Skipped(counter=counter):
                    self.count(counter)

    def _list_devices(self) -> list[dict[str, Any]]:
        return self._roster.listed(self.port.list_devices())

    def _shown(self) -> set[str]:
        return {r["device"] for r in self._list_devices()}

    def _publish(self, topic: str, payload: bytes, *, force: bool, retain: bool = True) -> None:
        if not force and self._published.get(topic) == payload:
            return
        if not self._send(topic, payload, retain):
            # Lost connection: on_connect schedules a full resync, which repeats this.
            self.count("publish_failed")
            self._published.pop(topic, None)
            return
        self._published[topic] = payload
        self.count("published")

    def _publish_all(self, msgs: list[m.Message], *, force: bool) -> None:
        for topic, payload in msgs:
            self._publish(topic, payload, force=force)

    def _publish_box(self, rec: dict[str, Any], *, force: bool) -> None:
        device = rec["device"]
        if rec.get("battery_mv") is not None:
            self._battery_seen.add(device)  # the battery sensor stays once seen
        self._publish_all(
            m.box_messages(self.cfg, rec, with_battery=device in self._battery_seen), force=force
        )
        self._publish_update(device, force=force)

    def _publish_update(self, device: str, *, force: bool) -> None:
        status = getattr(self.port, "firmware_status", None)
        if callable(status):  # a gateway without over-the-air updates: the entity stays unknown
            self._publish(*m.update_message(self.cfg, device, status(device)), force=force)

    def _install(self, device: str, payload: bytes) -> None:
        """Home Assistant's install action: the offer `parcelbox device update DEVICE` makes."""
        offer = getattr(self.port, "offer_update", None)
        refused = install_refusal(payload, device, self._shown, supported=callable(offer))
        if refused is not None or offer is None:
            self._reject("install", device, refused or Refusal("unsupported", ""))
            return
        try:
            sent = offer(device)
        except Exception as exc:  # UpdateRefused says why (no OTA firmware, no room, already running)
            self._reject("install", device, Refusal("refused", str(exc)))
            self._publish_update(device, force=True)  # Home Assistant's "installing" spinner stops
            return
        self.count("installs.sent")
        self.log.info("homeassistant: update %s queued for %s", sent.get("id"), device)
        self._publish_update(device, force=False)

    def _press(self, device: str, payload: bytes) -> None:
        now = self._clock()
        refused = press_refusal(
            payload,
            device,
            self._shown,
            now=now,
            last_press=self._last_press.get(device),
            min_interval_s=self.cfg.snapshot_min_interval_s,
        )
        if refused is not None:
            self._reject("press", device, refused)
            return
        self._last_press[device] = now
        try:
            cmd_id = self.port.send_command(device, "snapshot")
        except Exception as exc:
            self.count("presses.failed")
            self.log.warning("homeassistant: snapshot command for %s failed: %s", device, exc)
            return
        self.count("presses.sent")
        self.log.info("homeassistant: snapshot requested for %s (command %s)", device, cmd_id)

    def _reject(self, what: str, device: str, refused: Refusal) -> None:
        self.count(f"{what}_rejected.{refused.reason}")
        action = "snapshot button" if what == "press" else "install"
        self.log.warning(
            "homeassistant: %s for %s ignored: %s (%s)", action, device, refused.reason, refused.detail
        )

    def _latest_event_with_photo(self, device: str, kind: str) -> str | None:
        for ev in self.port.list_events(device=device, type=kind, limit=5):
            if ev.get("photo"):
                return ev["id"]
        return None

    def _publish_image(self, device: str, kind: str, eid: str) -> None:
        key = (device, kind)
        if self._photos.is_sent(key, eid):
            return
        data = self._image_bytes(device, eid)
        if data is None:
            self.count("image_missing")
            self.log.warning("homeassistant: no photo file for %s event %s; image not updated", device, eid)
            return
        with self._lock:
            send = self._photos.to_send(key, data)
        if send:
            topic = d.image_topic(self.cfg, device, kind)
            self._publish(topic, data, force=True)
            self._published.pop(topic, None)  # keep big payloads out of memory
        self._photos.sent[key] = eid
        self.count(f"images.{kind}" if send else "images_unchanged")

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

    def _clear(self, device: str) -> None:
        self._send_removal(device)
        with self._lock:
            self._photos.forget_box(device)
        self._battery_seen.discard(device)
        self.count("removed")

    def _send_removal(self, device: str) -> None:
        for topic, payload, retain in d.removal_messages(self.cfg, device):
            self._publish(topic, payload, force=True, retain=retain)
            self._published.pop(topic, None)
