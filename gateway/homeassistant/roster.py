"""Which boxes Home Assistant should show, following the device registry across gateway restarts.

Why: `parcelbox device remove` must take a box out of Home Assistant even when the gateway, or Home
Assistant, was not running at the time. So the registry as last seen, the boxes removed, and the removals
Home Assistant may have missed (it was down) are kept in `<data>/homeassistant.json` and compared with
the registry at the next start. Pure: the bridge reads the registry and the file, and publishes what
this returns (boxes to clear, the file's new body, the records to announce).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.protocol import valid_device_id

STATE_VERSION = 1


class RegistryLike(Protocol):
    """What the bridge needs of `gateway.devices.DeviceRegistry`."""

    def mtime(self) -> float: ...

    def list(self) -> list[Any]: ...


@dataclass(frozen=True)
class Saved:
    """`homeassistant.json` as read: the registry as last seen, boxes removed, removals unconfirmed."""

    registered: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    unconfirmed: frozenset[str] = frozenset()


def parse_saved(body: bytes) -> Saved:
    """The saved state; ValueError for a file that is not one (invalid box ids are left out)."""
    try:
        data = json.loads(body)

        def ids(key: str) -> frozenset[str]:
            return frozenset(x for x in data.get(key, []) if valid_device_id(x))

        return Saved(ids("registered"), ids("removed"), ids("unconfirmed_removals"))
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(str(exc)) from None


@dataclass
class Roster:
    """The registry-following part of the bridge's state (`registered` None: the registry was unreadable)."""

    registered: set[str] | None = None
    names: dict[str, str] = field(
        default_factory=dict
    )  # registered box -> its name, for boxes never heard from
    removed: set[str] = field(default_factory=set)  # removed: not announced again from the gateway's list
    # Removed boxes whose removal Home Assistant may not have seen (it was down): sent again at every
    # start and after its birth message, which confirms it (see `discovery.removal_messages`).
    tombstones: set[str] = field(default_factory=set)

    def load(self, registry: Iterable[tuple[str, str | None]], saved: Saved | None) -> set[str]:
        """Take the registry's (device, name) list at start; with the `saved` state (None: no state file
        is kept), return the boxes removed while the gateway was down, to clear now."""
        pairs = list(registry)
        now = {device for device, _ in pairs}
        self.names = {device: name or device for device, name in pairs}
        self.registered = now
        if saved is None:
            return set()
        self.removed = set((saved.removed - now) | (saved.registered - now))
        self.tombstones = set(saved.unconfirmed - now)
        return set(saved.registered - now)

    def body(self) -> bytes | None:
        """The state file's content; None while the registry is unknown (nothing worth saving)."""
        if self.registered is None:
            return None
        return json.dumps(
            {
                "v": STATE_VERSION,
                "registered": sorted(self.registered),
                "removed": sorted(self.removed),
                "unconfirmed_removals": sorted(self.tombstones),
            }
        ).encode()

    def follow(self, registered: set[str] | None) -> None:
        """The whole registered list from a registry change on the bus. While the registry is unknown
        it stays unknown: the bridge keeps reading the registry, to clear boxes removed offline."""
        if registered is not None and self.registered is not None:
            self.registered = set(registered)

    def cleared(self, device: str, *, ha_online: bool | None) -> None:
        """`device` was just cleared from Home Assistant; unless it is known to be up, that is repeated
        after its next birth message."""
        if not ha_online:
            self.tombstones.add(device)

    def restore(self, devices: set[str]) -> None:
        self.removed -= devices
        self.tombstones -= devices

    def listed(self, records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The boxes Home Assistant should show: the gateway's records less the removed ones (its store
        keeps their history), plus registered boxes never heard from (announced, unavailable until they
        connect)."""
        out = [
            dict(r) for r in records if valid_device_id(r.get("device")) and r["device"] not in self.removed
        ]
        if self.registered is not None:
            have = {r["device"] for r in out}
            for device in sorted(self.registered - have - self.removed):
                if valid_device_id(device):
                    name = self.names.get(device) or device
                    out.append({"device": device, "name": name, "online": False, "waiting": 0})
        return out
