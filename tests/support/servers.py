"""Real servers on loopback for the sink tests: an HTTP endpoint and an SMTP server.

`HttpSink` is a real `http.server.ThreadingHTTPServer`: each path answers with the
statuses scripted for it (then 200), records every request, and a path can be held
(`hold(path)`) until the test releases it - a "slow service" without sleeps. `SmtpSink`
is aiosmtpd's real SMTP server (`aiosmtpd.controller.Controller`, aiosmtpd 1.4.6).

Both listen on a socket bound here and kept: picking a free port, closing it and binding it again
later leaves a window in which another test worker's process can take the port.
"""

from __future__ import annotations

import email
import http.server
import socket
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def reserve_port(host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket bound to a free port on `host` and not listening: the port is ours (connects to it
    are refused, as to a service that is down) until the socket is closed or handed to `HttpSink.start`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    return sock


@dataclass
class HttpSink:
    statuses: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    requests: list[Request] = field(default_factory=list)
    held: dict[str, threading.Event] = field(default_factory=dict)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    server: Any = None

    def start(self, sock: socket.socket | None = None) -> HttpSink:
        """Serve on a free loopback port, or on `sock` (bound by `reserve_port()`, not yet listening)."""
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                path = self.path.split("?", 1)[0]
                with sink.arrived:
                    sink.requests.append(Request("POST", path, dict(self.headers), body))
                    sink.arrived.notify_all()
                gate = sink.held.get(path)
                if gate is not None:
                    gate.wait(60)
                script = sink.statuses.get(path)
                status = script.pop(0) if script else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        if sock is None:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        else:  # the reserved socket: bound all along, so no other process took its port meanwhile
            self.server = http.server.ThreadingHTTPServer(
                sock.getsockname(), Handler, bind_and_activate=False
            )
            self.server.socket.close()
            self.server.socket = sock
            self.server.server_address = sock.getsockname()
            self.server.server_activate()  # listen()
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def hold(self, path: str) -> threading.Event:
        self.held[path] = threading.Event()
        return self.held[path]

    def to(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 30.0) -> list[Request]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.to(path)) >= count, timeout)
            return self.to(path)

    def stop(self) -> None:
        for gate in self.held.values():
            gate.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class SmtpSink:
    """aiosmtpd's SMTP server on a free loopback port; parsed messages in `messages`."""

    def __init__(self, login: tuple[str, str] | None = None) -> None:
        """`login`: AUTH offered without TLS (loopback test only) and only this user/password accepted."""
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.logins: list[str] = []
        self.arrived = threading.Condition()
        self.sock = reserve_port()  # kept and handed to the server: no window to lose the port in
        self.port: int = self.sock.getsockname()[1]
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                msg = email.message_from_bytes(envelope.content, policy=policy.default)
                with sink.arrived:
                    sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
                    sink.arrived.notify_all()
                return "250 OK"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
            ok = (
                isinstance(data, LoginPassword)
                and login is not None
                and (data.login.decode(), data.password.decode()) == login
            )
            if ok:
                self.logins.append(data.login.decode())
            return AuthResult(success=ok)

        extra: dict[str, Any] = {}
        if login is not None:
            extra = {"authenticator": authenticator, "auth_require_tls": False}
        bound = self.sock

        class OnBoundSocket(Controller):  # type: ignore[misc]
            """aiosmtpd 1.4.6 `InetMixin._create_server` binds host:port itself; serve our socket."""

            def _create_server(self) -> Any:
                return self.loop.create_server(self._factory_invoker, sock=bound, ssl=self.ssl_context)

        self.controller = OnBoundSocket(Handler(), hostname="127.0.0.1", port=self.port, **extra)
        self.controller.start()

    def wait_for(self, count: int = 1, timeout: float = 30.0) -> list[tuple[str, list[str], EmailMessage]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def stop(self) -> None:
        self.controller.stop()
