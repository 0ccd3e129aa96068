"""WhatsApp as the gateway core sees it: the supervisor's last state, and what its news means for alerts.

The supervisor (in the WhatsApp component) publishes WHATSAPP_STATE and WHATSAPP_RECEIPT on the bus;
`LinkState` keeps the last state for `GatewayPort.whatsapp_state` and for the "WhatsApp is down"
notice (`gateway.whatsapp.watch`), makes alerts that failed while WhatsApp was away due at once when
it connects again, and hands delivery/read receipts to the outbox. The dispatcher exists only while
the gateway runs: before and after, the news is kept (the state) or has nothing to act on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from gateway.bus import WHATSAPP_RECEIPT, WHATSAPP_STATE, Bus
from gateway.ports import WhatsAppState

if TYPE_CHECKING:
    from gateway.outbox import OutboxDispatcher

DISABLED: WhatsAppState = {
    "state": "disabled",
    "detail": "WhatsApp is not enabled. To turn it on: install it (.venv/bin/pip install -e '.[whatsapp]' "
    "in the parcelbox folder), set [whatsapp] enabled = true in the config, restart the gateway, "
    "then pair here.",
    "updated_at": 0.0,
}


class LinkState:
    def __init__(
        self, bus: Bus, *, dispatcher: Callable[[], OutboxDispatcher | None], clock: Callable[[], float]
    ) -> None:
        self.state: WhatsAppState = DISABLED.copy()  # replaced whole at each WHATSAPP_STATE
        self._dispatcher = dispatcher  # the service's, while it runs
        self._clock = clock
        bus.subscribe(self._on_state, WHATSAPP_STATE)
        bus.subscribe(self._on_receipt, WHATSAPP_RECEIPT)

    def _on_state(self, _topic: str, data: dict[str, Any]) -> None:
        was = self.state.get("state")
        self.state = cast(WhatsAppState, dict(data))  # WHATSAPP_STATE carries a WhatsAppState
        dispatcher = self._dispatcher()
        if data.get("state") == "connected" and was != "connected" and dispatcher is not None:
            # Alerts that failed while WhatsApp was away go now, not after their backoff.
            dispatcher.reschedule("whatsapp")

    def _on_receipt(self, _topic: str, data: dict[str, Any]) -> None:
        dispatcher = self._dispatcher()
        if dispatcher is None or not isinstance(data, dict):
            return
        ids = [str(i) for i in data.get("ids") or [] if i]
        dispatcher.note_receipt(ids, str(data.get("status") or ""), float(data.get("ts") or self._clock()))
