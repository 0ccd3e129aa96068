"""Apprise sink against real servers on loopback: SMTP (aiosmtpd), HTTP json:// and form://,
and the outbox semantics through it (retry with backoff, permanent -> dead, one slow URL never
delays the others). No mocks: the servers are real, only the clock of the dispatcher is injected
where a test walks through backoff."""

from __future__ import annotations

import base64
import json
import logging
import threading

import pytest

from gateway.bus import OUTBOX_CHANGED, Bus
from gateway.config import ConfigError, load_config
from gateway.notify.apprise import AppriseNotifier, classify, recipient_id, split_urls
from gateway.notify.base import Alert
from gateway.outbox import OutboxDispatcher
from gateway.service import GatewayService
from gateway.store import Store
from tests.support.gateway_core import Box, gateway_config, make_jpeg, new_event_id, wait_for
from tests.support.servers import HttpSink, SmtpSink

PHOTO = make_jpeg(320, 240, seed=3)


@pytest.fixture
def http_sink():
    s = HttpSink().start()
    yield s
    s.stop()


@pytest.fixture
def smtp():
    s = SmtpSink()
    yield s
    s.stop()


@pytest.fixture
def photo(tmp_path):
    p = tmp_path / "alert.jpg"
    p.write_bytes(PHOTO)
    return p


def alert(
    recipient: str, photo=None, aid: str = "a1", caption: str = "Package delivered at Front gate"
) -> Alert:
    return Alert(
        id=aid,
        kind="delivery",
        device="box1",
        device_name="Front gate",
        event_ids=("e1",),
        ts=1_700_000_000.0,
        caption=caption,
        recipient=recipient,
        photo_path=photo,
    )


def mail_url(smtp: SmtpSink, secret: str = "s3cret") -> str:
    return f"mailto://gw:{secret}@127.0.0.1:{smtp.port}?from=gw@example.com&to=me@example.com&mode=insecure"


# --- the sink alone, against each real server -------------------------------------------


def test_email_arrives_with_the_photo_attached_and_the_caption_as_body(smtp, photo):
    url = f"mailto://127.0.0.1:{smtp.port}?from=gw@example.com&to=me@example.com&mode=insecure"
    n = AppriseNotifier([url])
    [rid] = n.recipients("box1")
    assert rid == recipient_id(url) and rid.startswith("mailto-")
    assert n.send(alert(rid, photo)).ok
    [(mail_from, rcpt, msg)] = smtp.wait_for(1)
    assert mail_from == "gw@example.com" and rcpt == ["me@example.com"]
    assert msg["Subject"] == "parcelbox: Front gate"
    parts = {p.get_content_type(): p for p in msg.walk()}
    assert "Package delivered at Front gate" in parts["text/plain"].get_content()
    assert parts["image/jpeg"].get_content() == PHOTO


def test_json_and_form_endpoints_get_caption_and_photo(http_sink, photo):
    j = f"json://127.0.0.1:{http_sink.port}/hook"
    f = f"form://127.0.0.1:{http_sink.port}/form"
    n = AppriseNotifier([j, f])
    for rid in n.recipients("box1"):
        assert n.send(alert(rid, photo)).ok
    [req] = http_sink.wait_for("/hook")
    doc = json.loads(req.body)
    assert doc["message"] == "Package delivered at Front gate" and doc["title"] == "parcelbox: Front gate"
    assert base64.b64decode(doc["attachments"][0]["base64"]) == PHOTO
    [req] = http_sink.wait_for("/form")
    assert req.headers["Content-Type"].startswith("multipart/form-data")
    assert PHOTO in req.body and b"Package delivered at Front gate" in req.body


def test_missing_photo_sends_the_text_alone(http_sink, tmp_path):
    j = f"json://127.0.0.1:{http_sink.port}/hook"
    n = AppriseNotifier([j])
    assert n.send(alert(recipient_id(j), tmp_path / "gone.jpg")).ok
    [req] = http_sink.wait_for("/hook")
    assert json.loads(req.body)["attachments"] == []


def test_results_classified_permanent_or_temporary(http_sink):
    j = f"json://127.0.0.1:{http_sink.port}/hook"
    http_sink.statuses["/hook"] = [404, 500, 429]
    n = AppriseNotifier([j, "json://127.0.0.1:1/refused"])
    rid = recipient_id(j)
    r404, r500, r429 = (n.send(alert(rid)) for _ in range(3))
    assert r404.permanent and "HTTP 404" in r404.error
    assert not r500.permanent and "HTTP 500" in r500.error
    assert not r429.permanent
    refused = n.send(alert(recipient_id("json://127.0.0.1:1/refused")))
    assert not refused.ok and not refused.permanent
    gone = n.send(alert("tgram-0000000000"))  # a recipient removed from the config since
    assert gone.permanent and "no longer" in gone.error


def test_classify_table():
    assert classify("SUCCESS", []).ok
    assert not classify("TIMEOUT", ["error=404."]).permanent  # timed out: retry
    assert classify("FAILURE", ["Failed to send JSON POST notification: Not Found, error=404."]).permanent
    assert not classify("FAILURE", ["...error=503."]).permanent
    assert not classify("FAILURE", ["...error=408."]).permanent
    assert not classify("FAILURE", ['Connection error while submitting email to "h"']).permanent


def test_unloadable_url_is_dead_lettered_and_named_by_id_only(caplog):
    bad = "nosuchscheme://token-abc123@host"
    with caplog.at_level(logging.ERROR):
        n = AppriseNotifier([bad])
    res = n.send(alert(recipient_id(bad)))
    assert res.permanent
    assert "token-abc123" not in caplog.text and "token-abc123" not in (res.error or "")
    assert recipient_id(bad) in caplog.text


def test_routing_by_box_and_url_splitting():
    a, b, c = "json://h/a", "ntfy://h/topic", "mailto://u:p@h?to=x@y.com,z@y.com"
    n = AppriseNotifier([a], urls_by_box={"garage": f"{b}, {c}", "shed": [a, b]})
    assert n.recipients("front") == [recipient_id(a)]
    assert n.recipients("garage") == [recipient_id(b), recipient_id(c)]
    assert n.recipients("shed") == [recipient_id(a), recipient_id(b)]
    assert split_urls(c) == [c]  # commas inside a URL's query stay (Apprise's own parser)
    assert set(n.all_recipients()) == {recipient_id(u) for u in (a, b, c)}
    d = n.describe(recipient_id(b))
    assert d["boxes"] == ["garage", "shed"] and d["scheme"] == "ntfy" and "h/topic" not in json.dumps(d)


def test_config_reads_urls_and_redacts_them(tmp_path):
    secret_url = "tgram://123456:AAbbSecretToken/987654"
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(
        f'[notify.apprise]\nurls = ["{secret_url}"]\n'
        f'[notify.apprise.urls_by_box]\ngarage = ["{secret_url}", "ntfy://ntfy.sh/Secret-Topic"]\n'
    )
    cfg = load_config(cfg_file, env={})
    assert cfg.notify.apprise.urls == [secret_url]
    shown = json.dumps(cfg.redacted())
    assert "AAbbSecretToken" not in shown and "Secret-Topic" not in shown
    assert recipient_id(secret_url) in shown
    cfg_file.write_text("[notify.apprise]\ntimeout_s = 0\n")
    with pytest.raises(ConfigError):
        load_config(cfg_file, env={})


# --- through the real outbox dispatcher and store ------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def entry(aid: str, recipient: str, now: float) -> dict:
    return {
        "id": aid,
        "kind": "delivery",
        "device": "box1",
        "event_ids": ["e1"],
        "notifier": "apprise",
        "recipient": recipient,
        "state": "pending",
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
        "sent_at": None,
        "last_error": None,
        "caption": f"caption {aid}",
        "ts": now,
        "device_name": "Front gate",
        "has_photo": True,
    }


def dispatcher(store, notifier, photo, clock=None, **kw) -> OutboxDispatcher:
    return OutboxDispatcher(
        store,
        {"apprise": notifier},
        bus=kw.pop("bus", Bus()),
        photo_path=lambda d, e: photo,
        backoff_initial_s=2,
        backoff_max_s=30,
        dead_after_s=1000,
        **({"clock": clock} if clock else {}),
        **kw,
    )


def test_outbox_retries_with_backoff_and_dead_letters_a_permanent_error(tmp_path, http_sink, photo):
    flaky = f"json://127.0.0.1:{http_sink.port}/flaky"
    wrong = f"json://127.0.0.1:{http_sink.port}/wrong"
    http_sink.statuses["/flaky"] = [500, 503]
    http_sink.statuses["/wrong"] = [404]
    n = AppriseNotifier([flaky, wrong])
    store = Store(tmp_path / "data")
    clock = Clock()
    store.add_outbox(
        [entry("f1", recipient_id(flaky), clock.t), entry("w1", recipient_id(wrong), clock.t)], clock.t
    )
    d = dispatcher(store, n, photo, clock)
    try:
        assert d._pass("apprise") and d.wait_lanes()
        f1, w1 = store.get_outbox("f1"), store.get_outbox("w1")
        assert f1["state"] == "failed" and f1["last_error"] == "apprise: HTTP 500"
        assert f1["next_attempt_at"] == clock.t + 2
        assert w1["state"] == "dead" and "HTTP 404" in w1["last_error"]
        assert not d._pass("apprise")  # backoff: not due yet
        clock.t += 2
        d._pass("apprise") and d.wait_lanes()
        f1 = store.get_outbox("f1")
        assert f1["attempts"] == 2 and f1["next_attempt_at"] == clock.t + 4
        clock.t += 4
        d._pass("apprise") and d.wait_lanes()
        assert store.get_outbox("f1")["state"] == "sent"
        assert len(http_sink.to("/flaky")) == 3 and len(http_sink.to("/wrong")) == 1
        # the secret never reaches the stored record
        assert all(flaky not in json.dumps(r) for r in store.list_outbox())
    finally:
        store.close()


def test_one_slow_url_never_delays_the_others(tmp_path, http_sink, photo):
    slow = f"json://127.0.0.1:{http_sink.port}/slow"
    fast = f"form://127.0.0.1:{http_sink.port}/fast"
    gate = http_sink.hold("/slow")
    n = AppriseNotifier([slow, fast], timeout_s=60)
    store = Store(tmp_path / "data")
    bus = Bus()
    states: dict[str, str] = {}
    changed = threading.Condition()

    def on_change(_t: str, rec: dict) -> None:
        with changed:
            states[rec["id"]] = rec["state"]
            changed.notify_all()

    bus.subscribe(on_change, OUTBOX_CHANGED)
    import time

    now = time.time()
    rs, rf = recipient_id(slow), recipient_id(fast)
    store.add_outbox(
        [
            entry("s1", rs, now),
            entry("s2", rs, now + 0.001),
            entry("f1", rf, now + 0.002),
            entry("f2", rf, now + 0.003),
        ],
        now,
    )
    d = dispatcher(store, n, photo, bus=bus, poll_s=0.05)
    d.start()
    try:
        with changed:
            assert changed.wait_for(lambda: states.get("f1") == "sent" and states.get("f2") == "sent", 30)
        # Both fast alerts went out while the slow service still holds the first slow one.
        assert len(http_sink.to("/slow")) == 1 and not gate.is_set()
        assert store.get_outbox("s1")["state"] == "pending" and store.get_outbox("s2")["attempts"] == 0
        gate.set()
        with changed:
            assert changed.wait_for(lambda: states.get("s1") == "sent" and states.get("s2") == "sent", 30)
        bodies = [json.loads(r.body)["message"] for r in http_sink.to("/slow")]
        assert bodies == ["caption s1", "caption s2"]  # one recipient: in order, each once
    finally:
        gate.set()
        d.stop()
        store.close()


# --- the whole gateway: a box's delivery reaches e-mail; nothing shows the URL -----------------


def test_gateway_delivery_reaches_email_with_photo_and_no_secret_anywhere(
    tmp_path, mosquitto, prefix, caplog
):
    smtp = SmtpSink(login=("gw", "Pa55wordXYZ"))
    url = mail_url(smtp, secret="Pa55wordXYZ")
    cfg = gateway_config(tmp_path / "data", mosquitto.url, prefix, PARCELBOX_DEVICES_NAMES="box1=Front gate")
    cfg.notify.apprise.urls = [url]
    svc = GatewayService(cfg)
    from gateway.app import build_notifiers

    for n in build_notifiers(cfg):
        svc.add_notifier(n)
    box = Box(mosquitto.url, prefix, "box1")
    caplog.set_level(logging.DEBUG)
    svc.start()
    try:
        assert svc.wait_connected(10)
        eid = new_event_id()
        box.send(eid, PHOTO)
        assert box.wait_ack(eid)["ok"]
        rec = wait_for(
            lambda: next(
                (o for o in svc.list_outbox() if o["notifier"] == "apprise" and o["state"] != "pending"), None
            ),
            what="apprise alert settled",
        )
        assert rec["state"] == "sent", rec
        [(_f, _r, msg)] = smtp.wait_for(1)
        assert smtp.logins == ["gw"]
        jpeg = next(p for p in msg.walk() if p.get_content_type() == "image/jpeg").get_content()
        assert jpeg[:2] == b"\xff\xd8"  # the alert copy of the box's photo
        svc.write_status()
        status = (svc.data_dir / "status.json").read_text()
        assert rec["recipient"] == recipient_id(url)
        assert "Pa55wordXYZ" not in status and recipient_id(url) in status
        assert "Pa55wordXYZ" not in caplog.text
        assert "Pa55wordXYZ" not in json.dumps(svc.list_outbox())
    finally:
        svc.stop()
        box.close()
        smtp.stop()


def test_a_service_slower_than_the_timeout_is_a_temporary_failure(http_sink):
    slow = f"json://127.0.0.1:{http_sink.port}/slow"
    gate = http_sink.hold("/slow")
    try:
        res = AppriseNotifier([slow], timeout_s=1).send(alert(recipient_id(slow)))
        assert not res.ok and not res.permanent and "timed out" in res.error
    finally:
        gate.set()
