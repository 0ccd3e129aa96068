"""The ingest pipeline: from a message paho hands us to a stored, acked event (or a clear refusal).

paho's network thread calls `deliver` (cheap checks, then the box's share of the `FairQueue`); one
worker thread runs `work`, taking one typed message at a time (`Received`, `PhotoDone`, `Call`):
decoding, reassembly of photo chunks (`gateway.reassembly`), the photo pool (`gateway.photos`), box
state (`gateway.boxes`) and alert planning (`gateway.alerts`), store writes and acks. One worker
means the store has a single writer for events and box records.

An event is acked only once its record (and photo) are on disk; anything not acked is sent again by
the box, so dropping work here (a full queue, a busy photo pool, a full disk) never loses an event.

`IngestPipeline` takes its collaborators as arguments (gateway/service.py wires them): the MQTT
publish for acks, counters and the bus, the registry watch (`gateway.registry_watch`) and the alerts
that belong to no event (`gateway.notices`), and the service's callables for rejections, write
failures, command results and over-the-air updates. `start(store, ...)` starts its photo pool and
worker thread; `stop`/`close` drain and end them; `call` runs work (the gateway's tick) on the worker.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from gateway import alerts, boxes
from gateway.alerts import PlannedAlert
from gateway.budget import Budget
from gateway.bus import DEVICE_CHANGED, EVENT_STORED, OUTBOX_CHANGED, Bus
from gateway.captions import caption_strip
from gateway.config import Config
from gateway.fairqueue import FairQueue
from gateway.health import Counters
from gateway.outbox import _public
from gateway.photos import PhotoError, PhotoSettings, ProcessedPhoto, process_photo
from gateway.ports import EventRecord, PhotoInfo
from gateway.protocol import (
    Event,
    Limits,
    ProtocolError,
    Status,
    decode_event,
    decode_status,
    encode_ack,
    encode_nack,
    parse_topic,
    topic,
    valid_msg_id,
)
from gateway.reassembly import Complete, Dropped, Reassembler, Refused
from gateway.store import Store, blank_device

if TYPE_CHECKING:
    from gateway.notices import Notices
    from gateway.registry_watch import RegistryWatch

log = logging.getLogger("gateway")

_CALL_WAIT_S = 30.0  # `call` from another thread: how long to wait for the worker


# --- the worker's messages ------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """A message from the broker, as paho handed it over. `retained`: a copy the broker replays from
    its retained store (gateway.ingest), said by the box at some earlier, unknown time."""

    what: ClassVar[str] = "msg"
    topic: str
    payload: bytes
    received_at: float
    retained: bool = False


@dataclass
class PhotoJob:
    device: str
    event: Event
    received_at: float
    photo: bytes


@dataclass(frozen=True)
class PhotoDone:
    """The photo pool finished (or failed, or was cancelled) `job`."""

    what: ClassVar[str] = "photo_done"
    job: PhotoJob
    future: concurrent.futures.Future[ProcessedPhoto]


@dataclass(frozen=True)
class Call:
    """Work to run on the worker (ticks, status snapshots, purge slices): it then needs no lock
    against the worker's own writes."""

    what: ClassVar[str] = "call"
    fn: Callable[[], None]


Message = Received | PhotoDone | Call


def _peek_event_id(payload: bytes) -> str | None:
    """The id of an event we are rejecting, if it has a valid one, so the box can drop it."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    eid = obj.get("id") if isinstance(obj, dict) else None
    return eid if valid_msg_id(eid) else None


class IngestPipeline:
    def __init__(
        self,
        config: Config,
        *,
        limits: Limits,
        photo_settings: PhotoSettings,
        counters: Counters,
        bus: Bus,
        clock: Callable[[], float],
        publish: Callable[[str, bytes], None],
        reject: Callable[[str, str, str], None],
        store_failed: Callable[..., None],
        registry: RegistryWatch,
        notices: Notices,
        on_cmd_result: Callable[[str, bytes], None],
        on_ota_status: Callable[[str, Status], None],
        on_ota_reply: Callable[[str, bytes], None],
    ) -> None:
        self.config = config
        self.prefix = config.broker.prefix
        self.limits = limits
        self.photo_settings = photo_settings
        self.counters = counters
        self.bus = bus
        self.clock = clock
        self.publish = publish  # the MQTT link's publish (acks, nacks)
        self.reject = reject
        self.store_failed = store_failed  # (exc, what, *, counter=...)
        self.registry = registry  # who is registered or removed, and box names (devices.json)
        # The notifiers' facts for one box (`sinks`), and `emit`: outbox entries that belong to no
        # event, stored with the box record that marks them planned in one durable write.
        self.notices = notices
        self.on_cmd_result = on_cmd_result
        self.on_ota_status = on_ota_status
        self.on_ota_reply = on_ota_reply
        # Set by `start` (the store opens with the gateway; the pool is its photo threads).
        self.store: Store | None = None
        self.pool: concurrent.futures.Executor | None = None
        self.worker: threading.Thread | None = None
        self._stopping = threading.Event()
        ing = config.ingest
        self.queue = FairQueue(
            max_messages=ing.queue_size,
            device_max_messages=ing.device_queue_size,
            device_max_bytes=ing.device_queue_bytes,
        )
        self.reasm = Reassembler(
            timeout_s=ing.reassembly_timeout_s,
            max_bytes=ing.reassembly_max_bytes,
            max_partials=ing.reassembly_max_partials,
            device_max_partials=ing.reassembly_device_max_partials,
            device_max_bytes=ing.reassembly_device_max_bytes,
        )
        self.in_flight: set[tuple[str, str]] = set()  # (box, event id) in the photo pool
        # Complete photos waiting for (or in) the photo pool, per box and in total: they have left the
        # reassembler but still hold their bytes until stored (gateway/budget.py says why).
        self.photo_budget = Budget(
            per_key_count=ing.device_photos_in_progress,
            per_key_bytes=ing.reassembly_device_max_bytes,
            total_count=ing.reassembly_max_partials,
            total_bytes=ing.photos_in_progress_bytes,
        )
        # Boxes at their limit of unfinished photos -> the event ids they hold: written by the worker
        # (a new dict each time, so paho's thread reads a consistent one without a lock).
        self.busy: dict[str, frozenset[str]] = {}

    # --- lifecycle (gateway/service.py's start and stop) --------------------------------------

    def start(self, store: Store, photo_workers: int) -> None:
        """Start the photo pool and the worker thread, storing into `store`."""
        self.store = store
        self.pool = concurrent.futures.ThreadPoolExecutor(photo_workers, thread_name_prefix="photo")
        self._stopping.clear()
        self.worker = threading.Thread(target=self.work, args=(self._stopping,), name="ingest", daemon=True)
        self.worker.start()

    def stop(self, deadline: float) -> None:
        """Let the worker finish what paho already handed us (and photos in the pool), acks included,
        until `deadline` (time.monotonic()); then stop it."""
        while time.monotonic() < deadline and not self.idle():
            time.sleep(0.05)
        self._stopping.set()
        if self.worker is not None:
            self.worker.join(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop the worker (if `stop` did not) and the photo pool, cancelling photos not started."""
        self._stopping.set()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def idle(self) -> bool:
        """Nothing queued and no photo in the pool (what `stop` waits for)."""
        return self.queue.empty() and not self.in_flight

    def figures(self) -> dict[str, Any]:
        """The `ingest` part of the gateway's health (gateway.status.health_report)."""
        return {
            "queue": self.queue.qsize(),
            "reassembly": {
                "partials": len(self.reasm),
                "held_bytes": self.reasm.held_bytes,
                "accounted_bytes": self.reasm.accounted_bytes,
            },
            "photos_in_progress": len(self.in_flight),
        }

    # --- work for the worker from other threads --------------------------------------------

    def submit(self, key: str, call: Callable[[], None]) -> bool:
        """Queue `call` for the worker in sub-queue `key`; False when that sub-queue is full."""
        accepted = True
        for box, reason in self.queue.put(key, Call(call), 0):
            if box == key:
                accepted = False
            else:  # a box's message made room for it
                self.reject(reason, f"{box}'s share of the ingest queue is full", f"message from {box}")
        return accepted

    def call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the worker thread and return once it ran, raising what it raised; run it right
        here when no worker runs or this is the worker (tests, a gateway not started or stopped)."""
        worker = self.worker
        if worker is None or not worker.is_alive() or threading.current_thread() is worker:
            fn()
            return
        done = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                failed.append(exc)
            finally:
                done.set()

        self.queue.put_control(Call(run))
        if not done.wait(_CALL_WAIT_S):
            raise TimeoutError(f"the ingest worker did not run the call within {_CALL_WAIT_S:.0f} s")
        if failed:
            raise failed[0]

    # --- paho's thread -----------------------------------------------------------------

    def deliver(self, topic_name: str, payload: bytes, received_at: float, retained: bool = False) -> None:
        """paho's thread: cheap checks and enqueue only, never blocking (it also carries every box's
        keepalives and our acks). Each box has its own share of the queue (gateway.fairqueue).
        `retained`: a copy the broker replays from its retained store (gateway.ingest)."""
        self.counters.inc("received")
        # Nothing valid is bigger than a chunk: refused before it is queued, so a big payload costs this
        # check only. (JSON between its own 16 KiB limit and this is refused by the worker, which can
        # still nack the event so the box drops it.)
        limit = self.limits.max_chunk_bytes
        if len(payload) > limit:
            self.reject("oversize", f"{len(payload)} bytes > {limit}", topic_name[:120])
            return
        device, _, rest = topic_name[len(self.prefix) + 1 :].partition("/")
        busy = self.busy.get(device)
        if busy is not None and rest.startswith("photo/"):
            # The box is at its limit of unfinished photos (the worker keeps `busy` current): a chunk
            # that would start one more is refused here, costing the worker nothing.
            eid = rest[6:].partition("/")[0]
            if eid not in busy:
                self.reject(
                    "reassembly_device_busy",
                    f"{device} is at its limit of unfinished photos",
                    f"photo {device}",
                )
                return
        item = Received(topic_name, payload, received_at, retained)
        for box, reason in self.queue.put(device, item, len(payload)):
            self.reject(reason, f"{box}'s share of the ingest queue is full", f"message from {box}")

    # --- the worker --------------------------------------------------------------------

    def work(self, stopping: threading.Event) -> None:
        """The worker thread: until `stopping` is set."""
        while not stopping.is_set():
            try:
                item = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.run(item)

    def run(self, item: Message) -> None:
        """Handle one message; never raises (one bad message must not kill the worker)."""
        try:
            if isinstance(item, Received):
                self.handle(item)
            elif isinstance(item, PhotoDone):
                self._photo_done(item.job, item.future)
            elif isinstance(item, Call):
                item.fn()
            else:  # a programming error, not input: say so instead of dropping it silently
                raise TypeError(f"unknown ingest message {item!r}")
        except OSError as exc:
            # A full disk or a failing card (a box's status record, say): nothing was acked.
            self.store_failed(exc, f"a change ({item.what})", counter="device_write_errors")
        except Exception:
            # Never let one message kill the worker; the box re-sends what was not acked.
            log.exception("ingest worker: unexpected error; continuing")
            self.counters.reject("internal_error")

    def handle(self, msg: Received) -> None:
        topic_name = msg.topic
        try:
            t = parse_topic(self.prefix, topic_name, self.limits)
        except ProtocolError as exc:
            self.reject(exc.reason, exc.detail, topic_name[:120])
            return
        if self.config.devices.registration_required and not self.registry.is_registered(t.device):
            # No nack: the box keeps its spool and delivers once it is registered.
            self.reject("unknown_device", f"{t.device} is not registered (parcelbox device add)", topic_name)
            return
        if t.kind == "status":
            self._on_status(t.device, msg.payload, msg.received_at, msg.retained)
        elif t.kind == "event":
            self._on_event(t.device, msg.payload, msg.received_at)
            self.note_busy(t.device)
        elif t.kind == "photo":
            assert t.event_id is not None and t.index is not None
            self._on_chunk(t.device, t.event_id, t.index, msg.payload)
            self.note_busy(t.device)
        elif t.kind == "cmd_result":
            self.on_cmd_result(t.device, msg.payload)
        elif t.kind == "ota_reply":
            self.on_ota_reply(t.device, msg.payload)

    def _ack(self, device: str, event_id: str) -> None:
        self.publish(topic(self.prefix, device, "ack"), encode_ack(event_id))
        self.counters.inc("acks")

    def _nack(self, device: str, event_id: str, error: str, retry: bool) -> None:
        self.publish(topic(self.prefix, device, "ack"), encode_nack(event_id, error, retry))
        self.counters.inc("nacks")

    def box(self, device: str) -> boxes.Box:
        """The box's stored record, or a blank one for a box not seen before."""
        assert self.store is not None
        rec = self.store.get_device(device)
        if rec is None:
            rec = dict(blank_device(device, self.registry.device_name(device)))
        return rec

    def _on_event(self, device: str, payload: bytes, received_at: float) -> None:
        assert self.store is not None
        self.counters.inc("events_received")
        try:
            event = decode_event(payload, self.limits)
        except ProtocolError as exc:
            self.reject(exc.reason, exc.detail, f"event from {device}")
            eid = _peek_event_id(payload)
            if eid is not None:
                self._nack(device, eid, f"{exc.reason}: {exc.detail}"[:200], retry=False)
            return
        if self.store.has_event(device, event.id):
            self.counters.inc("duplicates")
            self.reasm.discard(device, event.id)
            self._ack(device, event.id)  # the box may have missed the first ack
            return
        if (device, event.id) in self.in_flight:
            self.counters.inc("duplicates")
            return
        self._reassembled(self.reasm.add_event(device, event, size=len(payload)), received_at)

    def _on_chunk(self, device: str, event_id: str, index: int, payload: bytes) -> None:
        assert self.store is not None
        self.counters.inc("chunks")
        if len(payload) > self.limits.max_chunk_bytes:
            self.reject("oversize", f"chunk of {len(payload)} bytes", f"{device}/{event_id}/{index}")
            return
        if self.store.has_event(device, event_id) or (device, event_id) in self.in_flight:
            self.counters.inc("duplicate_chunks")
            return
        try:
            done = self.reasm.add_chunk(device, event_id, index, payload)
        except ProtocolError as exc:
            self.reject(exc.reason, exc.detail, f"chunk {device}/{event_id}/{index}")
            self.reasm.discard(device, event_id)
            self._nack(device, event_id, exc.detail, retry=True)
            return
        self._reassembled(done, self.clock())
        # Chunks are what grows memory: enforce the byte caps (per box and in total) right away.
        self.dropped(self.reasm.shed())

    def _reassembled(self, done: Complete | Dropped | Refused | None, received_at: float) -> None:
        if done is None:
            return
        if isinstance(done, Refused):
            # Over its box's share (or the total) of unfinished photos: nothing kept, no nack (see
            # gateway.reassembly.Refused); the box re-sends after its ack timeout.
            self.reject(done.reason, done.detail, f"photo {done.device}/{done.event_id}")
            return
        if isinstance(done, Dropped):
            self.dropped([done])
            return
        if done.photo is None:
            self._store_event(done.device, done.event, received_at, None)
            return
        job = PhotoJob(done.device, done.event, received_at, done.photo)
        over = self.photo_budget.take(done.device, len(done.photo))
        if over is not None:
            # Not acked, so the box sends it again after its ack timeout; meanwhile it cannot queue
            # more photos ahead of other boxes' than its share.
            b = self.photo_budget
            n, size = b.used(done.device) if over == "device" else (b.count, b.size)
            who = "this box" if over == "device" else "all boxes"
            detail = f"{who}: {n} photos ({size} bytes) in progress"
            self.reject("photo_pool_busy", detail, f"photo {done.device}/{done.event.id}")
            return
        self.in_flight.add((done.device, done.event.id))
        assert self.pool is not None
        name = self.registry.device_name(done.device)
        ts = done.event.ts if done.event.ts is not None else received_at
        caption = (
            caption_strip(name, ts, self.config.alerts.timezone) if self.config.photos.caption_strip else None
        )
        fut = self.pool.submit(process_photo, done.photo, self.photo_settings, caption)
        fut.add_done_callback(lambda f: self.queue.put_control(PhotoDone(job, f)))

    def note_busy(self, device: str) -> None:
        """Tell paho's thread whether `device` is at its limit of unfinished photos (and which it holds)."""
        if self.reasm.busy(device):
            ids = self.reasm.partial_ids(device)
            if self.busy.get(device) != ids:
                self.busy = {**self.busy, device: ids}
        elif device in self.busy:
            self.busy = {k: v for k, v in self.busy.items() if k != device}

    def dropped(self, drops: list[Dropped]) -> None:
        for d in drops:
            self.note_busy(d.device)
            self.reject(d.reason, d.detail, f"photo {d.device}/{d.event_id}")
            self._nack(d.device, d.event_id, f"{d.reason}: {d.detail}"[:200], retry=True)

    def expire(self) -> None:
        """Reassembly timeouts (the reassembler's own monotonic clock), and lift `busy` where it ended."""
        self.dropped(self.reasm.expire())
        for device in list(self.busy):
            self.note_busy(device)

    def _photo_done(self, job: PhotoJob, fut: concurrent.futures.Future[ProcessedPhoto]) -> None:
        key = (job.device, job.event.id)
        try:
            try:
                result = fut.result()
            except PhotoError as exc:
                # The bytes matched the box's own hash: sending them again cannot help.
                self.reject(exc.reason, exc.detail, f"photo {job.device}/{job.event.id}")
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
            self.in_flight.discard(key)
            self.photo_budget.give(job.device, len(job.photo))

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
                self.store_failed(exc, f"the photo of {device}/{event.id}")
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
        cfg = self.config.alerts
        dev = boxes.apply_event(self.box(device), record)
        outbox = alerts.plan_event(dev, record, sinks=self.notices.sinks(device), cfg=cfg, now=self.clock())
        grouped = cfg.group_window_s > 0 and any(o["kind"] == "delivery" for o in outbox)
        updates: list[alerts.Update] = []
        try:
            # One hold of the store from reading the burst to writing the event: no send of the alert
            # joined can start in between (the dispatcher claims it under the same lock).
            with self.store.exclusive():
                if grouped:
                    # Only this box's: copied and sorted under the store's lock, the whole open
                    # outbox (thousands while a sink is down) would hold up ingest and the senders.
                    mergeable = self.store.mergeable_outbox(received_at, device)
                    outbox, updates = alerts.merge_into_burst(outbox, mergeable, cfg=cfg)
                # One durable write: the event, its new alerts, its changes to the burst's alert, the box.
                added = self.store.add_event(record, outbox, device=dev, outbox_updates=updates)
        except OSError as exc:
            # No ack and no nack: a nack with retry makes the box re-send at once, photo and all,
            # into the same full disk. Without an answer it re-sends after its ack timeout, backing off.
            self.store_failed(exc, f"event {device}/{event.id}")
            return
        if not added:
            self.counters.inc("duplicates")
        else:
            self.counters.inc("stored")
            self.bus.publish(EVENT_STORED, dict(record))
            self.bus.publish(DEVICE_CHANGED, dict(boxes.public(dev)))
            for o in outbox:
                self.bus.publish(OUTBOX_CHANGED, _public(dict(o)))
            for alert_id, _fields in updates:
                joined = self.store.get_outbox(alert_id)
                if joined is not None:
                    self.bus.publish(OUTBOX_CHANGED, _public(joined))
            if outbox:
                self.notices.wake()
        self._ack(device, event.id)  # only now: record and photo are on disk

    def _on_status(self, device: str, payload: bytes, received_at: float, retained: bool = False) -> None:
        assert self.store is not None
        try:
            st = decode_status(payload, self.limits)
        except ProtocolError as exc:
            self.reject(exc.reason, exc.detail, f"status from {device}")
            return
        self.counters.inc("statuses")
        self.on_ota_status(device, st)
        dev = self.box(device)
        removed = not st.online and self.registry.is_removed(dev)
        cfg = self.config.alerts
        out = boxes.apply_status(
            dev, st, received_at, retained=retained, removed=removed, low_battery_mv=cfg.low_battery_mv
        )
        if out.replayed:
            self.counters.inc("statuses_replayed")
        if out.box is None:
            return
        planned: list[PlannedAlert] = []
        if out.notices:
            sinks, now = self.notices.sinks(device), self.clock()
            for notice in out.notices:
                planned += alerts.plan_notice(out.box, notice, sinks=sinks, cfg=cfg, now=now)
        self.notices.emit(planned, received_at, box=out.box)  # one durable write: box record + alerts
        self.bus.publish(DEVICE_CHANGED, dict(boxes.public(out.box)))
