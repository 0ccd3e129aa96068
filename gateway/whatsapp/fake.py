"""A file-driven stand-in for WhatsApp's servers, behind the same `Transport` seam as neonize.

Selected with `whatsapp.transport = "fake"` and `whatsapp.fake_dir`. It runs inside
the real child process, so tests exercise the real spawn, pipe, lock, supervisor
and restart code; only WhatsApp itself is simulated. The folder is the "server":

- `script.json` (optional): `paired_as`, `connect_error`, `qr_codes`, `qr_interval_s`,
  `send_error`, `send_error_permanent`, `groups` (`[[jid, name], ...]`), `not_on_whatsapp`
  (digits: `check_numbers` says no, a send fails as whatsmeow's "no LID found ... from
  server"), `one_connect_per_process` (reconnect = a new child, as with neonize).
- `inbox/*.json`: events to deliver, in file-name order, each `{"kind": ...}`:
  `message` (see `raw_message`: DMs, groups, Status, channels, LID senders with and
  without SenderAlt, IsFromMe, old timestamps, push names), `receipt` (`id`, `type`),
  `scan` (the user scanned the QR), `stream_replaced`, `logged_out`, `temporary_ban`
  (`expire_s`), `client_outdated`, `disconnected`, `connected`, `connect_failure`
  (`code`, `detail`), `drop` (connection ends), `crash` (abort the process, as a Go panic does).
- `hold`: while it exists, sends block (to kill the child mid-send).
- written by the fake: `sending.jsonl` (a send started), `sent.jsonl` (a send
  completed, fsync'd), `pair_requests.jsonl`, `logouts.jsonl`, `lookups.jsonl`.

Shapes checked against: neonize 0.5.2 (`neonize/client.py`, `events.py`,
`proto/Neonize_pb2.pyi`), goneonize `main.go` / `utils/encoder.go` (krypton-byte/neonize
fcd96cb: message Timestamp in ms, receipt Timestamp in s, ReceiptType mapping) and
whatsmeow (tulir/whatsmeow 33cfac51: message.go `parseMessageSource`, send.go,
qrchan.go `emitQRs` 60 s + 5 x 20 s, receipt types). Messages and receipts go through
the same pure conversions as the real adapter (`gateway.whatsapp.incoming`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from gateway.storage import atomic_write_bytes
from gateway.whatsapp.addresses import USER_SERVER
from gateway.whatsapp.incoming import RawMessage, incoming_from_raw, receipt_status
from gateway.whatsapp.transport import EventSink, IncomingMessage, Transport, TransportError, TransportEvent

SESSION_NAME = "fake-session.json"
HOLD_MAX_S = 60.0


STATUS_BROADCAST = "status@broadcast"
FAKE_GROUP = "120363000000000000@g.us"


def lid_for(digits: str) -> str:
    """A stable made-up LID for a phone number (real LIDs are unrelated 14-15 digit numbers)."""
    return f"{int(hashlib.sha1(digits.encode()).hexdigest()[:11], 16)}@lid"


def raw_message(ev: dict[str, Any], default_id: str, now: float) -> RawMessage:
    """An inbox `message` -> `RawMessage` in the shapes whatsmeow message.go `parseMessageSource` makes.

    Fields: `text`, `sender` (digits), `chat`, `is_group`, `status` (a Status post:
    Chat=status@broadcast, IsGroup=true), `newsletter` (a channel post: Chat=Sender=the
    channel), `hide_phone` (LID sender), `sender_alt` (with `hide_phone`: SenderAlt carries
    the phone JID), `lid_known` (without SenderAlt: `get_pn_from_lid` knows the number),
    `from_me` (IsFromMe), `ts` (seconds; sent on as milliseconds, as
    neonize 0.5 does), `push_name` (may contain commas), `id`.
    """
    digits = str(ev.get("sender", ""))
    phone = f"{digits}@{USER_SERVER}"
    hidden = bool(ev.get("hide_phone"))
    sender = lid_for(digits) if hidden else phone
    is_group = bool(ev.get("is_group"))
    chat = str(ev.get("chat") or (FAKE_GROUP if is_group else sender))
    if ev.get("status"):
        chat, is_group = STATUS_BROADCAST, True
    if ev.get("newsletter"):
        chat = sender = str(ev.get("chat") or "120363111111111111@newsletter")
        is_group = False
    return RawMessage(
        id=str(ev.get("id") or default_id),
        chat=chat,
        sender=sender,
        sender_alt=phone if hidden and ev.get("sender_alt") else "",
        text=str(ev.get("text", "")),
        timestamp=float(ev.get("ts") or now) * 1000.0,
        is_group=is_group,
        is_from_me=bool(ev.get("from_me")),
        push_name=str(ev.get("push_name", "")),
    )


def _append_jsonl(path: Path, rec: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


class FakeTransport(Transport):
    name = "fake"

    def __init__(self, fake_dir: Path | str, session_dir: Path | str) -> None:
        self.dir = Path(fake_dir)
        self.inbox = self.dir / "inbox"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.session_file = Path(session_dir) / SESSION_NAME
        self._stop = threading.Event()
        self._connected = False
        self._seq = 0

    def _script(self) -> dict[str, Any]:
        try:
            return json.loads((self.dir / "script.json").read_text())
        except (OSError, ValueError):
            return {}

    def is_paired(self) -> bool:
        return self.session_file.exists()

    def _pair(self, sink: EventSink) -> None:
        jid = f"{self._script().get('paired_as', '6281100000000')}@{USER_SERVER}"
        atomic_write_bytes(self.session_file, json.dumps({"jid": jid}).encode())
        sink(TransportEvent(kind="paired", jid=jid))
        self._connected = True
        sink(TransportEvent(kind="connected", jid=jid))

    def _me(self) -> str:
        try:
            return json.loads(self.session_file.read_text())["jid"]
        except (OSError, ValueError, KeyError):
            return ""

    def connect(self, sink: EventSink) -> None:
        self._stop.clear()
        script = self._script()
        if script.get("connect_error"):
            raise TransportError(str(script["connect_error"]))
        codes = list(script.get("qr_codes") or ["2@fake-qr-1", "2@fake-qr-2", "2@fake-qr-3"])
        interval = float(script.get("qr_interval_s", 0.3))
        next_qr = 0.0
        if self.is_paired():
            self._connected = True
            sink(TransportEvent(kind="connected", jid=self._me()))
        try:
            while not self._stop.is_set():
                if not self.is_paired() and codes and time.monotonic() >= next_qr:
                    sink(TransportEvent(kind="qr", code=codes.pop(0)))
                    next_qr = time.monotonic() + interval
                if self._deliver_inbox(sink) == "drop":
                    return
                self._stop.wait(0.05)
        finally:
            self._connected = False

    def _deliver_inbox(self, sink: EventSink) -> str | None:
        for path in sorted(self.inbox.glob("*.json")):
            try:
                ev = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # still being written (writers rename into place, so this is rare)
            path.unlink(missing_ok=True)
            kind = ev.get("kind")
            if kind == "crash":
                os.abort()  # what a Go panic does to the process
            if kind == "drop":
                return "drop"
            if kind == "scan":
                if not self.is_paired():
                    self._pair(sink)
                continue
            if kind == "message":
                msg = self._message(ev)
                if msg is not None:  # the adapter drops the same shapes (Status, channels, our own)
                    sink(TransportEvent(kind="message", message=msg))
                continue
            if kind == "receipt":
                te = self._receipt(ev)
                if te is not None:
                    sink(te)
                continue
            if kind == "connected":
                self._connected = True
                sink(TransportEvent(kind="connected", jid=self._me()))
                continue
            if kind in ("disconnected", "stream_replaced", "logged_out", "client_outdated"):
                self._connected = False
            sink(
                TransportEvent(
                    kind=str(kind),
                    code=str(ev.get("code", "")),
                    detail=str(ev.get("detail", "")),
                    expire_s=float(ev.get("expire_s", 0)),
                )
            )
        return None

    def _message(self, ev: dict[str, Any]) -> IncomingMessage | None:
        """An inbox `message` -> the fields a real `MessageEv` carries -> the same conversion neonize's take."""
        self._seq += 1
        raw = raw_message(ev, f"FAKEIN{os.getpid()}{self._seq:06d}", time.time())
        digits = str(ev.get("sender", ""))

        def pn_for_lid(lid: str) -> str:
            # neonize `get_pn_from_lid` reads whatsmeow's local LID map: known only for some contacts.
            return f"{digits}@{USER_SERVER}" if ev.get("lid_known") else ""

        return incoming_from_raw(raw, pn_for_lid)

    def _receipt(self, ev: dict[str, Any]) -> TransportEvent | None:
        """An inbox `receipt`: `id` (a sent message id; "last" = the newest in sent.jsonl), `type`
        (neonize Receipt.ReceiptType name, default DELIVERED), `ts` (seconds, as goneonize sends)."""
        mid = str(ev.get("id") or "last")
        sent = (
            (self.dir / "sent.jsonl").read_text().splitlines() if (self.dir / "sent.jsonl").exists() else []
        )
        last = json.loads(sent[-1]) if sent else {}
        if mid == "last":
            mid = str(last.get("id") or "")
        status = receipt_status(str(ev.get("type") or "DELIVERED"))
        if status is None or not mid:
            return None
        chat = str(ev.get("chat") or last.get("to") or "")
        return TransportEvent(
            kind="receipt", code=status, jid=chat, ids=(mid,), ts=float(ev.get("ts") or time.time())
        )

    def send(self, to: str, text: str, image: bytes | None = None) -> str:
        if not self._connected:
            raise TransportError("not connected")
        rec: dict[str, Any] = {
            "to": to,
            "text": text,
            "image_sha256": hashlib.sha256(image).hexdigest() if image else None,
            "image_bytes": len(image) if image else 0,
            "pid": os.getpid(),
        }
        _append_jsonl(self.dir / "sending.jsonl", {**rec, "ts": time.time()})
        deadline = time.monotonic() + HOLD_MAX_S
        while (self.dir / "hold").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        script = self._script()
        user = to.partition("@")[0]
        if to.endswith("@" + USER_SERVER) and user in {str(n) for n in script.get("not_on_whatsapp", [])}:
            # whatsmeow send.go (SendMessage, DefaultUserServer): GetUserInfo found no LID.
            raise TransportError(f"SendMessageError: no LID found for {to} from server", permanent=True)
        if script.get("send_error"):
            raise TransportError(
                str(script["send_error"]), permanent=bool(script.get("send_error_permanent"))
            )
        self._seq += 1
        mid = f"FAKE{os.getpid()}{self._seq:06d}"
        _append_jsonl(self.dir / "sent.jsonl", {**rec, "id": mid, "ts": time.time()})
        return mid

    def check_numbers(self, phones: list[str]) -> dict[str, bool]:
        """neonize `is_on_whatsapp` (whatsmeow user.go IsOnWhatsApp: one usync query for all numbers)."""
        if not self._connected:
            raise TransportError("not connected")
        _append_jsonl(self.dir / "lookups.jsonl", {"phones": phones, "ts": time.time()})
        missing = {str(n) for n in self._script().get("not_on_whatsapp", [])}
        return {p: p not in missing for p in phones}

    @property
    # Transport declares a plain class attribute; the fake reads it from script.json on each access.
    def one_connect_per_process(self) -> bool:  # type: ignore[override]
        """`script.json` `one_connect_per_process`: behave like the neonize adapter (reconnect = new process)."""
        return bool(self._script().get("one_connect_per_process"))

    def pair_phone(self, phone_digits: str) -> str:
        """neonize `PairPhone`: an 8-character code, a new one per request (whatsmeow pair-code.go)."""
        path = self.dir / "pair_requests.jsonl"
        _append_jsonl(path, {"phone": phone_digits, "ts": time.time()})
        n = len(path.read_text().splitlines())
        return "FAKE-C0DE" if n == 1 else f"FAKE-C{n:03d}"

    def list_groups(self) -> list[tuple[str, str]]:
        if not self._connected:
            raise TransportError("not connected")
        return [(str(j), str(n)) for j, n in self._script().get("groups", [])]

    def logout(self) -> None:
        _append_jsonl(self.dir / "logouts.jsonl", {"jid": self._me(), "ts": time.time()})
        self.forget_session()

    def forget_session(self) -> None:
        self.session_file.unlink(missing_ok=True)

    def stop(self) -> None:
        self._stop.set()
