"""The gateway's health: its counters and figures, the data folder's disk, and `<data>/status.json`.

`health_report` builds what `GET /api/health`, `parcelbox status --json` and Home Assistant show
(pure: the service passes its parts in). `StorageMonitor` watches the data folder's disk and the
store's damage counters (`gateway.diskspace` decides what is a problem): it logs a problem when it
appears, publishes STORAGE_STATE on the bus, and turns a failed write into a counter and a warning a
minute at most (a full disk fails every write, a few a second). `write_snapshot` writes status.json.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.bus import STORAGE_STATE, Bus
from gateway.diskspace import (
    WRITE_FAILURE_SHOWN_S,
    DiskThresholds,
    StorageWatch,
    disk_report,
    measure,
    storage_report,
)
from gateway.health import Counters
from gateway.jsonsafe import json_safe
from gateway.storage import atomic_write_bytes

if TYPE_CHECKING:  # `parcelbox status` imports STATUS_FILE from here: no paho, no TinyDB for that
    from gateway.ingest import MqttLink
    from gateway.ota.server import OtaServer
    from gateway.ports import GatewayPort
    from gateway.store import Store

log = logging.getLogger("gateway")

STATUS_FILE = "status.json"  # in the data folder: what `parcelbox status` reads
# A full disk fails every write, a few a second: say so once a minute (with a count), not each time.
_STORE_WARNING_EVERY_S = 60.0
# Shown as 0 before the first one happens, so a reader never has to guess whether a key is missing.
_ZERO_COUNTERS = (
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
)


def health_report(
    *,
    now: float,
    started_at: float | None,
    data_dir: Path,
    link: MqttLink | None,
    broker: Any,  # gateway.broker.ManagedBroker when the gateway runs its own, else None
    broker_url: str,
    store: Store,
    ingest: dict[str, Any],  # queue, reassembly, photos_in_progress (the ingest pipeline's figures)
    commands_held: int,
    storage: dict[str, Any],
    counters: dict[str, object],
) -> dict[str, Any]:
    """`gateway.ports.GatewayPort.health`: the gateway's figures and counters, JSON-able."""
    out: dict[str, Any] = {
        "version": __version__,
        "pid": os.getpid(),
        "started_at": started_at,
        "uptime_s": round(now - started_at, 1) if started_at else 0.0,
        "updated_at": now,
        "data_dir": str(data_dir),
        "broker": {
            "url": link.endpoint if link else broker_url,
            "managed": broker.kind if broker else None,
            "connected": bool(link and link.connected.is_set()),
            # more than 1 with a healthy broker: something keeps disconnecting us (a client-id thief?)
            "connects": link.connects if link else 0,
        },
        "events_total": store.event_count(),
        "alerts": store.outbox_counts(),
        **ingest,
        "commands_held": commands_held,
        "storage": storage,
    }
    out.update(dict.fromkeys(_ZERO_COUNTERS, 0))
    out.update(counters)
    return out


def status_snapshot(port: GatewayPort, ota: OtaServer) -> dict[str, Any]:
    """What `parcelbox status` shows: health, boxes, recent events, outbox, over-the-air updates."""
    return {
        "health": port.health(),
        "devices": port.list_devices(),
        "events": port.list_events(limit=10),
        "outbox": port.list_outbox(limit=20),
        "ota": ota.snapshot(),
    }


def write_snapshot(data_dir: Path, snap: dict[str, Any]) -> None:
    """Write `<data>/status.json`; raises OSError (a full disk, say) for the caller to count."""
    # Rewritten every 2 s: atomic but not fsync'd (SD-card wear; a lost snapshot is rewritten soon).
    try:
        body = json.dumps(snap, indent=1, default=str, allow_nan=False)
    except ValueError:  # a non-finite number in a record stored before the protocol refused them
        body = json.dumps(json_safe(snap), indent=1, default=str)
    atomic_write_bytes(data_dir / STATUS_FILE, body.encode(), durable=False)


class StorageMonitor:
    """The data folder's disk and the store's health; failed writes counted and warned about."""

    def __init__(
        self,
        data_dir: Path,
        thresholds: DiskThresholds,
        *,
        store: Callable[[], Store],
        bus: Bus,
        counters: Counters,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.data_dir = data_dir
        self.thresholds = thresholds
        self._store = store  # the open store (the service opens it at start)
        self._bus = bus
        self._counters = counters
        self._monotonic = monotonic
        self._watch = StorageWatch()
        self._warned_at = -_STORE_WARNING_EVERY_S
        self._warnings_held = 0
        self._failed_at: float | None = None  # monotonic time of the last refused event

    def failed(self, exc: OSError, what: str, *, counter: str = "store_write_errors") -> None:
        """A write to the data folder failed: count it, check the disk now, warn (rate-limited).
        `store_write_errors` counts the events refused for it (not acked)."""
        self._counters.inc(counter)
        now = self._monotonic()
        if counter == "store_write_errors":
            self._failed_at = now
        if now - self._warned_at < _STORE_WARNING_EVERY_S:
            self._warnings_held += 1
            return
        held, self._warnings_held = self._warnings_held, 0
        self._warned_at = now
        log.warning(
            "could not write %s to %s: %s%s%s",
            what,
            self.data_dir,
            exc,
            "; not acked, the box keeps it and sends it again" if counter == "store_write_errors" else "",
            f" ({held} more such failure(s) in the last minute)" if held else "",
        )
        self.check()

    def health(self) -> dict[str, Any]:
        """Free space of the data folder's disk and the store's damage counters (`gateway.diskspace`)."""
        store = self._store()
        try:
            disk = disk_report(measure(self.data_dir), self.thresholds)
        except OSError:
            disk = None
        failed_at = self._failed_at
        return storage_report(
            disk,
            store.integrity(),
            self._counters.get("store_write_errors"),
            failed_recently=failed_at is not None and self._monotonic() - failed_at < WRITE_FAILURE_SHOWN_S,
        )

    def check(self) -> None:
        """Log storage problems when they appear (and hourly while they last); tell the bus."""
        report = self.health()
        to_log, recovered, publish = self._watch.update(report, self._monotonic())
        for problem in to_log:
            log.warning("storage: %s", problem)
        if recovered:
            log.info(
                "storage: ok again (%.0f MB free)", (report["disk"] or {}).get("free_bytes", 0) / (1 << 20)
            )
        if publish is not None:
            self._bus.publish(STORAGE_STATE, publish)

    def write_status(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Check the disk, then write `snapshot()` (`status_snapshot`) as `<data>/status.json`.

        At a full disk it fails: logged (rate-limited) and counted; `parcelbox status` measures the
        disk itself, so the warning still shows."""
        self.check()
        try:
            write_snapshot(self.data_dir, snapshot())
        except OSError as exc:
            self.failed(exc, STATUS_FILE, counter="status_write_errors")

    def state(self) -> dict[str, Any] | None:
        """The last storage state published on the bus (for a subscriber that starts later)."""
        last = self._watch.published
        return dict(last) if last else None
