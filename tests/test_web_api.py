"""Dashboard JSON API and pages against an in-memory gateway (real photo files, real bus)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.web import WebSettings, create_app
from gateway.web.app import PAGES
from gateway.web.openapi import OPENAPI
from tests.support.web import LOCAL_BASE, MemoryPort, csrf_headers, prime


@pytest.fixture
def port(tmp_path: Path) -> MemoryPort:
    p = MemoryPort(tmp_path / "photos", answer_delay=0.01)
    p.add_device("gate", "Front gate")
    p.add_device("back-door", "Back door", online=False, battery_mv=3500)
    return p


@pytest.fixture
def client(port: MemoryPort):
    with TestClient(create_app(port, WebSettings()), base_url=LOCAL_BASE) as c:
        prime(c)
        yield c


def test_pages_serve_the_shell(client: TestClient) -> None:
    for path in PAGES:
        r = client.get(path)
        assert r.status_code == 200
        assert 'id="page-deliveries"' in r.text
        assert r.headers["cache-control"] == "private, no-cache"
    for path in ("/static/app.js", "/static/app.css", "/static/icon.svg", "/static/icon-192.png"):
        assert client.get(path).status_code == 200, path
    m = client.get("/manifest.webmanifest")
    assert m.headers["content-type"].startswith("application/manifest+json")
    man = m.json()
    assert man["display"] == "standalone" and any(i["sizes"] == "512x512" for i in man["icons"])
    sw = client.get("/sw.js")
    assert sw.status_code == 200 and "/api/" not in sw.text.split("SHELL")[1].split(";")[0]
    assert client.get("/nope").status_code == 404


def test_events_newest_first_with_keyset_pages(client: TestClient, port: MemoryPort) -> None:
    base = 1_700_000_000.0
    ids = [port.add_event("gate", "delivery", ts=base + i, photo=False)["id"] for i in range(7)]
    # Two events with the same time: the cursor must not skip or repeat either.
    ids.append(port.add_event("back-door", "pickup", ts=base + 3, photo=False)["id"])
    seen: list[str] = []
    url = "/api/events?limit=3"
    for _ in range(10):
        r = client.get(url)
        assert r.status_code == 200
        body = r.json()
        seen += [e["id"] for e in body["events"]]
        ts = [e["ts"] for e in body["events"]]
        assert ts == sorted(ts, reverse=True)
        if body["next"] is None:
            break
        url = "/api/events?limit=3&before=" + body["next"]
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))


def test_event_filters(client: TestClient, port: MemoryPort) -> None:
    port.add_event("gate", "delivery", ts=1000.0, photo=False)
    port.add_event("gate", "pickup", ts=2000.0, photo=False)
    port.add_event("back-door", "delivery", ts=3000.0, photo=False)

    def got(q):
        return [(e["device"], e["type"], e["ts"]) for e in client.get("/api/events?" + q).json()["events"]]

    assert got("device=gate") == [("gate", "pickup", 2000.0), ("gate", "delivery", 1000.0)]
    assert got("type=delivery") == [("back-door", "delivery", 3000.0), ("gate", "delivery", 1000.0)]
    assert got("since=1500&until=3000") == [("gate", "pickup", 2000.0)]


@pytest.mark.parametrize(
    "query,error",
    [
        ("device=Gate", "bad_device_id"),
        ("device=../etc", "bad_device_id"),
        ("type=explosion", "bad_type"),
        ("since=yesterday", "bad_since"),
        ("until=nan", "bad_until"),
        ("until=inf", "bad_until"),
        ("limit=0", "bad_limit"),
        ("limit=100000", "bad_limit"),
        ("limit=-1", "bad_limit"),
        ("before=abc", "bad_before"),
        ("before=12.5:../../x", "bad_before"),
        ("before=nan:aaaaaaaaaa", "bad_before"),
    ],
)
def test_event_query_validation(client: TestClient, query: str, error: str) -> None:
    r = client.get("/api/events?" + query)
    assert r.status_code == 400
    assert r.json()["error"] == error


def test_event_detail_and_photos(client: TestClient, port: MemoryPort) -> None:
    e = port.add_event("gate", "delivery")
    r = client.get(f"/api/events/gate/{e['id']}")
    assert r.status_code == 200
    body = r.json()
    assert body["photos"]["alert"] == f"/api/photos/gate/{e['id']}/alert"
    sizes = {}
    for variant in ("original", "alert", "thumb"):
        p = client.get(body["photos"][variant])
        assert p.status_code == 200 and p.headers["content-type"] == "image/jpeg"
        assert p.content[:2] == b"\xff\xd8"
        assert p.headers["cache-control"] == "private, no-cache"
        sizes[variant] = len(p.content)
    assert sizes["thumb"] < sizes["alert"] < sizes["original"]
    assert client.get(f"/api/events/gate/{'x' * 12}").status_code == 404
    assert client.get(f"/api/events/back-door/{e['id']}").status_code == 404
    no_photo = port.add_event("gate", "lid_closed", photo=False)
    assert client.get(f"/api/events/gate/{no_photo['id']}").json()["photos"] is None
    assert client.get(f"/api/photos/gate/{no_photo['id']}/thumb").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/api/photos/gate/..%2F..%2F..%2Fetc%2Fpasswd/original",
        "/api/photos/gate/%2E%2E/original",
        "/api/photos/gate/....../original",
        "/api/photos/..%2Fgate/aaaaaaaaaaaa/original",
        "/api/photos/gate/aaaaaaaaaaaa/..%2F..%2Fpasswd",
        "/api/photos/gate/aaaaaaaaaaaa/original.jpg",
        "/api/photos/GATE/aaaaaaaaaaaa/original",
        "/api/photos/gate/aaaa%00aaaaaaa/original",
        "/api/photos/gate/aaaaaaaaaaaa%2F..%2F..%2Fx/thumb",
        "/api/photos/gate/" + "a" * 41 + "/thumb",
        "/api/photos/gate/short/thumb",
        "/api/photos/gate/aaaaaaaaaaaa/thumb/../../../../etc/passwd",
        "/api/photos/%2Fetc/aaaaaaaaaaaa/thumb",
    ],
)
def test_photo_route_refuses_traversal_and_bad_ids(client: TestClient, port: MemoryPort, path: str) -> None:
    port.add_event("gate", "delivery", event_id="aaaaaaaaaaaa")
    calls: list[tuple] = []
    real = port.photo_path
    port.photo_path = lambda *a: calls.append(a) or real(*a)  # type: ignore[method-assign]
    r = client.get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert r.headers["content-type"] != "image/jpeg"
    assert b"root:" not in r.content
    # Bad ids never reach the port: the lookup is only ever made with valid ids.
    for dev, eid, variant in calls:
        assert (dev, eid, variant) == ("gate", "aaaaaaaaaaaa", variant) and variant in (
            "original",
            "alert",
            "thumb",
        )


def test_photo_route_serves_only_what_the_port_names(
    client: TestClient, port: MemoryPort, tmp_path: Path
) -> None:
    port.add_event("gate", "delivery", event_id="bbbbbbbbbbbb", photo=False)
    port.photo_path = lambda *a: tmp_path / "missing.jpg"  # type: ignore[method-assign]
    assert client.get("/api/photos/gate/bbbbbbbbbbbb/original").status_code == 404
    port.photo_path = lambda *a: tmp_path  # a directory is not a photo  # type: ignore[method-assign]
    assert client.get("/api/photos/gate/bbbbbbbbbbbb/original").status_code == 404


def test_devices_and_commands(client: TestClient, port: MemoryPort) -> None:
    devs = client.get("/api/devices").json()["devices"]
    assert [d["device"] for d in devs] == ["back-door", "gate"]
    r = client.post("/api/devices/gate/command", json={"cmd": "snapshot"}, headers=csrf_headers(client))
    assert r.status_code == 202
    cmd_id = r.json()["id"]
    assert port.commands[-1][:3] == (cmd_id, "gate", "snapshot")
    res = None
    for _ in range(500):  # bounded wait for the simulated box's answer
        res = client.get(f"/api/commands/{cmd_id}").json()
        if not res["pending"]:
            break
        time.sleep(0.01)
    assert res and res["ok"] is True and res["event"]
    snap = client.get(f"/api/events/gate/{res['event']}").json()
    assert snap["type"] == "snapshot" and snap["cmd"] == cmd_id


@pytest.mark.parametrize(
    "path,body,status,error",
    [
        ("/api/devices/gate/command", {"cmd": "config"}, 400, "bad_cmd"),
        ("/api/devices/gate/command", {"cmd": "dance"}, 400, "bad_cmd"),
        ("/api/devices/gate/command", {}, 400, "bad_cmd"),
        ("/api/devices/gate/command", ["snapshot"], 400, "bad_json"),
        ("/api/devices/nobody/command", {"cmd": "ping"}, 404, "not_found"),
        ("/api/devices/bad..id/command", {"cmd": "ping"}, 400, "bad_device_id"),
        ("/api/devices/-x/command", {"cmd": "ping"}, 400, "bad_device_id"),
    ],
)
def test_command_validation(client: TestClient, port: MemoryPort, path, body, status, error) -> None:
    r = client.post(path, content=json.dumps(body), headers=csrf_headers(client))
    assert (r.status_code, r.json()["error"]) == (status, error)
    assert port.commands == []


def test_command_body_size_and_json(client: TestClient, port: MemoryPort) -> None:
    h = csrf_headers(client)
    assert client.post("/api/devices/gate/command", content=b"{", headers=h).json()["error"] == "bad_json"
    big = json.dumps({"cmd": "ping", "pad": "x" * 20000})
    assert client.post("/api/devices/gate/command", content=big, headers=h).status_code == 413
    assert client.get("/api/commands/..%2Fx").status_code in (400, 404)
    assert client.get("/api/commands/short").json()["error"] == "bad_cmd_id"
    assert port.commands == []


def test_outbox_and_retry(client: TestClient, port: MemoryPort) -> None:
    failed = port.add_alert("gate", "failed", last_error="timeout talking to WhatsApp")
    sent = port.add_alert("gate", "sent")
    dead = port.add_alert("back-door", "dead", last_error="recipient not on WhatsApp")
    rows = client.get("/api/outbox").json()["alerts"]
    assert {a["id"] for a in rows} == {failed["id"], sent["id"], dead["id"]}
    assert [a["id"] for a in client.get("/api/outbox?state=failed").json()["alerts"]] == [failed["id"]]
    assert client.get("/api/outbox?state=lost").json()["error"] == "bad_state"
    h = csrf_headers(client)
    assert client.post(f"/api/outbox/{failed['id']}/retry", headers=h).json() == {
        "ok": True,
        "id": failed["id"],
    }
    assert port.outbox[failed["id"]]["state"] == "pending"
    assert client.post(f"/api/outbox/{dead['id']}/retry", headers=h).status_code == 200
    r = client.post(f"/api/outbox/{sent['id']}/retry", headers=h)
    assert (r.status_code, r.json()["error"]) == (409, "not_retryable")
    assert client.post("/api/outbox/a.b/retry", headers=h).json()["error"] == "bad_alert_id"
    assert client.post("/api/outbox/" + "a" * 201 + "/retry", headers=h).json()["error"] == "bad_alert_id"
    # Real alert ids are long (device_event-id_notifier_hash): accepted.
    long_id = "back-door_" + "f" * 40 + "_whatsapp_0a1b2c3d"
    assert client.post(f"/api/outbox/{long_id}/retry", headers=h).json()["error"] == "not_retryable"


def test_health(client: TestClient, port: MemoryPort) -> None:
    port.add_alert("gate", "failed")
    h = client.get("/api/health").json()
    assert h["alerts"]["failed"] == 1 and "uptime_s" in h
    assert h["web"]["login_required"] is False


def test_whatsapp_state_qr_and_actions(client: TestClient, port: MemoryPort) -> None:
    assert client.get("/api/whatsapp.svg").status_code == 404
    assert client.get("/api/whatsapp/qr.svg").status_code == 404  # no QR while not pairing
    port.set_whatsapp(state="pairing", detail="Scan the code", qr="2@AbCdEf,GhIjKl,MnOpQr==,StUv")
    wa = client.get("/api/whatsapp").json()
    assert "qr" not in wa and wa["state"] == "pairing" and wa["qr_url"].startswith("/api/whatsapp/qr.svg?v=")
    svg = client.get(wa["qr_url"])
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.startswith("<svg") and 'xmlns="http://www.w3.org/2000/svg"' in svg.text
    port.set_whatsapp(state="pairing", qr="2@another,rotation")
    assert client.get("/api/whatsapp").json()["qr_version"] != wa["qr_version"]

    h = csrf_headers(client)
    r = client.post("/api/whatsapp/pair-code", json={"phone": "+62 812-3456-7890"}, headers=h)
    assert r.json()["pair_code"] == "ABCD-EFGH" and port.wa_calls[-1] == ("pair_code", "6281234567890")
    assert (
        client.post("/api/whatsapp/pair-code", json={"phone": "call me"}, headers=h).json()["error"]
        == "bad_phone"
    )
    assert client.post("/api/whatsapp/test", json={}, headers=h).json() == {"ok": True}
    assert client.post("/api/whatsapp/test", json={"recipient": 5}, headers=h).status_code == 400
    assert client.post("/api/whatsapp/unlink", headers=h).json() == {"ok": True}
    assert port.wa_calls[-1] == ("unlink", None)


def test_whatsapp_actions_missing_on_the_port(tmp_path: Path) -> None:
    class Minimal(MemoryPort):
        whatsapp_pair_code = None  # type: ignore[assignment]
        whatsapp_test_message = None  # type: ignore[assignment]
        whatsapp_unlink = None  # type: ignore[assignment]

    with TestClient(create_app(Minimal(tmp_path), WebSettings()), base_url=LOCAL_BASE) as c:
        prime(c)
        assert c.get("/api/whatsapp").json()["actions"] == {
            "pair_code": False,
            "test_message": False,
            "unlink": False,
        }
        r = c.post("/api/whatsapp/unlink", headers=csrf_headers(c))
        assert (r.status_code, r.json()["error"]) == (501, "not_available")


def test_port_failure_is_a_clean_500(client: TestClient, port: MemoryPort, caplog) -> None:
    def broken(**kw):
        raise OSError("disk gone")

    port.list_events = broken  # type: ignore[method-assign]
    with TestClient(client.app, base_url=LOCAL_BASE, raise_server_exceptions=False) as c:
        r = c.get("/api/events")
    assert r.status_code == 500 and r.json()["error"] == "internal"
    assert "disk gone" in caplog.text


def test_openapi_documents_every_api_route(client: TestClient) -> None:
    served = client.get("/api/openapi.json").json()
    assert served == json.loads(json.dumps(OPENAPI))
    routes = [r for r in client.app.routes if isinstance(r, Route) and r.path.startswith("/api/")]
    assert routes
    for r in routes:
        assert r.path in served["paths"], r.path
        documented = set(served["paths"][r.path])
        assert documented == {m.lower() for m in r.methods if m != "HEAD"}, r.path
    assert set(served["paths"]) == {r.path for r in routes}


def test_unknown_host_refused_on_loopback(client: TestClient) -> None:
    # A DNS-rebinding page reaches 127.0.0.1 under its own name: refuse that Host.
    r = client.get("/api/events", headers={"host": "evil.example:8080"})
    assert r.status_code == 400 and r.json()["error"] == "bad_host"
    assert client.get("/api/events", headers={"host": "localhost:8080"}).status_code == 200
    assert client.get("/api/events", headers={"host": "[::1]:8080"}).status_code == 200


def test_openapi_has_every_field_of_every_record(client: TestClient, port: MemoryPort) -> None:
    """Issue 17: the hand-written schemas had lost `photo_dropped`; they are generated from
    gateway/ports.py now, so every field of every record appears, with its required keys."""
    from typing import get_type_hints

    from gateway.ports import DeviceRecord, EventRecord, OutboxRecord, WhatsAppState

    schemas = client.get("/api/openapi.json").json()["components"]["schemas"]
    records = {"Event": EventRecord, "Device": DeviceRecord, "Alert": OutboxRecord, "WhatsApp": WhatsAppState}
    for name, record in records.items():
        served_as_image = {"qr"} if name == "WhatsApp" else set()
        missing = set(get_type_hints(record)) - served_as_image - set(schemas[name]["properties"])
        assert missing == set(), name
    assert schemas["Event"]["properties"]["photo_dropped"] == {"type": "boolean"}
    assert "photo_dropped" not in schemas["Event"]["required"]  # NotRequired: only when the box dropped it
    assert schemas["Event"]["properties"]["photo"]["properties"]["width"] == {"type": ["integer", "null"]}
    # And what the API serves is what the document describes.
    port.add_event("gate", "delivery", event_id="dropped00001", photo=False)
    port._by_id[("gate", "dropped00001")]["photo_dropped"] = True
    for path, key, name in (("/api/events", "events", "Event"), ("/api/devices", "devices", "Device")):
        for row in client.get(path).json()[key]:
            assert set(row) <= set(schemas[name]["properties"]), (
                name,
                set(row) - set(schemas[name]["properties"]),
            )
            assert set(schemas[name].get("required", [])) <= set(row), name
