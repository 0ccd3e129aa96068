"""Run a Mosquitto broker as a child process: generated config, free loopback port,
start / stop (SIGTERM, which saves persistence) / kill (SIGKILL) / restart.

Used by the gateway's managed-broker mode and by the test suite's broker fixture,
so the broker the tests exercise is configured like the one users run (the managed
broker adds its listeners, limits and persistence policy through the constructor).

A broker must not outlive the process that started it (issue 14, item 13): with
`die_with_parent` the child asks Linux for SIGTERM when its parent dies
(prctl PR_SET_PDEATHSIG; SIGTERM, so Mosquitto still saves its database), and every
start writes `<data_dir>/mosquitto.pid`, so the next start can find and stop a broker
left over from this folder (`stop_leftover`), checking in /proc that the pid really is
a mosquitto running this folder's config before signalling it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

PID_FILE = "mosquitto.pid"
CONF_FILE = "mosquitto.conf"

_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin"]
)


class BrokerError(RuntimeError):
    pass


class PortTaken(BrokerError):
    """Another process holds the broker's port (it was free when picked, then taken before our bind)."""


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, also looking in sbin folders that a user's PATH often lacks."""
    return shutil.which("mosquitto", path=_SEARCH_PATH)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def hold_port(host: str, port: int = 0) -> socket.socket | None:
    """Reserve `host:port` (0: a free port) with a bound socket that never listens; None if it is taken.

    With SO_REUSEADDR on both sides Linux lets a listener (Mosquitto sets it) bind and listen on a port
    that such a socket holds, while a plain bind() and the ports the kernel hands out (bind to port 0,
    a client's outgoing connection) leave it alone. So a broker's port stays ours while the broker is
    down between a stop and the next start; without this another process could take it in that gap.
    Linux only: BSD and macOS refuse the listener's bind beside such a socket (None there: no hold).
    """
    if not sys.platform.startswith("linux"):
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except OSError:
        s.close()
        return None
    return s


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP `port` (any address), from /proc/net; None where there is no /proc."""
    inodes: set[str] = set()
    found = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            f = line.split()
            # sl local_address rem_address st ... inode; st 0A is LISTEN
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes if found else None


def holds_listener(pid: int, port: int) -> bool | None:
    """Whether process `pid` owns a socket listening on `port`; None when Linux's /proc cannot tell."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except PermissionError:
        return None
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when its parent dies (Linux), else None.

    libc and prctl are looked up here, before fork, so the child only calls into C. Linux sends the
    signal when the *thread* that forked exits, so start the broker from a thread that lives as long
    as the gateway (the main thread, or the gateway's housekeeping thread for restarts).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
            os._exit(1)

    return preexec


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped yet) has an empty cmdline and holds no port.
    return bool(_cmdline(pid)) or not Path(f"/proc/{pid}").exists()


def leftover_pid(data_dir: Path | str) -> int | None:
    """The pid of a Mosquitto still running this folder's config, from its pid file, or None.

    Only a process whose command line is `<...>mosquitto -c <data_dir>/mosquitto.conf` counts: a pid
    file outlives its process, and the pid may since belong to anything.
    """
    data_dir = Path(data_dir)
    try:
        pid = int((data_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 1 or pid == os.getpid():
        return None
    args = _cmdline(pid)
    conf = str(data_dir / CONF_FILE)
    if len(args) >= 3 and os.path.basename(args[0]) == "mosquitto" and args[1:3] == ["-c", conf]:
        return pid
    return None


def stop_leftover(data_dir: Path | str, timeout: float = 10.0) -> int | None:
    """Stop a broker left running from `data_dir` by a process that died (SIGTERM, then SIGKILL).

    Returns its pid, or None when there was none. Call it only while holding the data folder's lock:
    then no live gateway owns that broker.
    """
    pid = leftover_pid(data_dir)
    if pid is None:
        with contextlib.suppress(OSError):
            (Path(data_dir) / PID_FILE).unlink()
        return None
    log.warning("stopping mosquitto pid %d left running from %s by a gateway that died", pid, data_dir)
    try:
        os.kill(pid, signal.SIGTERM)  # it saves its database on the way out
    except ProcessLookupError:
        return pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        log.warning("mosquitto pid %d ignored SIGTERM for %.0fs; killing it", pid, timeout)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
    with contextlib.suppress(OSError):
        (Path(data_dir) / PID_FILE).unlink()
    return pid


class Mosquitto:
    """One Mosquitto process with its config and persistence in `data_dir`.

    The port is picked once (a free loopback port unless given) and kept across
    restarts, so clients reconnect to the same address like they would in life. From the first start
    this object holds its listeners' ports (`hold_port`) until `release_port()`, so no other process
    can take them while the broker is stopped or being restarted.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_config: Iterable[str] = (),
        allow_anonymous: bool = True,
        binary: str | None = None,
        listener_config: Iterable[str] = (),
        extra_listeners: Iterable[str] = (),
        per_listener_settings: bool = False,
        autosave_interval: int = 1,
        autosave_on_changes: bool = False,
        max_packet_size: int = 0,
        die_with_parent: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        # A port we picked may be taken by another process before Mosquitto binds it (parallel test
        # workers, any program): until the first start succeeds we may pick another; after it the port
        # is kept across restarts, as clients remember it.
        self._may_move = not port
        self.extra_config = list(extra_config)
        self.allow_anonymous = allow_anonymous
        self.listener_config = list(listener_config)  # options of the first listener
        self.extra_listeners = list(extra_listeners)  # more `listener ...` blocks, after the first
        self.per_listener_settings = per_listener_settings
        self.autosave_interval = autosave_interval
        self.autosave_on_changes = autosave_on_changes
        self.max_packet_size = max_packet_size
        self.die_with_parent = die_with_parent
        found = binary or find_mosquitto()
        if not found:
            raise BrokerError("mosquitto not found; install it with: sudo apt-get install mosquitto")
        self.binary: str = found
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf_path = self.data_dir / CONF_FILE
        self.log_path = self.data_dir / "mosquitto.log"
        self.pid_path = self.data_dir / PID_FILE
        self._holds: dict[tuple[str, int], socket.socket] = {}  # (host, port) -> hold_port() socket

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def config_text(self) -> str:
        lines = ["# generated by parcelbox; edits are overwritten"]
        if self.per_listener_settings:  # must come before any listener
            lines.append("per_listener_settings true")
        lines += [
            "persistence true",
            f"persistence_location {self.data_dir}/",
            # Fixture default 1 s: a SIGKILL loses at most ~1 s of queued QoS 1 messages. The managed
            # broker saves on changes instead (gateway/broker.py says why).
            f"autosave_interval {self.autosave_interval}",
            f"autosave_on_changes {'true' if self.autosave_on_changes else 'false'}",
            # 0 = no limit: queued QoS 1 messages for an offline gateway are never dropped by count.
            "max_queued_messages 0",
            # Nagle off: an ack right after a PUBACK otherwise waits for the box's delayed TCP ACK,
            # ~40 ms per event (bench/ingest.py: bare-broker ack p50 45 -> 5 ms at 10 events/s).
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
        ]
        if self.max_packet_size:
            lines.append(f"max_packet_size {self.max_packet_size}")
        if os.geteuid() == 0:
            # Mosquitto drops to user "mosquitto" when started as root, which then cannot
            # write a data folder owned by root; stay root instead.
            lines.append("user root")
        lines += self.extra_config
        lines += [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            *self.listener_config,
            *self.extra_listeners,
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        for attempt in range(3):
            try:
                self._start_once(timeout)
            except PortTaken:
                if not self._may_move or attempt == 2:
                    raise
                self.release_port()
                self.port = free_port(self.host)
                continue
            self._may_move = False
            return

    def _start_once(self, timeout: float) -> None:
        if self.running():
            return
        self._hold_ports()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.config_text())
        try:
            log_start = self.log_path.stat().st_size
        except OSError:
            log_start = 0
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.data_dir / "mosquitto.stderr", "ab"),  # noqa: SIM115 - owned by the child
            start_new_session=True,
            preexec_fn=_pdeathsig_preexec() if self.die_with_parent else None,  # noqa: PLW1509
        )
        # Where the next start finds this broker if we die without stopping it (stop_leftover).
        try:
            self.pid_path.write_text(f"{self.proc.pid}\n")
        except OSError as exc:
            log.warning("could not write %s: %s", self.pid_path, exc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "Address already in use" in self._log_since(log_start):
                    raise PortTaken(
                        f"mosquitto exited: a port it listens on ({self.host}:{self.port} or another listener's)"
                        f" is taken by another process; see {self.log_path}"
                    )
                raise BrokerError(
                    f"mosquitto exited with {self.proc.returncode}; see {self.log_path}: {self.tail_log()}"
                )
            if wait_for_port(self.host, self.port, 0.2):
                # Something answers; make sure it is our broker and not another process that took the
                # port (ours is then exiting with "Address already in use").
                if holds_listener(self.proc.pid, self.port) is False:
                    self.kill()
                    raise PortTaken(f"{self.host}:{self.port} is taken by another process")
                # Mosquitto opens its listeners one after the other and exits if a later one is taken:
                # up only once it holds them all (or /proc cannot tell).
                if all(holds_listener(self.proc.pid, p) is not False for p in self._extra_ports()):
                    return
                time.sleep(0.05)
        self.kill()
        raise BrokerError(f"mosquitto did not open {self.host}:{self.port} within {timeout}s")

    def _hold_ports(self) -> None:
        """Hold each listener's port not held yet. One another process holds already is left alone:
        Mosquitto then fails to bind it and `_start_once` says PortTaken, as without holds."""
        for host, port in [(self.host, self.port), *self._extra_listeners()]:
            if (host, port) not in self._holds:
                s = hold_port(host, port)
                if s is not None:
                    self._holds[(host, port)] = s

    def release_port(self) -> None:
        """Give the ports back (the broker is done for good, or moves): another process may take them."""
        for s in self._holds.values():
            s.close()
        self._holds.clear()

    def _extra_listeners(self) -> list[tuple[str, int]]:
        """(host, port) of the `listener <port> [host]` blocks after the first ("" host: every address)."""
        out = []
        for line in self.extra_listeners:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "listener" and parts[1].isdigit():
                out.append((parts[2] if len(parts) >= 3 else "", int(parts[1])))
        return out

    def _extra_ports(self) -> list[int]:
        return [port for _host, port in self._extra_listeners()]

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read(64 * 1024).decode(errors="replace")
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Mosquitto writes its persistence file and exits."""
        if not self.running():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._forget_pid()

    def kill(self) -> None:
        """SIGKILL: no chance to save; what was not autosaved is lost, as in a power cut."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._forget_pid()

    def _forget_pid(self) -> None:
        if self.proc is not None and leftover_pid(self.data_dir) is None:
            with contextlib.suppress(OSError):
                self.pid_path.unlink()

    def restart(self, *, hard: bool = False) -> None:
        self.kill() if hard else self.stop()
        self.start()

    def tail_log(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
