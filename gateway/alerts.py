"""Who is told what: the outbox entries an event, a box's health or WhatsApp's state calls for. Pure.

The rules, in one place:

- an event whose type is in `alerts.kinds` goes to every sink; any other event only to the sinks that
  take every stored event (the webhook with `events = "all"`, `Sink.every_event`);
- a box back online after an offline alert: every sink when `alerts.online_alert`, else only those;
- offline, low battery: every sink; WhatsApp down/up: every sink but WhatsApp;
- one entry per sink and recipient, with a stable id (`{stem}_{sink}_{hash of recipient}`, the stem
  being `{box}_{event id}` or `{box}_{kind}_{ms}`), so planning the same thing again (a retry, a
  re-sent event) never makes a second entry; stored outboxes depend on these ids;
- grouping (`alerts.group_window_s` > 0): a delivery waits that long, and a delivery of the same box
  to the same recipient within the window is folded into the one not yet tried (`merge_into_burst`).

Functions take the facts (box record, config section, the sinks, `now`) and return entries and
updates; gateway/pipeline.py and gateway/service.py write them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NotRequired

from gateway.boxes import Notice
from gateway.captions import render_caption
from gateway.config import AlertsConfig
from gateway.ports import EventRecord, OutboxRecord
from gateway.vocabulary import GATEWAY_DEVICE


class PlannedAlert(OutboxRecord):
    """An outbox entry as planned: the record plus what the dispatcher needs to rebuild the `Alert`
    (gateway/outbox.py `_alert`), stored with it."""

    ts: float  # when it happened
    device_name: str
    caption: str
    has_photo: bool  # the alert photo is the stored photo of its last event
    alert_state: dict[str, Any]  # Alert.state, e.g. {"waiting": 2}
    language: NotRequired[str]  # the caption's language (a grouped caption is re-rendered in it)
    photo_file: NotRequired[str | None]  # a send-API photo (<data>/api-photos/), instead of an event's


@dataclass(frozen=True)
class Sink:
    """What the policy needs to know of a notifier (gateway.notify.base.Notifier), for one box."""

    name: str  # the notifier's name, its outbox key
    recipients: tuple[str, ...]  # Notifier.recipients(box)
    language: str | None = None  # its own caption language; None: alerts.language
    every_event: bool = False  # takes every stored event, not only alerts (the webhook, events = "all")


# An update to an open outbox entry: (alert id, fields to change).
Update = tuple[str, dict[str, Any]]


def rhash(recipient: str) -> str:
    """The recipient part of an entry id: short, stable, and no address in file names."""
    return hashlib.sha256(recipient.encode()).hexdigest()[:8]


def pending(
    entry_id: str,
    kind: str,
    device: str,
    notifier: str,
    recipient: str,
    *,
    event_ids: Sequence[str],
    now: float,
    due: float,
    ts: float,
    device_name: str,
    caption: str,
    has_photo: bool,
    alert_state: dict[str, Any],
) -> PlannedAlert:
    """A new outbox entry, not tried yet: the one place its bookkeeping fields start (the alert rules
    here and the send API, gateway/sendqueue.py, both make theirs with it)."""
    return PlannedAlert(
        id=entry_id,
        kind=kind,
        device=device,
        event_ids=list(event_ids),
        notifier=notifier,
        recipient=recipient,
        state="pending",
        attempts=0,
        created_at=now,
        next_attempt_at=due,
        sent_at=None,
        last_error=None,
        message_id=None,
        receipt=None,
        receipt_at=None,
        ts=ts,
        device_name=device_name,
        caption=caption,
        has_photo=has_photo,
        alert_state=alert_state,
    )


def plan(
    box: Mapping[str, Any],
    kind: str,
    ts: float,
    event_ids: Sequence[str],
    *,
    sinks: Iterable[Sink],
    cfg: AlertsConfig,
    now: float,
    has_photo: bool = False,
    photo_dropped: bool = False,
    skip: Iterable[str] = (),
    note: str = "",
) -> list[PlannedAlert]:
    """One entry per sink and recipient (but the sinks named in `skip`). `note` is appended to the caption."""
    device = box["device"]
    name = box.get("name") or device
    skipped = set(skip)
    stem = f"{device}_{event_ids[0]}" if event_ids else f"{device}_{kind}_{int(ts * 1000)}"
    due = now + cfg.group_window_s if cfg.group_window_s and kind == "delivery" else now
    out: list[PlannedAlert] = []
    for sink in sinks:
        if sink.name in skipped:
            continue
        language = sink.language or cfg.language
        caption = render_caption(
            kind,
            name,
            ts,
            language=language,
            tz=cfg.timezone,
            waiting=box.get("waiting"),
            battery_mv=box.get("battery_mv"),
            event_ids=event_ids,
            photo_dropped=photo_dropped,
        )
        if note:
            caption = f"{caption} {note}"
        for r in sink.recipients:
            entry = pending(
                f"{stem}_{sink.name}_{rhash(r)}",
                kind,
                device,
                sink.name,
                r,
                event_ids=event_ids,
                now=now,
                due=due,
                ts=ts,
                device_name=name,
                caption=caption,
                has_photo=has_photo,
                alert_state={"waiting": box.get("waiting", 0)},
            )
            entry["language"] = language
            out.append(entry)
    return out


def alerts_only(sinks: Iterable[Sink]) -> tuple[str, ...]:
    """The sinks that get alerts only (all but those taking every event): a `skip` for non-alerts."""
    return tuple(s.name for s in sinks if not s.every_event)


def plan_event(
    box: Mapping[str, Any], ev: EventRecord, *, sinks: Sequence[Sink], cfg: AlertsConfig, now: float
) -> list[PlannedAlert]:
    """The entries for a stored event; `box` is the box after it (gateway.boxes.apply_event)."""
    skip: tuple[str, ...] = ()
    if ev["type"] not in cfg.kinds:
        # Not an alert for people; sinks that take every stored event (the webhook) still get it.
        skip = alerts_only(sinks)
        if len(skip) == len(sinks):
            return []
    return plan(
        box,
        ev["type"],
        ev["ts"],
        [ev["id"]],
        sinks=sinks,
        cfg=cfg,
        now=now,
        has_photo=ev["photo"] is not None,
        photo_dropped=bool(ev.get("photo_dropped")),
        skip=skip,
    )


def plan_notice(
    box: Mapping[str, Any], notice: Notice, *, sinks: Sequence[Sink], cfg: AlertsConfig, now: float
) -> list[PlannedAlert]:
    """The entries for a box's health notice (gateway.boxes: online, low_battery, offline)."""
    skip: tuple[str, ...] = ()
    if notice.kind == "online" and not cfg.online_alert:
        skip = alerts_only(sinks)  # "back online" only to the sinks that take everything
        if len(skip) == len(sinks):
            return []
    return plan(box, notice.kind, notice.ts, [], sinks=sinks, cfg=cfg, now=now, skip=skip)


def plan_whatsapp(
    kind: str,
    ts: float,
    *,
    gateway_name: str,
    note: str,
    sinks: Sequence[Sink],
    cfg: AlertsConfig,
    now: float,
) -> list[PlannedAlert]:
    """WhatsApp down (or back up): a notice about the gateway on every other sink."""
    gateway = {"device": GATEWAY_DEVICE, "name": gateway_name}
    return plan(gateway, kind, ts, [], sinks=sinks, cfg=cfg, now=now, skip=("whatsapp",), note=note)


def merge_into_burst(
    planned: Iterable[PlannedAlert], open_entries: Iterable[Mapping[str, Any]], *, cfg: AlertsConfig
) -> tuple[list[PlannedAlert], list[Update]]:
    """Grouping (`alerts.group_window_s` > 0): fold each planned delivery into a not-yet-tried delivery
    of the same box to the same recipient created within the window (`open_entries`: the open outbox,
    oldest first). Returns (the entries still to add, the updates to the open ones)."""
    planned = list(planned)
    window = cfg.group_window_s
    if window <= 0 or not any(p["kind"] == "delivery" for p in planned):
        return planned, []
    entries = [dict(o) for o in open_entries]  # updated as we go, as the store would be
    keep: list[PlannedAlert] = []
    updates: list[Update] = []
    for rec in planned:
        into = None
        if rec["kind"] == "delivery":
            into = next(
                (
                    o
                    for o in entries
                    if o["kind"] == "delivery"
                    and o["device"] == rec["device"]
                    and o["notifier"] == rec["notifier"]
                    and o["recipient"] == rec["recipient"]
                    and o["attempts"] == 0
                    and o["created_at"] >= rec["created_at"] - window
                ),
                None,
            )
        if into is None:
            keep.append(rec)
            continue
        # An event already in the burst (its box sent it again after a failed write) is not repeated.
        ids = list(into["event_ids"]) + [i for i in rec["event_ids"] if i not in into["event_ids"]]
        caption = render_caption(
            "delivery",
            rec["device_name"],
            rec["ts"],
            language=rec.get("language", cfg.language),
            tz=cfg.timezone,
            waiting=rec["alert_state"]["waiting"],
            event_ids=ids,
        )
        fields = {
            "event_ids": ids,
            "caption": caption,
            "ts": rec["ts"],
            "alert_state": rec["alert_state"],
            "has_photo": into.get("has_photo") or rec["has_photo"],
        }
        into.update(fields)
        updates.append((into["id"], fields))
    return keep, updates
