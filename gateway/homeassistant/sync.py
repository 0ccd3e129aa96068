"""What one turn of the Home Assistant bridge's worker publishes and clears, step by step, in order.

Why: the order is the behaviour. A removed box is cleared before anything else of the turn, so a late
state cannot bring it back; a box registered again gets its last photos back (they were cleared with
it); removals Home Assistant may have missed (it was down) are repeated on a resync and confirmed by
its birth message; a resync also clears the boxes that vanished from the gateway; a photo is only sent
for a box Home Assistant was told about. Keeping this apart from the MQTT code lets a table test walk
through it without a broker.

Pure: `plan_turn` is a generator of steps. It keeps the bookkeeping (the `Roster`, the boxes announced
this session) and reads the gateway only through the functions it is given; the bridge performs each
step before asking for the next, so the gateway is read at the same points as the publishes need it,
and a failing read stops the turn where it failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway.homeassistant.discovery import IMAGE_KINDS
from gateway.homeassistant.pending import Batch
from gateway.homeassistant.roster import Roster


@dataclass(frozen=True)
class ClearBox:
    """Take the box out of Home Assistant (`discovery.removal_messages`) and forget what was sent of it."""

    device: str


@dataclass(frozen=True)
class RepeatRemoval:
    """Send a box's removal again: Home Assistant may have been down when it was cleared."""

    device: str


@dataclass(frozen=True)
class RemovalsConfirmed:
    """Home Assistant's birth message came after these removals were repeated: it has seen them."""

    devices: tuple[str, ...]


@dataclass(frozen=True)
class SaveState:
    """Write the roster's state file (`Roster.body`)."""


@dataclass(frozen=True)
class PublishGateway:
    """The gateway's own device (and WhatsApp's entity), sent again whether or not it changed."""


@dataclass(frozen=True)
class ResendPhotos:
    """A full resync: photos sent before this session count as not sent (the broker's copy decides)."""


@dataclass(frozen=True)
class PublishBox:
    record: dict[str, Any]
    force: bool  # send even what this session already sent (a resync)


@dataclass(frozen=True)
class PublishImage:
    device: str
    kind: str
    event_id: str


@dataclass(frozen=True)
class Press:
    """A snapshot button press to check and pass on (`commands.press_refusal`)."""

    device: str
    payload: bytes


@dataclass(frozen=True)
class Skipped:
    """Nothing to send; counted under `counter`."""

    counter: str


Step = (
    ClearBox
    | RepeatRemoval
    | RemovalsConfirmed
    | SaveState
    | PublishGateway
    | ResendPhotos
    | PublishBox
    | PublishImage
    | Press
    | Skipped
)


def plan_turn(
    batch: Batch,
    roster: Roster,
    announced: set[str],
    *,
    ha_online: Callable[[], bool | None],
    boxes: Callable[[], list[dict[str, Any]]],
    latest_photo: Callable[[str, str], str | None],
) -> Iterator[Step]:
    """The steps of one worker turn for `batch` (whose devices, images and presses it consumes).

    `roster` and `announced` (the boxes Home Assistant was given this session) are updated as the steps
    are yielded; `ha_online()` is what Home Assistant last said of itself (asked at each clearing: it
    may change during a turn); `boxes()` lists the boxes Home
    Assistant should show (`Roster.listed` over the gateway's records); `latest_photo(device, kind)` is
    the id of the box's latest event of that kind with a photo, or None."""
    devices, images, presses = batch.devices, batch.images, batch.presses

    def clear(device: str) -> ClearBox:
        roster.cleared(device, ha_online=ha_online())
        announced.discard(device)
        return ClearBox(device)

    for device in sorted(batch.removals):
        roster.removed.add(device)
        yield clear(device)
        devices.pop(device, None)
        presses.pop(device, None)
        for key in [k for k in images if k[0] == device]:
            del images[key]
    roster.restore(batch.restores)
    for device in batch.restores:
        devices.setdefault(device, None)
        # Its images were cleared with it: send the last photos again, or both image entities stay
        # "unknown" until the box's next photo.
        for kind in IMAGE_KINDS:
            eid = latest_photo(device, kind)
            if eid:
                images.setdefault((device, kind), eid)
    if (batch.full or batch.ha_birth) and roster.tombstones:
        # Home Assistant may have been down when these boxes were removed: remove them again. After its
        # birth message it is listening, so that removal is the one it sees.
        for device in sorted(roster.tombstones):
            yield RepeatRemoval(device)
        if batch.ha_birth:
            yield RemovalsConfirmed(tuple(sorted(roster.tombstones)))
            roster.tombstones.clear()
    if batch.removals or batch.restores or batch.ha_birth:
        yield SaveState()
    if batch.resync:
        records = boxes()
        yield PublishGateway()
        current = {r["device"] for r in records}
        for gone in sorted(announced - current):
            # Removed from the gateway while the bridge was running: take it out of Home Assistant too.
            yield clear(gone)
        for rec in records:
            yield PublishBox(rec, force=True)
            announced.add(rec["device"])
            devices.pop(rec["device"], None)
        if batch.full:
            yield ResendPhotos()
            for rec in records:
                for kind in IMAGE_KINDS:
                    if (rec["device"], kind) not in images:
                        eid = latest_photo(rec["device"], kind)
                        if eid:
                            images[(rec["device"], kind)] = eid
    fresh: dict[str, dict[str, Any]] | None = None
    for device, box in sorted(devices.items()):
        if device in roster.removed:
            yield Skipped("skipped.removed_device")
            continue
        if box is None:
            if fresh is None:  # read once, and only when a box's record is not in the batch
                fresh = {r["device"]: dict(r) for r in boxes()}
            box = fresh.get(device)
            if box is None:
                yield Skipped("skipped.unknown_device")
                continue
        yield PublishBox(box, force=False)
        announced.add(device)
    for (device, kind), eid in sorted(images.items()):
        if device in announced:
            yield PublishImage(device, kind, eid)
    for device, payload in presses.items():
        yield Press(device, payload)
