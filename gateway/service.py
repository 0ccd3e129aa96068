"""The running gateway: ingest worker, photo pool, store, alert outbox, box health.

`GatewayService(config)` implements `gateway.ports.GatewayPort` and publishes on
`gateway.bus.Bus`. Lifecycle: `start()` takes the data-folder lock, opens the
store, starts the managed broker when no `broker.url` is set, the photo pool, the
ingest worker, the outbox dispatcher and the MQTT link, then every extra
component (`gateway.app.build_components`). `stop()` stops the components, drains
received messages and photos in progress (acking what gets stored), finishes the
send in flight, writes a last status snapshot and releases everything.

Threads: paho's network thread only makes cheap checks and enqueues, on one bounded
sub-queue per box served in turn (`gateway.fairqueue`); one ingest worker
(`gateway.pipeline`) does all decoding, reassembly, store writes and acks (so the
store has a single writer for events and box records) and runs `tick`; the photo
pool runs `gateway.photos.process_photo`; each notifier has a sending thread
(`gateway.outbox`). The rules for box state and alerts are pure functions
(`gateway.boxes`, `gateway.alerts`) that this class and the pipeline apply.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

from gateway import __version__, alerts, boxes
from gateway.alerts import PlannedAlert, Sink
from gateway.alerts import rhash as _rhash
from gateway.bus import (
    COMMAND_RESULT,
    DEVICE_REGISTERED,
    DEVICE_REMOVED,
    OTA_CHANGED,
    OUTBOX_CHANGED,
    STORAGE_STATE,
    WHATSAPP_RECEIPT,
    WHATSAPP_STATE,
    Bus,
)
from gateway.commands import MAX_RESULT_BYTES, CommandTable, UnknownResult
from gateway.config import Config
from gateway.datalock import DataDirLock
from gateway.devices import DeviceRegistry
from gateway.diskspace import (
    WRITE_FAILURE_SHOWN_S,
    DiskThresholds,
    StorageWatch,
    disk_report,
    measure,
    storage_report,
)
from gateway.fairqueue import FairQueue
from gateway.health import Counters
from gateway.ingest import MqttLink
from gateway.jsonsafe import json_safe
from gateway.lograte import LogThrottle
from gateway.notify.base import Notifier
from gateway.ota import offers
from gateway.ota.pending import ota_root
from gateway.ota.server import OtaServer
from gateway.outbox import OutboxDispatcher, _public
from gateway.photos import PhotoError, PhotoSettings, process_photo
from gateway.pipeline import Call, IngestPipeline
from gateway.ports import (
    DeviceRecord,
    EventRecord,
    OutboxRecord,
    OutboxState,
    PhotoVariant,
    WhatsAppState,
)
from gateway.privatedir import ensure_private_dir
from gateway.protocol import (
    Limits,
    ProtocolError,
    decode_cmd_result,
    encode_cmd,
    topic,
    valid_device_id,
)
from gateway.purge import Purger
from gateway.purge import pending as pending_purges
from gateway.reassembly import Reassembler
from gateway.sendapi import BadRequest, SendRequest, resolve_sinks
from gateway.storage import atomic_write_bytes
from gateway.store import Store
from gateway.vocabulary import GATEWAY_DEVICE
from gateway.whatsapp.watch import LinkWatch

log = logging.getLogger("gateway")

STATUS_FILE = "status.json"
# The ingest queue's sub-queue for purge slices: "#" is never in a box id, so no box shares it.
_PURGE_QUEUE = "#purge"
# A full disk fails every write, a few a second: say so once a minute (with a count), not each time.
_STORE_WARNING_EVERY_S = 60.0
_RETENTION_EVERY_S = 3600.0
_TICK_WAIT_S = 30.0  # tick() from another thread: how long to wait for the worker
API_PHOTO_DIR = "api-photos"  # photos sent with the send API, by message id (<data>/api-photos/)
_API_PHOTO = re.compile(r"msg[0-9a-f]{16}\.jpg")


class Component(Protocol):
    """Anything started and stopped with the gateway (web server, WhatsApp supervisor, HA bridge)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def prune_api_photos(folder: Path, now: float, max_age_s: float) -> int:
    """Remove send-API photos older than `max_age_s` (by file time); returns how many."""
    n = 0
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return 0
    for p in entries:
        try:
            if _API_PHOTO.fullmatch(p.name) and now - p.stat().st_mtime > max_age_s:
                p.unlink()
                n += 1
        except OSError as e:  # one unremovable file must not stop the rest
            log.warning("retention: cannot remove %s: %s", p, e)
    return n


class GatewayService:
    """The gateway core; see the module docstring. Implements `gateway.ports.GatewayPort`."""

    def __init__(
        self,
        config: Config,
        *,
        notifiers: list[Notifier] | None = None,
        components: list[Component] | None = None,
        clock: Callable[[], float] = time.time,
        firmware: offers.CheckoutFirmware | None = None,
    ) -> None:
        self.config = config
        self.bus = Bus()
        self.clock = clock
        self.counters = Counters()
        self.data_dir = Path(config.data_dir).expanduser().resolve()
        self.registry = DeviceRegistry(self.data_dir)
        self.limits = Limits(max_photo_bytes=Limits().max_photo_bytes)
        self.prefix = config.broker.prefix
        self.notifiers: dict[str, Notifier] = {}
        for n in notifiers or []:
            self.add_notifier(n)
        self.components: list[Component] = list(components or [])
        self.store: Store | None = None
        self.broker: Any = None  # gateway.broker.ManagedBroker when we run our own
        self.broker_url = config.broker.url
        self.link: MqttLink | None = None
        self.dispatcher: OutboxDispatcher | None = None
        self._lock = DataDirLock(self.data_dir)
        self._pool: concurrent.futures.Executor | None = None
        self._worker: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._started_at: float | None = None
        self._retention_due = float("-inf")  # service-clock time of the next retention pass (tick)
        self._commands = CommandTable()
        # Over-the-air updates: offers queued by `parcelbox device update`, served from the worker.
        self.ota = OtaServer(
            ota_root(self.data_dir),
            self.prefix,
            publish=self._publish_ota,
            reject=self._reject,
            clock=self.clock,
            on_change=self._on_ota_change,
        )
        # This checkout's firmware, for the dashboard's and Home Assistant's "update available".
        from gateway.ota.cli import DEFAULT_FIRMWARE

        self.firmware = firmware or offers.CheckoutFirmware(DEFAULT_FIRMWARE)
        self._ota_shown: dict[str, tuple[Any, ...]] = {}  # device -> what OTA_CHANGED last said
        self._commands_lock = threading.Lock()  # send_command runs on web/HA/WhatsApp threads
        self._log_throttle = LogThrottle()
        self._whatsapp: WhatsAppState = {
            "state": "disabled",
            "detail": "WhatsApp is not enabled. To turn it on: install it (.venv/bin/pip install -e '.[whatsapp]' "
            "in the parcelbox folder), set [whatsapp] enabled = true in the config, restart the gateway, "
            "then pair here.",
            "updated_at": 0.0,
        }
        self._registered: tuple[float, set[str], dict[str, float]] = (-1.0, set(), {})
        # `parcelbox device forget NAME --purge` (gateway/purge.py): one segment per turn of the ingest
        # queue, in a sub-queue of its own, so boxes' messages are served between the slices.
        self._purger: Purger | None = None
        self._purge_queued = False
        self._purge_paused = False
        self.disk_thresholds = DiskThresholds(
            min_free_mb=config.store.min_free_mb, min_free_percent=config.store.min_free_percent
        )
        self._storage_watch = StorageWatch()
        self._store_warned_at = -_STORE_WARNING_EVERY_S
        self._store_warnings_held = 0
        self._store_failed_at: float | None = None  # monotonic time of the last refused event
        self.bus.subscribe(self._on_whatsapp_state, WHATSAPP_STATE)
        self.bus.subscribe(self._on_whatsapp_receipt, WHATSAPP_RECEIPT)
        self._wa_watch = LinkWatch(float(getattr(config.whatsapp, "down_notice_after_s", 300.0)))
        self.photo_settings = PhotoSettings.from_config(config.photos, max_bytes=self.limits.max_photo_bytes)
        self.pipeline = IngestPipeline(
            config,
            limits=self.limits,
            photo_settings=self.photo_settings,
            counters=self.counters,
            bus=self.bus,
            clock=self.clock,
            publish=self._publish,
            reject=self._reject,
            store_failed=self._store_failed,
            is_registered=self._is_registered,
            removed=self._removed,
            device_name=self._device_name,
            sinks=self._sinks,
            emit_alerts=self._emit_alerts,
            wake_outbox=self._wake_outbox,
            on_cmd_result=self._on_cmd_result,
            on_ota_status=self.ota.on_status,
            on_ota_reply=self.ota.on_reply,
        )

    # --- lifecycle --------------------------------------------------------------------

    def add_notifier(self, notifier: Notifier) -> None:
        """Register an alert sink (before `start()`); its `name` is its outbox key."""
        self.notifiers[notifier.name] = notifier

    def add_component(self, component: Component) -> None:
        self.components.append(component)

    @property
    def client_id(self) -> str:
        if self.config.broker.client_id:
            return self.config.broker.client_id
        return "parcelbox-gw-" + hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:10]

    def start(self) -> None:
        ensure_private_dir(self.data_dir)  # before anything is written into it
        self._lock.acquire()  # raises DataDirLocked naming the other pid
        try:
            self._start()
        except BaseException:
            self._teardown()
            raise

    def _start(self) -> None:
        self._started_at = self.clock()
        self.store = Store(
            self.data_dir,
            partition=self.config.store.partition,
            segment_records=self.config.store.segment_records,
        )
        self._purger = Purger(self.store, self.data_dir, self.clock)
        log.info(
            "data folder %s: %d events, outbox %s",
            self.data_dir,
            self.store.event_count(),
            self.store.outbox_counts(),
        )
        try:  # the boxes' firmware as last known, for an update offered before they wake again
            last = json.loads((self.data_dir / STATUS_FILE).read_text())
            boxes = last.get("ota") if isinstance(last, dict) else None
            if isinstance(boxes, dict):  # not a box removed since (`parcelbox device remove`)
                known = {d["device"] for d in self.list_devices()}
                self.ota.remember({k: v for k, v in boxes.items() if k in known})
        except (OSError, ValueError):
            pass
        username, password = self.config.broker.username, self.config.broker.password
        if not self.broker_url:
            from gateway.broker import start_managed_broker

            self.broker = start_managed_broker(self.config, self.registry)
            drop = getattr(self.broker, "drop_session", None)
            if drop is not None:  # the session of the id we used before ids were bound to logins
                drop(self.client_id)
            self.broker_url = self.broker.url
            # On the box listener the broker makes this login our client id (use_username_as_clientid).
            username, password = self.broker.gateway_username, self.broker.gateway_password
        workers = self.config.photos.workers or max(1, os.cpu_count() or 1)
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="photo")
        self.pipeline.store, self.pipeline.pool = self.store, self._pool
        self._stopping.clear()
        self._watch_registry()  # the registry as it is now: changes from here on go on the bus
        self._worker = threading.Thread(
            target=self.pipeline.work, args=(self._stopping,), name="ingest", daemon=True
        )
        self._worker.start()
        self.dispatcher = OutboxDispatcher(
            self.store,
            self.notifiers,
            bus=self.bus,
            photo_path=lambda d, e: self.photo_path(d, e, "alert"),
            attachment_path=self._api_photo_path,
            backoff_initial_s=self.config.outbox.backoff_initial_s,
            backoff_max_s=self.config.outbox.backoff_max_s,
            dead_after_s=self.config.outbox.dead_after_s,
            poll_s=self.config.outbox.poll_s,
            clock=self.clock,
        )
        self.dispatcher.start()
        self.link = MqttLink(
            self.broker_url,
            client_id=self.client_id,
            prefix=self.prefix,
            deliver=self.pipeline.deliver,
            username=username,
            password=password,
            keepalive=self.config.broker.keepalive_s,
        )
        self.link.start(wait_s=10.0)
        if not self.link.connected.is_set():
            log.warning("broker %s not reachable yet; paho keeps retrying", self.link.endpoint)
        self._ticker = threading.Thread(target=self._tick_loop, name="ticker", daemon=True)
        self._ticker.start()
        for c in self.components:
            c.start()
        self.write_status()

    def stop(self, timeout: float = 20.0) -> None:
        """Drain and shut down: nothing received is dropped if it can be finished within `timeout`."""
        if self._stopped.is_set() or self.store is None:
            return
        self._purge_paused = True  # an unfinished purge goes on at the next start (its request stays)
        for c in reversed(self.components):
            try:
                c.stop()
            except Exception:
                log.exception("component %r failed to stop", c)
        deadline = time.monotonic() + timeout
        # Let the worker finish what paho already handed us (and photos in the pool), acks included.
        while time.monotonic() < deadline and not self.pipeline.idle():
            time.sleep(0.05)
        self._stopping.set()
        if self._worker is not None:
            self._worker.join(max(0.1, deadline - time.monotonic()))
        if self.link is not None:
            self.link.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self._teardown()
        log.info("gateway stopped")

    def _teardown(self) -> None:
        self._stopping.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self.store is not None:
            try:
                self.write_status()
            except Exception:
                log.exception("could not write the last status snapshot")
        for n in self.notifiers.values():
            try:
                n.close()
            except Exception:
                log.exception("notifier %s failed to close", n.name)
        if self.store is not None:
            self.store.close()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        self._lock.release()
        self._stopped.set()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.link is not None and self.link.connected.wait(timeout)

    # --- ingest (gateway/pipeline.py) --------------------------------------------------

    # The pipeline's state under the names health(), the purge step and tests use.
    @property
    def _queue(self) -> FairQueue:
        return self.pipeline.queue

    @property
    def _reasm(self) -> Reassembler:
        return self.pipeline.reasm

    @property
    def _in_flight(self) -> set[tuple[str, str]]:
        return self.pipeline.in_flight

    def _publish(self, topic_name: str, payload: bytes) -> None:
        assert self.link is not None
        self.link.publish(topic_name, payload)

    def _store_failed(self, exc: OSError, what: str, *, counter: str = "store_write_errors") -> None:
        """A write to the data folder failed: count it, check the disk now, warn (rate-limited).
        `store_write_errors` counts the events refused for it (not acked)."""
        self.counters.inc(counter)
        now = time.monotonic()
        if counter == "store_write_errors":
            self._store_failed_at = now
        if now - self._store_warned_at < _STORE_WARNING_EVERY_S:
            self._store_warnings_held += 1
            return
        held, self._store_warnings_held = self._store_warnings_held, 0
        self._store_warned_at = now
        log.warning(
            "could not write %s to %s: %s%s%s",
            what,
            self.data_dir,
            exc,
            "; not acked, the box keeps it and sends it again" if counter == "store_write_errors" else "",
            f" ({held} more such failure(s) in the last minute)" if held else "",
        )
        self._check_storage()

    def _reject(self, reason: str, detail: str, where: str) -> None:
        self.counters.reject(reason)
        # Every rejection is counted; the log gets a few lines per reason a minute, so a box flooding
        # bad input fills a counter instead of the disk (issue 14 items 4 and 5).
        ok, suppressed = self._log_throttle.allow(reason)
        if ok:
            more = f"; {suppressed} more {reason} not logged" if suppressed else ""
            log.warning("rejected %s: %s (%s)%s", where, reason, detail, more)

    def _registry_view(self) -> tuple[set[str], dict[str, float]]:
        """(registered boxes, removed box -> when), re-read only when devices.json changed. The one
        place a registry change is noticed: it is published on the bus (DEVICE_REMOVED, DEVICE_REGISTERED)."""
        mtime = self.registry.mtime()
        if mtime != self._registered[0]:
            first = self._registered[0] == -1.0
            before = self._registered[1]
            now = {d.device for d in self.registry.list()}
            self._registered = (mtime, now, self.registry.removed())
            if not first:
                for device in sorted(before - now):
                    self.bus.publish(DEVICE_REMOVED, {"device": device, "registered": sorted(now)})
                for device in sorted(now - before):
                    self.bus.publish(DEVICE_REGISTERED, {"device": device, "registered": sorted(now)})
        return self._registered[1], self._registered[2]

    def _watch_registry(self) -> None:
        try:
            self._registry_view()
        except (OSError, ValueError, TypeError) as exc:  # hand-edited or damaged: try again next tick
            self.counters.inc("registry_errors")
            if self._log_throttle.allow("registry")[0]:
                log.warning("cannot read the device registry %s: %s", self.registry.path, exc)

    def _is_registered(self, device: str) -> bool:
        return device in self._registry_view()[0]

    def _removed(self) -> dict[str, float]:
        return self._registry_view()[1]

    def _is_removed(self, dev: dict[str, Any]) -> bool:
        """Removed with `parcelbox device remove` and not heard from since: hidden, never 'offline'."""
        return boxes.is_removed(dev, self._removed())

    # --- boxes and alerts (the rules: gateway/boxes.py, gateway/alerts.py) ---------------

    def _device_name(self, device: str) -> str:
        name = self.config.devices.names.get(device)
        if name:
            return name
        cred = self.registry.get(device) if self._is_registered(device) else None
        return cred.name if cred and cred.name else device

    _device_out = staticmethod(boxes.public)

    def _sinks(self, device: str) -> list[Sink]:
        """What the alert rules need to know of each notifier, for alerts about `device`."""
        out = []
        for name, notifier in self.notifiers.items():
            try:
                recipients = tuple(notifier.recipients(device))
            except Exception:
                log.exception("notifier %s: recipients() failed", name)
                recipients = ()
            language = getattr(notifier, "language", None)
            every = bool(getattr(notifier, "every_event", False))
            out.append(Sink(name, recipients, language, every))
        return out

    def _check_offline(self, now: float) -> None:
        """Runs on the ingest worker: boxes offline for longer than alerts.offline_after_s (or silent for
        alerts.silent_after_s) get one alert."""
        assert self.store is not None
        cfg = self.config.alerts
        due = boxes.due_offline(
            self.store.list_devices(),
            now,
            offline_after_s=cfg.offline_after_s,
            silent_after_s=cfg.silent_after_s,
            removed=self._removed(),
        )
        for dev, notice in due:
            planned = alerts.plan_notice(dev, notice, sinks=self._sinks(dev["device"]), cfg=cfg, now=now)
            self.store.put_device(dev)
            self._emit_alerts(planned, now)

    def _check_whatsapp(self, now: float) -> None:
        """Runs on the ingest worker: WhatsApp down for a while (or back) -> a notice on the other sinks."""
        kind = self._wa_watch.check(self._whatsapp, now)
        if kind is None:
            return
        st = self._whatsapp
        ts = float((st.get("down_since") if kind == "whatsapp_down" else None) or now)
        planned = alerts.plan_whatsapp(
            kind,
            ts,
            gateway_name=self.config.homeassistant.gateway_name,
            note=str(st.get("detail") or "") if kind == "whatsapp_down" else "",
            sinks=self._sinks(GATEWAY_DEVICE),
            cfg=self.config.alerts,
            now=now,
        )
        log.warning("WhatsApp %s: telling %d other sink recipient(s)", kind, len(planned))
        self._emit_alerts(planned, now)

    def _emit_alerts(self, planned: list[PlannedAlert], when: float) -> None:
        """Add outbox entries that belong to no event (box health, WhatsApp, the send API)."""
        if not planned:
            return
        assert self.store is not None
        self.store.add_outbox(planned, when)
        for o in planned:
            self.bus.publish(OUTBOX_CHANGED, _public(dict(o)))
        self._wake_outbox()

    def _wake_outbox(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    # --- commands ---------------------------------------------------------------------

    def _on_cmd_result(self, device: str, payload: bytes) -> None:
        try:
            res = decode_cmd_result(payload, self.limits)
        except ProtocolError as exc:
            self._reject(exc.reason, exc.detail, f"command result from {device}")
            return
        extra = res.extra if len(payload) <= MAX_RESULT_BYTES else {"extra_dropped": True}
        data = {"device": device, "id": res.id, "ok": res.ok, "error": res.error, **extra}
        try:
            with self._commands_lock:
                self._commands.answer(device, res.id, data, self.clock())
        except UnknownResult as exc:
            # Only answers to commands this gateway sent to this box are kept (issue 14 item 4).
            self._reject(exc.reason, exc.detail, f"command result from {device}")
            return
        self.bus.publish(COMMAND_RESULT, data)

    def send_command(self, device: str, cmd: str, args: dict[str, Any] | None = None) -> str:
        if not valid_device_id(device):
            raise ValueError(f"bad device id {device!r}")
        if self.link is None:
            raise RuntimeError("gateway is not running")
        cmd_id = f"cmd-{uuid.uuid4().hex[:12]}"
        payload = encode_cmd(cmd_id, cmd, args)  # raises ProtocolError for unknown commands
        with self._commands_lock:  # before publishing: the answer can come back before publish returns
            self._commands.sent(cmd_id, device, cmd, self.clock())
        self.link.publish(topic(self.prefix, device, "cmd"), payload)
        return cmd_id

    def _publish_ota(self, topic_name: str, payload: bytes, retain: bool) -> None:
        if self.link is not None:
            self.link.publish(topic_name, payload, retain=retain)

    # --- over-the-air updates (dashboard, Home Assistant) --------------------------------

    def firmware_status(self, device: str) -> dict[str, Any]:
        """A box's firmware against this checkout's and its update (`gateway.ota.offers.firmware_status`)."""
        if not valid_device_id(device):
            raise ValueError(f"bad device id {device!r}")
        return offers.firmware_status(self.ota.root, device, self.ota.boxes.get(device), self.firmware)

    def offer_update(self, device: str) -> dict[str, Any]:
        """Send this checkout's firmware to `device` (what `parcelbox device update DEVICE --no-wait`
        does). Raises LookupError for a box the gateway does not know, UpdateRefused when it cannot go."""
        if not valid_device_id(device):
            raise ValueError(f"bad device id {device!r}")
        known = any(d["device"] == device for d in self.list_devices())
        box = self.ota.boxes.get(device)
        offer = offers.offer_checked(self.ota.root, device, box, known, self.firmware)
        log.info(
            "ota: update %s queued for %s (%s -> %s)",
            offer["id"],
            device,
            offer.get("from"),
            offer["version"],
        )
        self._on_ota_change(device)
        return offer

    def _on_ota_change(self, device: str) -> None:
        """Tell the bus when what a box shows about its firmware changed (not at every chunk: only when
        the state or the percentage moved)."""
        box = self.ota.boxes.get(device) or {}
        view = offers.read_view(self.ota.root, device) or {}
        key = (
            box.get("fw"),
            box.get("set"),
            box.get("online"),
            view.get("id"),
            view.get("state"),
            view.get("percent"),
        )
        if self._ota_shown.get(device) == key:
            return
        self._ota_shown[device] = key
        self.bus.publish(OTA_CHANGED, {"device": device})

    def command_result(self, cmd_id: str) -> dict[str, Any] | None:
        with self._commands_lock:
            return self._commands.result(cmd_id, self.clock())

    # --- GatewayPort reads ------------------------------------------------------------

    def list_events(
        self,
        *,
        device: str | None = None,
        type: str | tuple[str, ...] | None = None,
        since: float | None = None,
        until: float | None = None,
        before: tuple[float, int, str] | None = None,
        limit: int = 50,
    ) -> list[EventRecord]:
        assert self.store is not None
        return self.store.list_events(
            device=device, type=type, since=since, until=until, before=before, limit=limit
        )

    def get_event(self, device: str, event_id: str) -> EventRecord | None:
        assert self.store is not None
        return self.store.get_event(device, event_id)

    def photo_path(self, device: str, event_id: str, variant: PhotoVariant) -> Path | None:
        assert self.store is not None
        return self.store.photo_path(device, event_id, variant)

    def list_devices(self) -> list[DeviceRecord]:
        assert self.store is not None
        return [self._device_out(d) for d in self.store.list_devices() if not self._is_removed(d)]

    def list_outbox(self, state: OutboxState | None = None, limit: int = 100) -> list[OutboxRecord]:
        assert self.store is not None
        return self.store.list_outbox(state, limit)

    # --- the send API (gateway/sendapi.py, POST /api/notify) ----------------------------

    def sink_names(self) -> list[str]:
        """The configured sinks a message can be sent through."""
        return list(self.notifiers)

    def _api_photo_path(self, name: str) -> Path | None:
        if not _API_PHOTO.fullmatch(name):
            return None
        p = self.data_dir / API_PHOTO_DIR / name
        return p if p.is_file() else None

    def queue_message(self, req: SendRequest, recipient: str | None = None) -> dict[str, Any]:
        """Queue a message to the chosen sinks; durable when this returns (the API then answers 202).

        Raises `BadRequest` (nothing queued) for an unknown sink or a photo `process_photo` refuses.
        The photo's alert copy (validated, re-encoded, metadata gone) is written before the entries,
        so an entry never points at a photo that is not on disk.
        """
        assert self.store is not None
        sinks = resolve_sinks(req.sinks, self.sink_names())
        msg_id = f"msg{uuid.uuid4().hex[:16]}"
        processed = None
        if req.photo is not None:
            try:
                processed = process_photo(req.photo, self.photo_settings)
            except PhotoError as e:
                self.counters.inc("api_photos_refused")
                raise BadRequest("bad_photo", f"photo refused ({e.reason}): {e.detail}"[:300]) from None
        photo_file = f"{msg_id}.jpg" if processed is not None else None
        device = req.box or GATEWAY_DEVICE
        dev = (self.store.get_device(req.box) if req.box else None) or {}
        name = dev.get("name") or req.box or self.config.homeassistant.gateway_name
        caption = f"{req.title}\n{req.text}" if req.title else req.text
        now = self.clock()
        out: list[PlannedAlert] = []
        for sink in sinks:
            try:
                recipients = self.notifiers[sink].recipients(device)
            except Exception:
                log.exception("notifier %s: recipients() failed", sink)
                recipients = []
            if recipient is not None:  # a test to one recipient (the dashboard's "Send test")
                recipients = [recipient]
            for r in recipients:
                out.append(
                    {
                        "id": f"{msg_id}_{sink}_{_rhash(r)}",
                        "kind": "message",
                        "device": device,
                        "event_ids": [],
                        "notifier": sink,
                        "recipient": r,
                        "state": "pending",
                        "attempts": 0,
                        "created_at": now,
                        "next_attempt_at": now,
                        "sent_at": None,
                        "last_error": None,
                        "message_id": None,
                        "receipt": None,
                        "receipt_at": None,
                        "ts": now,
                        "device_name": name,
                        "caption": caption,
                        "has_photo": False,
                        "photo_file": photo_file,
                        "alert_state": {},
                    }
                )
        if not out:
            raise BadRequest("no_recipients", f"{', '.join(sinks)}: no recipient configured for this message")
        if processed is not None and photo_file is not None:
            d = self.data_dir / API_PHOTO_DIR
            d.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(d / photo_file, processed.alert_jpeg, mode=0o600)
        self._emit_alerts(out, now)
        self.counters.inc("api_messages")
        log.info("send API: message %s queued as %d alert(s) via %s", msg_id, len(out), ", ".join(sinks))
        return {"id": msg_id, "alerts": [o["id"] for o in out], "sinks": sinks}

    def channels(self) -> list[dict[str, Any]]:
        """Per-URL state of the Apprise sink for the dashboard: ids, routing, last outcome, queue.

        Never a URL: `describe` gives the non-secret id and scheme only.
        """
        assert self.store is not None
        sink = self.notifiers.get("apprise")
        if sink is None:
            return []
        rows = self.store.list_outbox(None, 500)
        out = []
        # Only the Apprise sink has all_recipients/describe (gateway/notify/apprise.py); the Notifier
        # protocol does not, and importing that module here for an isinstance would pull it in for all.
        for rid in sink.all_recipients():  # type: ignore[attr-defined]
            mine = [r for r in rows if r["notifier"] == "apprise" and r["recipient"] == rid]
            counts = {
                st: sum(1 for r in mine if r["state"] == st) for st in ("pending", "failed", "dead", "sent")
            }
            last = max(mine, key=lambda r: r["created_at"], default=None)
            out.append(
                {
                    **sink.describe(rid),  # type: ignore[attr-defined]  # the Apprise sink: see above
                    "sink": "apprise",
                    "recent": counts,
                    "last_alert": _public(dict(last)) if last else None,
                }
            )
        return out

    def test_channel(self, sink: str, recipient: str) -> dict[str, Any]:
        """Queue a test message to one recipient of `sink` (through the outbox: retries, dead letter)."""
        n = self.notifiers.get(sink)
        known = getattr(n, "all_recipients", None)
        if n is None or known is None or recipient not in known():
            raise LookupError(f"no {sink} recipient {recipient}")
        text = "parcelbox test message: this channel gets the box alerts."
        return self.queue_message(SendRequest(text, None, (sink,), None, None), recipient=recipient)

    def get_alert(self, alert_id: str) -> dict[str, Any] | None:
        assert self.store is not None
        return self.store.get_outbox(alert_id)

    def retry_alert(self, alert_id: str) -> bool:
        return self.dispatcher.retry(alert_id) if self.dispatcher else False

    def whatsapp_state(self) -> WhatsAppState:
        return self._whatsapp.copy()

    def _on_whatsapp_state(self, _topic: str, data: dict[str, Any]) -> None:
        was = self._whatsapp.get("state")
        self._whatsapp = cast(WhatsAppState, dict(data))  # WHATSAPP_STATE carries a WhatsAppState
        if data.get("state") == "connected" and was != "connected" and self.dispatcher is not None:
            # Alerts that failed while WhatsApp was away go now, not after their backoff.
            self.dispatcher.reschedule("whatsapp")

    def _on_whatsapp_receipt(self, _topic: str, data: dict[str, Any]) -> None:
        if self.dispatcher is None or not isinstance(data, dict):
            return
        ids = [str(i) for i in data.get("ids") or [] if i]
        self.dispatcher.note_receipt(
            ids, str(data.get("status") or ""), float(data.get("ts") or self.clock())
        )

    def health(self) -> dict[str, Any]:
        assert self.store is not None
        now = self.clock()
        out: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self._started_at,
            "uptime_s": round(now - self._started_at, 1) if self._started_at else 0.0,
            "updated_at": now,
            "data_dir": str(self.data_dir),
            "broker": {
                "url": self.link.endpoint if self.link else self.broker_url,
                "managed": self.broker.kind if self.broker else None,
                "connected": bool(self.link and self.link.connected.is_set()),
                # more than 1 with a healthy broker: something keeps disconnecting us (a client-id thief?)
                "connects": self.link.connects if self.link else 0,
            },
            "events_total": self.store.event_count(),
            "alerts": self.store.outbox_counts(),
            "queue": self._queue.qsize(),
            "reassembly": {
                "partials": len(self._reasm),
                "held_bytes": self._reasm.held_bytes,
                "accounted_bytes": self._reasm.accounted_bytes,
            },
            "photos_in_progress": len(self._in_flight),
            "commands_held": len(self._commands),
            "storage": self.storage_health(),
        }
        for k in (
            "received",
            "events_received",
            "stored",
            "duplicates",
            "chunks",
            "duplicate_chunks",
            "statuses",
            "acks",
            "nacks",
            "store_write_errors",
        ):
            out[k] = 0
        out.update(self.counters.snapshot())
        return out

    def storage_health(self) -> dict[str, Any]:
        """Free space of the data folder's disk and the store's damage counters (`gateway.diskspace`)."""
        assert self.store is not None
        try:
            disk = disk_report(measure(self.data_dir), self.disk_thresholds)
        except OSError:
            disk = None
        failed_at = self._store_failed_at
        return storage_report(
            disk,
            self.store.integrity(),
            self.counters.get("store_write_errors"),
            failed_recently=failed_at is not None and time.monotonic() - failed_at < WRITE_FAILURE_SHOWN_S,
        )

    def _check_storage(self) -> None:
        """Log storage problems when they appear (and hourly while they last); tell the bus."""
        report = self.storage_health()
        to_log, recovered, publish = self._storage_watch.update(report, time.monotonic())
        for problem in to_log:
            log.warning("storage: %s", problem)
        if recovered:
            log.info(
                "storage: ok again (%.0f MB free)", (report["disk"] or {}).get("free_bytes", 0) / (1 << 20)
            )
        if publish is not None:
            self.bus.publish(STORAGE_STATE, publish)

    def storage_state(self) -> dict[str, Any] | None:
        """The last storage state published on the bus (for a subscriber that starts later)."""
        last = self._storage_watch.published
        return dict(last) if last else None

    def write_status(self) -> None:
        """`<data>/status.json`: what `parcelbox status` shows (health, boxes, recent events, outbox)."""
        assert self.store is not None
        self._check_storage()
        snap = {
            "health": self.health(),
            "devices": self.list_devices(),
            "events": self.list_events(limit=10),
            "outbox": self.list_outbox(limit=20),
            "ota": self.ota.snapshot(),
        }
        # Rewritten every 2 s: atomic but not fsync'd (SD-card wear; a lost snapshot is rewritten soon).
        # At a full disk it fails: logged (rate-limited) and counted; `parcelbox status` measures the
        # disk itself, so the warning still shows.
        try:
            body = json.dumps(snap, indent=1, default=str, allow_nan=False)
        except ValueError:  # a non-finite number in a record stored before the protocol refused them
            body = json.dumps(json_safe(snap), indent=1, default=str)
        try:
            atomic_write_bytes(self.data_dir / STATUS_FILE, body.encode(), durable=False)
        except OSError as exc:
            self._store_failed(exc, STATUS_FILE, counter="status_write_errors")

    def _tick_loop(self) -> None:
        """Once a second: `tick` (on the worker); every 2 s the status snapshot."""
        last_status = 0.0
        while not self._stopping.wait(1.0):
            self._queue.put_control(Call(self._tick))
            now = time.monotonic()
            if now - last_status >= 2.0:
                last_status = now
                self._queue.put_control(Call(self.write_status))

    def tick(self, now: float | None = None) -> None:
        """One turn of the periodic work at `now` (the service clock when None): reassembly timeouts
        (on the reassembler's own monotonic clock), boxes offline or silent for too long, the WhatsApp
        notice, expired command results, over-the-air offers, a purge slice, retention (hourly by `now`),
        the device registry and the managed broker. The gateway calls it every second; tests call it
        with a fake clock instead of waiting.

        It runs on the ingest worker, the single writer of box records: called from another thread while
        the gateway runs, it is queued there and returns once it has run (raising what it raised)."""
        worker = self._worker
        if worker is None or not worker.is_alive() or threading.current_thread() is worker:
            self._tick(now)
            return
        done = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            try:
                self._tick(now)
            except BaseException as exc:
                failed.append(exc)
            finally:
                done.set()

        self._queue.put_control(Call(run))
        if not done.wait(_TICK_WAIT_S):
            raise TimeoutError(f"the ingest worker did not run the tick within {_TICK_WAIT_S:.0f} s")
        if failed:
            raise failed[0]

    def _tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.pipeline.expire()
        with self._commands_lock:
            self._commands.expire(now)
        self._check_offline(now)
        self._check_whatsapp(now)
        self.ota.tick()
        if self._purger is not None and (self._purger.busy or pending_purges(self.data_dir)):
            self._queue_purge_step()
        self._watch_registry()
        if self.broker is not None:
            self.broker.refresh()  # `parcelbox device add/remove` took effect: reload credentials
            self.broker.supervise()
        if now >= self._retention_due:  # last: a failing retention pass must not skip the rest
            self._retention_due = now + _RETENTION_EVERY_S
            self._retention()

    def _queue_purge_step(self) -> None:
        if self._purge_queued or self._purge_paused:
            return
        self._purge_queued = True
        for box, reason in self._queue.put(_PURGE_QUEUE, Call(self._purge_step), 0):
            if box == _PURGE_QUEUE:
                self._purge_queued = False  # the next tick tries again
            else:
                self._reject(reason, f"{box}'s share of the ingest queue is full", f"message from {box}")

    def _purge_step(self) -> None:
        """Runs on the ingest worker: one slice of the purge in progress (gateway/purge.py)."""
        self._purge_queued = False
        if self._purger is None or self._purge_paused:
            return
        try:
            more = self._purger.step()
        finally:
            for device, removed in self._purger.finished:
                self.counters.inc("purges")
                log.info(
                    "history of box %s deleted (%s)",
                    device,
                    ", ".join(f"{v} {k}" for k, v in removed.items()),
                )
            self._purger.finished.clear()
        if more:
            self._queue_purge_step()

    def _retention(self) -> None:
        assert self.store is not None
        s = self.config.store
        if s.photo_retention_days:
            # Send-API photos: kept as long as box photos, and never before their alerts are settled.
            age = max(s.photo_retention_days * 86400.0, self.config.outbox.dead_after_s + 3600.0)
            n = prune_api_photos(self.data_dir / API_PHOTO_DIR, self.clock(), age)
            if n:
                log.info("retention removed %d send-API photo(s)", n)
        if s.retention_days or s.photo_retention_days:
            removed = self.store.apply_retention(self.clock(), s.retention_days, s.photo_retention_days)
            if any(removed.values()):
                log.info("retention removed %s", removed)
