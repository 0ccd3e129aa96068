"""A message accepted by the send API (202) survives a SIGKILL of the gateway and is delivered
exactly once after the restart: the real gateway as a subprocess, its real web server, a real
HTTP receiver on loopback that is down while the first gateway runs."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

from tests.support.e2e import ROOT, GatewayProc, clean_env, wait_for
from tests.support.gateway_core import make_jpeg
from tests.support.servers import HttpSink, reserve_port


def _token(gw: GatewayProc) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "web", "token", "create", "cron", "--config", str(gw.config)],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _call(
    url: str, token: str, body: bytes | None = None, ctype: str = "application/json"
) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_a_queued_message_survives_sigkill_and_is_delivered_once(tmp_path, mosquitto, prefix):
    # The receiver's port is bound here and kept (connects are refused: the receiver is "down") until
    # the receiver serves on that very socket; the dashboard picks its own port, read from web.json.
    hook_sock = reserve_port()
    hook_port = hook_sock.getsockname()[1]
    gw = GatewayProc(
        tmp_path / "gw",
        mosquitto.url,
        prefix,
        extra={
            "web": {"enabled": True, "port": 0},
            "notify.webhook": {"url": f"http://127.0.0.1:{hook_port}/hook", "signing_key": "k"},
            "notify.folder": {"enabled": False},
        },
    )
    token = _token(gw)
    gw.start()
    hook = None
    try:
        base = gw.web_url()
        wait_for(
            lambda: _call(f"{base}/api/alerts/msg0000000000000000", token)[0] == 404, what="the web server"
        )
        boundary = "b0undary"
        photo = make_jpeg(320, 240, seed=4)
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\nCron job done\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="sinks"\r\n\r\nwebhook\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="p.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + photo
            + f"\r\n--{boundary}--\r\n".encode()
        )
        status, doc = _call(f"{base}/api/notify", token, body, f"multipart/form-data; boundary={boundary}")
        assert status == 202, doc
        [aid] = doc["alerts"]
        gw.kill()  # the receiver was down: nothing delivered yet, the entry only on disk

        hook = HttpSink().start(hook_sock)
        gw.start()
        base = gw.web_url()  # each run picks its own dashboard port
        wait_for(lambda: _call(f"{base}/api/alerts/{aid}", token)[1].get("state") == "sent", what="sent")
        gw.stop()
        gw.start()  # a clean restart after delivery sends nothing again
        base = gw.web_url()
        wait_for(lambda: _call(f"{base}/api/alerts/{aid}", token)[0] == 200, what="the web server again")
        gw.stop()
        delivered = [r for r in hook.to("/hook") if r.headers.get("X-Parcelbox-Delivery") == aid]
        assert len(delivered) == 1
        sent = json.loads(delivered[0].body)
        assert sent["caption"] == "Cron job done" and sent["photo_jpeg_base64"]
    finally:
        if gw.running():
            gw.kill()
        if hook is not None:
            hook.stop()
        else:
            hook_sock.close()
