"""WhatsApp alert sink: forwards each alert to the WhatsApp child and reports how it went.

Implements `gateway.notify.base.Notifier`. The outbox calls `send(alert)` once
per (alert, recipient); this module turns the alert into a JID plus photo bytes
and caption (a pure function, `build_message`), and hands the message to the
supervisor, which waits for the child's confirmation. It never raises: every
problem becomes a failed `SendResult` and the outbox retries. The overall and
per-recipient rate limits (WhatsApp bans numbers that send in bursts) are only
declared here (`rate_limit`): the outbox dispatcher owns them and books each send
once, on its own clock, per recipient JID (`rate_key`), not per configured spelling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gateway.notify.base import Alert, RateLimit, SendResult
from gateway.whatsapp.addresses import BadRecipient, is_group, jid_user, recipient_key, to_jid
from gateway.whatsapp.settings import WhatsAppSettings
from gateway.whatsapp.supervisor import SendOutcome
from gateway.whatsapp.texts import alert_text

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 16 * 1024 * 1024  # WhatsApp's own limit for images


@dataclass(frozen=True)
class OutgoingMessage:
    to: str  # JID
    text: str  # caption when `image` is set
    image: bytes | None


def build_message(alert: Alert, language: str = "en") -> OutgoingMessage:
    """Alert -> what WhatsApp gets: a photo with caption, or text alone when there is no photo.

    Raises `BadRecipient` for an address that can never work and `OSError` when the
    photo cannot be read (the outbox retries: the photo may be on a slow disk).
    """
    jid = to_jid(alert.recipient)
    text = alert.caption.strip() or alert_text(alert, language)
    image = None
    if alert.photo_path is not None:
        path = Path(alert.photo_path)
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            log.warning(
                "alert %s: photo %s is %d bytes, over WhatsApp's limit; sending text only",
                alert.id,
                path,
                size,
            )
        else:
            image = path.read_bytes()
    return OutgoingMessage(to=jid, text=text, image=image)


class WhatsAppNotifier:
    """The `whatsapp` notifier the outbox sends through."""

    name = "whatsapp"

    def __init__(self, settings: WhatsAppSettings, sender) -> None:
        """`sender` is the `WhatsAppSupervisor` (anything with `send(to, text, image) -> SendOutcome`)."""
        self.settings = settings
        self.sender = sender
        # Declared for the outbox dispatcher, which enforces it (gateway/outbox.py); never booked here.
        self.rate_limit = RateLimit(
            per_recipient=(settings.rate_per_minute, 60.0) if settings.rate_per_minute > 0 else None,
            overall=(settings.rate_per_minute_overall, 60.0)
            if settings.rate_per_minute_overall > 0
            else None,
        )
        self.language = settings.language  # the outbox renders captions in this language
        self.counters = {"sent": 0, "failed": 0, "bad_recipient": 0, "not_on_whatsapp": 0}

    def recipients(self, device: str) -> list[str]:
        """One per person: spellings of a number already listed are left out (`recipients_for`)."""
        return self.settings.recipients_for(device)

    def rate_key(self, recipient: str) -> str:
        """The key the outbox's per-recipient limit counts under: the JID, so two spellings of one
        number ('+62 812-3456', '628123456') share one window, as WhatsApp sees one recipient. A bad
        address (never sent: dead-lettered at its first try) keys as itself."""
        return recipient_key(recipient)

    def send(self, alert: Alert) -> SendResult:
        try:
            return self._send(alert)
        except Exception as e:  # the contract: never raise into the outbox
            log.exception("WhatsApp send of alert %s failed unexpectedly", alert.id)
            self.counters["failed"] += 1
            return SendResult(ok=False, error=f"{type(e).__name__}: {e}")

    def _send(self, alert: Alert) -> SendResult:
        try:
            msg = build_message(alert, self.settings.language)
        except BadRecipient as e:
            self.counters["bad_recipient"] += 1
            return SendResult(ok=False, error=str(e), permanent=True)
        except OSError as e:
            self.counters["failed"] += 1
            return SendResult(ok=False, error=f"cannot read the alert photo: {e}")
        if not is_group(msg.to) and _not_on_whatsapp(self.sender, jid_user(msg.to)):
            # Checked once at start: retrying (a look-up of a non-user each time) is a ban signal.
            self.counters["not_on_whatsapp"] += 1
            return SendResult(
                ok=False, error=f"{alert.recipient} is not on WhatsApp (checked at start)", permanent=True
            )
        out: SendOutcome = self.sender.send(msg.to, msg.text, msg.image)
        if out.ok:
            self.counters["sent"] += 1
            return SendResult(ok=True, message_id=out.message_id)
        self.counters["failed"] += 1
        return SendResult(
            ok=False,
            error=out.error or "send failed",
            retry_after_s=out.retry_after_s,
            permanent=out.permanent,
            held=getattr(out, "held", False),
        )

    def close(self) -> None:
        # The supervisor is owned by the WhatsApp component, which stops it.
        pass


def _not_on_whatsapp(sender: object, digits: str) -> bool:
    check = getattr(sender, "not_on_whatsapp", None)
    return bool(check(digits)) if check is not None else False
