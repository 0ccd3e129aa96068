"""The Home Assistant bridge's to-do list: what changed since its worker last ran, coalesced.

Why: bus handlers and paho callbacks run on other threads and must never block or publish; they only
record here. Only the latest per box, per (box, photo kind) and per command survives, so a burst of
status messages costs one publish and memory stays bounded by the number of boxes. The worker takes
everything at once as a `Batch`. Pure (no threads, no I/O): the bridge holds its lock around every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.homeassistant.discovery import IMAGE_KINDS


@dataclass
class Batch:
    """One turn of the worker: everything recorded since the previous turn."""

    full: bool = False  # configs + states + photos (after each connect, or a failed turn)
    discovery: bool = False  # configs + states (Home Assistant came back)
    ha_birth: bool = False  # Home Assistant (re)started: it has seen nothing we sent before
    devices: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # None: read it from the port
    images: dict[tuple[str, str], str] = field(default_factory=dict)  # (device, kind) -> event id
    presses: dict[str, bytes] = field(default_factory=dict)
    installs: dict[str, bytes] = field(default_factory=dict)  # update entity's install action, per box
    firmware: set[str] = field(default_factory=set)  # boxes whose firmware or update progress moved
    removals: set[str] = field(default_factory=set)
    restores: set[str] = field(default_factory=set)
    whatsapp: bytes | None = None  # "WhatsApp linked" ON/OFF to publish; None: unchanged
    storage: dict[str, Any] | None = None  # the storage state to publish; None: nothing to send

    @property
    def resync(self) -> bool:
        """Configs and states are all sent again this turn (the storage and WhatsApp states with them)."""
        return self.full or self.discovery


class PendingWork:
    """Coalesced pending work; `take()` hands it over and starts an empty list."""

    def __init__(self) -> None:
        self._next = Batch()
        self.whatsapp: bytes | None = None  # "WhatsApp linked" ON/OFF; None: WhatsApp not enabled
        self._whatsapp_dirty = False
        self._storage: dict[str, Any] | None = None  # the service's last STORAGE_STATE
        self._storage_dirty = False

    # --- recording ------------------------------------------------------------------------------------

    def device_changed(self, device: str, record: dict[str, Any] | None) -> None:
        """A box record to publish; None: read the fresh one from the port when publishing."""
        self._next.devices[device] = record

    def event_stored(self, device: str, kind: Any, event_id: str, has_photo: bool) -> None:
        # Waiting count and last delivery change with the event: read the fresh record from the port.
        self._next.devices[device] = None
        if kind in IMAGE_KINDS and has_photo:
            self._next.images[(device, kind)] = event_id

    def storage_state(self, state: dict[str, Any]) -> None:
        self._storage, self._storage_dirty = dict(state), True

    def whatsapp_state(self, payload: bytes) -> None:
        if payload != self.whatsapp:
            self.whatsapp, self._whatsapp_dirty = payload, True

    def firmware_moved(self, device: str) -> None:
        self._next.firmware.add(device)

    def press(self, device: str, payload: bytes) -> None:
        self._next.presses[device] = payload

    def install(self, device: str, payload: bytes) -> None:
        self._next.installs[device] = payload

    def remove(self, device: str) -> None:
        self._next.removals.add(device)

    def remove_all(self, devices: set[str]) -> None:
        self._next.removals |= devices

    def restore(self, device: str) -> None:
        self._next.restores.add(device)
        self._next.devices[device] = None

    def full_resync(self) -> None:
        self._next.full = True

    def ha_birth(self) -> None:
        self._next.discovery = self._next.ha_birth = True

    # --- handing over ---------------------------------------------------------------------------------

    def has_work(self) -> bool:
        n = self._next
        return bool(
            n.full
            or n.discovery
            or n.ha_birth
            or n.devices
            or n.images
            or n.presses
            or n.installs
            or n.firmware
            or n.removals
            or n.restores
            or self._whatsapp_dirty
            or self._storage_dirty
        )

    def take(self) -> Batch:
        """Everything recorded so far; the list starts empty again."""
        batch, self._next = self._next, Batch()
        batch.whatsapp = self.whatsapp if self._whatsapp_dirty else None
        # After a (re)connect or a Home Assistant restart the storage state is sent again with the configs.
        batch.storage = self._storage if (self._storage_dirty or batch.resync) else None
        self._whatsapp_dirty = self._storage_dirty = False
        return batch

    def retry(self, failed: Batch) -> None:
        """A turn failed: states and photos are rebuilt from the port by a full resync; button presses
        and install actions are not, so they are kept (a newer one for the same box wins)."""
        self._next.full = True
        for device, payload in failed.presses.items():
            self._next.presses.setdefault(device, payload)
        for device, payload in failed.installs.items():
            self._next.installs.setdefault(device, payload)
