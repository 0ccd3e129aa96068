"""In-process publish/subscribe for things that happened in the gateway.

The ingest worker, the outbox and the WhatsApp supervisor publish; the dashboard
(Server-Sent Events), Home Assistant discovery and the WhatsApp command handler
subscribe. Subscribers run on the publisher's thread, so they must be quick and
hand real work to their own queue; an exception in one is logged, never raised
into the publisher.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Topic names used across the gateway (payload: a JSON-able dict).
EVENT_STORED = "event_stored"  # an event record (see gateway.ports.EventRecord)
DEVICE_CHANGED = "device_changed"  # a device record (gateway.ports.DeviceRecord)
OUTBOX_CHANGED = "outbox_changed"  # an outbox record (gateway.ports.OutboxRecord)
COMMAND_RESULT = "command_result"  # {"device", "id", "ok", "error", ...}
WHATSAPP_STATE = "whatsapp_state"  # gateway.ports.WhatsAppState
WHATSAPP_RECEIPT = "whatsapp_receipt"  # {"ids": [message id, ...], "status": delivered|read, "ts", "chat"}
# The device registry (devices.json) changed: `parcelbox device remove` / `device add` of a box that was
# removed before. Detected once, by gateway.registry_watch.RegistryWatch; payload
# {"device", "registered": [every registered box]}.
DEVICE_REMOVED = "device_removed"
DEVICE_REGISTERED = "device_registered"
OTA_CHANGED = "ota_changed"  # {"device"}: its firmware or its over-the-air update moved (gateway.ota.updates)
STORAGE_STATE = "storage_state"  # {"ok", "problems", "free_mb", "free_percent", "low"} (gateway.status)

Handler = Callable[[str, dict[str, Any]], None]


class Bus:
    def __init__(self) -> None:
        self._subs: list[tuple[str | None, Handler]] = []
        self._lock = threading.Lock()

    def subscribe(self, handler: Handler, topic: str | None = None) -> Callable[[], None]:
        """Call `handler(topic, data)` for `topic` (or every topic if None). Returns an unsubscribe function."""
        entry = (topic, handler)
        with self._lock:
            self._subs.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subs:
                    self._subs.remove(entry)

        return unsubscribe

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        with self._lock:
            subs = [h for t, h in self._subs if t is None or t == topic]
        for h in subs:
            try:
                h(topic, data)
            except Exception:
                log.exception("bus subscriber failed on %s", topic)
