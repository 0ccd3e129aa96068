"""The dashboard inside the real gateway: GatewayService + real Mosquitto + a box stand-in."""

from __future__ import annotations

import httpx2 as httpx
import pytest

from gateway.app import build_service
from gateway.web.server import WebServer
from tests.support.gateway_core import Box, event_payload, gateway_config, make_jpeg, new_event_id, wait_for
from tests.support.web import BoxRunner, SSEReader

PHOTO = make_jpeg(640, 480, seed=3)


@pytest.fixture
def gateway(tmp_path, mosquitto, prefix):
    cfg = gateway_config(
        tmp_path / "data",
        mosquitto.url,
        prefix,
        PARCELBOX_WEB_PORT="0",
        PARCELBOX_DEVICES_NAMES="box1=Front gate",
    )
    svc = build_service(cfg)
    svc.start()
    try:
        assert svc.wait_connected(10)
        yield svc
    finally:
        svc.stop()


def web_of(svc) -> WebServer:
    (web,) = [c for c in svc.components if isinstance(c, WebServer)]
    return web


def test_gateway_runs_the_dashboard(gateway) -> None:
    web = web_of(gateway)
    assert web.bound_port and web.url.startswith("http://127.0.0.1:")
    assert "dashboard" in web.summary and "this machine only" in web.summary
    with httpx.Client(base_url=web.url, timeout=10) as c:
        h = c.get("/api/health").json()
        assert h["broker"]["connected"] is True and h["web"]["login_required"] is False
        assert c.get("/").status_code == 200
        wa = c.get("/api/whatsapp").json()
        assert wa["actions"] == {"pair_code": False, "test_message": False, "unlink": False}


def test_delivery_live_photo_and_snapshot_from_the_simulator(gateway, mosquitto, prefix, tmp_path) -> None:
    """A simulated box (the real firmware modules) delivers and answers a snapshot request."""
    from tools.simulate import SimulatedBox

    web = web_of(gateway)
    runner = BoxRunner(SimulatedBox(mosquitto.url, "box1", prefix=prefix, spool_dir=tmp_path / "spool"))
    try:
        with httpx.Client(base_url=web.url, timeout=15) as c, c.stream("GET", "/api/stream") as stream:
            sse = SSEReader(stream)
            sse.next_event("hello")
            runner.call(runner.box.deliver)
            _, ev = sse.next_event("event")
            assert ev["device"] == "box1" and ev["type"] == "delivery"
            assert ev["id"] in runner.events("delivery")
            assert c.get("/api/events").json()["events"][0]["id"] == ev["id"]
            sizes = {}
            for variant, url in ev["photos"].items():
                r = c.get(url)
                assert r.status_code == 200 and r.content[:2] == b"\xff\xd8", variant
                sizes[variant] = len(r.content)
            assert sizes["original"] == ev["photo"]["size"] and sizes["thumb"] < sizes["original"]
            dev = wait_for(
                lambda: next((d for d in c.get("/api/devices").json()["devices"] if d["waiting"] == 1), None),
                what="box1 counts the parcel",
            )
            assert dev["device"] == "box1" and dev["name"] == "Front gate" and dev["online"]

            c.get("/api/health")  # sets the CSRF cookie
            token = c.cookies.get("pb_csrf")
            r = c.post("/api/devices/box1/command", json={"cmd": "snapshot"}, headers={"x-csrf-token": token})
            assert r.status_code == 202, r.text
            cmd_id = r.json()["id"]
            _, res = sse.next_event("command")
            assert res["id"] == cmd_id and res["ok"] is True
            snap = wait_for(lambda: runner.events("snapshot"), what="snapshot taken")[0]
            got = wait_for(
                lambda: (e := c.get(f"/api/events/box1/{snap}")).status_code == 200 and e.json(),
                what="snapshot stored",
            )
            assert got["type"] == "snapshot" and got["cmd"] == cmd_id and got["photos"]
            assert c.get(f"/api/commands/{cmd_id}").json()["pending"] is False
    finally:
        runner.close()


def test_outbox_listing_and_retry_on_the_real_gateway(gateway, box) -> None:
    web = web_of(gateway)
    eid = new_event_id()
    box.send(eid, PHOTO)
    assert box.wait_ack(eid)["ok"]
    with httpx.Client(base_url=web.url, timeout=10) as c:
        alerts = wait_for(lambda: c.get("/api/outbox").json()["alerts"], what="an alert in the outbox")
        a = alerts[0]
        assert a["device"] == "box1" and eid in a["event_ids"]
        c.get("/api/health")
        h = {"x-csrf-token": c.cookies.get("pb_csrf")}
        # The folder sink sends at once: a sent alert is not retryable; the real id passes validation.
        wait_for(lambda: c.get("/api/outbox?state=sent").json()["alerts"], what="alert sent")
        r = c.post(f"/api/outbox/{a['id']}/retry", headers=h)
        assert (r.status_code, r.json()["error"]) == (409, "not_retryable")


def test_web_disabled_in_config(tmp_path, mosquitto, prefix) -> None:
    cfg = gateway_config(tmp_path / "d2", mosquitto.url, prefix, PARCELBOX_WEB_ENABLED="false")
    svc = build_service(cfg)
    assert not [c for c in svc.components if isinstance(c, WebServer)]


def test_a_stored_non_finite_sensor_value_never_breaks_the_api(tmp_path, mosquitto, prefix) -> None:
    """Issue 14 item 7: a record stored with `range_mm: inf` (before the protocol refused `1e999`) made
    every /api/events answer 500, for good. The record is written by the real store, the gateway
    started on that data folder afterwards (as after a restart), and a new `1e999` is refused."""
    import json
    import math

    from gateway.store import Store

    data = tmp_path / "data"
    store = Store(data)
    bad = new_event_id()
    record = {
        "device": "box1",
        "id": bad,
        "type": "delivery",
        "ts": 1_700_000_000.0,
        "received_at": 1_700_000_000.0,
        "seq": 1,
        "sensors": {"range_mm": math.inf, "deep": {"x": [math.nan, -math.inf, 2.5]}},
        "photo": None,
        "cmd": None,
    }
    assert store.add_event(record)  # type: ignore[arg-type]
    store.close()

    cfg = gateway_config(data, mosquitto.url, prefix, PARCELBOX_WEB_PORT="0")
    svc = build_service(cfg)
    svc.start()
    box = Box(mosquitto.url, prefix, "box1")
    try:
        assert svc.wait_connected(10)
        with httpx.Client(base_url=web_of(svc).url, timeout=10) as c:
            r = c.get("/api/events")
            assert r.status_code == 200, r.text
            (ev,) = r.json()["events"]
            assert ev["sensors"] == {"range_mm": None, "deep": {"x": [None, None, 2.5]}}
            one = c.get(f"/api/events/box1/{bad}")
            assert one.status_code == 200 and one.json()["sensors"]["range_mm"] is None
            # a new one is refused at the protocol boundary (and the box told not to send it again)
            eid = new_event_id()
            payload = json.loads(event_payload(eid))
            payload["sensors"] = {"range_mm": 1}
            raw = json.dumps(payload).replace('"range_mm": 1', '"range_mm": 1e999').encode()
            box.event(eid, raw)
            nack = box.wait_ack(eid)
            assert nack["ok"] is False and nack["retry"] is False and nack["error"].startswith("bad_number")
            assert c.get("/api/health").json()["rejected"] == {"bad_number": 1}
            assert [e["id"] for e in c.get("/api/events").json()["events"]] == [bad]
        # status.json (what `parcelbox status --json` prints) is strict JSON too

        def strict(name: str) -> None:
            raise ValueError(f"{name} in status.json")

        snap = json.loads((data / "status.json").read_text(), parse_constant=strict)
        assert snap["events"][0]["sensors"]["range_mm"] is None
    finally:
        box.close()
        svc.stop()
