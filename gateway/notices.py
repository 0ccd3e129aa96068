"""Alerts that belong to no event: box health (offline, silent), WhatsApp down or back, the send API.

The rules are pure (`gateway.boxes` says which boxes are due, `gateway.alerts` plans the outbox
entries); `Notices` applies what they return to the store and the bus. It runs on the ingest worker
(`check_offline`, `check_whatsapp` from `tick`; `emit` from the pipeline's status handling), the single
writer of box records, and `emit` from the send API's request threads (outbox entries only).

A box record that marks alerts as planned (`offline_alerted`, the battery and back-online marks) is
stored in the same journal line as those alerts (`Store.add_outbox(..., device=...)`): a crash between
two writes would keep the mark and lose the alerts for good.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from gateway import alerts, boxes
from gateway.alerts import PlannedAlert, Sink
from gateway.bus import OUTBOX_CHANGED, Bus
from gateway.config import Config
from gateway.notify.base import Notifier
from gateway.outbox import OutboxDispatcher, _public
from gateway.store import Store
from gateway.vocabulary import GATEWAY_DEVICE
from gateway.whatsapp.state import LinkState
from gateway.whatsapp.watch import LinkWatch

log = logging.getLogger("gateway")


class Notices:
    def __init__(
        self,
        config: Config,
        *,
        store: Callable[[], Store],  # the store once the gateway started (raises before)
        bus: Bus,
        notifiers: Mapping[str, Notifier],
        whatsapp: LinkState,
        removed: Callable[[], Mapping[str, float]],  # removed box -> when (gateway.registry_watch)
        dispatcher: Callable[[], OutboxDispatcher | None],
    ) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        self.notifiers = notifiers
        self.whatsapp = whatsapp
        self.removed = removed
        self.dispatcher = dispatcher
        self.wa_watch = LinkWatch(float(getattr(config.whatsapp, "down_notice_after_s", 300.0)))

    def sinks(self, device: str) -> list[Sink]:
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

    def check_offline(self, now: float) -> None:
        """Boxes offline for longer than alerts.offline_after_s (or silent for alerts.silent_after_s)
        get one alert; the box record saying so is written with it."""
        cfg = self.config.alerts
        due = boxes.due_offline(
            self.store().list_devices(),
            now,
            offline_after_s=cfg.offline_after_s,
            silent_after_s=cfg.silent_after_s,
            removed=self.removed(),
        )
        for dev, notice in due:
            planned = alerts.plan_notice(dev, notice, sinks=self.sinks(dev["device"]), cfg=cfg, now=now)
            self.emit(planned, now, box=dev)

    def check_whatsapp(self, now: float) -> None:
        """WhatsApp down for a while (or back) -> a notice on the other sinks."""
        kind = self.wa_watch.check(self.whatsapp.state, now)
        if kind is None:
            return
        st = self.whatsapp.state
        ts = float((st.get("down_since") if kind == "whatsapp_down" else None) or now)
        planned = alerts.plan_whatsapp(
            kind,
            ts,
            gateway_name=self.config.homeassistant.gateway_name,
            note=str(st.get("detail") or "") if kind == "whatsapp_down" else "",
            sinks=self.sinks(GATEWAY_DEVICE),
            cfg=self.config.alerts,
            now=now,
        )
        log.warning("WhatsApp %s: telling %d other sink recipient(s)", kind, len(planned))
        self.emit(planned, now)

    def emit(self, planned: list[PlannedAlert], when: float, box: dict[str, Any] | None = None) -> None:
        """Store outbox entries that belong to no event, with `box`'s new record in the same durable
        write when given (the box record alone when nothing is planned); tell the bus, wake the sender."""
        if not planned and box is None:
            return
        self.store().add_outbox(planned, when, device=box)
        for o in planned:
            self.bus.publish(OUTBOX_CHANGED, _public(dict(o)))
        if planned:
            self.wake()

    def wake(self) -> None:
        dispatcher = self.dispatcher()
        if dispatcher is not None:
            dispatcher.wake()
