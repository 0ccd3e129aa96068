"""The dashboard's firmware view and Update button: `GET /api/firmware`, `POST /api/devices/<id>/update`.

The port is the in-memory gateway of tests/support/web.py, whose two OTA methods are the service's
own functions (gateway/ota/offers.py) over a real `<data>/ota` folder: the offer written here is the
file the running gateway publishes, the one `parcelbox device update` writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.ota import pending
from gateway.web import WebSettings, create_app
from tests.support.web import CHECKOUT, LOCAL_BASE, OLD_SET, MemoryPort, csrf_headers, prime


@pytest.fixture
def port(tmp_path: Path) -> MemoryPort:
    p = MemoryPort(tmp_path / "photos", answer_delay=0.01)
    p.add_device("gate", "Front gate", fw="1.0.0", ota_set=OLD_SET)
    p.add_device("current", fw="1.1.0", ota_set=CHECKOUT.set_sha)
    p.add_device("tiny", fw="1.0.0", ota_set=OLD_SET, flash_free=20_000)
    p.add_device("old", fw="0.9.0")  # from before over-the-air updates: no set reported
    return p


@pytest.fixture
def client(port: MemoryPort):
    with TestClient(create_app(port, WebSettings()), base_url=LOCAL_BASE) as c:
        prime(c)
        yield c


def firmware(client: TestClient) -> dict[str, dict]:
    r = client.get("/api/firmware")
    assert r.status_code == 200
    return {d["device"]: d for d in r.json()["devices"]}


def test_firmware_says_which_boxes_can_be_updated(client: TestClient) -> None:
    fw = firmware(client)
    assert fw["gate"]["update_available"] is True and fw["gate"]["latest_version"] == "1.1.0"
    assert fw["current"]["update_available"] is False
    assert fw["old"]["update_available"] is None  # needs USB once
    assert all(d["update"] is None for d in fw.values())


def test_update_creates_the_offer_and_shows_progress(client: TestClient, port: MemoryPort) -> None:
    r = client.post("/api/devices/gate/update", headers=csrf_headers(client))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["device"] == "gate" and body["version"] == "1.1.0" and body["from"] == "1.0.0"
    offer = pending.read_offer(port.ota_root, "gate")
    assert offer is not None and offer["id"] == body["id"] and offer["set"] == CHECKOUT.set_sha
    # Every file of the set is on disk for the gateway to serve.
    assert all(pending.file_bytes(port.ota_root, "gate", f.sha256) == f.data for f in CHECKOUT.files)
    assert firmware(client)["gate"]["update"] == {
        "id": body["id"], "version": "1.1.0", "state": "queued", "percent": 0, "reason": None, "active": True,
    }  # fmt: skip
    port.ota_progress("gate", "receiving", 0.4)
    assert firmware(client)["gate"]["update"]["percent"] == 40
    # While it is on its way a second press is refused, not a second offer.
    again = client.post("/api/devices/gate/update", headers=csrf_headers(client))
    assert again.status_code == 409 and "already on its way" in again.json()["detail"]
    assert pending.read_offer(port.ota_root, "gate")["id"] == body["id"]


@pytest.mark.parametrize(
    ("device", "status", "error", "detail"),
    [
        ("tiny", 409, "refused", "KB of flash free"),  # the set would not fit
        ("old", 409, "refused", "has not reported a firmware that updates over the air"),
        ("current", 409, "refused", "already runs this firmware"),
        ("nobody", 404, "not_found", "no such box"),
        ("Bad_Id", 400, None, None),
    ],
)
def test_update_refusals(client: TestClient, port: MemoryPort, device, status, error, detail) -> None:
    r = client.post(f"/api/devices/{device}/update", headers=csrf_headers(client))
    assert r.status_code == status, r.text
    if error:
        assert r.json()["error"] == error and detail in r.json()["detail"]
    assert not (port.ota_root / device).exists() or pending.read_offer(port.ota_root, device) is None


def test_update_needs_the_csrf_token(client: TestClient, port: MemoryPort) -> None:
    r = client.post("/api/devices/gate/update")
    assert r.status_code == 403 and r.json()["error"] == "csrf"
    r = client.post(
        "/api/devices/gate/update", headers={**csrf_headers(client), "origin": "http://evil.example"}
    )
    assert r.status_code == 403
    assert pending.read_offer(port.ota_root, "gate") is None
    # ...and with the token the same request goes through.
    assert client.post("/api/devices/gate/update", headers=csrf_headers(client)).status_code == 202


def test_update_refuses_a_body_that_is_not_json(client: TestClient, port: MemoryPort) -> None:
    r = client.post("/api/devices/gate/update", content=b"{nope", headers=csrf_headers(client))
    assert r.status_code == 400
    assert pending.read_offer(port.ota_root, "gate") is None
