"""Updates waiting for a box, on disk: `<data>/ota/<device>/`.

`parcelbox device update` writes `files/<sha256>` (the bytes of each file of the set, named by their
hash, so a newer offer never overwrites a file an older one is still serving) and then `offer.json`
(atomic). The running gateway (`gateway/ota/server.py`) owns `progress.json`: it publishes the offer,
answers the box's chunk requests from `files/` and records how far it got and how it ended, which the
command and `parcelbox status` read. One writer per file, so the two processes never race.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from gateway.ota.manifest import Manifest
from gateway.protocol import valid_device_id
from gateway.storage import atomic_write_bytes

FINAL_STATES = frozenset({"done", "failed", "refused", "current"})


def ota_root(data_dir: Path) -> Path:
    return Path(data_dir) / "ota"


def _dir(root: Path, device: str) -> Path:
    if not valid_device_id(device):  # it is a path component
        raise ValueError(f"bad device id {device!r}")
    return root / device


def _read(p: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def write_offer(
    root: Path,
    device: str,
    m: Manifest,
    *,
    from_version: str | None,
    trial_s: int,
    trial_boots: int,
    chunk: int,
) -> dict[str, Any]:
    d = _dir(root, device)
    files = d / "files"
    files.mkdir(parents=True, exist_ok=True)
    for f in m.files:
        p = files / f.sha256
        if not p.is_file() or p.stat().st_size != len(f.data):
            atomic_write_bytes(p, f.data)
    offer = m.offer(f"upd-{uuid.uuid4().hex[:12]}", chunk=chunk, trial_s=trial_s, trial_boots=trial_boots)
    offer["created_at"] = time.time()
    offer["from"] = from_version
    atomic_write_bytes(d / "offer.json", json.dumps(offer).encode())
    return offer


def read_offer(root: Path, device: str) -> dict[str, Any] | None:
    return _read(_dir(root, device) / "offer.json")


def read_progress(root: Path, device: str) -> dict[str, Any] | None:
    return _read(_dir(root, device) / "progress.json")


def write_progress(root: Path, device: str, prog: dict[str, Any]) -> None:
    atomic_write_bytes(_dir(root, device) / "progress.json", json.dumps(prog).encode(), durable=False)


def file_bytes(root: Path, device: str, sha256: str) -> bytes | None:
    try:
        return (_dir(root, device) / "files" / sha256).read_bytes()
    except OSError:
        return None


def devices(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and valid_device_id(p.name))
    except OSError:
        return []


def pending(root: Path, device: str) -> dict[str, Any] | None:
    """The offer still on its way to `device` (with its progress), or None."""
    offer = read_offer(root, device)
    if offer is None:
        return None
    prog = read_progress(root, device)
    if prog is not None and prog.get("id") == offer.get("id") and prog.get("state") in FINAL_STATES:
        return None
    return {"id": offer.get("id"), "version": offer.get("version"),
            "state": (prog or {}).get("state", "queued") if (prog or {}).get("id") == offer.get("id") else "queued"}  # fmt: skip
