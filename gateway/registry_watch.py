"""The one place a change of the device registry (devices.json) is noticed.

`parcelbox device add/remove/forget` rewrite devices.json from another process; the gateway notices on
its next look (every tick, and whenever the pipeline asks whether a box is registered) by the file's
mtime, re-reads it only then, and publishes each change once on the bus: DEVICE_REMOVED and
DEVICE_REGISTERED, with the whole registered list (the Home Assistant bridge follows these instead
of reading the file itself). A damaged or hand-edited file is counted (`registry_errors`), logged a
few times a minute at most, and read again once it changes; until then every look answers from the
registry as last read well, so a half-edited devices.json never stops the boxes' messages.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from gateway import boxes
from gateway.bus import DEVICE_REGISTERED, DEVICE_REMOVED, Bus
from gateway.devices import DeviceRegistry
from gateway.health import Counters
from gateway.lograte import LogThrottle

log = logging.getLogger("gateway")

_NOT_READ = -1.0  # no mtime is this: the first look always reads the file


class RegistryWatch:
    def __init__(
        self,
        registry: DeviceRegistry,
        bus: Bus,
        counters: Counters,
        *,
        names: Mapping[str, str],  # config.devices.names: device -> display name, before the registry's
        throttle: LogThrottle,
    ) -> None:
        self.registry = registry
        self.bus = bus
        self.counters = counters
        self.names = names
        self.throttle = throttle
        # (mtime read, registered box -> its name at `device add`, removed box -> when)
        self._seen: tuple[float, dict[str, str], dict[str, float]] = (_NOT_READ, {}, {})

    def _refresh(self) -> None:
        """Re-read devices.json when it changed (by mtime); a change after the first read is published
        on the bus. Raises what reading a damaged file raises. Runs at every look (`poll`), so it builds
        nothing when the file is unchanged: the looks read `_seen` themselves."""
        mtime = self.registry.mtime()
        if mtime != self._seen[0]:
            first = self._seen[0] == _NOT_READ
            before = set(self._seen[1])
            listed = {d.device: d.name for d in self.registry.list()}
            self._seen = (mtime, listed, self.registry.removed())
            now = set(listed)
            if not first:  # the registry as found at start is no change
                for device in sorted(before - now):
                    self.bus.publish(DEVICE_REMOVED, {"device": device, "registered": sorted(now)})
                for device in sorted(now - before):
                    self.bus.publish(DEVICE_REGISTERED, {"device": device, "registered": sorted(now)})

    def poll(self) -> None:
        """Look for a change (start, every tick, every look of the pipeline); never raises on a damaged
        file: it is counted and logged, and the registry as last read well stays in force."""
        try:
            self._refresh()
        except (OSError, ValueError, TypeError) as exc:  # hand-edited or damaged
            self.counters.inc("registry_errors")
            if self.throttle.allow("registry")[0]:
                log.warning(
                    "cannot read the device registry %s: %s (the boxes as last read stay registered)",
                    self.registry.path,
                    exc,
                )
            if not isinstance(exc, OSError):
                # Damaged content: not read again (and counted again) at every box message, only once
                # the file changes. A failed read (OSError) may pass: tried again at the next look.
                try:
                    self._seen = (self.registry.mtime(), self._seen[1], self._seen[2])
                except OSError:
                    pass

    def is_registered(self, device: str) -> bool:
        self.poll()
        return device in self._seen[1]

    def removed(self) -> dict[str, float]:
        self.poll()
        return self._seen[2]

    def is_removed(self, dev: Mapping[str, Any]) -> bool:
        """Removed with `parcelbox device remove` and not heard from since: hidden, never 'offline'."""
        return boxes.is_removed(dev, self.removed())

    def device_name(self, device: str) -> str:
        """The configured name, else the name given at `device add`, else the id."""
        name = self.names.get(device)
        if name:
            return name
        self.poll()
        return self._seen[1].get(device) or device
