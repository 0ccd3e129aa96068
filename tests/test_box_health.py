"""Box health that tells the truth (issue 15 items 1 and 2), against a real Mosquitto and real files."""

from __future__ import annotations

import json

from starlette.testclient import TestClient

from gateway.service import GatewayService
from gateway.web import WebSettings, create_app
from tests.support.gateway_core import Box, gateway_config, wait_for
from tests.support.web import LOCAL_BASE, MemoryPort, prime

STATUS = {"v": 1, "online": True, "fw": "0.3.0", "rssi": -61, "battery_mv": 3900, "spooled": 3,
          "uptime_s": 50, "heap_free": 90_000}  # fmt: skip


def _box1(svc: GatewayService) -> dict:
    return next(d for d in svc.list_devices() if d["device"] == "box1")


def test_last_seen_and_spooled_survive_a_gateway_restart(tmp_path, mosquitto, prefix):
    """The broker replays each box's retained status when the gateway subscribes again; old code took
    the replay for a sign of life and every box's "last seen" became the restart time."""
    cfg = gateway_config(tmp_path / "data", mosquitto.url, prefix)
    box = Box(mosquitto.url, prefix, "box1")
    try:
        svc = GatewayService(cfg)
        svc.start()
        try:
            assert svc.wait_connected(10)
            box.pub("status", json.dumps(STATUS).encode(), retain=True)  # live: a real sign of life
            first = wait_for(lambda: _box1(svc) if svc.list_devices() else None, what="status")
            assert first["spooled"] == 3 and first["status_at"] == first["last_seen"]
        finally:
            svc.stop()
        svc = GatewayService(cfg)
        svc.start()
        try:
            assert svc.wait_connected(10)
            wait_for(lambda: svc.health()["statuses"] >= 1, what="the retained status replayed")
            again = _box1(svc)
            assert again["last_seen"] == first["last_seen"]  # old code: the restart time
            assert again["status_at"] == first["status_at"]
            assert again["online"] and again["spooled"] == 3
            assert svc.health()["statuses_replayed"] == 1
            # A live status still counts, and moves both times.
            box.pub("status", json.dumps({**STATUS, "spooled": 0}).encode(), retain=True)
            live = wait_for(lambda: _box1(svc)["spooled"] == 0 and _box1(svc), what="live status")
            assert live["last_seen"] > first["last_seen"] and live["status_at"] == live["last_seen"]
        finally:
            svc.stop()
    finally:
        box.close()


def test_retained_offline_replay_marks_offline_without_moving_last_seen(tmp_path, mosquitto, prefix):
    """The box went away while the gateway was down and its session was lost (a broker reset): the
    replayed retained "offline" is the latest truth about online/offline, but says nothing of when."""
    cfg = gateway_config(tmp_path / "data", mosquitto.url, prefix)
    box = Box(mosquitto.url, prefix, "box1")
    try:
        svc = GatewayService(cfg)
        svc.start()
        try:
            assert svc.wait_connected(10)
            box.pub("status", json.dumps(STATUS).encode(), retain=True)
            first = wait_for(lambda: _box1(svc) if svc.list_devices() else None, what="status")
        finally:
            svc.stop()
        # A fresh client id is a new session: the gateway gets only the broker's retained replay.
        box.pub("status", json.dumps({"v": 1, "online": False}).encode(), retain=True)
        svc = GatewayService(gateway_config(tmp_path / "data", mosquitto.url, prefix,
                                            PARCELBOX_BROKER_CLIENT_ID="parcelbox-fresh-session"))  # fmt: skip
        svc.start()
        try:
            assert svc.wait_connected(10)
            wait_for(lambda: not _box1(svc)["online"], what="offline from the replay")
            assert _box1(svc)["last_seen"] == first["last_seen"]
        finally:
            svc.stop()
    finally:
        box.close()


def test_api_lists_same_second_events_in_seq_order_across_pages(tmp_path):
    """Item 2 through the dashboard's API: the cursor carries seq, so a page boundary inside one second
    neither repeats nor skips an event."""
    port = MemoryPort(tmp_path / "photos")
    port.add_device("gate", "Front gate")
    recs = [port.add_event("gate", "delivery", ts=1000.0, photo=False) for _ in range(5)]
    want = [r["seq"] for r in sorted(recs, key=lambda r: r["seq"], reverse=True)]
    with TestClient(create_app(port, WebSettings()), base_url=LOCAL_BASE) as client:
        prime(client)
        seen: list[int] = []
        url = "/api/events?limit=2"
        for _ in range(10):
            body = client.get(url).json()
            seen += [e["seq"] for e in body["events"]]
            if body["next"] is None:
                break
            url = "/api/events?limit=2&before=" + body["next"]
        assert seen == want
        # A cursor from a page served by the old code (`ts:id`) is still accepted.
        assert client.get(f"/api/events?limit=2&before=1000.0:{recs[0]['id']}").status_code == 200
