"""Recipient addresses: phone numbers in international format and group ids, as WhatsApp JIDs."""

from __future__ import annotations

import re
from collections.abc import Iterable

USER_SERVER = "s.whatsapp.net"
GROUP_SERVER = "g.us"
LID_SERVER = "lid"
# whatsmeow types/jid.go: BroadcastServer ("status@broadcast" is WhatsApp Status; a reply there
# posts a Status to every contact) and NewsletterServer (channels). Never answered.
BROADCAST_SERVER = "broadcast"
NEWSLETTER_SERVER = "newsletter"

_PHONE = re.compile(r"^\+?[0-9][0-9 ()\-.]{5,22}$")
_GROUP = re.compile(r"^[0-9]{5,20}(-[0-9]{5,20})?@g\.us$")
_JID = re.compile(r"^[0-9]{5,20}@s\.whatsapp\.net$")


class BadRecipient(ValueError):
    """The configured address is neither a phone number nor a group id."""


def phone_digits(text: str) -> str:
    """'+62 812-3456-789' -> '628123456789' (no validation beyond dropping separators)."""
    return re.sub(r"[^0-9]", "", text)


def to_jid(recipient: str) -> str:
    """A configured recipient -> JID string.

    Phone numbers must be in international format (country code first, e.g.
    +62 812 3456 789 or 628123456789); group ids end in ``@g.us``; full
    ``...@s.whatsapp.net`` JIDs pass through.
    """
    r = recipient.strip()
    if _GROUP.match(r) or _JID.match(r):
        return r
    if "@" in r:
        raise BadRecipient(f"not a phone number or group id: {recipient!r}")
    if r.startswith("0"):
        raise BadRecipient(
            f"{recipient!r} looks like a local number: use international format with the country code, e.g. +62..."
        )
    if not _PHONE.match(r):
        raise BadRecipient(
            f"not a phone number in international format or a group id (...@g.us): {recipient!r}"
        )
    digits = phone_digits(r)
    if not 7 <= len(digits) <= 15:  # E.164 allows at most 15 digits
        raise BadRecipient(f"phone number {recipient!r} has {len(digits)} digits; expected 7 to 15")
    return f"{digits}@{USER_SERVER}"


def recipient_key(recipient: str) -> str:
    """The one recipient WhatsApp sees behind a configured spelling: its JID ('+62 812-3456-789' and
    '628123456789' are one person). An address that is no JID keys as itself (stripped): it is never
    sent, and two such are only one when spelt alike."""
    try:
        return to_jid(recipient)
    except BadRecipient:
        return recipient.strip()


def unique_recipients(recipients: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Drop later spellings of a recipient already listed (by `recipient_key`), keeping the first.

    Returns (the kept list in order, [(dropped spelling, the kept spelling it repeats)]): each
    configured entry becomes an outbox entry, so a number listed twice got every alert twice."""
    first: dict[str, str] = {}
    kept: list[str] = []
    dropped: list[tuple[str, str]] = []
    for r in recipients:
        key = recipient_key(r)
        if key in first:
            dropped.append((r, first[key]))
            continue
        first[key] = r
        kept.append(r)
    return kept, dropped


def is_group(jid: str) -> bool:
    return jid.endswith("@" + GROUP_SERVER)


def jid_user(jid: str) -> str:
    """'628123@s.whatsapp.net' or '628123:12@s.whatsapp.net' -> '628123'."""
    return jid.split("@", 1)[0].split(":", 1)[0].split(".", 1)[0]


def is_broadcast_or_channel(jid: str) -> bool:
    """Status (`status@broadcast`), broadcast lists and channels: chats the gateway never writes to."""
    server = jid.rpartition("@")[2]
    return server in (BROADCAST_SERVER, NEWSLETTER_SERVER)
