"""The broker the gateway runs itself when no `broker.url` is configured.

Mosquitto when its binary is found (`gateway.mosquitto.Mosquitto`), with a password file and an ACL
generated from the device registry, and two listeners (`per_listener_settings`):

- the box listener, `broker.listen_host:listen_port` (every interface by default): registered logins
  only, never anonymous, and `use_username_as_clientid`, so a login can only ever be its own client id:
  a box cannot take the gateway's id or another box's (issue 14, item 3). Boxes already use their device
  id (= their username) as client id, so nothing changes for them.
- the local listener, `127.0.0.1:local_port`: anonymous clients when `broker.allow_anonymous` is on (the
  five-minute trial with `tools/simulate.py`), which may not touch a registered box's topics nor write
  any box's `cmd`. Logins work there too, with free client ids (`flash provision` watches for a box's
  status with the box's login without kicking the box off).

The gateway's own login is `parcelbox-gateway-<random>`, created once per data folder
(`broker/gateway-user`, 0600): on the box listener its client id is that name, which no box can use, and
an anonymous local client cannot guess it. Its password is new at every start.

ACL: each box may only publish and read under its own `<prefix>/<device>/`, photo chunks at their exact
depth (`photo/<event>/<index>`), and only the gateway may write `cmd`. Packets larger than a photo chunk
plus headroom are refused (`max_packet_size`), so a retained message stays small. Persistence saves on
changes (`autosave_on_changes`, every AUTOSAVE_CHANGES changes) rather than every second: an idle broker
never rewrites its database (SD-card wear), and what a broker crash can lose is only queued QoS 1
messages whose events no box has been acked for, which the box spool sends again.

The broker dies with the gateway (parent-death signal) and a restarted gateway stops a broker left over
from its folder before choosing ports (`gateway.mosquitto.stop_leftover`), so the port stays the same.

Otherwise the pure-Python `amqtt` broker, with a loud warning: it is for trying things out (it loses
in-flight messages and queued sessions on a crash, and has no logins, client-id binding or ACL: it
listens on loopback only whatever `listen_host` says).

`refresh()` regenerates the password file and ACL when the registry changed and
sends Mosquitto SIGHUP to reload them; `supervise()` restarts a broker that died.

When `listen_port` is taken (a system Mosquitto on 1883) the broker moves to a free port. So that
`parcelbox flash provision`, `tools/simulate.py` users and scripts need not guess it, the live
address is written to `<data_dir>/broker.json` (no credentials) and removed on a clean stop;
`read_live_address` ignores a file left by a crash (no gateway holds the data folder's lock).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.datalock import DataDirLock
from gateway.devices import GATEWAY_USER, DeviceRegistry
from gateway.mosquitto import Mosquitto, PortTaken, find_mosquitto, free_port, stop_leftover
from gateway.protocol import DEFAULT_LIMITS
from gateway.storage import atomic_write_bytes

log = logging.getLogger(__name__)

AMQTT_WARNING = (
    "Mosquitto is not installed: running the pure-Python amqtt broker instead. It is for TRYING THINGS OUT: "
    "it loses in-flight messages and queued sessions when it crashes, and has no per-box passwords, no "
    "client-id binding and no ACL, so it listens on 127.0.0.1 only. "
    "Install Mosquitto for real use: sudo apt-get install mosquitto"
)

LOCAL_HOST = "127.0.0.1"  # the local (trying-out) listener's address

# The largest packet a box sends is a photo chunk: at most Limits.max_chunk_bytes of payload plus the
# topic (prefix, device id <= 32, event id <= 40, index <= 5) and a few header bytes. 4 KiB of headroom
# covers any sane prefix; anything bigger is not ours, and Mosquitto disconnects the sender.
MAX_PACKET_BYTES = DEFAULT_LIMITS.max_chunk_bytes + 4096

# Save the database after this many changes (messages queued or acknowledged, subscriptions, retained
# messages), not on a timer: an idle broker writes nothing, a busy one writes every ~40 photos. A crash
# loses at most these changes: queued QoS 1 messages, never an acked event (the box keeps an event
# until the gateway's ack, and sends it again).
AUTOSAVE_CHANGES = 1000

GATEWAY_USER_FILE = "gateway-user"


def mosquitto_password_hash(password: str, *, iterations: int = 101) -> str:
    """A Mosquitto 2 password-file hash ($7$: PBKDF2-SHA512), as `mosquitto_passwd` writes it."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def gateway_username(broker_dir: Path) -> str:
    """The gateway's broker login name for this data folder: `parcelbox-gateway-<random>`, kept in a
    0600 file so it (and so the gateway's client id, and its persistent session) is stable across
    restarts, yet unknown to anyone who cannot read the data folder."""
    path = Path(broker_dir) / GATEWAY_USER_FILE
    try:
        name = path.read_text().strip()
    except FileNotFoundError:
        name = ""
    if not (name.startswith(GATEWAY_USER + "-") and name.replace("-", "").isalnum()):
        name = f"{GATEWAY_USER}-{secrets.token_hex(8)}"
        atomic_write_bytes(path, (name + "\n").encode(), mode=0o600)
    return name


def password_file_text(
    registry: DeviceRegistry, gateway_password: str, gateway_user: str = GATEWAY_USER
) -> str:
    lines = [f"{gateway_user}:{mosquitto_password_hash(gateway_password)}"]
    for cred in registry.list():
        lines.append(f"{cred.username}:{mosquitto_password_hash(cred.password)}")
    return "\n".join(lines) + "\n"


def acl_text(
    prefix: str,
    allow_anonymous: bool,
    gateway_user: str = GATEWAY_USER,
    registered: list[str] | tuple[str, ...] = (),
) -> str:
    """The Mosquitto ACL: anonymous (local listener only), the gateway, then every box by pattern."""
    lines = ["# generated by parcelbox from the device registry; edits are overwritten"]
    if allow_anonymous:
        # Lines before the first `user` apply to anonymous clients, who only exist on the local
        # listener (the box listener refuses them): simulated boxes, trying things out. They may act
        # as any unregistered box, never touch a registered box's topics (deny wins over the grants
        # below), and never write a `cmd` topic.
        lines.append("# anonymous clients (local listener only)")
        lines += [f"topic deny {prefix}/{box}/#" for box in registered]
        lines += [
            f"topic readwrite {prefix}/+/status",
            f"topic write {prefix}/+/event",
            f"topic write {prefix}/+/photo/+/+",
            f"topic write {prefix}/+/cmd/result",
            f"topic read {prefix}/+/ack",
            f"topic read {prefix}/+/cmd",
            f"topic read {prefix}/+/ota",
            f"topic read {prefix}/+/ota/data",
            f"topic write {prefix}/+/ota/reply",
        ]
    lines += [
        "",
        f"user {gateway_user}",
        "topic readwrite #",
        "",
        "# every registered box (username = device id = its client id): only its own topics",
        # readwrite: `flash provision` watches for the box's online status with the box's own login
        # (the only one it has); reading its own status tells a box nothing it does not know.
        f"pattern readwrite {prefix}/%u/status",
        f"pattern write {prefix}/%u/event",
        # The exact depth of a chunk topic (photo/<event id>/<index>): no retained junk further down.
        f"pattern write {prefix}/%u/photo/+/+",
        f"pattern write {prefix}/%u/cmd/result",
        f"pattern read {prefix}/%u/ack",
        f"pattern read {prefix}/%u/cmd",
        # Over-the-air update (docs/protocol.md): a box reads its own offer and chunks only.
        f"pattern read {prefix}/%u/ota",
        f"pattern read {prefix}/%u/ota/data",
        f"pattern write {prefix}/%u/ota/reply",
    ]
    return "\n".join(lines) + "\n"


def listener_lines(passwd: Path, acl: Path) -> list[str]:
    return [f"password_file {passwd}", f"acl_file {acl}"]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _client_host(listen_host: str) -> str:
    return "127.0.0.1" if listen_host in ("0.0.0.0", "", "::") else listen_host


BROKER_FILE = "broker.json"


@dataclass(frozen=True)
class LiveBroker:
    """What `<data_dir>/broker.json` says about the running managed broker."""

    path: Path
    kind: str
    listen_host: str
    port: int
    url: str  # for clients on this computer (loopback when it listens on every address)
    pid: int
    local_url: str = ""  # the local listener (anonymous trying-out clients, logins with free client ids)


def write_live_address(data_dir: Path, broker: ManagedBroker) -> Path:
    """Write where the managed broker listens, atomically. Never credentials."""
    path = Path(data_dir) / BROKER_FILE
    doc = {
        "v": 1,
        "kind": broker.kind,
        "listen_host": broker.listen.rsplit(":", 1)[0],
        "port": int(broker.listen.rsplit(":", 1)[1]),
        "url": broker.url,
        "local_url": broker.local_url,
        "pid": os.getpid(),
        "started_at": int(time.time()),
    }
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
    return path


def clear_live_address(data_dir: Path) -> None:
    """Remove broker.json if this process wrote it (a clean stop)."""
    path = Path(data_dir) / BROKER_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(doc, dict) and doc.get("pid") == os.getpid():
        with contextlib.suppress(OSError):
            path.unlink()


def read_live_address(data_dir: Path) -> LiveBroker | None:
    """The running gateway's managed broker address, or None (no file, unreadable, or left by a crash)."""
    path = Path(data_dir) / BROKER_FILE
    try:
        doc = json.loads(path.read_text())
        live = LiveBroker(
            path,
            str(doc["kind"]),
            str(doc["listen_host"]),
            int(doc["port"]),
            str(doc["url"]),
            int(doc["pid"]),
            str(doc.get("local_url", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        running = DataDirLock(data_dir).is_held_elsewhere() is not None
    except OSError:
        running = False
    return live if running and 0 < live.port < 65536 else None


class ManagedMosquitto:
    kind = "mosquitto"

    def __init__(self, config: Config, registry: DeviceRegistry, port: int, local_port: int) -> None:
        self.data_dir = Path(config.data_dir)
        self.dir = Path(config.data_dir) / "broker"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.prefix = config.broker.prefix
        self.allow_anonymous = config.broker.allow_anonymous
        self.gateway_username = gateway_username(self.dir)
        self.gateway_password = secrets.token_urlsafe(24)
        self.passwd_path = self.dir / "passwd"
        self.acl_path = self.dir / "acl"
        self._registry_mtime = -1.0
        self._restarts = 0
        self._next_restart = 0.0
        self.write_auth()
        auth = listener_lines(self.passwd_path, self.acl_path)
        self.mosquitto = Mosquitto(
            self.dir,
            host=config.broker.listen_host,
            port=port,
            per_listener_settings=True,
            allow_anonymous=False,  # the box listener: logins only, whatever allow_anonymous says
            listener_config=[*auth, "use_username_as_clientid true"],
            extra_listeners=[
                f"listener {local_port} {LOCAL_HOST}",
                f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
                *auth,
            ],
            autosave_interval=AUTOSAVE_CHANGES,
            autosave_on_changes=True,
            max_packet_size=MAX_PACKET_BYTES,
            die_with_parent=True,
        )
        self.listen = f"{config.broker.listen_host}:{port}"
        self.url = f"mqtt://{_client_host(config.broker.listen_host)}:{port}"
        self.local_url = f"mqtt://{LOCAL_HOST}:{local_port}"

    def write_auth(self) -> None:
        self._registry_mtime = self.registry.mtime()
        boxes = self.registry.list()
        atomic_write_bytes(
            self.passwd_path,
            password_file_text(self.registry, self.gateway_password, self.gateway_username).encode(),
            mode=0o600,
        )
        acl = acl_text(self.prefix, self.allow_anonymous, self.gateway_username, [b.username for b in boxes])
        atomic_write_bytes(self.acl_path, acl.encode(), mode=0o600)

    def start(self) -> None:
        self.mosquitto.start()

    def drop_session(self, client_id: str, timeout: float = 5.0) -> None:
        """Discard a persistent session stored under `client_id` (nothing happens if there is none).

        Before client ids were bound to logins the gateway connected as `client_id` (derived from the
        data folder's path). That session stays subscribed to every box's events, so Mosquitto would
        queue them for it forever (no queue limit). A clean-session connection under that id, with the
        gateway's login on the local listener (free client ids there), discards it.
        """
        if not client_id or client_id == self.gateway_username:
            return
        import paho.mqtt.client as mqtt

        answered: list[bool] = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        c.username_pw_set(self.gateway_username, self.gateway_password)
        c.on_connect = lambda *_a: answered.append(True)
        try:
            c.connect(LOCAL_HOST, int(self.local_url.rsplit(":", 1)[1]), keepalive=10)
            deadline = time.monotonic() + timeout
            while not answered and time.monotonic() < deadline:  # bounded
                c.loop(0.1)
            c.disconnect()
        except OSError as exc:
            log.warning("could not discard the old gateway session %r: %s", client_id, exc)

    def refresh(self) -> None:
        if self.registry.mtime() != self._registry_mtime:
            self.write_auth()
            if self.mosquitto.running() and self.mosquitto.proc is not None:
                self.mosquitto.proc.send_signal(signal.SIGHUP)
                n = len(self.registry.list())
                log.info("broker credentials reloaded (%d %s registered)", n, "box" if n == 1 else "boxes")

    def supervise(self) -> None:
        if self.mosquitto.running() or time.monotonic() < self._next_restart:
            return
        self._restarts += 1
        delay = min(60.0, 2.0**self._restarts)
        self._next_restart = time.monotonic() + delay
        log.error("mosquitto died (%s); restarting (attempt %d)", self.mosquitto.tail_log(3), self._restarts)
        try:
            self.mosquitto.start()
        except Exception as exc:
            log.error("mosquitto restart failed: %s; next try in %.0fs", exc, delay)

    def stop(self) -> None:
        clear_live_address(self.data_dir)
        self.mosquitto.stop()
        self.mosquitto.release_port()  # held across the supervisor's restarts; the gateway is done now


class ManagedAmqtt:
    kind = "amqtt"

    def __init__(self, config: Config, port: int) -> None:
        self.data_dir = Path(config.data_dir)
        # No logins, no client-id binding, no ACL: never on the LAN, whatever listen_host says.
        self.host = LOCAL_HOST
        self.port = port
        self.gateway_username = GATEWAY_USER
        self.gateway_password = ""
        self.listen = f"{self.host}:{port}"
        self.url = f"mqtt://{_client_host(self.host)}:{port}"
        self.local_url = self.url  # one listener, anonymous: the same address
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None  # amqtt.broker.Broker (untyped)
        self._error: BaseException | None = None

    def start(self) -> None:
        """Listen on the chosen port or, if another process took it since `_choose_port` found it free,
        on a port the kernel picks at amqtt's bind, which nothing can take first (this used to stop the
        gateway). Where it listens is then in `listen`, `url` and broker.json."""
        try:
            self._start_on(self.port)
        except PortTaken as exc:
            log.warning("%s; the amqtt broker listens on a free port instead", exc)
            self._start_on(0)
        bound = self._bound_port()
        if bound and bound != self.port:
            self.port = bound
            self.listen = f"{self.host}:{bound}"
            self.url = self.local_url = f"mqtt://{_client_host(self.host)}:{bound}"

    def _bound_port(self) -> int | None:
        """The port amqtt's listener really holds (asked for 0: the kernel picked it)."""
        try:
            return int(self._broker._servers["default"].instance.sockets[0].getsockname()[1])
        except (AttributeError, KeyError, IndexError, TypeError):  # amqtt internals moved: keep ours
            return None

    def _start_on(self, port: int) -> None:
        from amqtt.broker import Broker

        # amqtt logs every session step at INFO (and its `transitions` state machine every state
        # change): dozens of lines per start that say nothing to a user. Its warnings still show.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        ready = threading.Event()
        cfg = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                broker = self._broker = Broker(cfg, loop=loop)
                loop.run_until_complete(broker.start())
            except BaseException as exc:  # reported to start()
                self._error = exc
                loop.close()
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._error = None
        self._thread = threading.Thread(target=run, name="amqtt", daemon=True)
        self._thread.start()
        ready.wait(15)
        if self._error is not None:
            self._broker = self._loop = None
            if _address_in_use(self._error):
                raise PortTaken(f"{self.host}:{port} is taken by another process")
            raise RuntimeError(f"amqtt broker failed to start: {self._error}")
        if not ready.is_set():
            raise RuntimeError(f"amqtt broker did not open {self.host}:{port}")
        # No connect-and-close probe of the port here (as for Mosquitto): `Broker.start()` returns once
        # its listener is bound, and amqtt logs a probe that sends no CONNECT as an ERROR.

    def refresh(self) -> None:
        pass

    def supervise(self) -> None:
        pass

    def stop(self) -> None:
        clear_live_address(self.data_dir)
        if self._loop is None or self._broker is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            fut.result(10)
        except Exception as exc:
            log.warning("amqtt shutdown: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)


ManagedBroker = ManagedMosquitto | ManagedAmqtt


def _address_in_use(exc: BaseException | None) -> bool:
    """Whether `exc` or what it was raised from is EADDRINUSE (amqtt wraps the OSError in BrokerError)."""
    for _ in range(10):  # bounded: a cause chain is short
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _choose_port(host: str, wanted: int, what: str, avoid: int = 0) -> int:
    """`wanted` if free on `host`, else a free port (logged); 0 asks for a free port."""
    if wanted and wanted != avoid and _port_free(host, wanted):
        return wanted
    chosen = free_port(host)
    while chosen == avoid:  # bounded in practice: the kernel hands out a different port next time
        chosen = free_port(host)
    if wanted:
        log.warning(
            "port %d on %s is in use (a system Mosquitto?); the managed broker's %s uses port %d instead",
            wanted,
            host,
            what,
            chosen,
        )
    return chosen


def start_managed_broker(config: Config, registry: DeviceRegistry) -> ManagedBroker:
    """Start Mosquitto (or amqtt as a fallback) on `broker.listen_host:listen_port`, or a free port if taken.

    A Mosquitto left running from this data folder by a gateway that died (SIGKILL outside systemd) is
    stopped first: it holds our port, and a broker nobody supervises must not keep accepting boxes.
    """
    broker_dir = Path(config.data_dir) / "broker"
    use_mosquitto = config.broker.prefer == "mosquitto" and find_mosquitto() is not None
    if use_mosquitto:
        old = stop_leftover(broker_dir)
        if old is not None:
            log.warning(
                "stopped a broker (pid %d) left over from this data folder by a gateway that died", old
            )
    host = config.broker.listen_host if use_mosquitto else LOCAL_HOST
    broker: ManagedBroker
    if use_mosquitto:
        # A port free when chosen can be taken before Mosquitto binds it (another program starting at
        # the same moment): choose again, which moves off the now-taken port, as for one taken before.
        for attempt in range(3):
            port = _choose_port(host, config.broker.listen_port, "box listener")
            local_port = _choose_port(LOCAL_HOST, config.broker.local_port, "local listener", avoid=port)
            broker = ManagedMosquitto(config, registry, port, local_port)
            try:
                broker.start()
                break
            except PortTaken as exc:
                broker.mosquitto.release_port()  # whichever of its ports it held: we move off them
                if attempt == 2:
                    raise
                log.warning("%s; choosing the broker's ports again", exc)
    else:
        port = _choose_port(host, config.broker.listen_port, "box listener")
        log.warning("!" * 20 + " %s " + "!" * 20, AMQTT_WARNING)
        broker = ManagedAmqtt(config, port)
        broker.start()
    child = getattr(broker, "mosquitto", None)  # amqtt runs in this process; Mosquitto is a child
    where = f"pid {child.pid}" if child is not None else "in the gateway process"
    log.info("managed %s broker listening on %s (%s)", broker.kind, broker.listen, where)
    if child is not None:
        anon = "anonymous allowed" if config.broker.allow_anonymous else "logins only"
        log.info("local listener %s (%s)", broker.local_url, anon)
    try:
        path = write_live_address(Path(config.data_dir), broker)
        log.info("broker address written to %s", path)
    except OSError as exc:  # the broker works without it; provision then needs --broker-port
        log.warning("could not write the broker address file: %s", exc)
    return broker


def start_for_gateway(config: Config, registry: DeviceRegistry, client_id: str) -> ManagedBroker:
    """The gateway's start: `start_managed_broker`, then drop the session stored under `client_id`,
    the id the gateway used before ids were bound to logins (`ManagedMosquitto.drop_session` says why)."""
    broker = start_managed_broker(config, registry)
    drop = getattr(broker, "drop_session", None)
    if drop is not None:  # ManagedMosquitto only
        drop(client_id)
    return broker
