"""The dashboard as the gateway runs it: WebServer on its own thread, live updates over SSE."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx2 as httpx
import pytest

from gateway import bus as busmod
from gateway.web import WebServer, WebSettings
from gateway.web.live import Broadcaster
from tests.support.web import MemoryPort, SSEReader


@pytest.fixture
def port(tmp_path: Path) -> MemoryPort:
    p = MemoryPort(tmp_path / "photos", answer_delay=0.05)
    p.add_device("gate", "Front gate")
    return p


@pytest.fixture
def server(port: MemoryPort):
    srv = WebServer(port, WebSettings(host="127.0.0.1", port=0))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_server_serves_and_streams_live_changes(server: WebServer, port: MemoryPort) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/").status_code == 200
        with c.stream("GET", "/api/stream") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            sse = SSEReader(r)
            assert sse.next_event("hello")[1] == {"login_required": False}
            # Publish from another thread, as the ingest worker does.
            t = threading.Thread(
                target=port.add_event, args=("gate", "delivery"), kwargs={"event_id": "live00000001"}
            )
            t.start()
            t.join(10)
            name, ev = sse.next_event("event")
            assert (
                ev["id"] == "live00000001" and ev["photos"]["thumb"] == "/api/photos/gate/live00000001/thumb"
            )
            name, dev = sse.next_event("device")
            assert dev["device"] == "gate" and dev["waiting"] == 1
            # A command's result arrives on the stream too.
            csrf = c.cookies.get("pb_csrf") or c.get("/api/health").cookies.get("pb_csrf")
            c.cookies.set("pb_csrf", csrf)
            cmd = c.post(
                "/api/devices/gate/command", json={"cmd": "snapshot"}, headers={"x-csrf-token": csrf}
            )
            assert cmd.status_code == 202
            _, res = sse.next_event("command")
            assert res["id"] == cmd.json()["id"] and res["ok"] is True
            port.set_whatsapp(state="pairing", qr="2@qr-payload")
            _, wa = sse.next_event("whatsapp")
            assert wa["state"] == "pairing" and "qr" not in wa and wa["qr_url"]
            port.add_alert("gate", "failed", last_error="boom")
            assert sse.next_event("outbox")[1]["last_error"] == "boom"
        assert c.get("/api/health").json()["web"]["live_clients"] in (0, 1)


def test_stop_ends_open_streams_and_frees_the_port(port: MemoryPort) -> None:
    srv = WebServer(port, WebSettings(host="127.0.0.1", port=0))
    srv.start()
    url = srv.url
    done = threading.Event()
    got: list[str] = []

    def listen() -> None:
        try:
            with httpx.Client(base_url=url, timeout=10) as c, c.stream("GET", "/api/stream") as r:
                for line in r.iter_lines():
                    got.append(line)
        except httpx.HTTPError:
            pass
        done.set()

    threading.Thread(target=listen, daemon=True).start()
    for _ in range(500):
        if any(line.startswith("event: hello") for line in got):
            break
        threading.Event().wait(0.01)
    assert any(line.startswith("event: hello") for line in got)
    srv.stop()
    assert done.wait(10), "stream still open after stop()"
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/api/health", timeout=2)
    # Stopped servers publish nothing more; the bus has no web subscribers left.
    port.add_event("gate", "pickup")


def test_bind_failure_is_reported(port: MemoryPort, server: WebServer) -> None:
    # A taken port is not a failure any more (issue 15 item 4): the dashboard moves to a free one.
    other = WebServer(port, WebSettings(host="127.0.0.1", port=server.bound_port))
    other.start()
    try:
        assert other.moved_from == server.bound_port and other.bound_port != server.bound_port
    finally:
        other.stop()
    # An address this machine does not have still stops the start with a clear message.
    elsewhere = WebServer(port, WebSettings(host="192.0.2.1", port=0))
    with pytest.raises(OSError, match="dashboard cannot listen"):
        elsewhere.start()


def test_disabled_server_does_nothing(port: MemoryPort) -> None:
    srv = WebServer(port, {"enabled": False, "port": 0})
    srv.start()
    assert srv.bound_port is None
    srv.stop()


def test_slow_stream_is_told_to_resync_not_grown() -> None:
    bus = busmod.Bus()
    bc = Broadcaster(bus)

    async def scenario() -> list[bytes]:
        bc.attach(asyncio.get_running_loop())
        stream = bc.stream()
        first = await stream.__anext__()
        for i in range(2000):  # far more than the queue holds, while the client reads nothing
            bus.publish(busmod.DEVICE_CHANGED, {"device": "gate", "n": i})
        await asyncio.sleep(0.05)  # let call_soon_threadsafe callbacks run
        out = [first]
        (q,) = bc._queues
        assert q.qsize() <= 500
        while not q.empty():
            out.append(await stream.__anext__())
        bc.close()
        async for chunk in stream:
            out.append(chunk)
        bc.detach()
        return out

    chunks = asyncio.run(scenario())
    assert bc.dropped > 0
    assert any(c.startswith(b"event: resync") for c in chunks)
    assert len(chunks) < 600


def test_bus_handler_failure_never_reaches_the_publisher(port: MemoryPort) -> None:
    def broken(topic, data):
        raise ValueError("bad record")

    bc = Broadcaster(port.bus, broken)

    async def scenario() -> None:
        bc.attach(asyncio.get_running_loop())
        port.add_event("gate", "delivery")  # must not raise
        await asyncio.sleep(0.02)
        bc.detach()

    asyncio.run(scenario())


def test_stream_ends_when_its_session_ends(port: MemoryPort, tmp_path: Path) -> None:
    import re

    from gateway.web.auth import set_password

    settings = WebSettings.from_config(
        {"host": "127.0.0.1", "port": 0, "require_login": True}, tmp_path / "data"
    )
    set_password(settings.password_file, "stream test password")
    srv = WebServer(port, settings)
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            page = c.get("/login")
            token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
            assert (
                c.post("/login", data={"password": "stream test password", "csrf": token}).status_code == 303
            )
            with c.stream("GET", "/api/stream") as r:
                sse = SSEReader(r)
                assert sse.next_event("hello")[1] == {"login_required": True}
                port.add_device("porch")
                assert sse.next_event("device")[1]["device"] == "porch"
                out = c.post("/logout", headers={"x-csrf-token": c.cookies.get("pb_csrf")})
                assert out.status_code == 200
                port.add_device("porch")  # the next message finds the session gone and ends the stream
                with pytest.raises(AssertionError, match="stream ended"):
                    sse.next_event("device")
    finally:
        srv.stop()


def test_listening_socket_sends_small_writes_at_once(server: WebServer) -> None:
    import socket

    # Without TCP_NODELAY every response waited ~40 ms for the client's delayed ACK (bench/web_events.py).
    assert server.listen_socket is not None
    assert server.listen_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
