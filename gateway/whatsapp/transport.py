"""The small seam between the WhatsApp child and WhatsApp itself.

The child process (`gateway.whatsapp.child`) drives a `Transport`: it connects,
sends, pairs and logs out through it, and receives `TransportEvent`s from it.
Two implementations exist: `neonize_adapter.NeonizeTransport` (the real one, the
only module that imports neonize) and `fake.FakeTransport` (a file-driven stand-in
for WhatsApp's servers, used by tests and demos). Both speak exactly the same
events, so everything above this seam - the pipe protocol, the supervisor, the
notifier, the command handler - is exercised by tests without WhatsApp.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class IncomingMessage:
    """A text message someone sent to the gateway's WhatsApp number (the gateway's own type)."""

    id: str
    chat: str  # JID to reply to: the sender for a direct chat, the group for a group
    sender: str  # JID of the person (phone-number JID when known, else a @lid JID)
    sender_phone: str  # digits only, "" when WhatsApp hid it (LID addressing without a mapping)
    text: str
    ts: float
    is_group: bool = False
    push_name: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IncomingMessage:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# Events a transport reports. `kind` is the discriminator the child switches on.
@dataclass(frozen=True)
class TransportEvent:
    kind: str  # receipt | qr | pair_code | paired | connected | disconnected | logged_out | stream_replaced | temporary_ban | client_outdated | connect_failure | message
    jid: str = ""  # paired / connected: our own number
    code: str = ""  # qr payload, pair code, ban reason, failure reason
    detail: str = ""
    expire_s: float = 0.0  # temporary ban: seconds until it lifts
    message: IncomingMessage | None = None
    ids: tuple[str, ...] = ()  # receipt: the message ids it confirms (code: delivered | read)
    ts: float = 0.0  # receipt: when, unix seconds


EventSink = Callable[[TransportEvent], None]


class TransportError(Exception):
    """A send or pair request failed; carries what the outbox needs to decide about retries."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after_s = retry_after_s


class Transport(ABC):
    """What the child needs from a WhatsApp client library."""

    name: str = "transport"
    # True: `connect` works once per process; to reconnect the child ends and a new one starts.
    one_connect_per_process: bool = False

    @abstractmethod
    def is_paired(self) -> bool:
        """True when the session store holds a linked device (no network needed)."""

    @abstractmethod
    def connect(self, sink: EventSink) -> None:
        """Connect and deliver events to `sink` until `stop()`; blocks.

        Returns when stopped or when the connection ended for good; raises
        `TransportError` when WhatsApp cannot be reached at all.
        """

    @abstractmethod
    def send(self, to: str, text: str, image: bytes | None = None) -> str:
        """Send `text` (the caption when `image` is given) to a JID; returns the message id.

        Raises `TransportError` on failure. Blocks until WhatsApp accepted it.
        """

    def check_numbers(self, phones: list[str]) -> dict[str, bool]:
        """Phone digits -> registered on WhatsApp? (needs a connection; one request for all)."""
        raise TransportError("this transport cannot check numbers")

    @abstractmethod
    def pair_phone(self, phone_digits: str) -> str:
        """Ask for a phone-number pairing code (the alternative to the QR); returns the code."""

    @abstractmethod
    def list_groups(self) -> list[tuple[str, str]]:
        """(group JID, group name) of every group this account is in (needs a connection)."""

    @abstractmethod
    def logout(self) -> None:
        """Unlink this device from the account (best effort) and forget the local session."""

    @abstractmethod
    def forget_session(self) -> None:
        """Delete the local session (after WhatsApp logged it out: its keys are worthless now)."""

    @abstractmethod
    def stop(self) -> None:
        """Make `connect` return soon. Safe to call from any thread, more than once."""
