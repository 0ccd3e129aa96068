"""The WhatsApp child process: owns the session, talks to WhatsApp, answers the gateway over a pipe.

Started by `supervisor.WhatsAppSupervisor` with the `spawn` start method (never
fork: forking after neonize's Go runtime started deadlocks), so neonize is
imported only here and a Go panic (SIGABRT) kills only this process.

Pipe protocol (pickled dicts over a `multiprocessing` Pipe; never stdout, which
the Go side prints to - it is redirected to `<session_dir>/whatsapp-go.log`):

parent -> child
    {"op": "send", "id", "to": JID, "text", "image": bytes | None}
    {"op": "pair_phone", "phone": digits}
    {"op": "check_numbers", "id", "phones": [digits, ...]}
    {"op": "stop"}
child -> parent
    {"t": "hello", "pid", "transport", "mode"}
    {"t": "state", "state", "detail", "qr", "pair_code", "paired_as", "retry_at", "updated_at"}
    {"t": "sent", "id", "ok", "error", "retry_after_s", "permanent", "message_id"}
    {"t": "numbers", "id", "ok", "numbers": {digits: on WhatsApp?}, "error"}
    {"t": "message", "msg": IncomingMessage as dict}
    {"t": "receipt", "ids": [message id, ...], "status": "delivered" | "read", "ts", "chat"}
    {"t": "groups", "groups": [[jid, name], ...]}
    {"t": "bye", "restart_in_s": float | None}   (None: do not restart; a person must act)

Modes: "run" (the gateway: stay connected, send, receive), "pair" (link a new
device by QR or phone code, then exit), "unlink" (log out and forget the session),
"groups" (list the groups the account is in: their ids are recipients).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gateway.whatsapp import NEONIZE_REQUIREMENT
from gateway.whatsapp.addresses import jid_user
from gateway.whatsapp.lock import SessionLock, SessionLocked
from gateway.whatsapp.settings import BadSessionPath, WhatsAppSettings, check_session_path
from gateway.whatsapp.transport import Transport, TransportError, TransportEvent

log = logging.getLogger("gateway.whatsapp.child")

GO_LOG_NAME = "whatsapp-go.log"
_GO_LOG_MAX = 5 * 1024 * 1024

# A phone pairing code belongs to the QR round it was asked in: whatsmeow's QR channel
# (pair.go / qrchan.go) offers codes for 60 s + 5 x 20 s = 160 s, then the round ends.
PAIR_CODE_VALID_S = 160.0
QR_GRACE_S = 3.0  # a code past its time: wait this long for the next before starting a new round
PHONE_CODE_ROUNDS = 3  # rounds with a fresh phone code before falling back to the QR

RECONNECTING = "reconnecting."  # the supervisor replaces it with "retrying in N s."

# Restart delays the child asks for when it ends on purpose.
RESTART_AFTER_LOCKED_S = 30.0
RESTART_AFTER_LOGOUT_S = 5.0

# ConnectFailure reasons (neonize's ConnectFailureReason names) that mean the session is gone.
_LOGGED_OUT_REASONS = {"LOGGED_OUT", "MAIN_DEVICE_GONE", "UNKNOWN_LOGOUT"}

HOW_TO_PAIR = (
    "Pair it: run `parcelbox whatsapp pair` on the gateway (or open the dashboard's WhatsApp page) "
    "and scan the QR code with WhatsApp on your phone (Settings > Linked devices > Link a device)."
)
# While the gateway runs it owns the session and `parcelbox whatsapp pair` refuses.
HOW_TO_PAIR_RUNNING = (
    "Pair it on the dashboard's WhatsApp page: scan the QR code with WhatsApp on your phone "
    "(Settings > Linked devices > Link a device), or ask for a pairing code there. (`parcelbox whatsapp "
    "pair` works only while the gateway is stopped.)"
)


def seconds(s: float) -> str:
    return f"{s:.0f}" if s >= 10 else f"{s:.1f}"


class PipeLink:
    """The child's end of the pipe; `send` is thread-safe (events arrive on Go's threads)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, msg: dict[str, Any]) -> None:
        with self._lock:
            try:
                self.conn.send(msg)
            except (OSError, EOFError, BrokenPipeError):
                # The parent is gone; the main loop notices on its next recv and exits.
                pass


def make_transport(settings: WhatsAppSettings) -> Transport:
    """The configured transport; imports neonize only when it is the real one."""
    if settings.transport == "fake":
        from gateway.whatsapp.fake import FakeTransport

        if settings.fake_dir is None:
            raise ValueError("whatsapp.transport = 'fake' needs whatsapp.fake_dir")
        return FakeTransport(settings.fake_dir, settings.session_dir)
    if settings.transport == "neonize":
        check_session_path(settings.session_db)  # before importing neonize: a clear refusal
        from gateway.whatsapp.neonize_adapter import NeonizeTransport

        return NeonizeTransport(settings.session_db, push_name=settings.push_name)
    raise ValueError(f"unknown whatsapp transport {settings.transport!r}")


class ChildRunner:
    """Everything the child does once it holds the session lock."""

    def __init__(
        self,
        link: PipeLink,
        conn: Connection,
        transport: Transport,
        settings: WhatsAppSettings,
        mode: str = "run",
        phone: str | None = None,
    ) -> None:
        self.link = link
        self.conn = conn
        self.transport = transport
        self.settings = settings
        self.mode = mode
        self.phone = phone
        self.done = threading.Event()
        self.connected = threading.Event()
        self.connect_gave_up = threading.Event()  # unlink/groups: the one connection attempt ended
        self.restart_in_s: float | None = None  # what `bye` asks the supervisor for
        self.reconnect = ""  # `bye` is a reconnect: "backoff" (the supervisor's) or "round" (new QR round)
        self._new_round = False
        self._phone_rounds = 0  # rounds (in this process) with a phone code nobody entered
        self._state_lock = threading.Lock()
        self.state: dict[str, Any] = {"state": "starting", "detail": "", "paired_as": None}
        self._last_qr_at: float | None = None
        self._qr_expires: float | None = None  # monotonic: when the newest QR code stops working
        self._qrs_in_round = 0
        self._pair_requested = False
        self._ban_until = 0.0
        self._forget = False  # delete the local session on the way out (logged out / unlinked)

    @property
    def how_to_pair(self) -> str:
        return HOW_TO_PAIR_RUNNING if self.mode == "run" else HOW_TO_PAIR

    # -- state -------------------------------------------------------------------------------
    def set_state(self, state: str, detail: str, **extra: Any) -> None:
        with self._state_lock:
            new = {
                "state": state,
                "detail": detail,
                "qr": extra.get("qr"),
                "pair_code": extra.get("pair_code"),
                "pair_code_expires_at": extra.get("pair_code_expires_at"),
                "qr_expires_at": extra.get("qr_expires_at"),
                "paired_as": extra.get("paired_as", self.state.get("paired_as")),
                "retry_at": extra.get("retry_at"),
                "updated_at": time.time(),
            }
            self.state = new
        log.info("state %s: %s", state, detail)
        self.link.send({"t": "state", **new})

    def end(self, state: str, detail: str, restart_in_s: float | None, **extra: Any) -> None:
        """Report a final state and stop; the supervisor restarts after `restart_in_s` (None: never)."""
        if self.done.is_set():
            return
        self.restart_in_s = restart_in_s
        self.set_state(state, detail, **extra)
        self.done.set()

    # -- events from the transport (any thread) ----------------------------------------------
    def on_event(self, ev: TransportEvent) -> None:
        try:
            self._on_event(ev)
        except Exception:
            log.exception("handling WhatsApp event %s failed", ev.kind)

    def _on_event(self, ev: TransportEvent) -> None:
        k = ev.kind
        if k == "message":
            if self.mode == "run" and ev.message is not None:
                self.link.send({"t": "message", "msg": ev.message.to_dict()})
            return
        if k == "receipt":
            if self.mode == "run":
                self.link.send(
                    {"t": "receipt", "ids": list(ev.ids), "status": ev.code, "ts": ev.ts, "chat": ev.jid}
                )
            return
        if self.done.is_set():
            return  # already ending; later events (disconnected...) would only blur the reason
        if k == "qr":
            self._last_qr_at = time.monotonic()
            # whatsmeow qrchan.go emitQRs: the first code of a round is valid 60 s, the others 20 s.
            first, later = self.settings.qr_valid_s
            valid = first if self._qrs_in_round == 0 else later
            self._qrs_in_round += 1
            self._qr_expires = self._last_qr_at + valid
            if self.phone:
                if not self._pair_requested:
                    self._pair_requested = True
                    threading.Thread(target=self._request_pair_code, daemon=True).start()
                return  # phone-code pairing: the QR is not what the user needs
            self.set_state(
                "pairing",
                "Scan this QR code with WhatsApp on your phone: Settings > Linked devices > Link a device. "
                "It changes every 20-60 s.",
                qr=ev.code,
                qr_expires_at=time.time() + valid,
            )
        elif k == "pair_code":
            self._last_qr_at = time.monotonic()
            expires = time.time() + PAIR_CODE_VALID_S
            self.set_state(
                "pairing",
                f"On your phone: WhatsApp > Settings > Linked devices > Link a device > "
                f"Link with phone number instead, and enter {ev.code}. It works until "
                f"{time.strftime('%H:%M:%S', time.localtime(expires))}; a new code follows automatically.",
                pair_code=ev.code,
                pair_code_expires_at=expires,
            )
        elif k == "paired":
            self._last_qr_at = None
            self.set_state(
                "starting", f"Paired as +{jid_user(ev.jid)}; connecting.", paired_as=jid_user(ev.jid)
            )
        elif k == "connected":
            self._last_qr_at = None
            me = jid_user(ev.jid) if ev.jid else self.state.get("paired_as")
            self.set_state("connected", f"Linked as +{me}." if me else "Connected.", paired_as=me)
            self.connected.set()
            if self.mode == "pair":
                self.end("connected", f"Paired and connected as +{me}.", None, paired_as=me)
        elif k == "disconnected":
            self.connected.clear()
            if self.state.get("state") in ("connected", "starting"):
                self.set_state("disconnected", "Connection to WhatsApp lost; reconnecting automatically.")
        elif k == "logged_out" or (k == "connect_failure" and ev.code in _LOGGED_OUT_REASONS):
            self.connected.clear()
            reason = ev.code or "logged out"
            self._forget = True  # before end(): the main loop may act on `done` at once
            self.end(
                "not_paired",
                f"Logged out by WhatsApp ({reason}): this gateway is no longer a linked device. {self.how_to_pair}",
                RESTART_AFTER_LOGOUT_S if self.mode == "run" else None,
                paired_as=None,
            )
        elif k == "stream_replaced":
            self.connected.clear()
            self.end(
                "stream_replaced",
                "Another client took over this WhatsApp session (stream replaced): probably a second "
                "gateway or a copy of this data folder. Stopped and NOT reconnecting, so the two do not "
                "fight and get the number banned. Stop the other one, then restart parcelbox.",
                None,
            )
        elif k == "temporary_ban" or (k == "connect_failure" and ev.code == "TEMP_BANNED"):
            expire = max(float(ev.expire_s or 0), 60.0)
            until = time.time() + expire
            self._ban_until = until
            self.connected.clear()
            self.end(
                "banned",
                f"WhatsApp temporarily banned this number ({ev.code or 'no reason given'}) until "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(until))}. Waiting for it to expire "
                "before reconnecting; alerts stay queued. Send fewer messages (lower the rate limits).",
                expire + 5.0 if self.mode == "run" else None,
                retry_at=until,
            )
        elif k == "client_outdated" or (k == "connect_failure" and ev.code == "CLIENT_OUTDATED"):
            self.end(
                "outdated",
                "WhatsApp rejected this client as outdated: upgrade neonize within the tested versions "
                f"(`pip install -U '{NEONIZE_REQUIREMENT}'`), then restart. If the newest of those is still "
                "outdated, upgrade parcelbox: it widens the range once its neonize tests pass on the next "
                "version (README, 'neonize versions').",
                None,
            )
        elif k == "connect_failure":
            self.connected.clear()
            self.set_state(
                "disconnected", f"WhatsApp refused the connection ({ev.code}: {ev.detail}); retrying."
            )
            # whatsmeow does not retry after a refusal: end this connect so the loop backs off and retries.
            self.transport.stop()

    def _request_pair_code(self) -> None:
        try:
            code = self.transport.pair_phone(self.phone or "")
        except Exception as e:
            self.end("error", f"Could not get a pairing code for +{self.phone}: {e}", None)
            return
        self.on_event(TransportEvent(kind="pair_code", code=code))

    # -- connection loop (own thread) --------------------------------------------------------
    def connect_loop(self) -> None:
        first, cap = self.settings.reconnect_backoff_s
        delay = first
        while not self.done.is_set():
            started = time.monotonic()
            self._qrs_in_round = 0
            error: str | None = None
            try:
                self.transport.connect(self.on_event)
            except TransportError as e:
                error = str(e)
            except Exception as e:  # the library's own exception types vary by version
                error = f"{type(e).__name__}: {e}"
            self.connected.clear()
            if self.done.is_set():
                break
            if time.monotonic() - started > self.settings.stable_after_s:
                delay = first
            paired = self._is_paired()
            if error:
                what = f"Cannot reach WhatsApp ({error})"
            else:
                what = "The connection to WhatsApp ended"
            state = "disconnected" if paired else "not_paired"
            if self.transport.one_connect_per_process:
                # A fresh process connects again (neonize: one client per process); the supervisor
                # owns the backoff across processes and says the delay in its own state.
                if self.mode not in ("run", "pair"):
                    # unlink / groups decide what a failed connection means for them.
                    self.set_state(state, f"{what}.")
                    self.connect_gave_up.set()
                    break
                detail = f"{what}; {RECONNECTING}"
                if not paired and self.mode == "run":
                    detail += " Not paired yet. " + self.how_to_pair
                # A new QR round is not a failure: start it at once, without growing the backoff.
                self.reconnect = "round" if self._new_round else "backoff"
                self.end(state, detail, first)
                break
            detail = f"{what}; retrying in {seconds(delay)} s."
            if not paired and self.mode == "run":
                detail += " Not paired yet. " + self.how_to_pair
            self.set_state(state, detail, retry_at=time.time() + delay)
            if self.done.wait(delay):
                break
            delay = min(delay * 2, cap)

    def _is_paired(self) -> bool:
        try:
            return self.transport.is_paired()
        except Exception:
            log.exception("reading the session store failed")
            return False

    # -- requests from the parent (main thread) ----------------------------------------------
    def handle(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "send":
            self.link.send({"t": "sent", "id": msg.get("id"), **self._send(msg)})
        elif op == "check_numbers":
            self.link.send({"t": "numbers", "id": msg.get("id"), **self._check_numbers(msg)})
        elif op == "pair_phone":
            self.phone = str(msg.get("phone") or "")
            self._pair_requested = False
            self._phone_rounds = 0
        elif op == "stop":
            self.restart_in_s = None
            self.done.set()
        else:
            log.warning("unknown request from the gateway: %r", op)

    def _check_numbers(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self.state.get("state") != "connected":
            return {"ok": False, "error": f"WhatsApp is not connected ({self.state.get('state')})"}
        try:
            found = self.transport.check_numbers([str(p) for p in msg.get("phones") or []])
        except Exception as e:
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        return {"ok": True, "numbers": found, "error": None}

    def _send(self, msg: dict[str, Any]) -> dict[str, Any]:
        st = self.state.get("state")
        if st != "connected":
            retry = None
            if st == "banned":
                retry = max(self._ban_until - time.time(), 1.0)
            elif self.state.get("retry_at"):
                retry = max(float(self.state["retry_at"]) - time.time(), 1.0)
            return {
                "ok": False,
                "error": f"WhatsApp is not connected ({st}): {self.state.get('detail', '')}",
                "retry_after_s": retry,
                "permanent": False,
            }
        try:
            mid = self.transport.send(str(msg["to"]), str(msg.get("text") or ""), msg.get("image"))
        except TransportError as e:
            return {"ok": False, "error": str(e), "retry_after_s": e.retry_after_s, "permanent": e.permanent}
        except Exception as e:
            log.exception("send failed")
            return {
                "ok": False,
                "error": f"{type(e).__name__}: {e}",
                "retry_after_s": None,
                "permanent": False,
            }
        return {"ok": True, "message_id": mid, "error": None, "retry_after_s": None, "permanent": False}

    # -- main --------------------------------------------------------------------------------
    def run(self) -> None:
        paired = self._is_paired()
        if self.mode == "pair" and paired:
            self.end(
                "connected" if paired else "not_paired",
                "This gateway is already paired. Run `parcelbox whatsapp unlink` first to pair another number.",
                None,
            )
        elif self.mode == "unlink":
            self._unlink(paired)
        elif self.mode == "groups":
            self._groups(paired)
        elif not paired and self.mode == "pair":
            self.set_state("not_paired", "Connecting to WhatsApp to start pairing.")
        elif not paired:
            self.set_state("not_paired", "Not paired with a WhatsApp account yet. " + self.how_to_pair)
        else:
            self.set_state("starting", "Connecting to WhatsApp.")
        linker = None
        if not self.done.is_set():
            linker = threading.Thread(target=self.connect_loop, name="whatsapp-connect", daemon=True)
            linker.start()
        while not self.done.is_set():
            try:
                ready = self.conn.poll(0.2)
                if ready:
                    self.handle(self.conn.recv())
            except (EOFError, OSError):
                log.info("the gateway went away; stopping")
                self.restart_in_s = None
                self.done.set()
                break
            self._qr_watchdog()
        self.transport.stop()
        if linker is not None:
            linker.join(timeout=10)
        if self._forget:
            self._forget_session()

    def _qr_watchdog(self) -> None:
        # neonize's QR loop ends silently when every code expired; start a fresh round instead of
        # showing a dead QR forever.
        if self._last_qr_at is None:
            return
        now = time.monotonic()
        expired = self._qr_expires is not None and now > self._qr_expires + QR_GRACE_S
        if expired or now - self._last_qr_at > self.settings.qr_round_s:
            self._last_qr_at = self._qr_expires = None
            if not self.phone and self.state.get("qr"):
                # Never leave a dead QR on the dashboard while the next round starts.
                self.set_state("pairing", "The QR code expired; getting a new one from WhatsApp.")
            log.info("pairing QR codes expired; starting a new round")
            self._new_round = True
            self._pair_requested = False  # the code belonged to the round that ended: ask for a new one
            if self.phone:
                self._phone_rounds += 1
                if self._phone_rounds >= PHONE_CODE_ROUNDS:
                    log.info(
                        "no pairing code was used in %d rounds; showing the QR code again", PHONE_CODE_ROUNDS
                    )
                    self.phone = None
            self.transport.stop()

    def _unlink(self, paired: bool) -> None:
        if not paired:
            self.end("not_paired", "No WhatsApp session to unlink.", None)
            return
        t = threading.Thread(target=self.connect_loop, daemon=True)
        t.start()
        note = ""
        if self._wait_connected(20):
            try:
                self.transport.logout()
            except Exception as e:
                note = f" WhatsApp did not confirm the logout ({e}): remove the device on your phone too."
        else:
            note = (
                " WhatsApp could not be reached, so only the local session was deleted: on your phone, "
                "open WhatsApp > Settings > Linked devices and remove this gateway."
            )
        self._forget = True
        self.end("not_paired", "Unlinked: the local WhatsApp session was deleted." + note, None)

    def _wait_connected(self, timeout: float) -> bool:
        """True once connected; False after `timeout`, or at once when the connection attempt gave up."""
        deadline = time.monotonic() + timeout
        while not self.connected.wait(0.1):
            if self.connect_gave_up.is_set() or time.monotonic() > deadline:
                return self.connected.is_set()
        return True

    def _groups(self, paired: bool) -> None:
        if not paired:
            self.end("not_paired", "Not paired: nothing to list. " + HOW_TO_PAIR, None)
            return
        t = threading.Thread(target=self.connect_loop, daemon=True)
        t.start()
        if not self._wait_connected(30):
            self.end("disconnected", f"Could not connect to WhatsApp: {self.state.get('detail', '')}", None)
            return
        try:
            groups = self.transport.list_groups()
        except Exception as e:
            self.end("error", f"WhatsApp did not list the groups: {e}", None)
            return
        self.link.send({"t": "groups", "groups": groups})
        self.end("connected", f"{len(groups)} group(s).", None)

    def _forget_session(self) -> None:
        try:
            self.transport.forget_session()
        except Exception:
            log.exception("deleting the local session failed")


def _redirect_stdout(session_dir: Path) -> None:
    """Send fd 1 (where the Go side prints) to a log file, so it never garbles the terminal or a pipe."""
    path = session_dir / GO_LOG_NAME
    try:
        if path.exists() and path.stat().st_size > _GO_LOG_MAX:
            path.replace(path.with_suffix(".log.1"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush()
    os.dup2(fd, 1)
    os.close(fd)


def child_main(
    conn: Connection, settings: WhatsAppSettings, mode: str = "run", phone: str | None = None
) -> None:
    """Entry point of the spawned child. Never returns: ends with `os._exit` (neonize leaves
    non-daemon Go-backed threads behind that would otherwise keep the process alive)."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when this child stops
    # (over the pipe, or by going away), so a keypress never kills it mid-send.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The session database holds the account's keys: readable by its owner only.
    settings.session_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(settings.session_dir, 0o700)
    _redirect_stdout(settings.session_dir)
    logging.basicConfig(
        # `pair` and `unlink` print the states themselves; the child's log would only repeat them.
        level=logging.INFO if mode == "run" else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s whatsapp-child[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("whatsmeow").setLevel(logging.WARNING)
    logging.getLogger("Whatsmeow").setLevel(logging.WARNING)
    # neonize warns about a missing ffmpeg at every connect; images (all we send) do not use it.
    logging.getLogger("neonize.utils.ffmpeg").setLevel(logging.ERROR)
    link = PipeLink(conn)
    link.send({"t": "hello", "pid": os.getpid(), "transport": settings.transport, "mode": mode})
    lock = SessionLock(settings.session_dir)
    code = 0
    try:
        lock.acquire()
    except SessionLocked as e:
        link.send(
            {
                "t": "state",
                "state": "locked",
                "detail": str(e),
                "holder_pid": e.pid,
                "updated_at": time.time(),
            }
        )
        link.send({"t": "bye", "restart_in_s": RESTART_AFTER_LOCKED_S if mode == "run" else None})
        _exit(conn, 0)
    try:
        transport = make_transport(settings)
    except BadSessionPath as e:
        link.send({"t": "state", "state": "error", "detail": str(e), "updated_at": time.time()})
        link.send({"t": "bye", "restart_in_s": None})  # a restart cannot fix the path
        _exit(conn, 0)
    except ImportError as e:
        link.send(
            {
                "t": "state",
                "state": "not_installed",
                "detail": f"neonize is not installed ({e}): .venv/bin/pip install -e '.[whatsapp]' (as in the README)",
                "updated_at": time.time(),
            }
        )
        link.send({"t": "bye", "restart_in_s": None})
        _exit(conn, 0)
    except Exception as e:
        log.exception("cannot start the WhatsApp transport")
        link.send(
            {
                "t": "state",
                "state": "error",
                "detail": f"cannot start WhatsApp: {e}",
                "updated_at": time.time(),
            }
        )
        link.send({"t": "bye", "restart_in_s": 60.0 if mode == "run" else None})
        _exit(conn, 1)
    runner = ChildRunner(link, conn, transport, settings, mode, phone)
    try:
        runner.run()
    except Exception as e:
        log.exception("WhatsApp child failed")
        runner.set_state("error", f"WhatsApp child failed: {e}")
        runner.restart_in_s = 10.0 if mode == "run" else None
        code = 1
    link.send({"t": "bye", "restart_in_s": runner.restart_in_s, "reconnect": runner.reconnect})
    lock.release()
    _exit(conn, code)


def _exit(conn: Connection, code: int) -> None:
    try:
        conn.close()
    finally:
        sys.stderr.flush()
        os._exit(code)
