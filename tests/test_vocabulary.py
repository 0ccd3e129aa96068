"""One table each for event types, outbox states, occupancy sensors and sensor readings
(gateway/vocabulary.py). The firmware cannot import the gateway, so it keeps copies; these tests
fail when a copy drifts, which is how the dashboard came to read `distance_mm` for `range_mm`."""

from __future__ import annotations

import json
import typing

import detector as fw_detector  # firmware/ (tests/conftest.py puts it on sys.path)
import protocol as fw_protocol
import sensors as fw_sensors
import settings as fw_settings

from gateway import ports, protocol, vocabulary
from gateway.web import openapi
from tools.sim.board import SimPin


def test_the_firmware_copies_equal_the_gateway_tables() -> None:
    assert tuple(fw_protocol.EVENT_TYPES) == vocabulary.EVENT_TYPES
    assert tuple(fw_settings.SENSORS) == vocabulary.OCCUPANCY_SENSORS
    assert set(fw_settings.THRESHOLDS) == set(vocabulary.OCCUPANCY_SENSORS)


def test_typed_literals_are_the_tables() -> None:
    assert typing.get_args(vocabulary.EventType) == vocabulary.EVENT_TYPES == protocol.EVENT_TYPES
    assert ports.OutboxState is vocabulary.OutboxState
    assert typing.get_args(ports.OutboxState) == vocabulary.OUTBOX_STATES
    assert set(vocabulary.OPEN_OUTBOX_STATES) < set(vocabulary.OUTBOX_STATES)
    assert vocabulary.is_outbox_state("dead") and not vocabulary.is_outbox_state("delivered")


def _occupancy_readings() -> dict[str, set[str]]:
    """The keys each firmware occupancy sensor really puts in an event (its `info` after a reading)."""
    ir = fw_sensors.IRSensor(SimPin(0))
    sonar = fw_sensors.Ultrasonic(SimPin(0), SimPin(0), lambda pin, level, timeout: 1000, lambda us: None)

    class Hx:
        def read_average(self, n: int) -> int:
            return 4200

    scale = fw_sensors.LoadCell(Hx())
    out = {}
    for name, sensor in (("ir", ir), ("ultrasonic", sonar), ("hx711", scale)):
        sensor.read_level()
        out[name] = set(sensor.info)
    return out


def test_every_reading_the_firmware_sends_is_in_the_table_under_its_sensor() -> None:
    table: dict[str, set[str]] = {}
    for r in vocabulary.SENSOR_READINGS:
        table.setdefault(r.source, set()).add(r.key)
    produced = _occupancy_readings()
    for name, keys in produced.items():
        assert keys == table[name], name
    assert set(produced) == set(vocabulary.OCCUPANCY_SENSORS) - {"none"}


def test_the_detectors_readings_are_in_the_table() -> None:
    d = fw_detector.Detector(settle_ms=0, cooldown_ms=0, left_open_ms=1000, has_sensor=True, rise=1, empty=0)
    keys: set[str] = set()
    for t, lid_open, level in (
        (0, False, 0),
        (100, True, None),
        (2000, True, None),
        (2100, False, 5),
        (2200, False, 5),
    ):
        for ev in d.update(t, lid_open, level):
            keys |= set(ev["sensors"])
    assert {"lid", "open_s", "before", "level"} <= keys
    assert keys <= set(vocabulary.READING_KEYS)


def test_the_dashboard_and_openapi_read_the_tables() -> None:
    page = vocabulary.for_browser()
    assert [t["type"] for t in page["event_types"]] == list(vocabulary.EVENT_TYPES)
    assert {r["key"]: r["unit"] for r in page["readings"]} == {"range_mm": "mm", "weight_g": "g"}
    json.dumps(page)  # JSON-able, as it is injected into the page
    schemas = openapi.OPENAPI["components"]["schemas"]
    assert schemas["Event"]["properties"]["type"]["enum"] == list(vocabulary.EVENT_TYPES)
    assert schemas["Alert"]["properties"]["state"]["enum"] == list(vocabulary.OUTBOX_STATES)


def test_receipts_are_one_table_in_their_order() -> None:
    from gateway import outbox

    assert vocabulary.RECEIPTS == ("sent", "delivered", "read")
    assert outbox.RECEIPT_ORDER is vocabulary.RECEIPT_ORDER
    assert typing.get_args(typing.get_type_hints(ports.OutboxRecord)["receipt"])[0] is vocabulary.Receipt
    alert = openapi.OPENAPI["components"]["schemas"]["Alert"]["properties"]["receipt"]
    assert alert == {"enum": [*vocabulary.RECEIPTS, None]}


def test_alert_kinds_are_one_table() -> None:
    """Issue 17: the alert kinds lived in gateway/notify/base.py, read by nobody; now the vocabulary has
    them (still importable from base), and every kind the rules plan has a caption in each language."""
    from gateway.captions import LANGUAGES, render_caption
    from gateway.notify import base
    from gateway.whatsapp import watch

    assert base.ALERT_KINDS is vocabulary.ALERT_KINDS
    assert set(vocabulary.EVENT_TYPES) < set(vocabulary.ALERT_KINDS)
    assert {watch.DOWN, watch.UP} < set(vocabulary.ALERT_KINDS)
    for kind in vocabulary.ALERT_KINDS:
        for language in LANGUAGES:
            caption = render_caption(kind, "Box", 0.0, language=language, tz="UTC")
            # the send API's "message" carries its own text; every other kind has a template
            assert (caption == f"Box: {kind} at 00:00, 1 Jan.") == (kind == "message"), (kind, language)
