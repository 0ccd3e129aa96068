"""The running gateway: ingest worker, photo pool, store, alert outbox, box health.

`GatewayService(config)` implements `gateway.ports.GatewayPort` and publishes on
`gateway.bus.Bus`. Lifecycle: `start()` takes the data-folder lock, opens the
store, starts the managed broker when no `broker.url` is set, the photo pool, the
ingest worker, the outbox dispatcher and the MQTT link, then every extra
component (`gateway.app.build_components`). `stop()` stops the components, drains
received messages and photos in progress (acking what gets stored), finishes the
send in flight, writes a last status snapshot and releases everything.

Threads: paho's network thread only makes cheap checks and enqueues, on one bounded
sub-queue per box served in turn (`gateway.fairqueue`); one ingest worker does all
decoding, reassembly, store writes and acks (so the store has a single writer for
events); the photo pool runs `gateway.photos.process_photo`; each notifier has a
sending thread (`gateway.outbox`).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from gateway.budget import Budget
from gateway.bus import (
    DEVICE_CHANGED,
    DEVICE_REGISTERED,
    DEVICE_REMOVED,
    EVENT_STORED,
    OUTBOX_CHANGED,
    Bus,
)
from gateway.captions import caption_strip, render_caption
from gateway.commands import Commands
from gateway.config import Config
from gateway.datalock import DataDirLock
from gateway.devices import DeviceRegistry
from gateway.diskspace import DiskThresholds
from gateway.fairqueue import FairQueue
from gateway.health import Counters
from gateway.ingest import MqttLink
from gateway.lograte import LogThrottle
from gateway.notify.base import Notifier
from gateway.ota import offers
from gateway.ota.updates import FirmwareUpdates
from gateway.outbox import OutboxDispatcher, _public
from gateway.photos import PhotoError, PhotoSettings, ProcessedPhoto, process_photo
from gateway.ports import (
    DeviceRecord,
    EventRecord,
    OutboxRecord,
    OutboxState,
    PhotoInfo,
    PhotoVariant,
    WhatsAppState,
)
from gateway.privatedir import ensure_private_dir
from gateway.protocol import (
    Event,
    Limits,
    ProtocolError,
    decode_event,
    decode_status,
    encode_ack,
    encode_nack,
    parse_topic,
    topic,
    valid_msg_id,
)
from gateway.purge import QUEUE_KEY as PURGE_QUEUE
from gateway.purge import Purger, PurgeRunner
from gateway.reassembly import Complete, Dropped, Reassembler, Refused
from gateway.retention import apply_retention
from gateway.sendqueue import SendQueue
from gateway.status import STATUS_FILE, StorageMonitor, health_report, status_snapshot
from gateway.store import Store, blank_device
from gateway.vocabulary import GATEWAY_DEVICE
from gateway.whatsapp.state import LinkState
from gateway.whatsapp.watch import LinkWatch

log = logging.getLogger("gateway")

_BATTERY_HYSTERESIS_MV = 100


class Component(Protocol):
    """Anything started and stopped with the gateway (web server, WhatsApp supervisor, HA bridge)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class _PhotoJob:
    device: str
    event: Event
    received_at: float
    photo: bytes


def _rhash(recipient: str) -> str:
    return hashlib.sha256(recipient.encode()).hexdigest()[:8]


def _peek_event_id(payload: bytes) -> str | None:
    """The id of an event we are rejecting, if it has a valid one, so the box can drop it."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    eid = obj.get("id") if isinstance(obj, dict) else None
    return eid if valid_msg_id(eid) else None


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
        ing = config.ingest
        self._queue = FairQueue(
            max_messages=ing.queue_size,
            device_max_messages=ing.device_queue_size,
            device_max_bytes=ing.device_queue_bytes,
        )
        self._reasm = Reassembler(
            timeout_s=ing.reassembly_timeout_s,
            max_bytes=ing.reassembly_max_bytes,
            max_partials=ing.reassembly_max_partials,
            device_max_partials=ing.reassembly_device_max_partials,
            device_max_bytes=ing.reassembly_device_max_bytes,
        )
        self._in_flight: set[tuple[str, str]] = set()
        # Complete photos waiting for (or in) the photo pool, per box and in total: they have left the
        # reassembler but still hold their bytes until stored (gateway/budget.py says why).
        self._photo_budget = Budget(
            per_key_count=ing.device_photos_in_progress,
            per_key_bytes=ing.reassembly_device_max_bytes,
            total_count=ing.reassembly_max_partials,
            total_bytes=ing.photos_in_progress_bytes,
        )
        self._pool: concurrent.futures.Executor | None = None
        self._worker: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._started_at: float | None = None
        # Boxes at their limit of unfinished photos -> the event ids they hold: written by the worker
        # (a new dict each time, so paho's thread reads a consistent one without a lock).
        self._busy: dict[str, frozenset[str]] = {}
        self.commands = Commands(
            prefix=self.prefix,
            limits=self.limits,
            bus=self.bus,
            publish=self._publish,
            running=lambda: self.link is not None,
            reject=self._reject,
            clock=self.clock,
        )
        # Over-the-air updates: offers queued by `parcelbox device update` or the dashboard, served
        # from the worker by `self.ota`.
        self.updates = FirmwareUpdates(
            self.data_dir,
            self.prefix,
            publish=self._publish,
            reject=self._reject,
            bus=self.bus,
            known_boxes=lambda: {d["device"] for d in self.list_devices()},
            clock=self.clock,
            firmware=firmware,
        )
        self.ota = self.updates.server
        self._log_throttle = LogThrottle()
        self._registered: tuple[float, set[str], dict[str, float]] = (-1.0, set(), {})
        self.purges: PurgeRunner | None = None  # `parcelbox device forget NAME --purge`, made at start
        self.storage_monitor = StorageMonitor(
            self.data_dir,
            DiskThresholds(
                min_free_mb=config.store.min_free_mb, min_free_percent=config.store.min_free_percent
            ),
            store=self._open_store,
            bus=self.bus,
            counters=self.counters,
        )
        self.whatsapp = LinkState(self.bus, dispatcher=lambda: self.dispatcher, clock=self.clock)
        self._wa_watch = LinkWatch(float(getattr(config.whatsapp, "down_notice_after_s", 300.0)))
        self.photo_settings = PhotoSettings.from_config(config.photos, max_bytes=self.limits.max_photo_bytes)
        self.send_queue = SendQueue(
            data_dir=self.data_dir,
            store=self._open_store,
            notifiers=self.notifiers,
            emit=self._emit_alerts,
            photo_settings=self.photo_settings,
            counters=self.counters,
            clock=self.clock,
            gateway_name=config.homeassistant.gateway_name,
        )
        # GatewayPort's optional actions (the web app and the HA bridge look them up with getattr),
        # answered by the parts themselves.
        self.queue_message = self.send_queue.queue_message  # POST /api/notify
        self.channels = self.send_queue.channels
        self.test_channel = self.send_queue.test_channel
        self.get_alert = self.send_queue.get_alert
        self.firmware_status = self.updates.firmware_status
        self.offer_update = self.updates.offer_update
        self.storage_state = self.storage_monitor.state  # the HA bridge, when it starts

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
        self.purges = PurgeRunner(
            Purger(self.store, self.data_dir, self.clock),
            submit=lambda step: self._run_on_worker(PURGE_QUEUE, step),
            counters=self.counters,
        )
        log.info(
            "data folder %s: %d events, outbox %s",
            self.data_dir,
            self.store.event_count(),
            self.store.outbox_counts(),
        )
        self.updates.remember_last(self.data_dir / STATUS_FILE)
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
        self._stopping.clear()
        self._watch_registry()  # the registry as it is now: changes from here on go on the bus
        self._worker = threading.Thread(target=self._work, name="ingest", daemon=True)
        self._worker.start()
        self.dispatcher = OutboxDispatcher(
            self.store,
            self.notifiers,
            bus=self.bus,
            photo_path=lambda d, e: self.photo_path(d, e, "alert"),
            attachment_path=self.send_queue.photo_path,
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
            deliver=self._deliver,
            username=username,
            password=password,
            keepalive=self.config.broker.keepalive_s,
            reject=self._reject,  # retained junk (gateway/retained.py) is counted with the other rejections
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
        if self.purges is not None:
            self.purges.pause()  # an unfinished purge goes on at the next start (its request stays)
        for c in reversed(self.components):
            try:
                c.stop()
            except Exception:
                log.exception("component %r failed to stop", c)
        deadline = time.monotonic() + timeout
        # Let the worker finish what paho already handed us (and photos in the pool), acks included.
        while time.monotonic() < deadline and (not self._queue.empty() or self._in_flight):
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

    # --- ingest -----------------------------------------------------------------------

    def _deliver(self, topic_name: str, payload: bytes, received_at: float, retained: bool = False) -> None:
        """paho's thread: cheap checks and enqueue only, never blocking (it also carries every box's
        keepalives and our acks). Each box has its own share of the queue (gateway.fairqueue).
        `retained`: a copy the broker replays from its retained store (gateway.ingest)."""
        self.counters.inc("received")
        # Nothing valid is bigger than a chunk: refused before it is queued, so a big payload costs this
        # check only. (JSON between its own 16 KiB limit and this is refused by the worker, which can
        # still nack the event so the box drops it.)
        limit = self.limits.max_chunk_bytes
        if len(payload) > limit:
            self._reject("oversize", f"{len(payload)} bytes > {limit}", topic_name[:120])
            return
        device, _, rest = topic_name[len(self.prefix) + 1 :].partition("/")
        busy = self._busy.get(device)
        if busy is not None and rest.startswith("photo/"):
            # The box is at its limit of unfinished photos (the worker keeps `_busy` current): a chunk
            # that would start one more is refused here, costing the worker nothing.
            eid = rest[6:].partition("/")[0]
            if eid not in busy:
                self._reject(
                    "reassembly_device_busy",
                    f"{device} is at its limit of unfinished photos",
                    f"photo {device}",
                )
                return
        item = ("msg", topic_name, payload, received_at, retained)
        for box, reason in self._queue.put(device, item, len(payload)):
            self._reject(reason, f"{box}'s share of the ingest queue is full", f"message from {box}")

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                if item[0] == "msg":
                    self._handle(item[1], item[2], item[3], item[4] if len(item) > 4 else False)
                elif item[0] == "photo_done":
                    self._photo_done(item[1], item[2])
                elif item[0] == "call":
                    item[1]()
            except OSError as exc:
                # A full disk or a failing card (a box's status record, say): nothing was acked.
                self._store_failed(exc, f"a change ({item[0]})", counter="device_write_errors")
            except Exception:
                # Never let one message kill the worker; the box re-sends what was not acked.
                log.exception("ingest worker: unexpected error; continuing")
                self.counters.reject("internal_error")

    def _store_failed(self, exc: OSError, what: str, *, counter: str = "store_write_errors") -> None:
        """A write to the data folder failed: counted, warned about (gateway.status.StorageMonitor)."""
        self.storage_monitor.failed(exc, what, counter=counter)

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

    def _is_removed(self, dev: dict[str, Any]) -> bool:
        """Removed with `parcelbox device remove` and not heard from since: hidden, never 'offline'."""
        removed_at = self._registry_view()[1].get(dev["device"])
        return removed_at is not None and (dev.get("last_seen") or 0.0) <= removed_at

    def _handle(self, topic_name: str, payload: bytes, received_at: float, retained: bool = False) -> None:
        try:
            t = parse_topic(self.prefix, topic_name, self.limits)
        except ProtocolError as exc:
            self._reject(exc.reason, exc.detail, topic_name[:120])
            return
        if self.config.devices.registration_required and not self._is_registered(t.device):
            # No nack: the box keeps its spool and delivers once it is registered.
            self._reject("unknown_device", f"{t.device} is not registered (parcelbox device add)", topic_name)
            return
        if t.kind == "status":
            self._on_status(t.device, payload, received_at, retained)
        elif t.kind == "event":
            self._on_event(t.device, payload, received_at)
            self._note_busy(t.device)
        elif t.kind == "photo":
            assert t.event_id is not None and t.index is not None
            self._on_chunk(t.device, t.event_id, t.index, payload)
            self._note_busy(t.device)
        elif t.kind == "cmd_result":
            self.commands.on_result(t.device, payload)
        elif t.kind == "ota_reply":
            self.ota.on_reply(t.device, payload)

    def _ack(self, device: str, event_id: str) -> None:
        assert self.link is not None
        self.link.publish(topic(self.prefix, device, "ack"), encode_ack(event_id))
        self.counters.inc("acks")

    def _nack(self, device: str, event_id: str, error: str, retry: bool) -> None:
        assert self.link is not None
        self.link.publish(topic(self.prefix, device, "ack"), encode_nack(event_id, error, retry))
        self.counters.inc("nacks")

    def _on_event(self, device: str, payload: bytes, received_at: float) -> None:
        assert self.store is not None
        self.counters.inc("events_received")
        try:
            event = decode_event(payload, self.limits)
        except ProtocolError as exc:
            self._reject(exc.reason, exc.detail, f"event from {device}")
            eid = _peek_event_id(payload)
            if eid is not None:
                self._nack(device, eid, f"{exc.reason}: {exc.detail}"[:200], retry=False)
            return
        if self.store.has_event(device, event.id):
            self.counters.inc("duplicates")
            self._reasm.discard(device, event.id)
            self._ack(device, event.id)  # the box may have missed the first ack
            return
        if (device, event.id) in self._in_flight:
            self.counters.inc("duplicates")
            return
        self._reassembled(self._reasm.add_event(device, event, size=len(payload)), received_at)

    def _on_chunk(self, device: str, event_id: str, index: int, payload: bytes) -> None:
        assert self.store is not None
        self.counters.inc("chunks")
        if len(payload) > self.limits.max_chunk_bytes:
            self._reject("oversize", f"chunk of {len(payload)} bytes", f"{device}/{event_id}/{index}")
            return
        if self.store.has_event(device, event_id) or (device, event_id) in self._in_flight:
            self.counters.inc("duplicate_chunks")
            return
        try:
            done = self._reasm.add_chunk(device, event_id, index, payload)
        except ProtocolError as exc:
            self._reject(exc.reason, exc.detail, f"chunk {device}/{event_id}/{index}")
            self._reasm.discard(device, event_id)
            self._nack(device, event_id, exc.detail, retry=True)
            return
        self._reassembled(done, self.clock())
        # Chunks are what grows memory: enforce the byte caps (per box and in total) right away.
        self._dropped(self._reasm.shed())

    def _reassembled(self, done: Complete | Dropped | Refused | None, received_at: float) -> None:
        if done is None:
            return
        if isinstance(done, Refused):
            # Over its box's share (or the total) of unfinished photos: nothing kept, no nack (see
            # gateway.reassembly.Refused); the box re-sends after its ack timeout.
            self._reject(done.reason, done.detail, f"photo {done.device}/{done.event_id}")
            return
        if isinstance(done, Dropped):
            self._dropped([done])
            return
        if done.photo is None:
            self._store_event(done.device, done.event, received_at, None)
            return
        job = _PhotoJob(done.device, done.event, received_at, done.photo)
        over = self._photo_budget.take(done.device, len(done.photo))
        if over is not None:
            # Not acked, so the box sends it again after its ack timeout; meanwhile it cannot queue
            # more photos ahead of other boxes' than its share.
            b = self._photo_budget
            n, size = b.used(done.device) if over == "device" else (b.count, b.size)
            who = "this box" if over == "device" else "all boxes"
            detail = f"{who}: {n} photos ({size} bytes) in progress"
            self._reject("photo_pool_busy", detail, f"photo {done.device}/{done.event.id}")
            return
        self._in_flight.add((done.device, done.event.id))
        assert self._pool is not None
        name = self._device_name(done.device)
        ts = done.event.ts if done.event.ts is not None else received_at
        caption = (
            caption_strip(name, ts, self.config.alerts.timezone) if self.config.photos.caption_strip else None
        )
        fut = self._pool.submit(process_photo, done.photo, self.photo_settings, caption)
        fut.add_done_callback(lambda f: self._queue.put_control(("photo_done", job, f)))

    def _note_busy(self, device: str) -> None:
        """Tell paho's thread whether `device` is at its limit of unfinished photos (and which it holds)."""
        if self._reasm.busy(device):
            ids = self._reasm.partial_ids(device)
            if self._busy.get(device) != ids:
                self._busy = {**self._busy, device: ids}
        elif device in self._busy:
            self._busy = {k: v for k, v in self._busy.items() if k != device}

    def _dropped(self, drops: list[Dropped]) -> None:
        for d in drops:
            self._note_busy(d.device)
            self._reject(d.reason, d.detail, f"photo {d.device}/{d.event_id}")
            self._nack(d.device, d.event_id, f"{d.reason}: {d.detail}"[:200], retry=True)

    def _photo_done(self, job: _PhotoJob, fut: concurrent.futures.Future[ProcessedPhoto]) -> None:
        key = (job.device, job.event.id)
        try:
            try:
                result = fut.result()
            except PhotoError as exc:
                # The bytes matched the box's own hash: sending them again cannot help.
                self._reject(exc.reason, exc.detail, f"photo {job.device}/{job.event.id}")
                self._nack(job.device, job.event.id, f"{exc.reason}: {exc.detail}"[:200], retry=False)
                return
            except concurrent.futures.CancelledError:
                return  # shutting down; not acked, so the box sends it again
            except Exception as exc:
                log.exception("photo pipeline crashed on %s/%s", job.device, job.event.id)
                self.counters.reject("photo_error")
                self._nack(job.device, job.event.id, f"photo_error: {type(exc).__name__}", retry=True)
                return
            self._store_event(job.device, job.event, job.received_at, (job.photo, result))
        finally:
            self._in_flight.discard(key)
            self._photo_budget.give(job.device, len(job.photo))

    def _store_event(
        self, device: str, event: Event, received_at: float, photo: tuple[bytes, ProcessedPhoto] | None
    ) -> None:
        assert self.store is not None
        ts = event.ts if event.ts is not None else received_at
        photo_info: PhotoInfo | None = None
        if photo is not None and event.photo is not None:
            original, processed = photo
            variants = {"alert": processed.alert_jpeg, "thumb": processed.thumb_jpeg}
            if self.config.photos.keep_original:
                variants["original"] = original
            try:
                self.store.write_photos(device, event.id, received_at, variants)
            except OSError as exc:
                self._store_failed(exc, f"the photo of {device}/{event.id}")
                return
            photo_info = {
                "size": event.photo.size,
                "sha256": event.photo.sha256,
                "width": processed.width,
                "height": processed.height,
            }
        record = EventRecord(
            device=device,
            id=event.id,
            type=event.type,
            ts=float(ts),
            received_at=received_at,
            seq=event.seq,
            sensors=dict(event.sensors),
            photo=photo_info,
            cmd=event.cmd,
        )
        if event.photo_dropped:
            record["photo_dropped"] = True
        dev = self._device(device)
        dev = self._apply_event_to_device(dev, record)
        outbox = self._plan_event_alerts(dev, record)
        try:
            added = self.store.add_event(record, outbox, device=dev)  # one durable write: event + box
        except OSError as exc:
            # No ack and no nack: a nack with retry makes the box re-send at once, photo and all,
            # into the same full disk. Without an answer it re-sends after its ack timeout, backing off.
            self._store_failed(exc, f"event {device}/{event.id}")
            return
        if not added:
            self.counters.inc("duplicates")
        else:
            self.counters.inc("stored")
            self.bus.publish(EVENT_STORED, dict(record))
            self.bus.publish(DEVICE_CHANGED, dict(self._device_out(dev)))
            for o in outbox:
                self.bus.publish(OUTBOX_CHANGED, _public(dict(o)))
            if outbox and self.dispatcher is not None:
                self.dispatcher.wake()
        self._ack(device, event.id)  # only now: record and photo are on disk

    # --- boxes ------------------------------------------------------------------------

    def _device_name(self, device: str) -> str:
        name = self.config.devices.names.get(device)
        if name:
            return name
        cred = self.registry.get(device) if self._is_registered(device) else None
        return cred.name if cred and cred.name else device

    def _device(self, device: str) -> dict[str, Any]:
        assert self.store is not None
        rec = self.store.get_device(device)
        if rec is None:
            rec = dict(blank_device(device, self._device_name(device)))
        return rec

    @staticmethod
    def _device_out(rec: dict[str, Any]) -> DeviceRecord:
        # cast: the checker cannot follow a comprehension over the TypedDict's own keys.
        return cast(DeviceRecord, {k: rec.get(k) for k in DeviceRecord.__annotations__})

    def _apply_event_to_device(self, dev: dict[str, Any], ev: EventRecord) -> dict[str, Any]:
        """Update a box's state from one event. Events may be stored out of order (photos take longer,
        spools replay late), so state follows the events' own times, not the order they were stored."""
        dev = dict(dev)
        ts = ev["ts"]
        dev["last_seen"] = max(dev.get("last_seen") or 0, ev["received_at"])
        newest = ts >= (dev.get("last_event_ts") or 0)
        if newest:
            dev["last_event_id"] = ev["id"]
            dev["last_event_ts"] = ts
        last_pickup = dev.get("last_pickup_ts") or 0
        waiting_ts = [t for t in dev.get("waiting_ts") or [] if t > last_pickup]
        if ev["type"] == "delivery":
            if ts > last_pickup:
                waiting_ts = sorted([*waiting_ts, ts])[-100:]
            dev["last_delivery_ts"] = max(dev.get("last_delivery_ts") or 0, ts)
        elif ev["type"] == "pickup" and ts >= last_pickup:
            dev["last_pickup_ts"] = ts
            waiting_ts = [t for t in waiting_ts if t > ts]
        dev["waiting_ts"] = waiting_ts
        dev["waiting"] = len(waiting_ts)
        if newest:
            lid = ev["sensors"].get("lid") if isinstance(ev["sensors"], dict) else None
            if lid in ("open", "closed"):
                dev["lid_open"] = lid == "open"
            elif ev["type"] == "lid_left_open":
                dev["lid_open"] = True
        return dev

    def _on_status(self, device: str, payload: bytes, received_at: float, retained: bool = False) -> None:
        assert self.store is not None
        try:
            st = decode_status(payload, self.limits)
        except ProtocolError as exc:
            self._reject(exc.reason, exc.detail, f"status from {device}")
            return
        self.counters.inc("statuses")
        self.ota.on_status(device, st)
        dev = self._device(device)
        if not st.online and self._is_removed(dev):
            return  # the last will of a box just removed: expected, and must not bring it back
        was_online = bool(dev.get("online"))
        if retained and dev.get("last_seen") is not None:
            # The broker replays a box's retained status whenever we (re)subscribe (every gateway start
            # or reconnect): it is what the box said at some earlier, unknown time, not a sign of life
            # now. Taking it as one reset every box's "last seen" to the restart. Keep only its
            # online/offline state (it is the latest the broker has), never the time or the figures.
            self.counters.inc("statuses_replayed")
            if st.online == was_online:
                return
            dev["online"] = st.online
            dev["offline_since"] = None if st.online else dev["last_seen"]
            self.store.put_device(dev)
            self.bus.publish(DEVICE_CHANGED, dict(self._device_out(dev)))
            return
        dev["online"] = st.online
        if not retained:  # a box known only from a replay has no known "last seen" yet
            dev["last_seen"] = received_at
        if st.online:
            for k in ("fw", "rssi", "battery_mv", "heap_free", "uptime_s", "spooled"):
                dev[k] = getattr(st, k)
            dev["status_at"] = None if retained else received_at  # when these figures were reported
            dev["offline_since"] = None
        elif was_online or dev.get("offline_since") is None:
            dev["offline_since"] = received_at
        alerts: list[OutboxRecord] = []
        if st.online and dev.get("offline_alerted"):
            dev["offline_alerted"] = False
            skip = () if self.config.alerts.online_alert else self._not_every_event()
            if len(skip) < len(self.notifiers):
                alerts += self._plan_alerts(dev, "online", received_at, [], has_photo=False, skip=skip)
        low = self.config.alerts.low_battery_mv
        if st.online and low and st.battery_mv is not None:
            if st.battery_mv < low and not dev.get("low_battery_alerted"):
                dev["low_battery_alerted"] = True
                alerts += self._plan_alerts(dev, "low_battery", received_at, [], has_photo=False)
            elif st.battery_mv >= low + _BATTERY_HYSTERESIS_MV:
                dev["low_battery_alerted"] = False
        self.store.put_device(dev)
        self._emit_alerts(alerts, received_at)
        self.bus.publish(DEVICE_CHANGED, dict(self._device_out(dev)))

    def _check_offline(self) -> None:
        """Runs on the ingest worker: boxes offline for longer than alerts.offline_after_s get one alert."""
        assert self.store is not None
        now = self.clock()
        silent_after = self.config.alerts.silent_after_s
        for dev in self.store.list_devices():
            since = dev.get("offline_since")
            if dev.get("offline_alerted") or self._is_removed(dev):
                continue
            if dev.get("online"):
                last_seen = dev.get("last_seen")
                if silent_after > 0 and last_seen is not None and now - last_seen >= silent_after:
                    # Not heard from (a sleeping box that never woke up again): offline since last seen.
                    dev["offline_alerted"] = True
                    alerts = self._plan_alerts(dev, "offline", last_seen, [], has_photo=False)
                    self.store.put_device(dev)
                    self._emit_alerts(alerts, now)
                continue
            if since is None:
                continue
            if now - since >= self.config.alerts.offline_after_s:
                dev["offline_alerted"] = True
                alerts = self._plan_alerts(dev, "offline", since, [], has_photo=False)
                self.store.put_device(dev)
                self._emit_alerts(alerts, now)

    def _check_whatsapp(self) -> None:
        """Runs on the ingest worker: WhatsApp down for a while (or back) -> a notice on the other sinks."""
        kind = self._wa_watch.check(self.whatsapp.state, self.clock())
        if kind is None:
            return
        st = self.whatsapp.state
        ts = float((st.get("down_since") if kind == "whatsapp_down" else None) or self.clock())
        note = str(st.get("detail") or "") if kind == "whatsapp_down" else ""
        gateway = {"device": GATEWAY_DEVICE, "name": self.config.homeassistant.gateway_name}
        alerts = self._plan_alerts(gateway, kind, ts, [], has_photo=False, skip=("whatsapp",), note=note)
        log.warning("WhatsApp %s: telling %d other sink recipient(s)", kind, len(alerts))
        self._emit_alerts(alerts, self.clock())

    def _emit_alerts(self, alerts: list[OutboxRecord], when: float) -> None:
        if not alerts:
            return
        assert self.store is not None
        self.store.add_outbox(alerts, when)
        for o in alerts:
            self.bus.publish(OUTBOX_CHANGED, _public(dict(o)))
        if self.dispatcher is not None:
            self.dispatcher.wake()

    # --- alerts -----------------------------------------------------------------------

    def _plan_event_alerts(self, dev: dict[str, Any], ev: EventRecord) -> list[OutboxRecord]:
        skip: tuple[str, ...] = ()
        if ev["type"] not in self.config.alerts.kinds:
            # Not an alert for people; sinks that take every stored event (the webhook) still get it.
            skip = self._not_every_event()
            if len(skip) == len(self.notifiers):
                return []
        return self._plan_alerts(
            dev,
            ev["type"],
            ev["ts"],
            [ev["id"]],
            has_photo=ev["photo"] is not None,
            photo_dropped=bool(ev.get("photo_dropped")),
            skip=skip,
        )

    def _not_every_event(self) -> tuple[str, ...]:
        """The sinks that get alerts only (all but the webhook with `events = "all"`)."""
        return tuple(n for n, s in self.notifiers.items() if not getattr(s, "every_event", False))

    def _plan_alerts(
        self,
        dev: dict[str, Any],
        kind: str,
        ts: float,
        event_ids: list[str],
        *,
        has_photo: bool,
        photo_dropped: bool = False,
        skip: tuple[str, ...] = (),
        note: str = "",
    ) -> list[OutboxRecord]:
        """One outbox entry per notifier and recipient (but those in `skip`). Ids are stable, so a
        retry never duplicates. `note` is appended to the caption."""
        now = self.clock()
        device = dev["device"]
        stem = f"{device}_{event_ids[0]}" if event_ids else f"{device}_{kind}_{int(ts * 1000)}"
        out: list[OutboxRecord] = []
        for name, notifier in self.notifiers.items():
            if name in skip:
                continue
            language = getattr(notifier, "language", None) or self.config.alerts.language
            caption = render_caption(
                kind,
                dev.get("name") or device,
                ts,
                language=language,
                tz=self.config.alerts.timezone,
                waiting=dev.get("waiting"),
                battery_mv=dev.get("battery_mv"),
                event_ids=event_ids,
                photo_dropped=photo_dropped,
            )
            if note:
                caption = f"{caption} {note}"
            try:
                recipients = notifier.recipients(device)
            except Exception:
                log.exception("notifier %s: recipients() failed", name)
                recipients = []
            for r in recipients:
                rec: dict[str, Any] = {
                    "id": f"{stem}_{name}_{_rhash(r)}",
                    "kind": kind,
                    "device": device,
                    "event_ids": list(event_ids),
                    "notifier": name,
                    "recipient": r,
                    "state": "pending",
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now + self.config.alerts.group_window_s
                    if self.config.alerts.group_window_s and kind == "delivery"
                    else now,
                    "sent_at": None,
                    "last_error": None,
                    # not part of OutboxRecord: what the dispatcher needs to rebuild the Alert
                    "ts": ts,
                    "device_name": dev.get("name") or device,
                    "caption": caption,
                    "has_photo": has_photo,
                    "alert_state": {"waiting": dev.get("waiting", 0)},
                    "language": language,
                }
                if self._merge_into_burst(rec):
                    continue
                # A planned alert carries the dispatcher's fields too (ts, caption...), beyond OutboxRecord;
                # typed once the alert policy leaves this class (issue 17, first step).
                out.append(rec)  # type: ignore[arg-type]
        return out

    def _merge_into_burst(self, rec: dict[str, Any]) -> bool:
        """Grouping (alerts.group_window_s > 0): fold a delivery into a not-yet-sent one of the same box."""
        window = self.config.alerts.group_window_s
        if window <= 0 or rec["kind"] != "delivery":
            return False
        assert self.store is not None
        for o in self.store.open_outbox():
            if (
                o["kind"] == "delivery"
                and o["device"] == rec["device"]
                and o["notifier"] == rec["notifier"]
                and o["recipient"] == rec["recipient"]
                and o["attempts"] == 0
                and o["created_at"] >= rec["created_at"] - window
            ):
                ids = list(o["event_ids"]) + rec["event_ids"]
                caption = render_caption(
                    "delivery",
                    rec["device_name"],
                    rec["ts"],
                    language=rec["language"],
                    tz=self.config.alerts.timezone,
                    waiting=rec["alert_state"]["waiting"],
                    event_ids=ids,
                )
                # Separate write from the event's: a crash in between leaves the event stored
                # without its line in the grouped alert, the price of the (opt-in) grouping.
                self.store.update_outbox(
                    o["id"],
                    event_ids=ids,
                    caption=caption,
                    ts=rec["ts"],
                    alert_state=rec["alert_state"],
                    has_photo=o.get("has_photo") or rec["has_photo"],
                )
                return True
        return False

    # --- GatewayPort reads ------------------------------------------------------------

    def _open_store(self) -> Store:
        """The store, once `start()` opened it (the parts made in __init__ reach it through this)."""
        assert self.store is not None, "the gateway is not started"
        return self.store

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
        store = self._open_store()
        return store.list_events(
            device=device, type=type, since=since, until=until, before=before, limit=limit
        )

    def get_event(self, device: str, event_id: str) -> EventRecord | None:
        return self._open_store().get_event(device, event_id)

    def photo_path(self, device: str, event_id: str, variant: PhotoVariant) -> Path | None:
        return self._open_store().photo_path(device, event_id, variant)

    def list_devices(self) -> list[DeviceRecord]:
        assert self.store is not None
        return [self._device_out(d) for d in self.store.list_devices() if not self._is_removed(d)]

    def list_outbox(self, state: OutboxState | None = None, limit: int = 100) -> list[OutboxRecord]:
        return self._open_store().list_outbox(state, limit)

    # --- actions (the optional ones are attributes: see __init__) ---------------------------------

    def retry_alert(self, alert_id: str) -> bool:
        return self.dispatcher.retry(alert_id) if self.dispatcher else False

    def whatsapp_state(self) -> WhatsAppState:
        return self.whatsapp.state.copy()  # gateway/whatsapp/state.py

    def send_command(self, device: str, cmd: str, args: dict[str, Any] | None = None) -> str:
        return self.commands.send(device, cmd, args)  # gateway/commands.py

    def command_result(self, cmd_id: str) -> dict[str, Any] | None:
        return self.commands.result(cmd_id)

    def _publish(self, topic_name: str, payload: bytes, retain: bool = False) -> None:
        if self.link is not None:  # not started or stopped: nothing to publish on
            self.link.publish(topic_name, payload, retain=retain)

    def _run_on_worker(self, key: str, call: Callable[[], None]) -> bool:
        """Queue `call` for the ingest worker in sub-queue `key`; False when that sub-queue is full."""
        accepted = True
        for box, reason in self._queue.put(key, ("call", call), 0):
            if box == key:
                accepted = False
            else:  # a box's message made room for it
                self._reject(reason, f"{box}'s share of the ingest queue is full", f"message from {box}")
        return accepted

    # --- health and status (gateway/status.py) ----------------------------------------------

    def health(self) -> dict[str, Any]:
        # The ingest figures: the lead points these at the ingest pipeline after the policy merge.
        ingest = {
            "queue": self._queue.qsize(),
            "reassembly": {
                "partials": len(self._reasm),
                "held_bytes": self._reasm.held_bytes,
                "accounted_bytes": self._reasm.accounted_bytes,
            },
            "photos_in_progress": len(self._in_flight),
        }
        return health_report(
            now=self.clock(),
            started_at=self._started_at,
            data_dir=self.data_dir,
            link=self.link,
            broker=self.broker,
            broker_url=self.broker_url,
            store=self._open_store(),
            ingest=ingest,
            commands_held=len(self.commands),
            storage=self.storage_monitor.health(),
            counters=self.counters.snapshot(),
        )

    def write_status(self) -> None:
        """`<data>/status.json`: what `parcelbox status` shows (health, boxes, recent events, outbox)."""
        self.storage_monitor.write_status(lambda: status_snapshot(self, self.ota))

    def _retention(self) -> None:
        apply_retention(self._open_store(), self.data_dir, self.config, self.clock())  # gateway/retention.py

    def _tick_loop(self) -> None:
        """Once a second: reassembly timeouts and offline checks (on the worker), status snapshot."""
        last_status = 0.0
        last_retention = 0.0
        while not self._stopping.wait(1.0):
            self._queue.put_control(("call", self._tick))
            now = time.monotonic()
            if now - last_status >= 2.0:
                last_status = now
                self._queue.put_control(("call", self.write_status))
            if now - last_retention >= 3600.0:
                last_retention = now
                self._queue.put_control(("call", self._retention))

    def _tick(self) -> None:
        self._dropped(self._reasm.expire())
        for device in list(self._busy):
            self._note_busy(device)
        self.commands.expire()
        self._check_offline()
        self._check_whatsapp()
        self.ota.tick()
        if self.purges is not None:
            self.purges.poll()
        self._watch_registry()
        if self.broker is not None:
            self.broker.refresh()  # `parcelbox device add/remove` took effect: reload credentials
            self.broker.supervise()
