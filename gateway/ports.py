"""The gateway's read/act surface, as used by the dashboard, Home Assistant and WhatsApp commands.

`gateway.service.GatewayService` (the running gateway) implements `GatewayPort`;
the web app, Home Assistant bridge and WhatsApp command handler are written
against this Protocol only, so each can be tested with the real service or a
small in-memory one. Records are plain JSON-able dicts with the keys below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NotRequired, Protocol, TypedDict

from gateway.bus import Bus
from gateway.vocabulary import OutboxState, Receipt

PhotoVariant = Literal["original", "alert", "thumb"]


class PhotoInfo(TypedDict):
    size: int
    sha256: str
    width: int | None
    height: int | None


class EventRecord(TypedDict):
    device: str
    id: str
    type: str  # delivery | pickup | lid_closed | lid_left_open | snapshot
    ts: float  # event time (box clock, or gateway receive time when the box had none)
    received_at: float
    seq: int
    sensors: dict[str, Any]
    photo: PhotoInfo | None
    cmd: str | None  # command id when a snapshot was requested
    photo_dropped: NotRequired[bool]  # the box had to drop the photo (its spool was full)


class DeviceRecord(TypedDict):
    device: str
    name: str
    online: bool
    last_seen: float | None
    fw: str | None
    rssi: int | None
    battery_mv: int | None
    heap_free: int | None
    uptime_s: int | None
    spooled: int | None
    status_at: NotRequired[float | None]  # when fw/rssi/battery/heap/uptime/spooled were reported
    waiting: int  # deliveries since the last pickup
    lid_open: bool | None
    last_delivery_ts: float | None
    last_event_id: str | None


class OutboxRecord(TypedDict):
    id: str
    kind: str
    device: str
    event_ids: list[str]
    notifier: str
    recipient: str
    state: OutboxState  # failed = last attempt failed, will retry; dead = gave up
    attempts: int
    created_at: float
    next_attempt_at: float | None
    sent_at: float | None
    last_error: str | None
    message_id: str | None  # the sink's id of the sent message (WhatsApp), for receipts
    receipt: Receipt | None  # WhatsApp: what the recipient's phone confirmed
    receipt_at: float | None


class WhatsAppState(TypedDict, total=False):
    state: str  # disabled | not_installed | starting | not_paired | pairing | connected | disconnected | stream_replaced | logged_out | banned | outdated | locked | error
    detail: str  # what is wrong and what to do, for people
    paired_as: str | None  # phone number (JID user) once paired
    qr: str | None  # current pairing QR payload while pairing
    pair_code: str | None  # phone-number pairing code, when requested
    pair_code_expires_at: float | None  # when that code stops working (its QR round ends)
    qr_expires_at: float | None  # when the shown QR code stops working
    down_since: float | None  # when it last left `connected`; None while connected
    retry_at: float | None  # banned for a while or restarting: not before this time
    down_notice_after_s: float  # down this long: notices on the other sinks, dashboard banner
    unknown_numbers: list[str]  # configured recipients WhatsApp says are not users (digits)
    numbers_checked_at: float | None
    updated_at: float


class Component(Protocol):
    """Anything started and stopped with the gateway (web server, WhatsApp supervisor, HA bridge)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class GatewayPort(Protocol):
    bus: Bus

    def list_events(
        self,
        *,
        device: str | None = None,
        type: str | tuple[str, ...] | None = None,  # several: any of them
        since: float | None = None,
        until: float | None = None,
        before: tuple[float, int, str]
        | None = None,  # keyset cursor: (ts, seq, id) of the last row of the previous page
        limit: int = 50,
    ) -> list[EventRecord]:
        """Newest first."""
        ...

    def get_event(self, device: str, event_id: str) -> EventRecord | None: ...

    def photo_path(self, device: str, event_id: str, variant: PhotoVariant) -> Path | None:
        """A file inside the data folder, or None. Never built from request paths."""
        ...

    def list_devices(self) -> list[DeviceRecord]: ...

    def health(self) -> dict[str, Any]:
        """Counters: received, stored, duplicates, rejected.<reason>, alerts pending/sent/failed/dead, uptime."""
        ...

    def list_outbox(self, state: OutboxState | None = None, limit: int = 100) -> list[OutboxRecord]: ...

    def retry_alert(self, alert_id: str) -> bool:
        """Make a failed or dead alert pending again, due now."""
        ...

    def send_command(self, device: str, cmd: str, args: dict[str, Any] | None = None) -> str:
        """Publish a command to a box; returns the command id. The result arrives on the bus (COMMAND_RESULT)."""
        ...

    def command_result(self, cmd_id: str) -> dict[str, Any] | None: ...

    def whatsapp_state(self) -> WhatsAppState: ...

    # Optional (looked up with getattr; the running gateway has them, small test ports may not):
    # `firmware_status(device) -> dict` and `offer_update(device) -> dict` (raises LookupError for an
    # unknown box, gateway.ota.manifest.UpdateRefused when it cannot go): over-the-air updates for the
    # dashboard's Update button and Home Assistant's update entity (gateway/ota/offers.py).
