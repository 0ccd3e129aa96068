"""The send API (POST /api/notify, GET /api/alerts/<id>) and its tokens, on the real gateway core:
real broker, store and outbox, real sinks against real HTTP servers on loopback, the real web app.

A client "beyond loopback" is the app seen from 192.168.1.50 (Starlette's TestClient `client=`);
the Host header stays a loopback name, as through a port forward."""

from __future__ import annotations

import base64
import io
import json
import stat
from types import SimpleNamespace

import pytest
from PIL import Image
from starlette.testclient import TestClient

from gateway.app import build_notifiers
from gateway.notify.apprise import recipient_id
from gateway.sendapi import MAX_PHOTO_BYTES, BadRequest, parse_json, parse_multipart
from gateway.sendqueue import API_PHOTO_DIR
from gateway.service import GatewayService
from gateway.web import WebSettings, create_app
from gateway.web.cli import token_command
from gateway.web.tokens import TokenStore, scope_allows
from tests.support.gateway_core import gateway_config, make_jpeg, wait_for
from tests.support.servers import HttpSink
from tests.support.web import LOCAL_BASE, csrf_headers, prime

PHOTO = make_jpeg(640, 480, seed=9)
LAN = ("192.168.1.50", 5555)
LOOPBACK = ("127.0.0.1", 5555)


@pytest.fixture
def hook():
    s = HttpSink().start()
    yield s
    s.stop()


@pytest.fixture
def gw(tmp_path, mosquitto, prefix, hook):
    cfg = gateway_config(
        tmp_path / "data",
        mosquitto.url,
        prefix,
        PARCELBOX_NOTIFY_WEBHOOK_URL=f"http://127.0.0.1:{hook.port}/hook",
        PARCELBOX_OUTBOX_BACKOFF_INITIAL_S="0.2",
        PARCELBOX_OUTBOX_BACKOFF_MAX_S="1",
    )
    cfg.notify.apprise.urls = [f"json://127.0.0.1:{hook.port}/apprise", f"json://127.0.0.1:{hook.port}/gone"]
    hook.statuses["/gone"] = [404]
    svc = GatewayService(cfg)
    for n in build_notifiers(cfg):
        svc.add_notifier(n)
    svc.start()
    settings = WebSettings.from_config({"host": "127.0.0.1", "api_rate_per_minute": 1000}, cfg.data_dir)
    tokens = TokenStore(settings.tokens_file)
    app = create_app(svc, settings, tokens=tokens)
    yield SimpleNamespace(svc=svc, app=app, tokens=tokens, settings=settings, hook=hook)
    svc.stop()


def client(gw, addr=LAN, token: str | None = None) -> TestClient:
    c = TestClient(gw.app, base_url=LOCAL_BASE, client=addr)
    if token:
        c.headers["authorization"] = f"Bearer {token}"
    return c


def counts(gw) -> dict:
    return dict(gw.svc.store.outbox_counts())


def api_photos(gw) -> list:
    d = gw.svc.data_dir / API_PHOTO_DIR
    return sorted(d.iterdir()) if d.exists() else []


def settled(c: TestClient, alert_id: str) -> dict:
    return wait_for(
        lambda: (s := c.get(f"/api/alerts/{alert_id}").json())["state"] != "pending" and s,
        what=f"{alert_id} settled",
    )


# --- tokens ------------------------------------------------------------------------------------


def test_token_commands_store_only_a_hash_in_a_private_file(tmp_path, capsys):
    store = TokenStore(tmp_path / "web" / "tokens.json")
    assert token_command(store, "create", SimpleNamespace(name="homeassistant", scope="send")) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("pbx_") and len(token) > 40
    raw = store.path.read_text()
    assert token not in raw and "homeassistant" in raw
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.check(token).scope == "send"
    assert token_command(store, "create", SimpleNamespace(name="homeassistant", scope="read")) == 1  # taken
    assert token_command(store, "create", SimpleNamespace(name="../x", scope="read")) == 1
    assert token_command(store, "list", SimpleNamespace()) == 0
    listed = capsys.readouterr().out
    assert "homeassistant" in listed and "active" in listed and token not in listed
    assert token_command(store, "revoke", SimpleNamespace(name="homeassistant")) == 0
    assert store.check(token) is None
    assert token_command(store, "revoke", SimpleNamespace(name="homeassistant")) == 1
    # A second reader of the same file (the running gateway) sees the revocation at once.
    assert TokenStore(store.path).check(token) is None
    store.path.write_text("{not json")
    assert TokenStore(store.path).check(token) is None  # unreadable file: fail closed


def test_scopes():
    assert scope_allows("send", "POST", "/api/notify") and scope_allows("send", "GET", "/api/alerts/msg0_x")
    assert not scope_allows("send", "GET", "/api/events")
    assert not scope_allows("send", "GET", "/api/alerts/box1_e1_whatsapp_x")  # box alerts: read scope
    assert scope_allows("read", "GET", "/api/events") and scope_allows("read", "GET", "/api/alerts/x")
    assert not scope_allows("read", "POST", "/api/notify") and not scope_allows(
        "read", "POST", "/api/outbox/x/retry"
    )


# --- auth ---------------------------------------------------------------------------------------


def test_beyond_loopback_only_a_token_of_the_right_scope_sends(gw):
    send = gw.tokens.create("doorbell", "send")
    read = gw.tokens.create("grafana", "read")
    before = counts(gw)
    body = {"text": "hello", "sinks": ["folder"]}

    r = client(gw).post("/api/notify", json=body)
    assert r.status_code == 401 and r.json()["error"] == "token_required"
    r = client(gw, token="pbx_" + "A" * 43).post("/api/notify", json=body)
    assert r.status_code == 401 and r.json()["error"] == "bad_token"
    r = client(gw, token=read).post("/api/notify", json=body)
    assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
    assert client(gw, token=send).get("/api/events").status_code == 403  # send scope reads nothing else
    assert client(gw, token=read).get("/api/events").status_code == 200
    assert counts(gw) == before  # nothing queued by any refused request

    r = client(gw, token=send).post("/api/notify", json=body)
    assert r.status_code == 202, r.text
    [aid] = r.json()["alerts"]
    assert settled(client(gw, token=read), aid)["state"] == "sent"

    gw.tokens.revoke("doorbell")
    r = client(gw, token=send).post("/api/notify", json=body)
    assert r.status_code == 401 and r.json()["error"] == "bad_token"


def test_on_loopback_the_dashboard_session_and_csrf_work_without_a_token(gw):
    c = client(gw, LOOPBACK)
    r = c.post("/api/notify", json={"text": "from the dashboard", "sinks": ["folder"]})
    assert r.status_code == 403 and r.json()["error"] == "csrf"  # a hostile page in the same browser
    prime(c)
    r = c.post(
        "/api/notify", json={"text": "from the dashboard", "sinks": ["folder"]}, headers=csrf_headers(c)
    )
    assert r.status_code == 202


def test_rate_limited_per_token(gw):
    gw.app.state.guard_holder.clear()
    settings = WebSettings.from_config({"host": "127.0.0.1", "api_rate_per_minute": 2}, gw.svc.data_dir)
    gw.app = create_app(gw.svc, settings, tokens=gw.tokens)
    a, b = gw.tokens.create("a", "send"), gw.tokens.create("b", "send")
    body = {"text": "x", "sinks": ["folder"]}
    assert [client(gw, token=a).post("/api/notify", json=body).status_code for _ in range(2)] == [202, 202]
    r = client(gw, token=a).post("/api/notify", json=body)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert client(gw, token=b).post("/api/notify", json=body).status_code == 202  # per token


# --- bad input: a clear 4xx and nothing queued ------------------------------------------------------


def multipart(fields: dict, photo: bytes | None = None) -> tuple[bytes, str]:
    boundary = "pbxtestboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    if photo is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="p.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
            + photo
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    "body,error",
    [
        ({"text": 5}, "bad_text"),
        ({"text": ""}, "bad_text"),
        ({"text": "x" * 5000}, "bad_text"),
        ({"text": "x", "sinks": "whatsapp"}, "unknown_sink"),  # not configured here
        ({"text": "x", "sinks": ["telegram"]}, "unknown_sink"),
        ({"text": "x", "sinks": [1]}, "bad_sinks"),
        ({"text": "x", "sinks": []}, "bad_sinks"),
        ({"text": "x", "sinks": ["all", "folder"]}, "bad_sinks"),
        ({"text": "x", "box": "../etc"}, "bad_box"),
        ({"text": "x", "title": ["t"]}, "bad_title"),
        ({"text": "x", "photo_base64": "AAAA"}, "unknown_field"),
        (["text"], "bad_json"),
    ],
)
def test_bad_json_input_is_refused_and_nothing_queued(gw, body, error):
    token = gw.tokens.create("t", "send")
    before = counts(gw)
    r = client(gw, token=token).post("/api/notify", json=body)
    assert r.status_code == 400 and r.json()["error"] == error, r.text
    assert counts(gw) == before


def test_bad_photos_and_bodies_are_refused_and_nothing_queued(gw):
    c = client(gw, token=gw.tokens.create("t", "send"))
    before = counts(gw)

    def post(data: bytes, ctype: str):
        return c.post("/api/notify", content=data, headers={"content-type": ctype})

    r = post(*multipart({"text": "x"}, b"\xff\xd8\xff\xe0 not really a jpeg" * 10))
    assert r.status_code == 400 and r.json()["error"] == "bad_photo"
    r = post(*multipart({"text": "x"}, b"\xff\xd8" + b"\0" * MAX_PHOTO_BYTES))  # fits the body, not the photo
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    r = post(*multipart({"text": "x"}, b"\xff\xd8" + b"\0" * (MAX_PHOTO_BYTES + 70_000)))  # over the body cap
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    r = post(*multipart({"text": "x", "sinks": "nosuch"}, PHOTO))
    assert r.status_code == 400 and r.json()["error"] == "unknown_sink"
    r = post(*multipart({"text": "x", "colour": "red"}))
    assert r.status_code == 400 and r.json()["error"] == "unknown_field"
    r = post(b"text=hello", "application/x-www-form-urlencoded")
    assert r.status_code == 400 and r.json()["error"] == "bad_content_type"
    r = post(b"--x\r\n\r\n--x--", "multipart/form-data")
    assert r.status_code == 400 and r.json()["error"] == "bad_multipart"
    # Other routes keep their small limit: the photo allowance is the send API's alone.
    r = c.post(
        "/api/devices/box1/command", content=b"x" * 20_000, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert counts(gw) == before and api_photos(gw) == []


def test_parsers_are_pure():
    assert parse_json(b'{"text": " hi ", "sinks": ["whatsapp", "whatsapp"]}').sinks == ("whatsapp",)
    body, ctype = multipart({"text": "hi", "sinks": "apprise, webhook", "box": "front"}, b"jpeg")
    req = parse_multipart(ctype, body)
    assert (req.text, req.sinks, req.box, req.photo) == ("hi", ("apprise", "webhook"), "front", b"jpeg")
    with pytest.raises(BadRequest):
        parse_multipart(ctype, body.replace(b'name="text"', b'name="photo"'))  # two photos


# --- what it sends, and the state it reports -----------------------------------------------------------


def test_a_message_with_a_photo_reaches_every_sink_and_reports_its_state(gw):
    c = client(gw, token=gw.tokens.create("ha", "send"))
    data, ctype = multipart({"text": "Doorbell rang", "title": "Front door"}, PHOTO)
    r = c.post("/api/notify", content=data, headers={"content-type": ctype})
    assert r.status_code == 202, r.text
    doc = r.json()
    assert set(doc["sinks"]) == {"folder", "webhook", "apprise"}
    assert len(doc["alerts"]) == 4  # folder, webhook, two apprise URLs
    states = {a: settled(c, a) for a in doc["alerts"]}
    by_sink = {}
    for s in states.values():
        by_sink.setdefault(s["sink"], []).append(s)
    assert by_sink["folder"][0]["state"] == "sent" and by_sink["webhook"][0]["state"] == "sent"
    apprise = {s["recipient"]: s for s in by_sink["apprise"]}
    ok_id = recipient_id(f"json://127.0.0.1:{gw.hook.port}/apprise")
    gone_id = recipient_id(f"json://127.0.0.1:{gw.hook.port}/gone")
    assert apprise[ok_id]["state"] == "sent"
    assert apprise[gone_id]["state"] == "failed" and "HTTP 404" in apprise[gone_id]["error"]

    # The photo everywhere is the validated alert copy: a real JPEG, no larger than configured.
    folder_alert = by_sink["folder"][0]["id"]
    jpg = (gw.svc.config.folder_sink_path / f"{folder_alert}.jpg").read_bytes()
    assert Image.open(io.BytesIO(jpg)).format == "JPEG"
    [hook_req] = gw.hook.wait_for("/hook")
    hook_doc = json.loads(hook_req.body)
    assert hook_doc["kind"] == "message" and hook_doc["caption"] == "Front door\nDoorbell rang"
    assert base64.b64decode(hook_doc["photo_jpeg_base64"]) == jpg
    [ap_req] = gw.hook.wait_for("/apprise")
    assert base64.b64decode(json.loads(ap_req.body)["attachments"][0]["base64"]) == jpg

    assert c.get("/api/alerts/msgnope_nope").status_code == 404
    assert c.get("/api/alerts/nope_nope").status_code == 403  # not a send-API message: read scope only
    assert c.get("/api/alerts/msg..%2F..%2Fetc").status_code in (400, 404)


def test_openapi_lists_the_send_api(gw):
    doc = client(gw, LOOPBACK).get("/api/openapi.json").json()
    assert "post" in doc["paths"]["/api/notify"] and "get" in doc["paths"]["/api/alerts/{alert_id}"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_whatsapp_message_through_the_api_reports_delivered_from_the_receipt(tmp_path, mosquitto, prefix):
    """The one WhatsApp session, used by another automation: sent, then delivered when the phone says so."""
    from gateway.whatsapp.component import WhatsAppComponent
    from tests.support.whatsapp import FakeWhatsApp, fake_settings, pair_fake, wait_state

    owner = "+62 812-3456-789"
    cfg = gateway_config(tmp_path / "data", mosquitto.url, prefix, PARCELBOX_NOTIFY_FOLDER_ENABLED="false")
    settings = fake_settings(tmp_path, recipients=[owner], rate_per_minute=1000, rate_per_minute_overall=1000)
    fake = FakeWhatsApp(settings.fake_dir)
    pair_fake(settings)
    svc = GatewayService(cfg)
    comp = WhatsAppComponent(svc, settings)
    svc.add_notifier(comp.notifier)
    svc.add_component(comp)
    svc.start()
    try:
        wait_state(comp.supervisor, "connected")
        web = WebSettings.from_config({"host": "127.0.0.1"}, cfg.data_dir)
        tokens = TokenStore(web.tokens_file)
        c = TestClient(create_app(svc, web, tokens=tokens), base_url=LOCAL_BASE, client=LAN)
        c.headers["authorization"] = f"Bearer {tokens.create('ha', 'send')}"
        data, ctype = multipart({"text": "Washing machine finished", "sinks": "whatsapp"}, PHOTO)
        r = c.post("/api/notify", content=data, headers={"content-type": ctype})
        assert r.status_code == 202, r.text
        [aid] = r.json()["alerts"]
        [sent] = wait_for(lambda: fake.sent(), what="the message on WhatsApp")
        assert "Washing machine finished" in json.dumps(sent)
        assert settled(c, aid)["state"] == "sent"
        fake.inject("receipt", id=sent["id"], type="DELIVERED")
        wait_for(lambda: c.get(f"/api/alerts/{aid}").json()["state"] == "delivered", what="delivered")
    finally:
        svc.stop()


def test_dashboard_lists_each_apprise_url_by_id_and_sends_a_test_to_one(gw):
    c = client(gw, LOOPBACK)
    prime(c)
    ok_id = recipient_id(f"json://127.0.0.1:{gw.hook.port}/apprise")
    gone_id = recipient_id(f"json://127.0.0.1:{gw.hook.port}/gone")
    r = c.get("/api/channels")
    assert r.status_code == 200
    assert str(gw.hook.port) not in r.text  # the URLs never leave the gateway
    assert {ch["id"] for ch in r.json()["channels"]} == {ok_id, gone_id}

    r = c.post(f"/api/channels/apprise/{gone_id}/test", headers=csrf_headers(c))
    assert r.status_code == 202, r.text
    [aid] = r.json()["alerts"]
    assert settled(c, aid)["state"] == "failed"  # 404 from that service: dead at once, reason kept
    r = c.post(f"/api/channels/apprise/{ok_id}/test", headers=csrf_headers(c))
    [aid] = r.json()["alerts"]
    assert settled(c, aid)["state"] == "sent"
    [req] = gw.hook.wait_for("/apprise")
    assert "test message" in json.loads(req.body)["message"]
    assert gw.hook.to("/gone") and len(gw.hook.to("/apprise")) == 1  # each test reached its own URL only

    chans = {ch["id"]: ch for ch in c.get("/api/channels").json()["channels"]}
    assert (
        chans[gone_id]["last_alert"]["state"] == "dead"
        and "HTTP 404" in chans[gone_id]["last_alert"]["last_error"]
    )
    assert chans[ok_id]["recent"]["sent"] == 1
    assert c.post("/api/channels/apprise/tgram-0000000000/test", headers=csrf_headers(c)).status_code == 404
    assert c.post(f"/api/channels/apprise/{ok_id}/test").status_code == 403  # CSRF, like every action


def test_send_api_photos_are_pruned_with_the_photo_retention(tmp_path):
    import os

    from gateway.sendqueue import prune_api_photos

    folder = tmp_path / API_PHOTO_DIR
    folder.mkdir()
    old, new, other = folder / f"msg{'a' * 16}.jpg", folder / f"msg{'b' * 16}.jpg", folder / "notes.txt"
    for p in (old, new, other):
        p.write_bytes(b"x")
    now = 1_900_000_000.0
    os.utime(old, (now - 10 * 86400, now - 10 * 86400))
    os.utime(new, (now - 3600, now - 3600))
    os.utime(other, (now - 10 * 86400, now - 10 * 86400))
    assert prune_api_photos(folder, now, 7 * 86400) == 1
    assert not old.exists() and new.exists() and other.exists()
    assert prune_api_photos(tmp_path / "missing", now, 1) == 0


def test_box_routing_and_a_sink_without_recipients(gw):
    """`box` routes like that box's alerts (urls_by_box); a message that would reach nobody is a 400."""
    from gateway.notify.apprise import AppriseNotifier

    garage = f"json://127.0.0.1:{gw.hook.port}/garage"
    gw.svc.notifiers["apprise"] = AppriseNotifier([], urls_by_box={"garage": garage})
    c = client(gw, token=gw.tokens.create("t", "send"))
    before = counts(gw)
    r = c.post("/api/notify", json={"text": "x", "sinks": ["apprise"]})
    assert r.status_code == 400 and r.json()["error"] == "no_recipients"
    assert counts(gw) == before and api_photos(gw) == []
    r = c.post("/api/notify", json={"text": "for the garage", "sinks": ["apprise"], "box": "garage"})
    assert r.status_code == 202
    [aid] = r.json()["alerts"]
    assert settled(c, aid)["recipient"] == recipient_id(garage)
    assert json.loads(gw.hook.wait_for("/garage")[0].body)["message"] == "for the garage"
