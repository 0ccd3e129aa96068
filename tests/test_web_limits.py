"""The LAN must not be able to hurt the gateway: request bodies, connections, file descriptors.

Run against the real uvicorn server (`WebServer` on its own thread) over raw sockets on loopback,
because these limits live in the server and its receive loop, below what a test client reaches.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway.web import WebServer, WebSettings
from gateway.web.auth import set_password
from tests.support.web import MemoryPort

PASSWORD = "correct horse battery"


@pytest.fixture
def port(tmp_path: Path) -> MemoryPort:
    return MemoryPort(tmp_path / "photos", answer_delay=0.01)


@pytest.fixture
def exposed(port: MemoryPort, tmp_path: Path):
    """A dashboard that needs a login, listening on loopback (so /login is the auth-free route)."""
    settings = WebSettings.from_config(
        {"host": "127.0.0.1", "port": 0, "require_login": True}, data_dir=tmp_path / "data"
    )
    set_password(settings.password_file, PASSWORD)
    srv = WebServer(port, settings)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def body_limit_of(srv: WebServer):
    return srv.app.state.guard_holder["body_limit"]


def read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Whatever the server answers, up to the end of its headers and a little body (or EOF)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_declared_huge_body_is_refused_before_a_byte_is_read(exposed: WebServer) -> None:
    """400 MB announced, nothing sent: the old server waited for the body (and then held all of it)."""
    with socket.create_connection(("127.0.0.1", exposed.bound_port)) as s:
        s.sendall(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 400000000\r\n\r\n"
        )
        answer = read_response(s)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert body_limit_of(exposed).received == 0


def test_streamed_body_without_length_is_cut_off_at_the_limit(exposed: WebServer) -> None:
    """Chunked, never ending: refused once 8 KiB went past, with at most 8 KiB handed to the app."""
    chunk = b"a" * 4096
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", exposed.bound_port)) as s:
        s.sendall(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        # 64 KiB, well past the limit, and no terminating chunk: only the limit can end this request.
        for _ in range(16):
            try:
                s.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: exactly what should happen
            sent += len(chunk)
        answer = read_response(s)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    limit = body_limit_of(exposed)
    assert limit.refused == 1 and limit.received <= 8 * 1024


def test_small_bodies_still_work_and_the_refusal_is_counted(exposed: WebServer) -> None:
    import httpx

    with httpx.Client(base_url=exposed.url, timeout=10, follow_redirects=False) as c:
        page = c.get("/login")
        token = c.cookies.get("pb_csrf")
        assert page.status_code == 200 and token
        r = c.post("/login", data={"password": PASSWORD, "csrf": token})
        assert r.status_code == 303, r.text
        r = c.post("/login", content=b"x" * (8 * 1024 + 1), headers={"content-type": "text/plain"})
        assert r.status_code == 413 and r.json()["error"] == "too_large"
        assert c.get("/api/health").json()["web"]["body_too_large"] == 1
