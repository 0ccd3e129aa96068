"""The one small interface every alert sink implements (folder, webhook, WhatsApp).

Contract: `send` never raises for an I/O problem - it returns a failed
`SendResult` with the error text, and the outbox decides about retries. Payload
building is a pure function in each sink's module, tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# Alert kinds the outbox creates: one table, in gateway/vocabulary.py (still importable from here).
from gateway.vocabulary import ALERT_KINDS as ALERT_KINDS


@dataclass(frozen=True)
class Alert:
    """One message to one recipient of one notifier (an outbox entry being sent)."""

    id: str  # outbox entry id: stable across retries, safe as a file name ([A-Za-z0-9_-])
    kind: str  # one of ALERT_KINDS
    device: str  # box id
    device_name: str  # human name of the box (defaults to its id)
    event_ids: tuple[str, ...]  # the event(s) this alert is about (several when grouped); may be empty
    ts: float  # when it happened (unix seconds, gateway clock when the box had none)
    caption: str  # rendered in the configured language
    recipient: str = ""  # notifier-specific address ("" for sinks without recipients)
    photo_path: Path | None = None  # the compressed alert copy, when the event has a photo
    state: dict[str, Any] = field(default_factory=dict)  # e.g. {"waiting": 2} deliveries since last pickup


def alert_document(alert: Alert) -> dict[str, Any]:
    """The JSON description of an alert that every machine-readable sink sends (pure)."""
    return {
        "v": 1,
        "id": alert.id,
        "kind": alert.kind,
        "device": alert.device,
        "device_name": alert.device_name,
        "event_ids": list(alert.event_ids),
        "ts": alert.ts,
        "caption": alert.caption,
        "state": alert.state,
    }


@dataclass(frozen=True)
class SendResult:
    ok: bool
    error: str | None = None
    # The sink knows better than the generic backoff (rate limited, temporary ban): retry no sooner than this.
    retry_after_s: float | None = None
    # Retrying cannot help (bad recipient, not paired...): the outbox dead-letters it at once.
    permanent: bool = False
    # The sink's id of the sent message (WhatsApp), kept with the entry so receipts can find it.
    message_id: str | None = None
    # The channel cannot send until the owner acts (WhatsApp not installed, outdated, replaced), and the
    # owner is told elsewhere (start banner, state, dashboard): the entry waits `retry_after_s` and the
    # outbox does not log a WARNING per alert per retry.
    held: bool = False


@dataclass(frozen=True)
class RateLimit:
    """At most `count` sends per `per_s` seconds, per recipient and overall (None = unlimited)."""

    per_recipient: tuple[int, float] | None = None
    overall: tuple[int, float] | None = None


@runtime_checkable
class Notifier(Protocol):
    name: str  # "folder", "webhook", "whatsapp" - also the outbox's notifier key
    rate_limit: RateLimit | None

    def recipients(self, device: str) -> list[str]:
        """Who gets alerts about `device` ([""] for sinks without recipients)."""
        ...

    def send(self, alert: Alert) -> SendResult: ...

    def close(self) -> None: ...
