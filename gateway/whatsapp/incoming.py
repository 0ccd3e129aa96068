"""From the fields of a neonize `MessageEv` to the gateway's `IncomingMessage` (pure, no neonize import).

Both transports go through `incoming_from_raw`: the neonize adapter fills `RawMessage`
from the protobuf event, the fake transport from its inbox files, so the shapes the
fake produces take the same path as real ones. The shapes, as whatsmeow
(message.go `parseMessageSource`, checked at 33cfac51) fills them and neonize 0.5.2
(`neonize/proto/Neonize_pb2`, `MessageSource`/`MessageInfo`) hands them over:

- direct chat: Chat = Sender = the person (`...@s.whatsapp.net`, or `...@lid` when
  WhatsApp hides the number; then SenderAlt may carry the phone JID, or be empty);
- group: Chat = `...@g.us`, Sender = participant, IsGroup = true;
- WhatsApp Status and broadcast lists: Chat = `status@broadcast` / `...@broadcast`,
  IsGroup = true (whatsmeow treats BroadcastServer like GroupServer);
- channels: Chat = Sender = `...@newsletter`, IsGroup = false;
- our own messages (sent from the phone): IsFromMe = true;
- Timestamp: neonize 0.5 sends milliseconds, older versions seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.whatsapp.addresses import LID_SERVER, USER_SERVER, is_broadcast_or_channel
from gateway.whatsapp.transport import IncomingMessage


@dataclass(frozen=True)
class RawMessage:
    """What the gateway reads from a `MessageEv` (JIDs as 'user@server', device part dropped)."""

    id: str
    chat: str
    sender: str
    text: str
    timestamp: float = 0.0  # MessageInfo.Timestamp as sent: ms (neonize 0.5) or s (older)
    sender_alt: str = ""  # MessageSource.SenderAlt; "" when empty
    is_group: bool = False
    is_from_me: bool = False
    push_name: str = ""


def _server(jid: str) -> str:
    return jid.rpartition("@")[2]


def _user(jid: str) -> str:
    return jid.partition("@")[0]


# neonize Receipt.ReceiptType names (goneonize utils/encoder.go EncodeReceipts, from whatsmeow
# types/receipt.go) -> what the gateway shows. SENDER/READ_SELF/PLAYED_SELF are our own devices,
# RETRY a decryption retry request, the rest not about the recipient: ignored.
_RECEIPTS = {"DELIVERED": "delivered", "READ": "read", "PLAYED": "read"}


def receipt_status(type_name: str) -> str | None:
    """'DELIVERED' -> 'delivered', 'READ'/'PLAYED' -> 'read', anything else None."""
    return _RECEIPTS.get(type_name)


def timestamp_s(raw_ts: float) -> float:
    """neonize 0.5 sends milliseconds, older versions seconds (1e11 s is the year 5138)."""
    return raw_ts / 1000.0 if raw_ts > 1e11 else float(raw_ts)


def incoming_from_raw(
    raw: RawMessage, pn_for_lid: Callable[[str], str] | None = None, now: Callable[[], float] = time.time
) -> IncomingMessage | None:
    """None for what is never a command: our own messages, text-less ones, Status, broadcasts, channels.

    The allowlist is by phone number, so a `@lid` sender's phone JID comes from
    SenderAlt or `pn_for_lid` ('...@lid' -> '...@s.whatsapp.net' or ''), and stays
    empty when unknown (such a sender is then not authorised).
    """
    if raw.is_from_me or is_broadcast_or_channel(raw.chat):
        return None
    text = raw.text.strip()
    if not text:
        return None
    phone_jid = raw.sender if _server(raw.sender) == USER_SERVER else ""
    if not phone_jid and _server(raw.sender) == LID_SERVER:
        if _server(raw.sender_alt) == USER_SERVER and _user(raw.sender_alt):
            phone_jid = raw.sender_alt
        elif pn_for_lid is not None:
            try:
                found = pn_for_lid(raw.sender)
            except Exception:
                found = ""
            if found and _server(found) == USER_SERVER and _user(found):
                phone_jid = found
    return IncomingMessage(
        id=raw.id,
        chat=raw.chat,
        sender=phone_jid or raw.sender,
        sender_phone=_user(phone_jid),
        text=text,
        ts=timestamp_s(raw.timestamp) or now(),
        is_group=raw.is_group,
        push_name=raw.push_name,
    )
