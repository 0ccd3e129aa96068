"""`WebServer`: the dashboard as a gateway component (uvicorn on its own thread and event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from gateway.fdlimit import web_connection_cap
from gateway.ports import GatewayPort
from gateway.web.app import create_app
from gateway.web.auth import read_password_hash
from gateway.web.connections import ConnectionTable, capped_protocol, sweep_forever
from gateway.web.settings import WebSettings

log = logging.getLogger(__name__)

# Connections asyncio accepts per loop pass (and the listen backlog): what can be open before the
# connection table sees them is a small multiple of this.
ACCEPT_BATCH = 32
KEEP_ALIVE_S = 5
# Where the dashboard really listens (it moves to a free port when `[web] port` is taken), for
# `parcelbox status`; removed on a clean stop, like the broker's broker.json.
WEB_FILE = "web.json"


def read_live_url(data_dir: Path | str) -> str | None:
    """The running dashboard's URL from `<data_dir>/web.json`, or None."""
    try:
        doc = json.loads((Path(data_dir) / WEB_FILE).read_text())
    except (OSError, ValueError):
        return None
    url = doc.get("url") if isinstance(doc, dict) else None
    return url if isinstance(url, str) else None


def _phone_host(host: str) -> str:
    """A host a phone on the LAN can open: a wildcard bind (0.0.0.0, ::) is not an address."""
    if host in ("0.0.0.0", "::", ""):
        try:
            from gateway.flash.devconfig import lan_address

            return lan_address() or host
        except Exception:
            return host
    return host


class WebServer:
    """Serves the dashboard for `port`. `start()` returns once the socket is bound (or raises)."""

    def __init__(
        self,
        port: GatewayPort,
        web_config: Any = None,
        *,
        data_dir: Path | str | None = None,
        whatsapp: Any = None,
    ) -> None:
        self.settings = (
            web_config
            if isinstance(web_config, WebSettings)
            else WebSettings.from_config(web_config, data_dir)
        )
        self.gateway = port
        self.app = create_app(port, self.settings, whatsapp=whatsapp)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.bound_port: int | None = None
        self.listen_socket: socket.socket | None = None
        self.connections: ConnectionTable | None = None
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.moved_from: int | None = None  # the configured port, when it was taken

    @property
    def url(self) -> str:
        host = _phone_host(self.settings.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.bound_port}"

    @property
    def summary(self) -> str | None:
        """The startup summary line (`gateway.app.summary`)."""
        if self.bound_port is None:
            return None
        s = self.settings
        if s.login_required:
            how = (
                "login required"
                if read_password_hash(s.password_file)
                else "NO PASSWORD SET: run `parcelbox web set-password`"
            )
            line = f"dashboard     {self.url}  ({how})"
        else:
            line = (
                f"dashboard     {self.url}  (this machine only; set [web] host to share it, with a password)"
            )
        if self.moved_from is not None:
            line += (
                f"\n                port {self.moved_from} was taken; set [web] port (or PARCELBOX_WEB_PORT) "
                "to choose another"
            )
        return line

    def start(self) -> None:
        if not self.settings.enabled:
            log.info("web: dashboard disabled in config")
            return
        s = self.settings
        if s.login_required and not read_password_hash(s.password_file):
            log.warning(
                "web: dashboard on %s needs a login but no password is set; run `parcelbox web set-password`",
                s.host,
            )
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this: without it, a response's header and body writes wait
        # for the client's delayed ACK (about 40 ms per request).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((s.host, s.port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE or not s.port:
                sock.close()
                raise OSError(e.errno, f"dashboard cannot listen on {s.host}:{s.port}: {e.strerror}") from e
            # Taken (another program, a second gateway's dashboard): move to a free port, as the managed
            # broker does, rather than exit (and restart-loop under systemd). The banner, the log and
            # `parcelbox status` say where it went.
            sock.bind((s.host, 0))
            self.moved_from = s.port
        cap = web_connection_cap(s.max_connections)
        backlog = min(ACCEPT_BATCH, cap)
        sock.listen(backlog)
        self.bound_port = sock.getsockname()[1]
        self.listen_socket = sock
        table = self.connections = ConnectionTable(cap, s.idle_timeout_s, per_client=max(4, cap // 4))
        self.app.state.connections = table  # for /api/health
        if self.moved_from is not None:
            log.warning(
                "web: port %d on %s is in use; the dashboard uses port %d instead (set [web] port or "
                "PARCELBOX_WEB_PORT to choose one)",
                self.moved_from,
                s.host,
                self.bound_port,
            )
        config = uvicorn.Config(
            self.app,
            # Our h11 protocol behind a connection cap and idle timeout (gateway/web/connections.py);
            # uvicorn's limit_concurrency is not used: it counts requests, not open sockets.
            http=capped_protocol(table),
            backlog=backlog,
            timeout_keep_alive=KEEP_ALIVE_S,
            log_level="warning",
            log_config=None,  # uvicorn's lines go through the gateway's handler (and its repeat filter)
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=3,
            proxy_headers=False,
        )
        server = self._server = uvicorn.Server(config)
        started = threading.Event()

        async def serve() -> None:
            sweeper = asyncio.create_task(sweep_forever(table, min(1.0, s.idle_timeout_s / 4)))
            try:
                await server.serve(sockets=[sock])
            finally:
                sweeper.cancel()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            started.set()
            try:
                loop.run_until_complete(serve())
            except Exception:
                log.exception("web: dashboard server stopped with an error")
            finally:
                sock.close()
                loop.close()

        self._thread = threading.Thread(target=run, name="web", daemon=True)
        self._thread.start()
        started.wait(10)
        for _ in range(1000):  # bounded: at most ~10 s
            if self._server.started or not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not self._server.started:
            raise RuntimeError("dashboard server did not start; see the log")
        log.info(
            "web: dashboard on %s%s (at most %d connections)",
            self.url,
            " (login required)" if s.login_required else "",
            cap,
        )
        self._write_live_url()

    def _write_live_url(self) -> None:
        if self.data_dir is None:
            return
        from gateway.storage import atomic_write_bytes

        doc = {
            "v": 1,
            "url": self.url,
            "port": self.bound_port,
            "pid": os.getpid(),
            "started_at": int(time.time()),
        }
        try:
            atomic_write_bytes(self.data_dir / WEB_FILE, (json.dumps(doc) + "\n").encode(), durable=False)
        except OSError as exc:  # the dashboard works without it; only `status` cannot show the URL
            log.warning("web: could not write %s: %s", self.data_dir / WEB_FILE, exc)

    def _clear_live_url(self) -> None:
        if self.data_dir is None:
            return
        path = self.data_dir / WEB_FILE
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()

    def stop(self, timeout: float = 10.0) -> None:
        server, loop, thread = self._server, self._loop, self._thread
        if server is None or thread is None:
            return
        # End the live streams first: uvicorn waits for open responses before it exits.
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self.app.state.broadcaster.close)
            except RuntimeError:
                pass
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._server = self._thread = self._loop = None
        self.listen_socket = None
        self._clear_live_url()


def web_component(service: Any, config: Any) -> WebServer | None:
    """For `gateway.app.build_components`: the dashboard for a running `GatewayService`, or None
    when `[web] enabled = false`."""
    from gateway.web.i18n import host_timezone
    from gateway.web.whatsapp_actions import WhatsAppActions

    web_cfg = getattr(config, "web", None)
    if web_cfg is not None and not getattr(web_cfg, "enabled", True):
        return None
    settings = WebSettings.from_config(web_cfg, getattr(service, "data_dir", None))
    whatsapp_cfg = getattr(config, "whatsapp", None)
    settings.language = (
        getattr(web_cfg, "language", "") or getattr(whatsapp_cfg, "language", "") or settings.language
    )
    alerts_cfg = getattr(config, "alerts", None)
    # The same zone the captions use, so the dashboard and WhatsApp never disagree about a time.
    settings.timezone = getattr(alerts_cfg, "timezone", "") or host_timezone()
    return WebServer(
        service,
        settings,
        data_dir=getattr(service, "data_dir", None),
        whatsapp=WhatsAppActions.for_service(service),
    )
