"""The one module that imports neonize: maps its client and events onto `transport.Transport`.

Imported only inside the WhatsApp child process. neonize wraps whatsmeow (Go)
through a shared library shipped in its wheel; importing it loads that library
(it would try to download it from GitHub only if the file were missing or of the
wrong version - never the case with a wheel install), and its Go runtime may
panic and abort the process, which is why it lives in a child.

Event mapping (neonize protobuf event -> our `TransportEvent.kind`):
QR callback -> qr; PairStatusEv (SUCCESS) -> paired; ConnectedEv -> connected;
DisconnectedEv -> disconnected; LoggedOutEv -> logged_out; StreamReplacedEv ->
stream_replaced; TemporaryBanEv -> temporary_ban (Expire is in seconds);
ClientOutdatedEv -> client_outdated; ConnectFailureEv -> connect_failure (reason
name); MessageEv -> message (text messages from others only).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neonize.client import NewClient
from neonize.events import (
    ClientOutdatedEv,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    LoggedOutEv,
    MessageEv,
    PairStatusEv,
    ReceiptEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.proto.Neonize_pb2 import JID, ConnectFailureReason, PairStatus, TemporaryBan
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message
from neonize.utils.enum import Presence
from neonize.utils.message import extract_text

from gateway.whatsapp.addresses import USER_SERVER
from gateway.whatsapp.incoming import RawMessage, incoming_from_raw, receipt_status, timestamp_s
from gateway.whatsapp.session_db import paired_jid_from_db
from gateway.whatsapp.settings import check_session_path
from gateway.whatsapp.transport import EventSink, IncomingMessage, Transport, TransportError, TransportEvent

log = logging.getLogger(__name__)


def jid_str(jid: JID) -> str:
    """JID proto -> 'user@server' (device part dropped: we address people and groups, not devices)."""
    if not jid.User:
        return jid.Server
    return f"{jid.User}@{jid.Server}"


def jid_proto(jid: str) -> JID:
    """'628123@s.whatsapp.net' / '1203...@g.us' -> JID proto."""
    user, _, server = jid.partition("@")
    return JID(User=user, Server=server or USER_SERVER, Device=0, RawAgent=0, Integrator=0, IsEmpty=False)


def build_outgoing(client: NewClient, text: str, image: bytes | None) -> Message | str:
    """What `client.send_message` gets: an image message (uploads the photo) or plain text."""
    if image is None:
        return text
    return client.build_image_message(image, caption=text)


def raw_from_event(ev: MessageEv) -> RawMessage:
    """neonize MessageEv -> the fields the gateway reads (see `gateway.whatsapp.incoming`)."""
    info = ev.Info
    src = info.MessageSource
    alt = src.SenderAlt if src.HasField("SenderAlt") else None
    return RawMessage(
        id=info.ID,
        chat=jid_str(src.Chat),
        sender=jid_str(src.Sender),
        sender_alt=jid_str(alt) if alt is not None and alt.User else "",
        text=extract_text(ev.Message),
        timestamp=float(info.Timestamp or 0),
        is_group=bool(src.IsGroup),
        is_from_me=bool(src.IsFromMe),
        push_name=info.Pushname,
    )


def message_from_event(
    ev: MessageEv, pn_for_lid: Callable[[JID], JID | None] | None = None
) -> IncomingMessage | None:
    """neonize MessageEv -> IncomingMessage; None for what is never a command (see `incoming_from_raw`)."""

    def lookup(lid: str) -> str:
        if pn_for_lid is None:
            return ""
        found = pn_for_lid(jid_proto(lid))
        return jid_str(found) if found is not None and found.User else ""

    return incoming_from_raw(raw_from_event(ev), lookup)


def receipt_from_event(ev: ReceiptEv) -> TransportEvent | None:
    """neonize Receipt (Timestamp in seconds: goneonize EncodeReceipts) -> a `receipt` event, or None."""
    status = receipt_status(ReceiptEv.ReceiptType.Name(ev.Type) if ev.Type else "")
    if status is None or not ev.MessageIDs:
        return None
    return TransportEvent(
        kind="receipt",
        code=status,
        jid=jid_str(ev.MessageSource.Chat),
        ids=tuple(ev.MessageIDs),
        ts=timestamp_s(float(ev.Timestamp or 0)),
    )


def groups_from_neonize(groups: Any) -> list[tuple[str, str]]:
    """neonize GroupInfo list -> [(group JID, name)], sorted by name."""
    return sorted(((jid_str(g.JID), g.GroupName.Name) for g in groups), key=lambda x: (x[1].casefold(), x[0]))


def event_from_neonize(ev: Any) -> TransportEvent | None:
    """Connection-state events (everything but QR and messages) -> TransportEvent."""
    if isinstance(ev, ConnectedEv):
        return TransportEvent(kind="connected")
    if isinstance(ev, DisconnectedEv):
        return TransportEvent(kind="disconnected")
    if isinstance(ev, LoggedOutEv):
        return TransportEvent(
            kind="logged_out", code=ConnectFailureReason.Name(ev.Reason) if ev.Reason else ""
        )
    if isinstance(ev, StreamReplacedEv):
        return TransportEvent(kind="stream_replaced")
    if isinstance(ev, TemporaryBanEv):
        code = TemporaryBan.TempBanReason.Name(ev.Code) if ev.Code else ""
        return TransportEvent(kind="temporary_ban", code=code, expire_s=float(ev.Expire))
    if isinstance(ev, ClientOutdatedEv):
        return TransportEvent(kind="client_outdated")
    if isinstance(ev, ConnectFailureEv):
        code = ConnectFailureReason.Name(ev.Reason) if ev.Reason else "UNKNOWN"
        return TransportEvent(kind="connect_failure", code=code, detail=ev.Message)
    if isinstance(ev, PairStatusEv):
        if ev.Status == PairStatus.SUCCESS:
            return TransportEvent(kind="paired", jid=jid_str(ev.ID))
        return TransportEvent(kind="connect_failure", code="PAIR_ERROR", detail=ev.Error)
    return None


# whatsmeow send.go: the number has no WhatsApp account; unknown server: an address it cannot send to.
_PERMANENT_SEND_ERRORS = ("no LID found for", "can't send message to unknown server")


def send_error_is_permanent(error: str) -> bool:
    """True when retrying cannot help (and repeated look-ups of non-users are a ban signal)."""
    return any(p.lower() in error.lower() for p in _PERMANENT_SEND_ERRORS)


class NeonizeTransport(Transport):
    """One `NewClient` for the life of the (child) process, connected at most once.

    neonize 0.5.2 registers `weakref.finalize(client, _release_ffi, uuid)`, which calls
    Go `Stop(uuid)` when a client object is garbage-collected; a new `NewClient` per
    connect attempt (same uuid: the database path) meant the collected old one stopped
    the live one, and the next `GetMe` dereferenced a nil client (a Go panic, SIGABRT).
    Each Go `Neonize` call also opens a whatsmeow container (an SQLite connection) it
    never closes. So a second `connect` is refused (`one_connect_per_process`): the
    child ends and the supervisor starts a fresh process after the backoff.
    """

    name = "neonize"
    one_connect_per_process = True

    def __init__(self, db_path: Path | str, push_name: str = "") -> None:
        check_session_path(db_path)
        self.db_path = Path(db_path)
        self.push_name = push_name.strip()
        self._client: NewClient | None = None
        self._connecting = False
        self._connected_once = False
        self._paired: bool | None = None  # known from events once neonize owns the database
        self._lock = threading.Lock()

    def is_paired(self) -> bool:
        if self._paired is not None:
            return self._paired
        if self._connected_once:
            return False  # never reached a paired state; do not open the file Go holds
        return bool(paired_jid_from_db(self.db_path))

    def _new_client(self, sink: EventSink) -> NewClient:
        client = NewClient(str(self.db_path))

        def forward(_c: NewClient, ev: Any) -> None:
            te = event_from_neonize(ev)
            if te is None:
                return
            if te.kind == "connected":
                te = TransportEvent(kind="connected", jid=self._me(client))
                self._paired = True if te.jid else self._paired
                # Only a paired client has app-state keys: whatsmeow sendAppState on an unpaired
                # store dereferences nil (a Go panic, seen with neonize 0.5.2).
                self._announce(client, self.push_name if te.jid else "")
            elif te.kind == "paired":
                self._paired = True
            elif te.kind == "logged_out":
                self._paired = False
            sink(te)

        for ev_type in (
            ConnectedEv,
            DisconnectedEv,
            LoggedOutEv,
            StreamReplacedEv,
            TemporaryBanEv,
            ClientOutdatedEv,
            ConnectFailureEv,
            PairStatusEv,
        ):
            client.event(ev_type)(forward)

        def on_message(c: NewClient, ev: MessageEv) -> None:
            msg = message_from_event(ev, c.get_pn_from_lid)
            if msg is not None:
                sink(TransportEvent(kind="message", message=msg))

        client.event(MessageEv)(on_message)

        def on_receipt(_c: NewClient, ev: ReceiptEv) -> None:
            te = receipt_from_event(ev)
            if te is not None:
                sink(te)

        client.event(ReceiptEv)(on_receipt)
        client.event.qr(lambda _c, data: sink(TransportEvent(kind="qr", code=data.decode(errors="replace"))))
        return client

    @staticmethod
    def _announce(client: NewClient, push_name: str = "") -> None:
        """Set the push name (when configured) and send presence `unavailable`.

        whatsmeow presence.go sends our push name with a presence; with none ever sent,
        recipients see "-" as the sender (which invites "report spam"). `unavailable`
        keeps the phone receiving notifications. SendPresence fails with ErrNoPushName
        until the phone synced the name (or we set one): logged, harmless.
        """
        if push_name:
            try:
                if client.get_me().PushName != push_name:
                    client.set_profile_name(push_name)  # app state `setting_pushName`, synced to the phone
            except Exception as e:
                log.info("could not set the WhatsApp push name: %s", e)
        try:
            client.send_presence(Presence.UNAVAILABLE)
        except Exception as e:
            log.info("could not send presence: %s", e)

    @staticmethod
    def _me(client: NewClient) -> str:
        try:
            me = client.get_me()
            return jid_str(me.JID) if me.JID.User else ""
        except Exception:
            return ""

    def connect(self, sink: EventSink) -> None:
        with self._lock:
            if self._connected_once:
                raise TransportError("neonize connects once per process; the child restarts to reconnect")
            if self._paired is None:
                self._paired = self.is_paired()  # read the file now: from here on Go holds it open
            self._connected_once = True
            self._client = self._new_client(sink)
            self._connecting = True
        try:
            self._client.connect()  # blocks until stop(); raises NeonizeError when WhatsApp is unreachable
        except Exception as e:
            raise TransportError(str(e)) from e
        finally:
            with self._lock:
                self._connecting = False  # the object stays referenced: its finalizer must not run

    def _require(self) -> NewClient:
        client = self._client
        if client is None or not self._connecting:
            raise TransportError("not connected")
        return client

    def send(self, to: str, text: str, image: bytes | None = None) -> str:
        client = self._require()
        try:
            msg = build_outgoing(client, text, image)
            resp = client.send_message(jid_proto(to), msg)
        except Exception as e:  # UploadError, SendMessageError, or a ctypes-level failure
            err = f"{type(e).__name__}: {e}"
            raise TransportError(err, permanent=send_error_is_permanent(err)) from e
        return resp.ID

    def check_numbers(self, phones: list[str]) -> dict[str, bool]:
        """digits -> on WhatsApp? One `is_on_whatsapp` round trip for all (neonize joins them by spaces)."""
        if not phones:
            return {}
        found = self._require().is_on_whatsapp(*[f"+{p}" for p in phones])
        out = {p: False for p in phones}
        for r in found:
            user = r.JID.User or "".join(ch for ch in r.Query if ch.isdigit())
            if user in out:
                out[user] = bool(r.IsIn)
        return out

    def pair_phone(self, phone_digits: str) -> str:
        client = self._require()
        return client.PairPhone(phone_digits, show_push_notification=True)

    def list_groups(self) -> list[tuple[str, str]]:
        return groups_from_neonize(self._require().get_joined_groups())

    def logout(self) -> None:
        self._require().logout()
        self._paired = False

    def forget_session(self) -> None:
        self._paired = False
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(self.db_path) + suffix).unlink(missing_ok=True)

    def stop(self) -> None:
        with self._lock:
            client = self._client if self._connecting else None
        if client is not None:
            try:
                client.stop()
            except Exception:
                log.debug("neonize stop failed", exc_info=True)
