"""Folder and webhook sinks: pure payload builders, real files, a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import http.server
import json
import threading

import pytest

from gateway.notify.base import Alert
from gateway.notify.folder import FolderNotifier, build_payload
from gateway.notify.webhook import WebhookNotifier, build_request, verify


def alert(tmp_path=None, photo: bytes | None = None, aid: str = "box1_evt00001_folder_abc") -> Alert:
    path = None
    if photo is not None:
        path = tmp_path / "p.alert.jpg"
        path.write_bytes(photo)
    return Alert(
        id=aid,
        kind="delivery",
        device="box1",
        device_name="Front gate",
        event_ids=("evt00001",),
        ts=1_700_000_000.0,
        caption="📦 Package delivered",
        photo_path=path,
        state={"waiting": 2},
    )


def test_folder_payload_is_pure_and_refuses_unsafe_ids():
    p = build_payload(alert())
    assert p.name == "box1_evt00001_folder_abc"
    assert p.document["device"] == "box1" and p.document["event_ids"] == ["evt00001"]
    assert p.document["kind"] == "delivery" and p.document["caption"].startswith("📦")
    with pytest.raises(ValueError):
        build_payload(alert(aid="../escape"))


def test_folder_sink_writes_json_and_jpg_atomically_and_idempotently(tmp_path):
    sink = FolderNotifier(tmp_path / "out")
    a = alert(tmp_path, b"\xff\xd8jpeg\xff\xd9")
    assert sink.send(a).ok
    assert sink.send(a).ok  # a re-send after a crash lands on the same files
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["box1_evt00001_folder_abc.jpg", "box1_evt00001_folder_abc.json"]
    doc = json.loads((tmp_path / "out" / files[1]).read_text())
    assert doc["photo"] == "box1_evt00001_folder_abc.jpg" and doc["device_name"] == "Front gate"
    bad = sink.send(alert(aid="a/../../x"))
    assert not bad.ok and bad.permanent


def test_folder_sink_reports_io_failure_without_raising(tmp_path):
    sink = FolderNotifier(tmp_path / "out")
    # A directory where the JSON file should go: the rename fails whoever we run as (even root).
    (tmp_path / "out" / "box1_evt00001_folder_abc.json").mkdir()
    res = sink.send(alert())
    assert not res.ok and not res.permanent and res.error


class _Server:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((self.headers["Content-Type"], body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "7")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server([])
    yield s
    s.close()


def test_webhook_json_with_base64_photo(tmp_path, server):
    photo = b"\xff\xd8photo\xff\xd9"
    sink = WebhookNotifier(server.url, headers={"Authorization": "Bearer t"})
    assert sink.send(alert(tmp_path, photo)).ok
    ctype, body = server.requests[0]
    assert ctype == "application/json"
    doc = json.loads(body)
    assert base64.b64decode(doc["photo_jpeg_base64"]) == photo and doc["event_ids"] == ["evt00001"]


def test_webhook_multipart(tmp_path, server):
    photo = b"\xff\xd8photo\xff\xd9"
    sink = WebhookNotifier(server.url, fmt="multipart")
    assert sink.send(alert(tmp_path, photo)).ok
    ctype, body = server.requests[0]
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + body
    )
    parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
    assert json.loads(parts["alert"].get_content())["device"] == "box1"
    assert parts["photo"].get_content() == photo


def test_webhook_failures_are_results_not_exceptions(tmp_path, server):
    sink = WebhookNotifier(server.url)
    server.statuses[:] = [500, 429, 404]
    r = sink.send(alert())
    assert not r.ok and not r.permanent and r.error == "HTTP 500"
    r = sink.send(alert())
    assert not r.ok and r.retry_after_s == 7
    r = sink.send(alert())
    assert not r.ok and r.permanent
    assert sink.send(alert()).ok
    closed = WebhookNotifier("http://127.0.0.1:9/none", timeout_s=2)  # discard port: nothing listens
    r = closed.send(alert())
    assert not r.ok and not r.permanent


def test_webhook_retried_by_outbox_until_server_accepts(tmp_path, server):
    from gateway.bus import Bus
    from gateway.outbox import OutboxDispatcher
    from gateway.store import Store

    server.statuses[:] = [503, 503]
    sink = WebhookNotifier(server.url)
    store = Store(tmp_path / "data")
    t = [1_700_000_000.0]
    store.add_outbox(
        [
            {
                "id": "box1_e1_webhook_x",
                "kind": "delivery",
                "device": "box1",
                "event_ids": ["e1e1e1e1e1"],
                "notifier": "webhook",
                "recipient": "",
                "state": "pending",
                "attempts": 0,
                "created_at": t[0],
                "next_attempt_at": t[0],
                "sent_at": None,
                "last_error": None,
                "caption": "hi",
            }
        ],
        t[0],
    )
    d = OutboxDispatcher(store, {"webhook": sink}, bus=Bus(), photo_path=lambda *_: None, clock=lambda: t[0])
    for _ in range(3):
        d._pass("webhook")
        rec = store.get_outbox("box1_e1_webhook_x")
        t[0] = (rec["next_attempt_at"] or t[0]) + 0.1
    assert rec["state"] == "sent" and rec["attempts"] == 3 and rec["last_error"] == "HTTP 503"
    assert len(server.requests) == 3
    store.close()


def test_build_request_without_photo():
    r = build_request(alert(), None, "json")
    assert json.loads(r.body)["photo_jpeg_base64"] is None


# --- signed webhooks (issue 19) --------------------------------------------------------------


def test_webhook_body_is_signed_with_hmac_sha256_of_the_shared_secret(tmp_path):
    """The receiver's side, written from the docs (docs/webhooks.md), against the real request."""
    import hashlib
    import hmac

    from tests.support.servers import HttpSink

    sink_server = HttpSink().start()
    try:
        url = f"http://127.0.0.1:{sink_server.port}/hook"
        sink = WebhookNotifier(url, secret="sh4red", clock=lambda: 1_700_000_123.0)
        for fmt in ("json", "multipart"):
            sink.fmt = fmt
            assert sink.send(alert(tmp_path, b"\xff\xd8photo\xff\xd9")).ok
        reqs = sink_server.wait_for("/hook", 2)
        for req in reqs:
            expected = "sha256=" + hmac.new(b"sh4red", req.body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(req.headers["X-Parcelbox-Signature-256"], expected)
            assert req.headers["X-Parcelbox-Delivery"] == alert().id
        doc = json.loads(reqs[0].body)
        assert doc["sent_at"] == 1_700_000_123.0  # inside the signature: old bodies can be refused
        assert verify("sh4red", reqs[0].body, reqs[0].headers["X-Parcelbox-Signature-256"])
        assert not verify("sh4red", reqs[0].body + b" ", reqs[0].headers["X-Parcelbox-Signature-256"])
        assert not verify("other", reqs[0].body, reqs[0].headers["X-Parcelbox-Signature-256"])
        assert not verify("sh4red", reqs[0].body, None)
        # Without a secret: no signature header (and nothing pretends to be one).
        WebhookNotifier(url).send(alert())
        assert "X-Parcelbox-Signature-256" not in sink_server.wait_for("/hook", 3)[-1].headers
    finally:
        sink_server.stop()


def test_webhook_gets_every_stored_event_and_status_change(tmp_path, mosquitto, prefix):
    """lid_closed and snapshot are not alerts (alerts.kinds) but the webhook gets them, signed."""
    from gateway.app import build_notifiers
    from gateway.service import GatewayService
    from tests.support.gateway_core import Box, gateway_config, make_jpeg, new_event_id, wait_for
    from tests.support.servers import HttpSink

    hook = HttpSink().start()
    cfg = gateway_config(
        tmp_path / "data",
        mosquitto.url,
        prefix,
        PARCELBOX_NOTIFY_WEBHOOK_URL=f"http://127.0.0.1:{hook.port}/events",
        PARCELBOX_NOTIFY_WEBHOOK_SIGNING_KEY="sh4red",
    )
    svc = GatewayService(cfg)
    for n in build_notifiers(cfg):
        svc.add_notifier(n)
    box = Box(mosquitto.url, prefix, "box1")
    svc.start()
    try:
        assert svc.wait_connected(10)
        ids = {}
        for etype in ("delivery", "lid_closed", "snapshot"):
            ids[etype] = new_event_id()
            box.send(ids[etype], make_jpeg(64, 48) if etype != "lid_closed" else None, etype=etype)
            assert box.wait_ack(ids[etype])["ok"]
        reqs = hook.wait_for("/events", 3)
        docs = {json.loads(r.body)["kind"]: json.loads(r.body) for r in reqs}
        assert set(docs) >= {"delivery", "lid_closed", "snapshot"}
        assert all(verify("sh4red", r.body, r.headers["X-Parcelbox-Signature-256"]) for r in reqs)
        assert docs["lid_closed"]["event_ids"] == [ids["lid_closed"]]
        # ...while the folder sink (people's alerts) got only the delivery.
        kinds = wait_for(
            lambda: [json.loads(p.read_text())["kind"] for p in cfg.folder_sink_path.glob("*.json")],
            what="the folder alert",
        )
        assert kinds == ["delivery"]
    finally:
        svc.stop()
        box.close()
        hook.stop()
