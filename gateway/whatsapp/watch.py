"""When WhatsApp alerts stop, the owner hears it on the other sinks (pure logic, no I/O).

WhatsApp logs a linked device out after ~14 days without the phone online, and a
ban or `stream_replaced` ends the session too; alerts then wait silently in the
outbox. The supervisor's state carries `down_since` (when it last left
`connected`; None while connected). `LinkWatch.check` turns that into at most one
`whatsapp_down` notice per outage, after `after_s`, and one `whatsapp_up` when it
is back; the service sends both through every sink except WhatsApp.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DOWN = "whatsapp_down"
UP = "whatsapp_up"


@dataclass
class LinkWatch:
    after_s: float = 300.0  # 0: never notify
    noticed_for: float | None = None  # the `down_since` the last `whatsapp_down` was about

    def check(self, state: Mapping[str, Any], now: float) -> str | None:
        """DOWN, UP or None for the current WhatsApp state."""
        if self.after_s <= 0 or state.get("state") in (None, "disabled"):
            return None
        down_since = state.get("down_since")
        if state.get("state") == "connected" or down_since is None:
            if self.noticed_for is not None:
                self.noticed_for = None
                return UP
            return None
        if self.noticed_for is None and now - float(down_since) >= self.after_s:
            self.noticed_for = float(down_since)
            return DOWN
        return None
