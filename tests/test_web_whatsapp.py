"""The dashboard's WhatsApp panel against the real WhatsApp component (spawned child process,
supervisor, session lock), with only WhatsApp's servers faked (gateway.whatsapp.fake)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from starlette.testclient import TestClient

from gateway.web import WebSettings, create_app
from gateway.web.whatsapp_actions import WhatsAppActions
from gateway.whatsapp.component import WhatsAppComponent
from tests.support.web import LOCAL_BASE, MemoryPort, csrf_headers, prime
from tests.support.whatsapp import FakeWhatsApp, fake_settings, wait_until


@pytest.fixture
def setup(tmp_path: Path):
    port = MemoryPort(tmp_path / "photos")
    settings = fake_settings(tmp_path, recipients=["+6281234567890"])
    fake = FakeWhatsApp(settings.fake_dir)
    fake.script(qr_codes=["2@web-qr-1", "2@web-qr-2", "2@web-qr-3", "2@web-qr-4"], qr_interval_s=0.5)
    comp = WhatsAppComponent(port, settings)
    service = SimpleNamespace(components=[comp])
    app = create_app(port, WebSettings(), whatsapp=WhatsAppActions.for_service(service))
    comp.start()
    try:
        with TestClient(app, base_url=LOCAL_BASE) as c:
            prime(c)
            yield c, port, fake, comp
    finally:
        comp.stop()


def test_pairing_qr_code_test_message_and_unlink(setup) -> None:
    c, port, fake, comp = setup
    wa = wait_until(
        lambda: (w := c.get("/api/whatsapp").json())["state"] == "pairing" and w["qr_url"] and w, what="a QR"
    )
    assert wa["actions"] == {"pair_code": True, "test_message": True, "unlink": True}
    svg = c.get(wa["qr_url"])
    assert svg.status_code == 200 and svg.text.startswith("<svg")
    # The QR rotates: a new version appears.
    wait_until(
        lambda: c.get("/api/whatsapp").json()["qr_version"] not in (None, wa["qr_version"]), what="rotation"
    )

    h = csrf_headers(c)
    r = c.post("/api/whatsapp/pair-code", json={"phone": "+62 811 0000 0000"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["pair_code"] == "FAKE-C0DE"
    assert fake.pair_requests()[-1]["phone"] == "6281100000000"

    # Not linked yet: a test message cannot go out, and says why.
    r = c.post("/api/whatsapp/test", json={}, headers=h)
    assert r.status_code == 502 and r.json()["error"] == "whatsapp_failed"

    fake.inject("scan")
    wait_until(lambda: c.get("/api/whatsapp").json()["state"] == "connected", what="connected")
    wa = c.get("/api/whatsapp").json()
    assert wa["paired_as"] and wa["qr_url"] is None
    r = c.post("/api/whatsapp/pair-code", json={"phone": "+6281100000000"}, headers=h)
    assert r.status_code == 502 and "already linked" in r.json()["detail"]

    r = c.post("/api/whatsapp/test", json={}, headers=h)
    assert r.status_code == 200, r.text
    # Not a configured recipient: the dashboard asks first (the button sends from the owner's account).
    r = c.post("/api/whatsapp/test", json={"recipient": "+62 812 9999 0000"}, headers=h)
    assert (r.status_code, r.json()["error"]) == (409, "confirm_needed") and len(fake.sent()) == 1
    r = c.post("/api/whatsapp/test", json={"recipient": "+62 812 9999 0000", "confirm": True}, headers=h)
    assert r.status_code == 200, r.text
    r = c.post("/api/whatsapp/test", json={"recipient": "6281234567890@s.whatsapp.net"}, headers=h)
    assert r.status_code == 200, r.text  # a configured one, however it is written
    assert [m["to"] for m in fake.sent()] == [
        "6281234567890@s.whatsapp.net",
        "6281299990000@s.whatsapp.net",
        "6281234567890@s.whatsapp.net",
    ]
    assert "test message" in fake.sent()[0]["text"]
    r = c.post("/api/whatsapp/test", json={"recipient": "0812 local"}, headers=h)
    assert r.status_code == 502 and "international" in r.json()["detail"]

    r = c.post("/api/whatsapp/unlink", headers=h)
    assert r.status_code == 200 and r.json()["ok"] is True
    wait_until(lambda: fake.logouts(), what="logout at WhatsApp")
    wait_until(
        lambda: c.get("/api/whatsapp").json()["state"] in ("pairing", "not_paired"), what="back to pairing"
    )
    assert not (comp.settings.session_dir / "fake-session.json").exists()


def test_test_messages_are_rate_limited(setup) -> None:
    """31 test messages in 2 s once went out to an arbitrary number; now at most 3 to one recipient
    and 5 in all per 10 minutes (gateway/ratelimit.py), the rest refused with Retry-After."""
    c, port, fake, comp = setup
    fake.inject("scan")
    wait_until(lambda: c.get("/api/whatsapp").json()["state"] == "connected", what="connected")
    h = csrf_headers(c)
    codes = [c.post("/api/whatsapp/test", json={}, headers=h).status_code for _ in range(31)]
    assert codes == [200] * 3 + [429] * 28
    stranger = {"recipient": "+62 812 7777 0000", "confirm": True}
    codes = [c.post("/api/whatsapp/test", json=stranger, headers=h) for _ in range(31)]
    assert [r.status_code for r in codes] == [200] * 2 + [429] * 29
    assert int(codes[-1].headers["retry-after"]) > 0 and codes[-1].json()["error"] == "rate_limited"
    assert len(fake.sent()) == 5


def test_every_spelling_of_one_number_shares_its_test_message_window(setup) -> None:
    """The limiter cleaned numbers with its own regex, which kept '.': '+62.812.7777.0000' and the
    JID '...@s.whatsapp.net' each got a fresh window of 3 for one person. Now keyed by `to_jid`."""
    c, port, fake, comp = setup
    fake.inject("scan")
    wait_until(lambda: c.get("/api/whatsapp").json()["state"] == "connected", what="connected")
    h = csrf_headers(c)
    spellings = ["+62 812 7777 0000", "+62.812.7777.0000", "6281277770000@s.whatsapp.net", "6281277770000"]
    codes = [
        c.post("/api/whatsapp/test", json={"recipient": r, "confirm": True}, headers=h).status_code
        for r in spellings
    ]
    assert codes == [200] * 3 + [429]
    assert [m["to"] for m in fake.sent()] == ["6281277770000@s.whatsapp.net"] * 3


def test_a_stranger_not_on_whatsapp_gets_no_test_message(setup) -> None:
    """A number outside the recipients is looked up before the test message goes to it: a send to a
    non-user fails at WhatsApp anyway, and each one is a look-up (a ban signal)."""
    c, port, fake, comp = setup
    fake.script(not_on_whatsapp=["6281266660000"])
    fake.inject("scan")
    wait_until(lambda: c.get("/api/whatsapp").json()["state"] == "connected", what="connected")
    h = csrf_headers(c)
    r = c.post("/api/whatsapp/test", json={"recipient": "+62 812 6666 0000", "confirm": True}, headers=h)
    assert r.status_code == 502 and "not on WhatsApp" in r.json()["detail"], r.text
    assert fake.sent() == []
    r = c.post("/api/whatsapp/test", json={"recipient": "+62 812 5555 0000", "confirm": True}, headers=h)
    assert r.status_code == 200, r.text
    assert [m["to"] for m in fake.sent()] == ["6281255550000@s.whatsapp.net"]


def test_whatsapp_off_means_no_actions(tmp_path: Path) -> None:
    port = MemoryPort(tmp_path)
    app = create_app(
        port, WebSettings(), whatsapp=WhatsAppActions.for_service(SimpleNamespace(components=[]))
    )
    with TestClient(app, base_url=LOCAL_BASE) as c:
        prime(c)
        # The in-memory port has its own optional methods; the gateway's WhatsApp component is absent,
        # so those are what the buttons use.
        assert c.get("/api/whatsapp").json()["actions"]["unlink"] is True

    class Bare(MemoryPort):
        whatsapp_pair_code = None  # type: ignore[assignment]
        whatsapp_test_message = None  # type: ignore[assignment]
        whatsapp_unlink = None  # type: ignore[assignment]

    app = create_app(
        Bare(tmp_path), WebSettings(), whatsapp=WhatsAppActions.for_service(SimpleNamespace(components=[]))
    )
    with TestClient(app, base_url=LOCAL_BASE) as c:
        prime(c)
        assert c.get("/api/whatsapp").json()["actions"] == {
            "pair_code": False,
            "test_message": False,
            "unlink": False,
        }
        r = c.post("/api/whatsapp/test", json={}, headers=csrf_headers(c))
        assert r.status_code == 501
