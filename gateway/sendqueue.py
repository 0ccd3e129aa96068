"""The send API in the running gateway: a checked request becomes outbox entries, durably.

`gateway.sendapi` parses and checks `POST /api/notify` (pure); this queues what it returns, through
the same outbox as box alerts (retries, rate limits, dead letter: `gateway.outbox`), and answers the
dashboard's per-channel view and its "Send test". The photo is validated and re-encoded by
`gateway.photos.process_photo` (hostile JPEGs) and written under `<data>/api-photos/` *before* the
entries, so an entry never points at a photo that is not on disk; `prune_api_photos` removes old ones
(the hourly retention, `gateway.retention`).

The store, the notifiers and the outbox writer are the service's, passed in.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.alerts import PlannedAlert, pending, rhash
from gateway.health import Counters
from gateway.notify.base import Notifier
from gateway.outbox import _public
from gateway.photos import PhotoError, PhotoSettings, ProcessedPhoto, process_photo
from gateway.sendapi import BadRequest, SendRequest, resolve_sinks
from gateway.storage import atomic_write_bytes
from gateway.store import Store
from gateway.vocabulary import GATEWAY_DEVICE

log = logging.getLogger("gateway")

API_PHOTO_DIR = "api-photos"  # photos sent with the send API, by message id (<data>/api-photos/)
_API_PHOTO = re.compile(r"msg[0-9a-f]{16}\.jpg")
TEST_TEXT = "parcelbox test message: this channel gets the box alerts."

# (entries, when): store the entries, tell the bus, wake the dispatcher (the service's `_emit_alerts`).
Emit = Callable[[list[PlannedAlert], float], None]


def api_photo_path(folder: Path, name: str) -> Path | None:
    """A send-API photo in `folder` by its file name, or None: the name is checked, never a path."""
    if not _API_PHOTO.fullmatch(name):
        return None
    p = folder / name
    return p if p.is_file() else None


def prune_api_photos(folder: Path, now: float, max_age_s: float) -> int:
    """Remove send-API photos older than `max_age_s` (by file time); returns how many."""
    n = 0
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return 0
    for p in entries:
        try:
            if _API_PHOTO.fullmatch(p.name) and now - p.stat().st_mtime > max_age_s:
                p.unlink()
                n += 1
        except OSError as e:  # one unremovable file must not stop the rest
            log.warning("retention: cannot remove %s: %s", p, e)
    return n


class SendQueue:
    """`queue_message`, `channels`, `test_channel`, `get_alert` of `gateway.ports.GatewayPort`."""

    def __init__(
        self,
        *,
        data_dir: Path,
        store: Callable[[], Store],
        notifiers: dict[str, Notifier],
        emit: Emit,
        photo_settings: PhotoSettings,
        counters: Counters,
        clock: Callable[[], float],
        gateway_name: str,
    ) -> None:
        self.photo_dir = data_dir / API_PHOTO_DIR
        self._store = store  # the open store (the service opens it at start)
        self._notifiers = notifiers  # the service's own dict: a sink added later is seen here too
        self._emit = emit
        self._photo_settings = photo_settings
        self._counters = counters
        self._clock = clock
        self._gateway_name = gateway_name  # names a message that is about no box

    def sink_names(self) -> list[str]:
        """The configured sinks a message can be sent through."""
        return list(self._notifiers)

    def photo_path(self, name: str) -> Path | None:
        """The dispatcher's way to a queued message's photo (`OutboxDispatcher(attachment_path=...)`)."""
        return api_photo_path(self.photo_dir, name)

    def queue_message(self, req: SendRequest, recipient: str | None = None) -> dict[str, Any]:
        """Queue a message to the chosen sinks; durable when this returns (the API then answers 202).

        Raises `BadRequest` (nothing queued) for an unknown sink or a photo `process_photo` refuses.
        The photo's alert copy (validated, re-encoded, metadata gone) is written before the entries,
        so an entry never points at a photo that is not on disk.
        """
        store = self._store()
        sinks = resolve_sinks(req.sinks, self.sink_names())
        msg_id = f"msg{uuid.uuid4().hex[:16]}"
        processed: ProcessedPhoto | None = None
        if req.photo is not None:
            try:
                processed = process_photo(req.photo, self._photo_settings)
            except PhotoError as e:
                self._counters.inc("api_photos_refused")
                raise BadRequest("bad_photo", f"photo refused ({e.reason}): {e.detail}"[:300]) from None
        photo_file = f"{msg_id}.jpg" if processed is not None else None
        device = req.box or GATEWAY_DEVICE
        dev = (store.get_device(req.box) if req.box else None) or {}
        name = dev.get("name") or req.box or self._gateway_name
        caption = f"{req.title}\n{req.text}" if req.title else req.text
        now = self._clock()
        out: list[PlannedAlert] = []
        for sink in sinks:
            try:
                recipients = self._notifiers[sink].recipients(device)
            except Exception:
                log.exception("notifier %s: recipients() failed", sink)
                recipients = []
            if recipient is not None:  # a test to one recipient (the dashboard's "Send test")
                recipients = [recipient]
            for r in recipients:
                entry = pending(
                    f"{msg_id}_{sink}_{rhash(r)}",
                    "message",
                    device,
                    sink,
                    r,
                    event_ids=(),
                    now=now,
                    due=now,
                    ts=now,
                    device_name=name,
                    caption=caption,
                    has_photo=False,
                    alert_state={},
                )
                entry["photo_file"] = photo_file  # its own photo, instead of an event's
                out.append(entry)
        if not out:
            raise BadRequest("no_recipients", f"{', '.join(sinks)}: no recipient configured for this message")
        if processed is not None and photo_file is not None:
            self.photo_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.photo_dir / photo_file, processed.alert_jpeg, mode=0o600)
        self._emit(out, now)
        self._counters.inc("api_messages")
        log.info("send API: message %s queued as %d alert(s) via %s", msg_id, len(out), ", ".join(sinks))
        return {"id": msg_id, "alerts": [o["id"] for o in out], "sinks": sinks}

    def channels(self) -> list[dict[str, Any]]:
        """Per-URL state of the Apprise sink for the dashboard: ids, routing, last outcome, queue.

        Never a URL: `describe` gives the non-secret id and scheme only.
        """
        sink = self._notifiers.get("apprise")
        if sink is None:
            return []
        rows = self._store().list_outbox(None, 500)
        out = []
        # Only the Apprise sink has all_recipients/describe (gateway/notify/apprise.py); the Notifier
        # protocol does not, and importing that module here for an isinstance would pull it in for all.
        for rid in sink.all_recipients():  # type: ignore[attr-defined]
            mine = [r for r in rows if r["notifier"] == "apprise" and r["recipient"] == rid]
            counts = {
                st: sum(1 for r in mine if r["state"] == st) for st in ("pending", "failed", "dead", "sent")
            }
            last = max(mine, key=lambda r: r["created_at"], default=None)
            out.append(
                {
                    **sink.describe(rid),  # type: ignore[attr-defined]  # the Apprise sink: see above
                    "sink": "apprise",
                    "recent": counts,
                    "last_alert": _public(dict(last)) if last else None,
                }
            )
        return out

    def test_channel(self, sink: str, recipient: str) -> dict[str, Any]:
        """Queue a test message to one recipient of `sink` (through the outbox: retries, dead letter)."""
        n = self._notifiers.get(sink)
        known = getattr(n, "all_recipients", None)
        if n is None or known is None or recipient not in known():
            raise LookupError(f"no {sink} recipient {recipient}")
        return self.queue_message(SendRequest(TEST_TEXT, None, (sink,), None, None), recipient=recipient)

    def get_alert(self, alert_id: str) -> dict[str, Any] | None:
        return self._store().get_outbox(alert_id)
