"""The GatewayPort contract (gateway/ports.py), run against the real gateway (GatewayService with a
real Mosquitto, a box publishing protocol v1) and against the in-memory fake the dashboard tests use
(tests/support/web.py MemoryPort). What the fake answers is what the real one answers, so a test
written against the fake says something about the gateway.

It is the one in-memory GatewayPort (issue 17): the dashboard, WhatsApp-command and Home Assistant
tests all use it (the Home Assistant tests through tests/support/ha_gateway.py `memory_port`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from gateway.ports import DeviceRecord, EventRecord
from gateway.service import GatewayService
from tests.support.gateway_core import Box, gateway_config, make_jpeg
from tests.support.web import MemoryPort

BASE = 1_790_000_000.0
# (box, event id, type, ts offset, with a photo)
EVENTS = [
    ("gate", "gate0000001", "delivery", 0, True),
    ("porch", "porch000001", "delivery", 10, False),
    ("gate", "gate0000002", "pickup", 20, False),
    ("gate", "gate0000003", "lid_left_open", 30, False),
    ("porch", "porch000002", "snapshot", 30, True),  # the same second as the one before: ids order them
    ("gate", "gate0000004", "delivery", 40, True),
]


def _fake(tmp_path: Path) -> Iterator[Any]:
    port = MemoryPort(tmp_path / "photos")
    for box in ("gate", "porch"):
        port.add_device(box)
    for box, eid, etype, dt, photo in EVENTS:
        port.add_event(box, etype, ts=BASE + dt, event_id=eid, photo=photo)
    yield port


def _real(tmp_path: Path, mosquitto: Any, prefix: str) -> Iterator[Any]:
    service = GatewayService(gateway_config(tmp_path / "data", mosquitto.url, prefix))
    service.start()
    boxes = {name: Box(mosquitto.url, prefix, name) for name in ("gate", "porch")}
    try:
        for seq, (box, eid, etype, dt, photo) in enumerate(EVENTS, 1):
            boxes[box].send(
                eid, make_jpeg(320, 240, seed=seq) if photo else None, etype=etype, ts=BASE + dt, seq=seq
            )
            assert boxes[box].wait_ack(eid)["ok"] is True
        yield service
    finally:
        for b in boxes.values():
            b.close()
        service.stop()


@pytest.fixture(params=["fake", "real"])
def port(request, tmp_path: Path) -> Iterator[Any]:
    if request.param == "fake":
        yield from _fake(tmp_path)
    else:
        yield from _real(tmp_path, request.getfixturevalue("mosquitto"), request.getfixturevalue("prefix"))


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


NEWEST_FIRST = ["gate0000004", "porch000002", "gate0000003", "gate0000002", "porch000001", "gate0000001"]


def test_events_newest_first_with_every_field(port) -> None:
    rows = port.list_events()
    assert _ids(rows) == NEWEST_FIRST
    fields = set(get_type_hints(EventRecord))
    required = {k for k in fields if k != "photo_dropped"}
    for r in rows:
        assert required <= set(r) <= fields, set(r) ^ fields
        assert r["ts"] == BASE + next(dt for _, eid, _, dt, _ in EVENTS if eid == r["id"])
        assert (r["photo"] is not None) == next(p for _, eid, _, _, p in EVENTS if eid == r["id"])


def test_keyset_pages_add_up_to_the_whole_list(port) -> None:
    seen: list[str] = []
    before = None
    for _ in range(10):
        page = port.list_events(before=before, limit=4)
        seen += _ids(page)
        if len(page) < 4:
            break
        before = (page[-1]["ts"], int(page[-1].get("seq") or 0), page[-1]["id"])  # the API's cursor
    assert seen == NEWEST_FIRST


def test_filters(port) -> None:
    assert _ids(port.list_events(device="porch")) == ["porch000002", "porch000001"]
    assert _ids(port.list_events(type="delivery")) == ["gate0000004", "porch000001", "gate0000001"]
    assert _ids(port.list_events(since=BASE + 20, until=BASE + 40)) == [
        "porch000002",
        "gate0000003",
        "gate0000002",
    ]
    assert port.list_events(device="nobody") == []


def test_get_event_and_photo_paths(port) -> None:
    rec = port.get_event("gate", "gate0000001")
    assert rec is not None and rec["type"] == "delivery" and rec["photo"] is not None
    assert port.get_event("gate", "nosuchevent1") is None
    assert port.get_event("porch", "gate0000001") is None  # ids belong to their box
    for variant in ("original", "alert", "thumb"):
        p = port.photo_path("gate", "gate0000001", variant)
        assert p is not None and Path(p).read_bytes()[:2] == b"\xff\xd8"
    assert port.photo_path("gate", "gate0000002", "alert") is None  # no photo
    assert port.photo_path("gate", "../../etc/passwd", "alert") is None  # never built from a path
    assert port.photo_path("../gate", "gate0000001", "alert") is None


def test_devices_have_every_field(port) -> None:
    devices = port.list_devices()
    assert [d["device"] for d in devices] == ["gate", "porch"]
    fields = set(get_type_hints(DeviceRecord))
    for d in devices:
        assert set(d) == fields, set(d) ^ fields
