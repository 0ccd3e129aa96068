"""A box's state as the gateway keeps it, and how events, statuses and time change it. Pure: no I/O.

Each function takes a box record (and the config values and time it needs) and returns the new
record and what happened that people may need to hear about (`Notice`s); which sinks and recipients
hear it is `gateway.alerts`'s business, and writing is the caller's (gateway/pipeline.py stores the
record with the event it came from, in one durable write).

The record is the store's box record (`gateway.store.Store.put_device`): `gateway.ports.DeviceRecord`'s
keys, which the dashboard and Home Assistant see, plus the state these rules keep:

- `last_event_ts`, `last_pickup_ts`, `waiting_ts`: the events' own times, so state follows the order
  things happened, not the order they were stored (photos take longer, spools replay late);
- `offline_since`: when it went offline (last will, or clean "offline" status); None while online;
- `offline_alerted`: an offline alert went out and no "online" one since (one alert per outage);
- `low_battery_alerted`: a low-battery alert went out; cleared once the battery is
  `BATTERY_HYSTERESIS_MV` above the threshold again, so a battery hovering at the threshold does
  not alert at every status;
- `status_at`: when fw/rssi/battery/... were reported (None when they came from a retained replay).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from gateway.ports import DeviceRecord, EventRecord
from gateway.protocol import Status

Box = dict[str, Any]  # a box record as stored; see the module docstring for its keys

BATTERY_HYSTERESIS_MV = 100
# The figures a box's "online" status reports, copied onto its record.
STATUS_FIGURES = ("fw", "rssi", "battery_mv", "heap_free", "uptime_s", "spooled")
_WAITING_KEPT = 100  # delivery times kept per box (the count shown is capped there too)


@dataclass(frozen=True)
class Notice:
    """Something about a box that may be alerted: `kind` (an alert kind) at `ts`."""

    kind: str  # "online" | "low_battery" | "offline"
    ts: float


@dataclass(frozen=True)
class StatusOutcome:
    """What a status message does to a box: the new record (None: nothing to write), the notices,
    and whether it was a retained replay (counted as `statuses_replayed`)."""

    box: Box | None
    notices: tuple[Notice, ...] = ()
    replayed: bool = False


def public(box: Mapping[str, Any]) -> DeviceRecord:
    """The record as the port shows it (`DeviceRecord`'s keys only)."""
    # cast: the checker cannot follow a comprehension over the TypedDict's own keys.
    return cast(DeviceRecord, {k: box.get(k) for k in DeviceRecord.__annotations__})


def is_removed(box: Mapping[str, Any], removed: Mapping[str, float]) -> bool:
    """Removed with `parcelbox device remove` (box id -> when, `DeviceRegistry.removed()`) and not
    heard from since: hidden, never 'offline'."""
    removed_at = removed.get(box["device"])
    return removed_at is not None and (box.get("last_seen") or 0.0) <= removed_at


def apply_event(box: Mapping[str, Any], ev: EventRecord) -> Box:
    """The box after one stored event. Events may be stored out of order (photos take longer, spools
    replay late), so state follows the events' own times, not the order they were stored."""
    dev = dict(box)
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
            waiting_ts = sorted([*waiting_ts, ts])[-_WAITING_KEPT:]
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


def apply_status(
    box: Mapping[str, Any],
    st: Status,
    received_at: float,
    *,
    retained: bool = False,
    removed: bool = False,
    low_battery_mv: int = 0,
) -> StatusOutcome:
    """The box after a status message received at `received_at`.

    `retained`: a copy the broker replayed from its retained store (gateway.ingest). `removed`: the
    box was removed and not heard from since (`is_removed`). `low_battery_mv`: the alert threshold
    (0: off). Notices: "online" when it comes back after an offline alert, "low_battery" when the
    battery first drops under the threshold.
    """
    if not st.online and removed:
        return StatusOutcome(None)  # the last will of a box just removed: expected, must not bring it back
    dev = dict(box)
    was_online = bool(dev.get("online"))
    if retained and dev.get("last_seen") is not None:
        # The broker replays a box's retained status whenever we (re)subscribe (every gateway start
        # or reconnect): it is what the box said at some earlier, unknown time, not a sign of life
        # now. Taking it as one reset every box's "last seen" to the restart. Keep only its
        # online/offline state (it is the latest the broker has), never the time or the figures.
        if st.online == was_online:
            return StatusOutcome(None, replayed=True)
        dev["online"] = st.online
        dev["offline_since"] = None if st.online else dev["last_seen"]
        return StatusOutcome(dev, replayed=True)
    dev["online"] = st.online
    if not retained:  # a box known only from a replay has no known "last seen" yet
        dev["last_seen"] = received_at
    if st.online:
        for k in STATUS_FIGURES:
            dev[k] = getattr(st, k)
        dev["status_at"] = None if retained else received_at  # when these figures were reported
        dev["offline_since"] = None
    elif was_online or dev.get("offline_since") is None:
        dev["offline_since"] = received_at
    notices: list[Notice] = []
    if st.online and dev.get("offline_alerted"):
        dev["offline_alerted"] = False
        notices.append(Notice("online", received_at))
    if st.online and low_battery_mv and st.battery_mv is not None:
        if st.battery_mv < low_battery_mv and not dev.get("low_battery_alerted"):
            dev["low_battery_alerted"] = True
            notices.append(Notice("low_battery", received_at))
        elif st.battery_mv >= low_battery_mv + BATTERY_HYSTERESIS_MV:
            dev["low_battery_alerted"] = False
    return StatusOutcome(dev, tuple(notices))


def due_offline(
    boxes: Iterable[Mapping[str, Any]],
    now: float,
    *,
    offline_after_s: float,
    silent_after_s: float = 0.0,
    removed: Mapping[str, float] | None = None,
) -> list[tuple[Box, Notice]]:
    """The boxes to report offline at `now`, each as (new record, its "offline" notice).

    Offline (last will or an "offline" status) for `offline_after_s`, or, with `silent_after_s` > 0,
    "online" but not heard from for that long (a sleeping battery box that never woke up again:
    offline since it was last seen). Once per outage (`offline_alerted`); never a removed box.
    """
    out: list[tuple[Box, Notice]] = []
    for box in boxes:
        if box.get("offline_alerted") or is_removed(box, removed or {}):
            continue
        if box.get("online"):
            last_seen = box.get("last_seen")
            if silent_after_s > 0 and last_seen is not None and now - last_seen >= silent_after_s:
                out.append(({**box, "offline_alerted": True}, Notice("offline", last_seen)))
            continue
        since = box.get("offline_since")
        if since is not None and now - since >= offline_after_s:
            out.append(({**box, "offline_alerted": True}, Notice("offline", since)))
    return out
