"""The names the box, the gateway, the dashboard and the simulator must agree on, defined once.

Event types, alert kinds, outbox states, occupancy sensors and the keys of an event's `sensors` object. Every
gateway module imports them from here; the dashboard gets them injected into its page
(`for_browser()`, read by gateway/web/static/app.js), so it never spells a key of its own. The
firmware cannot import the gateway (MicroPython, flat files on the board), so it keeps copies
(`firmware/protocol.py` EVENT_TYPES, `firmware/settings.py` SENSORS, `firmware/sensors.py`
READINGS); tests/test_vocabulary.py fails when a copy differs from this table.

A second spelling is how the dashboard came to read `distance_mm` while the box sends `range_mm`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeGuard, get_args

# What a box reports (docs/protocol.md, "event"); the order is the dashboard's filter order.
EventType = Literal["delivery", "pickup", "lid_closed", "lid_left_open", "snapshot"]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
EVENT_LABELS: dict[str, str] = {
    "delivery": "Delivery",
    "pickup": "Pickup",
    "lid_closed": "Lid closed",
    "lid_left_open": "Lid left open",
    "snapshot": "Snapshot",
}

# What an outbox entry is about: an event (gateway/alerts.py plans one for the types in `alerts.kinds`,
# and for every type to sinks that take every event), a box's health (gateway/boxes.py), WhatsApp
# stopping or working again (gateway/whatsapp/watch.py: to the other sinks), a send-API message.
AlertKind = Literal[
    EventType,
    Literal["offline", "online", "low_battery"],
    Literal["whatsapp_down", "whatsapp_up"],
    Literal["message"],
]
ALERT_KINDS: tuple[str, ...] = get_args(AlertKind)

# An alert's life in the outbox: failed = the last attempt failed and it will be retried; dead = gave up.
OutboxState = Literal["pending", "sent", "failed", "dead"]
OUTBOX_STATES: tuple[str, ...] = get_args(OutboxState)
OPEN_OUTBOX_STATES: tuple[str, ...] = ("pending", "failed")  # still to be sent


def is_outbox_state(s: object) -> TypeGuard[OutboxState]:
    return s in OUTBOX_STATES


# What a recipient's phone confirmed of a sent alert (WhatsApp receipts), in the order they happen:
# a receipt only ever moves forward (a late "delivered" never hides "read").
Receipt = Literal["sent", "delivered", "read"]
RECEIPTS: tuple[str, ...] = get_args(Receipt)
RECEIPT_ORDER: dict[str, int] = {r: i for i, r in enumerate(RECEIPTS, 1)}

# The "device" of alerts and messages about the gateway itself (WhatsApp down/up, a send-API message
# for no box): never a box id (those never start with "_": gateway.protocol.valid_device_id).
GATEWAY_DEVICE = "_gateway"

# The occupancy sensor a box is configured with (`sensor` in the box's config.json).
OCCUPANCY_SENSORS: tuple[str, ...] = ("none", "ir", "ultrasonic", "hx711")


@dataclass(frozen=True)
class Reading:
    """One key of an event's `sensors` object: what it means and how to show it."""

    key: str
    label: str
    unit: str  # shown after the value; "" for states (open/closed) and 0/1 readings
    source: str  # what produces it: "lid" (the detector), "camera", or an OCCUPANCY_SENSORS name


SENSOR_READINGS: tuple[Reading, ...] = (
    # firmware/detector.py (and app.py for a requested snapshot)
    Reading("lid", "lid", "", "lid"),
    Reading("open_s", "open for", "s", "lid"),
    Reading("before", "level before", "", "lid"),  # in the occupancy sensor's unit
    Reading("level", "level after", "", "lid"),
    Reading("error", "sensor error", "", "lid"),  # no_reading: the sensor did not answer in time
    Reading("camera_error", "camera error", "", "camera"),  # firmware/app.py: no photo, and why
    # firmware/sensors.py: each occupancy sensor's raw reading (its `info`)
    Reading("ir", "IR beam", "", "ir"),
    Reading("range_mm", "distance", "mm", "ultrasonic"),
    Reading("weight_g", "weight", "g", "hx711"),
)
READING_KEYS: tuple[str, ...] = tuple(r.key for r in SENSOR_READINGS)

# The dashboard shows these under an event (the lid state is already in the event's type).
SHOWN_READINGS: tuple[str, ...] = ("range_mm", "weight_g")

assert set(EVENT_LABELS) == set(EVENT_TYPES)
assert set(SHOWN_READINGS) <= set(READING_KEYS)


def for_browser() -> dict[str, Any]:
    """The tables as the dashboard's page receives them (a JSON object injected into index.html)."""
    return {
        "event_types": [{"type": t, "label": EVENT_LABELS[t]} for t in EVENT_TYPES],
        "outbox_states": list(OUTBOX_STATES),
        "readings": [asdict(r) for r in SENSOR_READINGS if r.key in SHOWN_READINGS],
    }
