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
(`gateway.boxes`, `gateway.alerts`) that the pipeline and `gateway.notices` apply; the device
registry's changes are noticed by `gateway.registry_watch`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gateway import boxes
from gateway.bus import Bus
from gateway.commands import Commands
from gateway.config import Config
from gateway.datalock import DataDirLock
from gateway.devices import DeviceRegistry
from gateway.diskspace import DiskThresholds
from gateway.health import Counters
from gateway.ingest import MqttLink
from gateway.lograte import LogThrottle
from gateway.notices import Notices
from gateway.notify.base import Notifier
from gateway.ota import offers
from gateway.ota.updates import FirmwareUpdates
from gateway.outbox import OutboxDispatcher
from gateway.photos import PhotoSettings
from gateway.pipeline import Call, IngestPipeline
from gateway.ports import (
    Component,
    DeviceRecord,
    EventRecord,
    OutboxRecord,
    OutboxState,
    PhotoVariant,
    WhatsAppState,
)
from gateway.privatedir import ensure_private_dir
from gateway.protocol import Limits
from gateway.purge import QUEUE_KEY as PURGE_QUEUE
from gateway.purge import Purger, PurgeRunner
from gateway.registry_watch import RegistryWatch
from gateway.retention import apply_retention
from gateway.sendqueue import SendQueue
from gateway.status import STATUS_FILE, StorageMonitor, health_report, status_snapshot
from gateway.store import Store
from gateway.whatsapp.state import LinkState

log = logging.getLogger("gateway")

_RETENTION_EVERY_S = 3600.0


def _logged(fn: Callable[[], object], what: str) -> None:
    """Shutdown goes on past a part that fails to stop: its traceback is logged."""
    try:
        fn()
    except Exception:
        log.exception(what)


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
        self.limits = Limits()
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
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._started_at: float | None = None
        self._retention_due = float("-inf")  # service-clock time of the next retention pass (tick)
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
        self.registry_watch = RegistryWatch(
            self.registry,
            self.bus,
            self.counters,
            names=config.devices.names,
            throttle=self._log_throttle,
        )
        self.purges: PurgeRunner | None = None  # `parcelbox device forget NAME --purge`, made at start
        self.storage_monitor = StorageMonitor(
            self.data_dir,
            DiskThresholds(config.store.min_free_mb, config.store.min_free_percent),
            store=self._open_store,
            bus=self.bus,
            counters=self.counters,
        )
        self.whatsapp = LinkState(self.bus, dispatcher=lambda: self.dispatcher, clock=self.clock)
        self.notices = Notices(
            config,
            store=self._open_store,
            bus=self.bus,
            notifiers=self.notifiers,
            whatsapp=self.whatsapp,
            removed=self.registry_watch.removed,
            dispatcher=lambda: self.dispatcher,
        )
        self.photo_settings = PhotoSettings.from_config(config.photos, max_bytes=self.limits.max_photo_bytes)
        self.send_queue = SendQueue(
            data_dir=self.data_dir,
            store=self._open_store,
            notifiers=self.notifiers,
            emit=self.notices.emit,
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
            registry=self.registry_watch,
            notices=self.notices,
            on_cmd_result=self.commands.on_result,
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
        cfg = self.config.store
        self.store = Store(self.data_dir, partition=cfg.partition, segment_records=cfg.segment_records)
        self.purges = PurgeRunner(
            Purger(self.store, self.data_dir, self.clock),
            submit=lambda step: self.pipeline.submit(PURGE_QUEUE, step),
            counters=self.counters,
        )
        events, outbox = self.store.event_count(), self.store.outbox_counts()
        log.info("data folder %s: %d events, outbox %s", self.data_dir, events, outbox)
        self.updates.remember_last(self.data_dir / STATUS_FILE)
        username, password = self.config.broker.username, self.config.broker.password
        if not self.broker_url:
            from gateway.broker import start_for_gateway

            self.broker = start_for_gateway(self.config, self.registry, self.client_id)
            self.broker_url = self.broker.url
            # On the box listener the broker makes this login our client id (use_username_as_clientid).
            username, password = self.broker.gateway_username, self.broker.gateway_password
        self._stopping.clear()
        self.registry_watch.poll()  # the registry as it is now: changes from here on go on the bus
        self.pipeline.start(self.store, self.config.photos.workers or max(1, os.cpu_count() or 1))
        self.dispatcher = OutboxDispatcher(
            self.store,
            self.notifiers,
            bus=self.bus,
            photo_path=lambda d, e: self.photo_path(d, e, "alert"),
            attachment_path=self.send_queue.photo_path,
            clock=self.clock,
            **asdict(self.config.outbox),  # backoff, dead_after_s, poll_s: the dispatcher's own names
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
            _logged(c.stop, f"component {c!r} failed to stop")
        self.pipeline.stop(time.monotonic() + timeout)  # drained: what paho handed us is stored and acked
        self._stopping.set()
        if self.link is not None:
            self.link.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self._teardown()
        log.info("gateway stopped")

    def _teardown(self) -> None:
        self._stopping.set()
        self.pipeline.close()
        if self.store is not None:
            _logged(self.write_status, "could not write the last status snapshot")
        for n in self.notifiers.values():
            _logged(n.close, f"notifier {n.name} failed to close")
        if self.store is not None:
            self.store.close()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        self._lock.release()
        self._stopped.set()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.link is not None and self.link.connected.wait(timeout)

    # --- the callables the parts get ------------------------------------------------------

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

    def _publish(self, topic_name: str, payload: bytes, retain: bool = False) -> None:
        if self.link is not None:  # not started or stopped: nothing to publish on
            self.link.publish(topic_name, payload, retain=retain)

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
        return [boxes.public(d) for d in self.store.list_devices() if not self.registry_watch.is_removed(d)]

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

    # --- health and status (gateway/status.py) ----------------------------------------------

    def health(self) -> dict[str, Any]:
        return health_report(
            now=self.clock(),
            started_at=self._started_at,
            data_dir=self.data_dir,
            link=self.link,
            broker=self.broker,
            broker_url=self.broker_url,
            store=self._open_store(),
            ingest=self.pipeline.figures(),
            commands_held=len(self.commands),
            storage=self.storage_monitor.health(),
            counters=self.counters.snapshot(),
        )

    def write_status(self) -> None:
        """`<data>/status.json`: what `parcelbox status` shows (health, boxes, recent events, outbox)."""
        self.storage_monitor.write_status(lambda: status_snapshot(self, self.ota))

    def _tick_loop(self) -> None:
        """Once a second: `tick` (on the worker); every 2 s the status snapshot."""
        last_status = 0.0
        while not self._stopping.wait(1.0):
            self.pipeline.queue.put_control(Call(self._tick))
            now = time.monotonic()
            if now - last_status >= 2.0:
                last_status = now
                self.pipeline.queue.put_control(Call(self.write_status))

    def tick(self, now: float | None = None) -> None:
        """One turn of the periodic work at `now` (the service clock when None): reassembly timeouts
        (on the reassembler's own monotonic clock), boxes offline or silent for too long, the WhatsApp
        notice, expired command results, over-the-air offers, a purge slice, retention (hourly by `now`),
        the device registry and the managed broker. The gateway calls it every second; tests call it
        with a fake clock instead of waiting.

        It runs on the ingest worker, the single writer of box records: called from another thread while
        the gateway runs, it is queued there and returns once it has run (raising what it raised)."""
        self.pipeline.call(lambda: self._tick(now))

    def _tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.pipeline.expire()
        self.commands.expire()
        self.notices.check_offline(now)
        self.notices.check_whatsapp(now)
        self.ota.tick()
        if self.purges is not None:
            self.purges.poll()
        self.registry_watch.poll()
        if self.broker is not None:
            self.broker.refresh()  # `parcelbox device add/remove` took effect: reload credentials
            self.broker.supervise()
        if now >= self._retention_due:  # last: a failing retention pass must not skip the rest
            self._retention_due = now + _RETENTION_EVERY_S
            apply_retention(self._open_store(), self.data_dir, self.config, now)  # gateway/retention.py
