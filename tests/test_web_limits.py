"""The LAN must not be able to hurt the gateway: request bodies, connections, file descriptors.

Run against the real uvicorn server (`WebServer` on its own thread) over raw sockets on loopback,
because these limits live in the server and its receive loop, below what a test client reaches.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway.fdlimit import web_connection_cap
from gateway.web import WebServer, WebSettings
from gateway.web.auth import set_password
from gateway.web.connections import ConnectionTable
from gateway.web.server import ACCEPT_BATCH
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


# --- connections ----------------------------------------------------------------------------


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.busy = False

    def __repr__(self) -> str:
        return self.name


def busy(c: Conn) -> bool:
    return c.busy


def test_connection_table_evicts_the_longest_idle_and_refuses_when_all_are_busy() -> None:
    t = ConnectionTable(max_connections=3, idle_timeout_s=10)
    a, b, c, d, e = (Conn(x) for x in "abcde")
    assert t.admit(a, 0, busy) == [] and t.admit(b, 1, busy) == [] and t.admit(c, 2, busy) == []
    a.busy = True  # a request in progress is never evicted
    assert t.admit(d, 3, busy) == [b] and t.evicted == 1
    c.busy = d.busy = True
    assert t.admit(e, 4, busy) == [e] and t.refused == 1 and len(t) == 3
    t.remove(a)
    assert t.admit(e, 5, busy) == [] and len(t) == 3


def test_connection_table_times_out_idle_connections_only() -> None:
    t = ConnectionTable(max_connections=10, idle_timeout_s=10)
    idle, streaming, done = Conn("idle"), Conn("streaming"), Conn("done")
    for conn in (idle, streaming, done):
        t.admit(conn, 0, busy)
    streaming.busy = done.busy = True
    assert t.sweep(5, busy) == []
    done.busy = False  # its response completed at about t=6: idle from the next sweep on
    assert t.sweep(6, busy) == []
    assert t.sweep(10, busy) == [idle] and t.timed_out == 1
    assert t.sweep(15, busy) == []
    assert t.sweep(16, busy) == [done]
    assert t.sweep(1000, busy) == [] and len(t) == 1  # the stream stays as long as it streams


def test_web_share_of_file_descriptors() -> None:
    assert web_connection_cap(100, soft_limit=1024) == 100
    assert web_connection_cap(100, soft_limit=256) == 64
    assert web_connection_cap(100, soft_limit=16) == 8  # never none at all


def test_soft_fd_limit_is_raised_to_the_hard_one() -> None:
    """In a child with soft 256 / hard 512 (systemd's LimitNOFILE default is 1024 soft, more hard)."""
    import resource
    import subprocess
    import sys

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))

    code = "from gateway.fdlimit import raise_nofile_limit, nofile_limits; print(raise_nofile_limit(), *nofile_limits())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=limits,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["512", "512", "512"]


@pytest.fixture
def small(port: MemoryPort):
    srv = WebServer(port, WebSettings(host="127.0.0.1", port=0, max_connections=20, idle_timeout_s=60))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_idle_flood_is_capped_and_a_newcomer_is_served(small: WebServer) -> None:
    import httpx

    socks = []
    try:
        for _ in range(200):
            socks.append(socket.create_connection(("127.0.0.1", small.bound_port), timeout=5))
        with httpx.Client(base_url=small.url, timeout=10) as c:
            web = c.get("/api/health").json()["web"]
        # uvicorn's own count of open connections: the old server kept all 200.
        assert len(small._server.server_state.connections) <= 20 + ACCEPT_BATCH  # type: ignore[union-attr]
        assert web["connections"]["max"] == 20 and web["connections"]["evicted"] >= 200 - 20
    finally:
        for s in socks:
            s.close()


def test_systemd_unit_sets_a_file_descriptor_limit() -> None:
    """systemd's default soft limit (1024) is what ~1,000 idle connections once used up."""
    unit = (Path(__file__).resolve().parents[1] / "deploy" / "parcelbox.service").read_text()
    values = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert len(values) == 1 and int(values[0].split(":")[0]) >= 4096


def test_live_streams_take_at_most_half_the_connections(port: MemoryPort) -> None:
    """A stream is a request in progress, never evicted: without this, streams could fill every slot."""
    import httpx

    srv = WebServer(port, WebSettings(host="127.0.0.1", port=0, max_connections=8, idle_timeout_s=60))
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=10, limits=httpx.Limits(max_connections=20)) as c:
            streams = [c.stream("GET", "/api/stream") for _ in range(5)]
            opened, readers = [], []
            try:
                for s in streams:
                    r = s.__enter__()
                    opened.append(r)
                    if r.status_code == 200:
                        readers.append(r.iter_raw())  # kept: a dropped iterator closes its stream
                        assert b"event: hello" in next(readers[-1])  # the stream is counted by now
                assert [r.status_code for r in opened] == [200] * 4 + [503]
                assert c.get("/api/health").status_code == 200  # and the dashboard still answers
            finally:
                for s in streams:
                    s.__exit__(None, None, None)
    finally:
        srv.stop()


def test_a_body_trickled_too_slowly_gets_408_and_frees_the_connection(
    port: MemoryPort, tmp_path: Path
) -> None:
    settings = WebSettings.from_config(
        {"host": "127.0.0.1", "port": 0, "require_login": True, "body_timeout_s": 0.5},
        data_dir=tmp_path / "d",
    )
    srv = WebServer(port, settings)
    srv.start()
    try:
        with socket.create_connection(("127.0.0.1", srv.bound_port)) as s:
            s.sendall(
                b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\npass"
            )
            answer = read_response(s, timeout=30)  # a bound for the test, well past the 0.5 s deadline
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"connection: close" in answer.lower()
    finally:
        srv.stop()


def test_one_client_holds_at_most_its_share() -> None:
    t = ConnectionTable(max_connections=8, idle_timeout_s=10, per_client=2)
    a1, a2, a3, b1, proxy = (Conn(x) for x in ("a1", "a2", "a3", "b1", "proxy"))
    assert t.admit(a1, 0, busy, "10.0.0.5") == [] and t.admit(a2, 1, busy, "10.0.0.5") == []
    assert t.admit(a3, 2, busy, "10.0.0.5") == [a1]  # its own longest-idle goes, nobody else's
    a2.busy = a3.busy = True  # e.g. bodies trickling in
    a4 = Conn("a4")
    assert t.admit(a4, 3, busy, "10.0.0.5") == [a4] and t.refused == 1
    assert t.admit(b1, 4, busy, "10.0.0.6") == []  # another host still gets in
    assert all(t.admit(Conn(f"p{i}"), 5, busy, "") == [] for i in range(3))  # loopback: no share
    assert len(t) == 6
    t.remove(a2)
    assert t.admit(proxy, 6, busy, "10.0.0.5") == [] and len(t) == 6
