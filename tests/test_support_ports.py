"""The test servers keep the port they were given: a reserved port cannot be taken by another process
(parallel xdist workers) before the server listens on it, and a refused connect stands for a service
that is down."""

from __future__ import annotations

import errno
import socket
import urllib.request

import pytest

from tests.support.servers import HttpSink, SmtpSink, reserve_port


def _bind(port: int) -> None:
    with socket.socket() as other:  # another process's server, SO_REUSEADDR as most set it
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", port))
        other.listen(1)


def test_a_reserved_port_is_refused_then_served_on_the_same_socket():
    sock = reserve_port()
    port = sock.getsockname()[1]
    with pytest.raises(OSError) as exc:
        _bind(port)
    assert exc.value.errno == errno.EADDRINUSE
    with pytest.raises(ConnectionRefusedError):  # reserved, not listening: "the receiver is down"
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    sink = HttpSink().start(sock)
    try:
        assert sink.port == port
        req = urllib.request.Request(f"http://127.0.0.1:{port}/hook", data=b"x", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        assert [r.body for r in sink.to("/hook")] == [b"x"]
    finally:
        sink.stop()


def test_the_smtp_sink_serves_the_socket_it_bound_first():
    smtp = SmtpSink()
    try:
        with pytest.raises(OSError) as exc:
            _bind(smtp.port)
        assert exc.value.errno == errno.EADDRINUSE
        with socket.create_connection(("127.0.0.1", smtp.port), timeout=5) as c:
            assert c.recv(1024).startswith(b"220")
    finally:
        smtp.stop()
