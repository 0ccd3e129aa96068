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

from neonize.client import ClientFactory, NewClient
from neonize.events import (
    ClientOutdatedEv,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    LoggedOutEv,
    MessageEv,
    PairStatusEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.proto.Neonize_pb2 import JID, ConnectFailureReason, PairStatus, TemporaryBan
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message
from neonize.utils.message import extract_text

from gateway.whatsapp.addresses import USER_SERVER
from gateway.whatsapp.incoming import RawMessage, incoming_from_raw
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


class NeonizeTransport(Transport):
    name = "neonize"

    def __init__(self, db_path: Path | str) -> None:
        self.db_path = Path(db_path)
        self._client: NewClient | None = None
        self._lock = threading.Lock()

    def is_paired(self) -> bool:
        if not self.db_path.exists():
            return False
        devices = ClientFactory.get_all_devices_from_db(str(self.db_path))
        return any(d.JID.User for d in devices)

    def _new_client(self, sink: EventSink) -> NewClient:
        client = NewClient(str(self.db_path))

        def forward(_c: NewClient, ev: Any) -> None:
            te = event_from_neonize(ev)
            if te is None:
                return
            if te.kind == "connected":
                te = TransportEvent(kind="connected", jid=self._me(client))
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
        client.event.qr(lambda _c, data: sink(TransportEvent(kind="qr", code=data.decode(errors="replace"))))
        return client

    @staticmethod
    def _me(client: NewClient) -> str:
        try:
            me = client.get_me()
            return jid_str(me.JID) if me.JID.User else ""
        except Exception:
            return ""

    def connect(self, sink: EventSink) -> None:
        client = self._new_client(sink)
        with self._lock:
            self._client = client
        try:
            client.connect()  # blocks until stop(); raises NeonizeError when WhatsApp is unreachable
        except Exception as e:
            raise TransportError(str(e)) from e
        finally:
            with self._lock:
                self._client = None

    def _require(self) -> NewClient:
        client = self._client
        if client is None:
            raise TransportError("not connected")
        return client

    def send(self, to: str, text: str, image: bytes | None = None) -> str:
        client = self._require()
        try:
            msg = build_outgoing(client, text, image)
            resp = client.send_message(jid_proto(to), msg)
        except Exception as e:  # UploadError, SendMessageError, or a ctypes-level failure
            raise TransportError(f"{type(e).__name__}: {e}") from e
        return resp.ID

    def pair_phone(self, phone_digits: str) -> str:
        client = self._require()
        return client.PairPhone(phone_digits, show_push_notification=True)

    def list_groups(self) -> list[tuple[str, str]]:
        return groups_from_neonize(self._require().get_joined_groups())

    def logout(self) -> None:
        self._require().logout()

    def forget_session(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(self.db_path) + suffix).unlink(missing_ok=True)

    def stop(self) -> None:
        with self._lock:
            client = self._client
        if client is not None:
            try:
                client.stop()
            except Exception:
                log.debug("neonize stop failed", exc_info=True)
