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
from gateway.notify.webhook import WebhookNotifier, build_request


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
