"""The gateway's composition root: every part that lives as long as the service, built in one place.

`build_parts(config, ...)` makes the parts `gateway.service.GatewayService` orchestrates (commands,
over-the-air updates, the registry watch, the storage monitor, WhatsApp's link state, notices, the
send queue, the ingest pipeline, the ticker) and hands each its collaborators as keyword arguments,
so the order they depend on each other in is written once, here. What exists only once the gateway
has started (the store, the MQTT link, the outbox dispatcher, the purge runner, our own broker)
reaches the parts through the service's callables (`open_store`, `publish`, `running`,
`dispatcher`, `purges`, `broker`). The parts made at `start()`, once the store is open, are made here
too (`purge_runner`, `outbox_dispatcher`, `mqtt_link`); the service only says when.

The service keeps each part as an attribute of its own (`service.commands`, `service.pipeline`, ...):
tests, the web app and the Home Assistant bridge reach them there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.bus import Bus
from gateway.commands import Commands
from gateway.config import Config
from gateway.devices import DeviceRegistry
from gateway.diskspace import DiskThresholds
from gateway.health import Counters, Rejections
from gateway.ingest import Deliver, MqttLink, Reject
from gateway.notices import Notices
from gateway.notify.base import Notifier
from gateway.ota import offers
from gateway.ota.updates import FirmwareUpdates
from gateway.outbox import OutboxDispatcher
from gateway.photos import PhotoSettings
from gateway.pipeline import IngestPipeline
from gateway.protocol import Limits
from gateway.purge import QUEUE_KEY as PURGE_QUEUE
from gateway.purge import Purger, PurgeRunner
from gateway.registry_watch import RegistryWatch
from gateway.retention import apply_retention
from gateway.sendqueue import SendQueue
from gateway.status import StorageMonitor
from gateway.store import Store
from gateway.ticker import Ticker
from gateway.whatsapp.state import LinkState


class Publish(Protocol):
    """The service's publish on the MQTT link (nothing while it is not started)."""

    def __call__(self, topic_name: str, payload: bytes, retain: bool = False) -> None: ...


@dataclass(frozen=True)
class Parts:
    """What `build_parts` made; `GatewayService` keeps each as an attribute of the same name."""

    commands: Commands
    updates: FirmwareUpdates
    registry_watch: RegistryWatch
    storage_monitor: StorageMonitor
    whatsapp: LinkState
    notices: Notices
    photo_settings: PhotoSettings
    send_queue: SendQueue
    pipeline: IngestPipeline
    ticker: Ticker


def build_parts(
    config: Config,
    *,
    data_dir: Path,
    bus: Bus,
    clock: Callable[[], float],
    counters: Counters,
    rejections: Rejections,
    limits: Limits,
    registry: DeviceRegistry,
    notifiers: dict[str, Notifier],
    firmware: offers.CheckoutFirmware | None,
    publish: Publish,
    open_store: Callable[[], Store],
    running: Callable[[], bool],
    dispatcher: Callable[[], OutboxDispatcher | None],
    known_boxes: Callable[[], set[str]],
    purges: Callable[[], PurgeRunner | None],
    broker: Callable[[], Any],
    write_status: Callable[[], None],
) -> Parts:
    """The parts, each given what it uses. `notifiers` is the service's own dict (filled until `start()`)."""
    prefix = config.broker.prefix
    reject = rejections.reject
    commands = Commands(
        prefix=prefix,
        limits=limits,
        bus=bus,
        publish=publish,
        running=running,
        reject=reject,
        clock=clock,
    )
    # Over-the-air updates: offers queued by `parcelbox device update` or the dashboard, served
    # from the worker by its `OtaServer` (`service.ota`).
    updates = FirmwareUpdates(
        data_dir,
        prefix,
        publish=publish,
        reject=reject,
        bus=bus,
        known_boxes=known_boxes,
        clock=clock,
        firmware=firmware,
    )
    registry_watch = RegistryWatch(
        registry,
        bus,
        counters,
        names=config.devices.names,
        throttle=rejections.throttle,  # the registry's lines share the rejections' log budget
    )
    storage_monitor = StorageMonitor(
        data_dir,
        DiskThresholds(config.store.min_free_mb, config.store.min_free_percent),
        store=open_store,
        bus=bus,
        counters=counters,
    )
    whatsapp = LinkState(bus, dispatcher=dispatcher, clock=clock)
    notices = Notices(
        config,
        store=open_store,
        bus=bus,
        notifiers=notifiers,
        whatsapp=whatsapp,
        removed=registry_watch.removed,
        dispatcher=dispatcher,
    )
    photo_settings = PhotoSettings.from_config(config.photos, max_bytes=limits.max_photo_bytes)
    send_queue = SendQueue(
        data_dir=data_dir,
        store=open_store,
        notifiers=notifiers,
        emit=notices.emit,
        photo_settings=photo_settings,
        counters=counters,
        clock=clock,
        gateway_name=config.homeassistant.gateway_name,
    )
    pipeline = IngestPipeline(
        config,
        limits=limits,
        photo_settings=photo_settings,
        counters=counters,
        bus=bus,
        clock=clock,
        publish=publish,
        reject=reject,
        # A write to the data folder failed: counted, warned about (gateway.status.StorageMonitor).
        store_failed=storage_monitor.failed,
        registry=registry_watch,
        notices=notices,
        on_cmd_result=commands.on_result,
        on_ota_status=updates.server.on_status,
        on_ota_reply=updates.server.on_reply,
    )
    ticker = Ticker(
        pipeline=pipeline,
        commands=commands,
        notices=notices,
        ota=updates.server,
        registry_watch=registry_watch,
        clock=clock,
        purges=purges,
        broker=broker,
        retention=lambda now: apply_retention(open_store(), data_dir, config, now),
        write_status=write_status,
    )
    return Parts(
        commands=commands,
        updates=updates,
        registry_watch=registry_watch,
        storage_monitor=storage_monitor,
        whatsapp=whatsapp,
        notices=notices,
        photo_settings=photo_settings,
        send_queue=send_queue,
        pipeline=pipeline,
        ticker=ticker,
    )


# --- the parts made at start(), with the store open -------------------------------------------


def purge_runner(
    store: Store, data_dir: Path, *, pipeline: IngestPipeline, counters: Counters, clock: Callable[[], float]
) -> PurgeRunner:
    """`parcelbox device forget NAME --purge`: one slice per turn of the ingest queue."""
    return PurgeRunner(
        Purger(store, data_dir, clock),
        submit=lambda step: pipeline.submit(PURGE_QUEUE, step),
        counters=counters,
    )


def outbox_dispatcher(
    config: Config,
    store: Store,
    notifiers: dict[str, Notifier],
    send_queue: SendQueue,
    *,
    bus: Bus,
    clock: Callable[[], float],
) -> OutboxDispatcher:
    return OutboxDispatcher(
        store,
        notifiers,
        bus=bus,
        photo_path=lambda d, e: store.photo_path(d, e, "alert"),  # an event's photo with its caption
        attachment_path=send_queue.photo_path,  # a photo sent with the send API
        clock=clock,
        **asdict(config.outbox),  # backoff, dead_after_s, poll_s: the dispatcher's own names
    )


def mqtt_link(
    config: Config, url: str, *, broker: Any, client_id: str, deliver: Deliver, reject: Reject
) -> MqttLink:
    """The gateway's MQTT link to `url`: with the login of `broker` (our own gateway.broker.ManagedBroker)
    when we run one, else with `broker.username`/`password` from the config."""
    username, password = config.broker.username, config.broker.password
    if broker is not None:
        # On the box listener the broker makes this login our client id (use_username_as_clientid).
        username, password = broker.gateway_username, broker.gateway_password
    return MqttLink(
        url,
        client_id=client_id,
        prefix=config.broker.prefix,
        deliver=deliver,
        username=username,
        password=password,
        keepalive=config.broker.keepalive_s,
        reject=reject,  # retained junk (gateway/retained.py) is counted with the other rejections
    )
