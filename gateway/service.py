"""The running gateway: its parts started and stopped in order, and the port they answer.

`GatewayService(config)` implements `gateway.ports.GatewayPort` and publishes on
`gateway.bus.Bus`. Its parts are built by `gateway.parts` (the composition root) and kept as
attributes (`service.pipeline`, `service.commands`, ...); each port call goes to the part that owns
it. Lifecycle: `start()` takes the data-folder lock, opens the store, starts the managed broker when
no `broker.url` is set, the photo pool, the ingest worker, the outbox dispatcher, the MQTT link and
the ticker, then every extra component (`gateway.app.build_components`). `stop()` stops the
components, drains received messages and photos in progress (acking what gets stored), finishes the
send in flight, writes a last status snapshot and releases everything.

Threads: paho's network thread only makes cheap checks and enqueues, on one bounded
sub-queue per box served in turn (`gateway.fairqueue`); one ingest worker
(`gateway.pipeline`) does all decoding, reassembly, store writes and acks (so the
store has a single writer for events and box records) and runs the periodic work the ticker
thread queues (`gateway.ticker`, `tick`); the photo pool runs `gateway.photos.process_photo`; each
notifier has a sending thread (`gateway.outbox`). The rules for box state and alerts are pure
functions (`gateway.boxes`, `gateway.alerts`) that the pipeline and `gateway.notices` apply; the
device registry's changes are noticed by `gateway.registry_watch`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import boxes
from gateway.bus import Bus
from gateway.config import Config
from gateway.datalock import DataDirLock
from gateway.devices import DeviceRegistry
from gateway.health import Counters, Rejections
from gateway.ingest import MqttLink
from gateway.notify.base import Notifier
from gateway.ota import offers
from gateway.outbox import OutboxDispatcher
from gateway.parts import build_parts, mqtt_link, outbox_dispatcher, purge_runner
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
from gateway.purge import PurgeRunner
from gateway.status import STATUS_FILE, health_report, status_snapshot
from gateway.store import Store

log = logging.getLogger("gateway")


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
        self.rejections = Rejections(self.counters)
        self.data_dir = Path(config.data_dir).expanduser().resolve()
        self.registry = DeviceRegistry(self.data_dir)
        self.limits = Limits()
        self.prefix = config.broker.prefix
        self.notifiers: dict[str, Notifier] = {}
        for n in notifiers or []:
            self.add_notifier(n)
        self.components: list[Component] = list(components or [])
        # Made at start: the store, `parcelbox device forget NAME --purge`'s runner, our own broker
        # (gateway.broker.ManagedBroker) when no `broker.url` is set, the outbox dispatcher, the link.
        self.store: Store | None = None
        self.purges: PurgeRunner | None = None
        self.broker: Any = None
        self.broker_url = config.broker.url
        self.dispatcher: OutboxDispatcher | None = None
        self.link: MqttLink | None = None
        self._lock = DataDirLock(self.data_dir)
        self._stopped = threading.Event()
        self._started_at: float | None = None
        parts = build_parts(  # gateway/parts.py: the parts that live as long as the service
            config,
            data_dir=self.data_dir,
            bus=self.bus,
            clock=clock,
            counters=self.counters,
            rejections=self.rejections,
            limits=self.limits,
            registry=self.registry,
            notifiers=self.notifiers,
            firmware=firmware,
            publish=self._publish,
            open_store=self._open_store,
            running=lambda: self.link is not None,
            dispatcher=lambda: self.dispatcher,
            known_boxes=lambda: {d["device"] for d in self.list_devices()},
            purges=lambda: self.purges,
            broker=lambda: self.broker,
            write_status=self.write_status,
        )
        self.commands = parts.commands
        self.updates = parts.updates
        self.ota = parts.updates.server
        self.registry_watch = parts.registry_watch
        self.storage_monitor = parts.storage_monitor
        self.whatsapp = parts.whatsapp
        self.notices = parts.notices
        self.photo_settings = parts.photo_settings
        self.send_queue = parts.send_queue
        self.pipeline = parts.pipeline
        self.ticker = parts.ticker  # gateway/ticker.py: the periodic work, on the ingest worker
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
        cfg = self.config.store
        self.store = Store(self.data_dir, partition=cfg.partition, segment_records=cfg.segment_records)
        self.purges = purge_runner(
            self.store, self.data_dir, pipeline=self.pipeline, counters=self.counters, clock=self.clock
        )
        events, outbox = self.store.event_count(), self.store.outbox_counts()
        log.info("data folder %s: %d events, outbox %s", self.data_dir, events, outbox)
        self.updates.remember_last(self.data_dir / STATUS_FILE)
        if not self.broker_url:
            from gateway.broker import start_for_gateway

            self.broker = start_for_gateway(self.config, self.registry, self.client_id)
            self.broker_url = self.broker.url
        self.registry_watch.poll()  # the registry as it is now: changes from here on go on the bus
        self.pipeline.start(self.store, self.config.photos.workers or max(1, os.cpu_count() or 1))
        self.dispatcher = outbox_dispatcher(
            self.config, self.store, self.notifiers, self.send_queue, bus=self.bus, clock=self.clock
        )
        self.dispatcher.start()
        self.link = mqtt_link(
            self.config,
            self.broker_url,
            broker=self.broker,  # ours, when we run one: the link logs in with its gateway login
            client_id=self.client_id,
            deliver=self.pipeline.deliver,
            reject=self.rejections.reject,
        )
        self.link.start(wait_s=10.0)
        if not self.link.connected.is_set():
            log.warning("broker %s not reachable yet; paho keeps retrying", self.link.endpoint)
        self.ticker.start()
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
        self.ticker.stop()
        if self.link is not None:
            self.link.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self._teardown()
        log.info("gateway stopped")

    def _teardown(self) -> None:
        self.ticker.stop()
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

    def tick(self, now: float | None = None) -> None:
        """One turn of the periodic work at `now` (the service clock when None), on the ingest worker
        (`gateway.ticker.Ticker.run` says what it does). The gateway runs it every second; tests call it
        with a fake clock instead of waiting."""
        self.ticker.tick(now)
