"""A hostile LAN client against the real gateway (`parcelbox run` as a subprocess, real Mosquitto).

- Idle connections: under a small file-descriptor limit (as systemd's default LimitNOFILE=1024
  once was), hundreds of idle dashboard connections must not stop photo deliveries, the dashboard
  must still answer a newcomer, and the log must not fill with "out of system resource".
- Huge bodies: an endless `POST /login` (no login needed) is refused at the limit, and the
  gateway's memory does not grow with it.
"""

from __future__ import annotations

import socket

import httpx
import pytest

from gateway.web.auth import set_password
from tests.support.e2e import GatewayProc, wait_for
from tests.support.gateway_core import Box, make_jpeg, new_event_id

PASSWORD = "correct horse battery"
# Small enough that the old server ran out of descriptors with a few hundred idle sockets.
NOFILE = 384
IDLE_CONNECTIONS = 600


@pytest.fixture
def gateway(tmp_path, mosquitto, prefix, request):
    login = getattr(request, "param", None) == "login"
    gw = GatewayProc(
        tmp_path / "gw",
        mosquitto.url,
        prefix,
        extra={"web": {"enabled": True, "port": 0, "idle_timeout_s": 3.0, "require_login": login}},
        nofile=NOFILE,
    )
    if login:  # what `parcelbox web set-password` writes
        set_password(gw.data_dir / "web" / "password", PASSWORD)
    gw.start()
    try:
        # port 0: the dashboard's own pick, read from web.json (no window for another process to take it)
        gw.web_port = int(gw.web_url().rsplit(":", 1)[1])  # type: ignore[attr-defined]
        yield gw
    finally:
        gw.kill()


def open_idle(port: int, n: int) -> tuple[list[socket.socket], int]:
    """Up to `n` connections that never send a byte; returns them and how many connects failed."""
    socks: list[socket.socket] = []
    failed = 0
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            failed += 1
    return socks, failed


def test_idle_connections_cannot_starve_ingest_or_the_dashboard(gateway, mosquitto, prefix) -> None:
    gw = gateway
    box = Box(mosquitto.url, prefix, "box1")
    socks: list[socket.socket] = []
    try:
        first = new_event_id()
        box.send(first, make_jpeg(320, 240, seed=1))
        assert box.wait_ack(first)["ok"] is True

        socks, _ = open_idle(gw.web_port, IDLE_CONNECTIONS)
        assert len(socks) > NOFILE  # more than the process could hold, had it kept them all
        # The gateway keeps well under its limit whatever arrives...
        assert gw.open_fds() < NOFILE * 3 // 4
        # ...so a photo delivered now is stored (photo files, journal, folder sink) and acked,
        eid = new_event_id()
        photo = make_jpeg(640, 480, seed=2)
        box.send(eid, photo)
        assert box.wait_ack(eid, timeout=30) == {"v": 1, "id": eid, "ok": True}
        wait_for(
            lambda: gw.alerts_for("delivery", "box1")[1:], 30, what="the second alert in the folder sink"
        )
        # ...and a newcomer to the dashboard is served, while the flood is still connected.
        with httpx.Client(base_url=f"http://127.0.0.1:{gw.web_port}", timeout=10) as c:
            h = c.get("/api/health").json()
            conns = h["web"]["connections"]
            assert conns["max"] == NOFILE // 4 and conns["open"] <= conns["max"]
            closed = conns["evicted"] + conns["refused"] + conns["timed_out"]
            # Of the connections that were made (a connect refused under load never reached the
            # gateway), all but the ones it may keep were closed by it.
            assert conns["evicted"] > 0 and closed >= len(socks) - conns["max"]
            assert c.get(f"/api/events/box1/{eid}").status_code == 200
    finally:
        for s in socks:
            s.close()
        box.close()
    assert gw.running()
    log = gw.log_path.read_text(errors="replace")
    assert log.count("out of system resource") <= 5
    assert "Too many open files" not in log
    assert len(log) < 200_000, f"log grew to {len(log)} bytes"


def test_slowloris_connections_are_closed_after_the_idle_timeout(gateway) -> None:
    gw = gateway
    with socket.create_connection(("127.0.0.1", gw.web_port), timeout=5) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # headers never finish
        s.settimeout(30)  # a bound for the test, well past the 3 s idle timeout
        assert s.recv(1024) == b""  # the gateway closed it
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.web_port}", timeout=10) as c:
        assert c.get("/api/health").json()["web"]["connections"]["timed_out"] >= 1


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("gateway", ["login"], indirect=True)
def test_endless_login_body_is_cut_off_and_memory_stays_flat(gateway) -> None:
    """The issue's attack: a login-required dashboard, and a body for the one route open to all."""
    gw = gateway
    before = _rss_kib(gw.pid)
    chunk = b"p" * 65536
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", gw.web_port), timeout=10) as s:
        s.sendall(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(1600):  # up to 100 MB, never terminated: only the limit ends it
            try:
                s.sendall(frame)
            except OSError:
                break
            sent += len(chunk)
        answer = b""
        try:
            answer = s.recv(4096)
        except OSError:
            pass  # reset after the answer: the 413 is checked through the counter below
    assert sent < 100 * 65536, "the gateway read an endless body to the end"
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.web_port}", timeout=10, follow_redirects=False) as c:
        c.get("/login")
        r = c.post("/login", data={"password": PASSWORD, "csrf": c.cookies.get("pb_csrf")})
        assert r.status_code == 303, r.text  # the owner still gets in
        assert c.get("/api/health").json()["web"]["body_too_large"] == 1
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413 ")
    assert _rss_kib(gw.pid) - before < 20 * 1024
