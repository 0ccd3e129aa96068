"""Runs the WhatsApp child process, restarts it with backoff, and relays sends, state and messages.

The gateway (ingest, store, dashboard) never imports neonize: a Go panic takes
down only the child (SIGABRT), and this supervisor starts a new one after an
exponential backoff while everything else keeps running. A send in flight when
the child dies is answered with a failed `SendOutcome`, so the outbox keeps the
alert pending and retries it: nothing is dropped silently.

The gateway reads the current pairing/link state with `state()` (the dashboard
shows it, QR included) and receives each change on the bus as
`bus.WHATSAPP_STATE`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from gateway import bus as bus_topics
from gateway.bus import Bus
from gateway.ports import WhatsAppState
from gateway.storage import atomic_write_bytes
from gateway.whatsapp.addresses import BadRecipient, is_group, jid_user, to_jid
from gateway.whatsapp.child import PHONE_CODE_ROUNDS, RECONNECTING, child_main, seconds
from gateway.whatsapp.settings import WhatsAppSettings
from gateway.whatsapp.transport import IncomingMessage

log = logging.getLogger(__name__)

_NO_BYE = object()
STOP_GRACE_S = 10.0
HUNG_AFTER_TIMEOUTS = 2  # unconfirmed sends in a row after which the child is taken for hung and killed
# States after which restarting cannot help until a person acts.
FINAL_STATES = ("stream_replaced", "outdated", "not_installed")


@dataclass(frozen=True)
class SendOutcome:
    ok: bool
    error: str | None = None
    retry_after_s: float | None = None
    permanent: bool = False
    message_id: str | None = None
    held: bool = False  # see gateway.notify.base.SendResult.held


# How long an alert waits while WhatsApp is in a state only the owner can end (FINAL_STATES). A
# connection brings waiting alerts forward anyway (OutboxDispatcher.reschedule).
HELD_RETRY_S = 900.0


class _Pending:
    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.outcome: Any = None  # SendOutcome for a send, the child's reply dict for a check


def recipient_phones(settings: WhatsAppSettings) -> list[str]:
    """The digits of every configured phone recipient (groups and bad addresses left out)."""
    out: set[str] = set()
    for r in [*settings.recipients, *(r for rs in settings.recipients_by_box.values() for r in rs)]:
        try:
            jid = to_jid(r)
        except BadRecipient:
            continue
        if not is_group(jid):
            out.add(jid_user(jid))
    return sorted(out)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (a Go panic inside neonize aborts the process)" if -code == signal.SIGABRT else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


def _as_state(d: dict[str, Any]) -> WhatsAppState:
    # The state is merged from the child's messages (gateway/whatsapp/child.py sends WhatsAppState
    # keys): one cast at this boundary instead of a check per key.
    return cast(WhatsAppState, d)


class WhatsAppSupervisor:
    """Owns the WhatsApp child process for the gateway (`mode="run"`) or for `parcelbox whatsapp pair|unlink`."""

    def __init__(
        self,
        settings: WhatsAppSettings,
        *,
        bus: Bus | None = None,
        mode: str = "run",
        phone: str | None = None,
        on_state: Callable[[WhatsAppState], None] | None = None,
        on_message: Callable[[IncomingMessage], None] | None = None,
        restart: bool = True,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.mode = mode
        self.phone = phone
        self.on_state = on_state
        self.on_message = on_message
        self.restart_enabled = restart and mode == "run"
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._conn_lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._state: dict[str, Any] = {
            "state": "starting",
            "down_since": time.time(),  # when it last left `connected` (None while connected)
            "down_notice_after_s": settings.down_notice_after_s,  # the dashboard's banner delay
            "detail": "Starting the WhatsApp process.",
            "paired_as": None,
            "qr": None,
            "pair_code": None,
            "updated_at": time.time(),
        }
        self._pending: dict[str, _Pending] = {}
        self._conn: Any = None
        self._proc: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_start_at: float | None = None
        self.finished = threading.Event()  # set when no further child will be started
        self.restarts = 0
        self.crashes = 0
        self.last_exit: str | None = None
        self.groups: list[tuple[str, str]] | None = None  # mode "groups": what the child listed
        self._timeouts = 0  # sends in a row the child did not confirm in time
        self.hung_kills = 0
        self.phone_rounds = 0  # pairing rounds with a phone code nobody entered
        self._numbers_checked_at: float | None = None
        self._not_on_whatsapp: set[str] = set()  # digits WhatsApp said have no account
        self._bye_reconnect = ""  # the last child ended to reconnect: "backoff" | "round" (new QR round)
        self._reconnect_delay: float | None = None  # the backoff across reconnecting children

    # -- public API ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self.finished.clear()
        self._thread = threading.Thread(target=self._run, name="whatsapp-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_GRACE_S + 5) -> None:
        """Ask the child to stop (it releases the session lock), kill it if it does not."""
        self._stop.set()
        self._request({"op": "stop"})
        if self._thread is not None:
            self._thread.join(timeout)

    close = stop

    def restart(self) -> None:
        """Start again after a final state (e.g. after the user dealt with 'stream replaced')."""
        self.stop()
        self.start()

    def state(self) -> WhatsAppState:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> WhatsAppState:
        return _as_state(dict(self._state))

    def child_pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.is_alive() else None

    def wait_for(self, predicate: Callable[[WhatsAppState], bool], timeout: float) -> WhatsAppState | None:
        """Block until `predicate(state)` holds (returns that state) or `timeout` passes (returns None)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                st = self._snapshot()
                if predicate(st):
                    return st
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.5))

    def pair_phone(self, phone_digits: str) -> None:
        self.phone = phone_digits
        self.phone_rounds = 0
        self._request({"op": "pair_phone", "phone": phone_digits})

    def send(
        self, to: str, text: str, image: bytes | None = None, timeout: float | None = None
    ) -> SendOutcome:
        """Send through the child and wait for its confirmation. Never raises."""
        timeout = self.settings.send_timeout_s if timeout is None else timeout
        conn, proc = self._conn, self._proc
        if conn is None or proc is None or not proc.is_alive():
            st = self.state()
            if st.get("state") in FINAL_STATES:
                return SendOutcome(
                    ok=False,
                    error=f"WhatsApp cannot send until you act ({st.get('state')}): {st.get('detail', '')}",
                    retry_after_s=max(self._retry_hint() or 0.0, HELD_RETRY_S),
                    held=True,
                )
            return SendOutcome(
                ok=False,
                error=f"WhatsApp is not connected: its process is not running ({st.get('state')}: "
                f"{st.get('detail', '')})",
                retry_after_s=self._retry_hint(),
            )
        req_id = uuid.uuid4().hex
        pending = _Pending()
        with self._lock:
            self._pending[req_id] = pending
        try:
            with self._conn_lock:
                conn.send({"op": "send", "id": req_id, "to": to, "text": text, "image": image})
        except Exception as e:
            with self._lock:
                self._pending.pop(req_id, None)
            return SendOutcome(ok=False, error=f"could not hand the message to the WhatsApp process: {e}")
        if not pending.event.wait(timeout):
            with self._lock:
                self._pending.pop(req_id, None)
                self._timeouts += 1
                hung = self._timeouts >= HUNG_AFTER_TIMEOUTS
            if hung and proc.is_alive():
                # A child that stops answering (a deadlocked Go runtime) would never die on its own.
                log.error("WhatsApp process %s stopped answering; killing it so it restarts", proc.pid)
                self.hung_kills += 1
                proc.kill()
            return SendOutcome(
                ok=False,
                error=f"WhatsApp did not confirm the send within {timeout:.0f} s (it may still arrive)",
            )
        with self._lock:
            self._timeouts = 0
        assert pending.outcome is not None
        return pending.outcome

    def check_numbers(self, phones: list[str], timeout: float = 30.0) -> dict[str, bool] | str:
        """digits -> on WhatsApp? (one look-up for all, through the child); an error text on failure.

        Also what the dashboard's test message uses before sending. Numbers found
        missing are remembered: alerts to them fail as permanent (`not_on_whatsapp`).
        """
        conn, proc = self._conn, self._proc
        if conn is None or proc is None or not proc.is_alive():
            return "WhatsApp is not connected"
        req_id = uuid.uuid4().hex
        pending = _Pending()
        with self._lock:
            self._pending[req_id] = pending
        if not self._request({"op": "check_numbers", "id": req_id, "phones": list(phones)}):
            with self._lock:
                self._pending.pop(req_id, None)
            return "could not ask the WhatsApp process"
        if not pending.event.wait(timeout):
            with self._lock:
                self._pending.pop(req_id, None)
            return f"WhatsApp did not answer within {timeout:.0f} s"
        reply = pending.outcome
        if not isinstance(reply, dict) or not reply.get("ok"):
            return str(reply.get("error") if isinstance(reply, dict) else "the WhatsApp process stopped")
        found = {str(k): bool(v) for k, v in (reply.get("numbers") or {}).items()}
        with self._lock:
            self._not_on_whatsapp |= {p for p, ok in found.items() if not ok}
            self._not_on_whatsapp -= {p for p, ok in found.items() if ok}
            unknown = sorted(self._not_on_whatsapp)
        self._numbers_checked_at = time.time()
        self._set_state({"unknown_numbers": unknown, "numbers_checked_at": self._numbers_checked_at})
        return found

    def not_on_whatsapp(self, digits: str) -> bool:
        """True when a check said this number has no WhatsApp account."""
        with self._lock:
            return digits in self._not_on_whatsapp

    def _check_recipients(self) -> None:
        phones = recipient_phones(self.settings)
        if not phones:
            return
        result = self.check_numbers(phones)
        if isinstance(result, str):
            log.warning("could not check the WhatsApp recipients: %s", result)
            self._numbers_checked_at = None  # try again at the next connection
            return
        missing = [p for p, ok in result.items() if not ok]
        if missing:
            log.error(
                "not on WhatsApp: %s - alerts to them fail at once; fix [whatsapp] recipients",
                ", ".join("+" + p for p in missing),
            )

    # -- internals ----------------------------------------------------------------------------
    def _retry_hint(self) -> float | None:
        if self._next_start_at is not None:
            return max(self._next_start_at - time.monotonic(), 0.0) + 5.0
        # Between a child's exit and the restart being scheduled: the last state may say until when
        # (a temporary ban), and the outbox should wait that long rather than its short backoff.
        retry_at = self.state().get("retry_at")
        if isinstance(retry_at, int | float) and retry_at > time.time():
            return float(retry_at) - time.time() + 5.0
        return None

    def _request(self, msg: dict[str, Any]) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            if not self._conn_lock.acquire(timeout=5):
                return False
            try:
                conn.send(msg)
            finally:
                self._conn_lock.release()
            return True
        except Exception:
            return False

    def _set_state(self, new: dict[str, Any]) -> None:
        with self._changed:
            merged = {**self._state, **new}
            if merged.get("state") != "pairing":
                merged["qr"] = None
                merged["pair_code"] = None
                merged["pair_code_expires_at"] = None
                merged["qr_expires_at"] = None
            merged.setdefault("updated_at", time.time())
            if merged.get("state") == "connected":
                merged["down_since"] = None
            elif merged.get("down_since") is None:
                merged["down_since"] = merged["updated_at"]
            changed = {k: v for k, v in merged.items() if k != "updated_at"} != {
                k: v for k, v in self._state.items() if k != "updated_at"
            }
            self._state = merged
            self._changed.notify_all()
            snapshot = dict(merged)
        if not changed:
            return
        self._write_state_file(snapshot)
        if self.bus is not None:
            self.bus.publish(bus_topics.WHATSAPP_STATE, snapshot)
        if self.on_state is not None:
            try:
                self.on_state(_as_state(snapshot))
            except Exception:
                log.exception("WhatsApp state callback failed")

    def _write_state_file(self, st: dict[str, Any]) -> None:
        # For `parcelbox whatsapp status` from another process; the QR is short-lived, keep it out.
        # A "locked" state describes another process's session, not this one's: keep the owner's file.
        if st.get("state") == "locked":
            return
        path = self.settings.state_file
        try:
            data = {k: v for k, v in st.items() if k not in ("qr", "pair_code")}
            data["supervisor_pid"] = os.getpid()
            # Rewritten at every state change and read only by status commands: atomic, not fsync'd.
            body = json.dumps(data, indent=1, default=str).encode()
            atomic_write_bytes(path, body, durable=False, make_parent=True)
        except OSError:
            log.warning("could not write %s", path, exc_info=True)

    def _fail_pending(self, why: str) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        retry = self._retry_hint() if pending else None
        for p in pending.values():
            p.outcome = SendOutcome(ok=False, error=why, retry_after_s=retry)
            p.event.set()

    def _handle(self, msg: dict[str, Any]) -> Any:
        t = msg.get("t")
        if t == "state":
            if msg.get("state") == "connected":
                self._reconnect_delay = None
                if self.mode == "run" and self._numbers_checked_at is None:
                    # Once per supervisor, not per reconnect: look-ups of non-users are a ban signal.
                    self._numbers_checked_at = 0.0
                    threading.Thread(
                        target=self._check_recipients, name="whatsapp-check", daemon=True
                    ).start()
            self._set_state({k: v for k, v in msg.items() if k != "t"})
        elif t == "sent":
            with self._lock:
                p = self._pending.pop(str(msg.get("id")), None)
            if p is not None:
                p.outcome = SendOutcome(
                    ok=bool(msg.get("ok")),
                    error=msg.get("error"),
                    retry_after_s=msg.get("retry_after_s"),
                    permanent=bool(msg.get("permanent")),
                    message_id=msg.get("message_id"),
                )
                p.event.set()
        elif t == "numbers":
            with self._lock:
                p = self._pending.pop(str(msg.get("id")), None)
            if p is not None:
                p.outcome = msg
                p.event.set()
        elif t == "receipt":
            if self.bus is not None:
                self.bus.publish(bus_topics.WHATSAPP_RECEIPT, {k: v for k, v in msg.items() if k != "t"})
        elif t == "message":
            if self.on_message is not None:
                try:
                    self.on_message(IncomingMessage.from_dict(msg["msg"]))
                except Exception:
                    log.exception("WhatsApp message handler failed")
        elif t == "groups":
            self.groups = [(str(j), str(n)) for j, n in msg.get("groups") or []]
        elif t == "bye":
            self._bye_reconnect = str(msg.get("reconnect") or "")
            return msg.get("restart_in_s")
        elif t == "hello":
            log.info(
                "WhatsApp process %s started (%s transport, %s)",
                msg.get("pid"),
                msg.get("transport"),
                msg.get("mode"),
            )
        return _NO_BYE

    def _next_reconnect_delay(self, first: float, new_round: bool = False) -> float:
        """Exponential backoff across children that ended to reconnect; reset by a connection."""
        if new_round:
            if self.phone:
                self.phone_rounds += 1
                if self.phone_rounds >= PHONE_CODE_ROUNDS:
                    # Nobody typed the codes: stop pushing notifications to that phone, show the QR.
                    log.info(
                        "no pairing code was used in %d rounds; showing the QR code again", PHONE_CODE_ROUNDS
                    )
                    self.phone = None
                    self.phone_rounds = 0
            return min(first, 1.0)
        cap = self.settings.reconnect_backoff_s[1]
        wait = first if self._reconnect_delay is None else min(self._reconnect_delay * 2, cap)
        self._reconnect_delay = wait
        detail = str(self.state().get("detail") or "").replace(
            RECONNECTING, f"retrying in {seconds(wait)} s.", 1
        )
        self._set_state({"detail": detail, "retry_at": time.time() + wait})
        return wait

    def _run_child_once(self) -> tuple[Any, int | None]:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=child_main,
            args=(child_conn, self.settings, self.mode, self.phone),
            name="parcelbox-whatsapp",
            daemon=True,
        )
        proc.start()
        child_conn.close()
        self._conn, self._proc = parent_conn, proc
        self._next_start_at = None
        with self._lock:
            self._timeouts = 0
        bye: Any = _NO_BYE
        stop_deadline: float | None = None
        try:
            while True:
                if self._stop.is_set() and stop_deadline is None:
                    self._request({"op": "stop"})
                    stop_deadline = time.monotonic() + STOP_GRACE_S
                try:
                    if parent_conn.poll(0.2):
                        r = self._handle(parent_conn.recv())
                        if r is not _NO_BYE:
                            bye = r
                        continue
                except (EOFError, OSError):
                    break
                if not proc.is_alive():
                    # Drain what it said before it died (its last state and any confirmations).
                    try:
                        while parent_conn.poll(0):
                            r = self._handle(parent_conn.recv())
                            if r is not _NO_BYE:
                                bye = r
                    except (EOFError, OSError):
                        pass
                    break
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    log.warning("WhatsApp process %s did not stop in time; killing it", proc.pid)
                    proc.kill()
                    stop_deadline = time.monotonic() + STOP_GRACE_S
        finally:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            self._conn = None
            parent_conn.close()
            code = proc.exitcode
            self._fail_pending(f"the WhatsApp process {_describe_exit(code)} before confirming the send")
        return bye, code

    def _run(self) -> None:
        first, cap = self.settings.restart_backoff_s
        delay = first
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    bye, code = self._run_child_once()
                except Exception as e:  # could not even spawn: report, back off, try again
                    log.exception("starting the WhatsApp process failed")
                    bye, code = _NO_BYE, None
                    self._set_state({"state": "error", "detail": f"cannot start the WhatsApp process: {e}"})
                self.last_exit = _describe_exit(code)
                if self._stop.is_set():
                    break
                if time.monotonic() - started > self.settings.stable_after_s:
                    delay = first
                if bye is _NO_BYE:
                    # Died without saying goodbye: a crash (Go panic, OOM kill, SIGKILL).
                    self.crashes += 1
                    wait = delay
                    delay = min(delay * 2, cap)
                    log.error("WhatsApp process %s; restarting in %s s", self.last_exit, seconds(wait))
                    if not self.restart_enabled:
                        self._set_state(
                            {"state": "error", "detail": f"The WhatsApp process {self.last_exit}."}
                        )
                        break
                    self._set_state(
                        {
                            "state": "error",
                            "detail": f"The WhatsApp process {self.last_exit}; restarting in {seconds(wait)} s. "
                            "Alerts wait in the outbox meanwhile.",
                        }
                    )
                elif bye is not None and self._bye_reconnect and self.mode in ("run", "pair"):
                    wait = self._next_reconnect_delay(float(bye), self._bye_reconnect == "round")
                elif bye is None or not self.restart_enabled or self.state().get("state") in FINAL_STATES:
                    break  # it ended for a reason a restart cannot fix; the state says what to do
                else:
                    wait = float(bye)
                self._next_start_at = time.monotonic() + wait
                if self._stop.wait(wait):
                    break
                self.restarts += 1
        finally:
            self._next_start_at = None
            self.finished.set()
            with self._changed:
                self._changed.notify_all()
