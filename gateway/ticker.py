"""The gateway's periodic work, run on the ingest worker.

`Ticker.run(now)` is one turn of it: reassembly timeouts (on the reassembler's own monotonic clock),
boxes offline or silent for too long, the WhatsApp notice, expired command results, over-the-air
offers, a purge slice, the device registry, the managed broker, and retention (hourly by `now`).
`start()` runs the "ticker" thread: once a second it queues a turn on the worker (the single writer
of box records, so a turn needs no lock against ingest), every 2 s the status snapshot. Tests call
`tick(now)` with a fake clock instead of waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from gateway.commands import Commands
from gateway.notices import Notices
from gateway.ota.server import OtaServer
from gateway.pipeline import Call, IngestPipeline
from gateway.purge import PurgeRunner
from gateway.registry_watch import RegistryWatch

RETENTION_EVERY_S = 3600.0


class Ticker:
    def __init__(
        self,
        *,
        pipeline: IngestPipeline,
        commands: Commands,
        notices: Notices,
        ota: OtaServer,
        registry_watch: RegistryWatch,
        clock: Callable[[], float],
        purges: Callable[[], PurgeRunner | None],  # made at start, with the store
        broker: Callable[[], Any],  # gateway.broker.ManagedBroker when we run our own, else None
        retention: Callable[[float], None],  # gateway/retention.py, at this time
        write_status: Callable[[], None],
    ) -> None:
        self.pipeline = pipeline
        self.commands = commands
        self.notices = notices
        self.ota = ota
        self.registry_watch = registry_watch
        self.clock = clock
        self.purges = purges
        self.broker = broker
        self.retention = retention
        self.write_status = write_status
        self.thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._retention_due = float("-inf")  # service-clock time of the next retention pass

    def start(self) -> None:
        self._stopping.clear()
        self.thread = threading.Thread(target=self._loop, name="ticker", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """No more turns are queued (one already queued still runs if the worker does)."""
        self._stopping.set()

    def _loop(self) -> None:
        """Once a second: a turn (on the worker); every 2 s the status snapshot."""
        queue = self.pipeline.queue
        last_status = 0.0
        while not self._stopping.wait(1.0):
            queue.put_control(Call(self.run))
            now = time.monotonic()
            if now - last_status >= 2.0:
                last_status = now
                queue.put_control(Call(self.write_status))

    def tick(self, now: float | None = None) -> None:
        """One turn at `now` (the service clock when None), on the worker: called from another thread
        while the gateway runs, it is queued there and returns once it has run (raising what it raised)."""
        self.pipeline.call(lambda: self.run(now))

    def run(self, now: float | None = None) -> None:
        """One turn, on this thread (the worker's)."""
        now = self.clock() if now is None else now
        self.pipeline.expire()
        self.commands.expire()
        self.notices.check_offline(now)
        self.notices.check_whatsapp(now)
        self.ota.tick()
        purges = self.purges()
        if purges is not None:
            purges.poll()
        self.registry_watch.poll()
        broker = self.broker()
        if broker is not None:
            broker.refresh()  # `parcelbox device add/remove` took effect: reload credentials
            broker.supervise()
        if now >= self._retention_due:  # last: a failing retention pass must not skip the rest
            self._retention_due = now + RETENTION_EVERY_S
            self.retention(now)
