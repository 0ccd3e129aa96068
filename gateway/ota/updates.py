"""Over-the-air updates as the dashboard and Home Assistant see them: status, the Update button, changes.

`OtaServer` (gateway/ota/server.py) answers the boxes on the ingest worker; this wraps it for the rest
of the gateway: a box's firmware against this checkout's (`firmware_status`), an update offered from
the dashboard or Home Assistant (`offer_update`, what `parcelbox device update DEVICE --no-wait`
does), OTA_CHANGED on the bus when what a box shows about its firmware changed, and the boxes'
firmware remembered from the last status snapshot across a restart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.bus import OTA_CHANGED, Bus
from gateway.ota import offers
from gateway.ota.pending import ota_root
from gateway.ota.server import OtaServer, Publish, Reject
from gateway.protocol import valid_device_id

log = logging.getLogger("gateway")


class FirmwareUpdates:
    """Owns the gateway's `OtaServer` (`.server`) and the view of it the web and HA bridge use."""

    def __init__(
        self,
        data_dir: Path,
        prefix: str,
        *,
        publish: Publish,
        reject: Reject,
        bus: Bus,
        known_boxes: Callable[[], set[str]],
        clock: Callable[[], float],
        firmware: offers.CheckoutFirmware | None = None,
    ) -> None:
        self.server = OtaServer(
            ota_root(data_dir), prefix, publish=publish, reject=reject, clock=clock, on_change=self.changed
        )
        # This checkout's firmware, for the dashboard's and Home Assistant's "update available".
        # Imported here: gateway.ota.cli is the command line's module, not needed to build a server.
        from gateway.ota.cli import DEFAULT_FIRMWARE

        self.firmware = firmware or offers.CheckoutFirmware(DEFAULT_FIRMWARE)
        self._bus = bus
        self._known_boxes = known_boxes  # boxes the gateway lists (removed ones are not)
        self._shown: dict[str, tuple[Any, ...]] = {}  # device -> what OTA_CHANGED last said

    def remember_last(self, status_file: Path) -> None:
        """The boxes' firmware as last known (the last status snapshot's "ota"), for an update offered
        before they wake again; not a box removed since (`parcelbox device remove`)."""
        try:
            last = json.loads(status_file.read_text())
            boxes = last.get("ota") if isinstance(last, dict) else None
            if isinstance(boxes, dict):
                known = self._known_boxes()  # reads devices.json too: a damaged one is skipped here as well
                self.server.remember({k: v for k, v in boxes.items() if k in known})
        except (OSError, ValueError):
            pass

    def firmware_status(self, device: str) -> dict[str, Any]:
        """A box's firmware against this checkout's and its update (`gateway.ota.offers.firmware_status`)."""
        if not valid_device_id(device):
            raise ValueError(f"bad device id {device!r}")
        return offers.firmware_status(self.server.root, device, self.server.boxes.get(device), self.firmware)

    def offer_update(self, device: str) -> dict[str, Any]:
        """Send this checkout's firmware to `device` (what `parcelbox device update DEVICE --no-wait`
        does). Raises LookupError for a box the gateway does not know, UpdateRefused when it cannot go."""
        if not valid_device_id(device):
            raise ValueError(f"bad device id {device!r}")
        known = device in self._known_boxes()
        box = self.server.boxes.get(device)
        offer = offers.offer_checked(self.server.root, device, box, known, self.firmware)
        log.info(
            "ota: update %s queued for %s (%s -> %s)",
            offer["id"],
            device,
            offer.get("from"),
            offer["version"],
        )
        self.changed(device)
        return offer

    def changed(self, device: str) -> None:
        """Tell the bus when what a box shows about its firmware changed (not at every chunk: only when
        the state or the percentage moved)."""
        box = self.server.boxes.get(device) or {}
        view = offers.read_view(self.server.root, device) or {}
        key = (
            box.get("fw"),
            box.get("set"),
            box.get("online"),
            view.get("id"),
            view.get("state"),
            view.get("percent"),
        )
        if self._shown.get(device) == key:
            return
        self._shown[device] = key
        self._bus.publish(OTA_CHANGED, {"device": device})
