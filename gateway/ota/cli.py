"""`parcelbox device update BOX | --all`: send this checkout's firmware to boxes over MQTT.

Compiles `firmware/` with mpy-cross (the same bundle `flash provision` copies over USB), refuses what
the box could not take (a file that does not compile, a path outside the app folder, more than the
box's free flash), queues the offer for the running gateway (`<data>/ota/<box>/`, gateway/ota/pending.py)
and follows its progress until the box reports the outcome. A box that is asleep or offline takes the
offer at its next wake; the command says so and `parcelbox status` shows "update pending".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.ota import pending
from gateway.ota.manifest import (
    Manifest,
    UpdateRefused,
    config_update,
    firmware_version,
    from_board_files,
)
from gateway.ota.offers import needs_update, offer_update

DEFAULT_FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


def build_manifest(firmware_dir: Path, *, compile: bool) -> Manifest:
    from gateway.flash.bundle import build_bundle
    from gateway.flash.errors import FlashError

    try:
        files = build_bundle(firmware_dir, compile=compile)
    except FlashError as e:
        raise UpdateRefused(f"the firmware does not build: {e}") from None
    return from_board_files(firmware_version(firmware_dir), [(f.remote, f.data) for f in files])


def _snapshot(data_dir: Path) -> dict[str, Any]:
    from gateway.status import STATUS_FILE

    try:
        d = json.loads((data_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _running(data_dir: Path) -> bool:
    from gateway.datalock import DataDirLock

    return DataDirLock(data_dir).is_held_elsewhere() is not None


def _kb(n: int) -> str:
    return f"{(n + 1023) // 1024} KB"


def follow(
    root: Path, device: str, offer_id: str, timeout: float, out=print, poll: float = 0.2
) -> dict[str, Any] | None:
    """Print per-file progress until the update to `device` ends; the final progress, or None at the
    timeout."""
    deadline = time.monotonic() + timeout
    shown: set[str] = set()
    state = None
    while time.monotonic() < deadline:
        prog = pending.read_progress(root, device)
        if prog is not None and prog.get("id") == offer_id:
            total = prog.get("total") or {}
            for name, sent in sorted((prog.get("sent") or {}).items()):
                if name not in shown and sent >= total.get(name, 0):
                    shown.add(name)
                    out(f"  {device}: {name} {_kb(sent)} sent")
            if prog.get("state") != state:
                state = prog.get("state")
                if state == "staged":
                    out(f"  {device}: every file received and checked; switching at its reboot")
            if state in pending.FINAL_STATES:
                return prog
        time.sleep(poll)
    return None


def outcome_line(device: str, prog: dict[str, Any]) -> str:
    state = prog.get("state")
    if state == "done" and prog.get("version") == "config":
        secs = max(0.0, (prog.get("finished_at") or 0) - (prog.get("offered_at") or 0))
        return f"{device} config updated ({secs:.0f} s)"
    if state == "failed" and prog.get("version") == "config":
        return f"{device} config update failed and was rolled back: {prog.get('reason')}"
    if state == "done":
        secs = max(0.0, (prog.get("finished_at") or 0) - (prog.get("offered_at") or 0))
        n = len(prog.get("sent") or {})
        return (
            f"{device} updated {prog.get('from') or '?'} -> {prog.get('version')} "
            f"({n} file{'s' if n != 1 else ''}, {_kb(prog.get('bytes') or 0)}, {secs:.0f} s)"
        )
    if state == "current":
        return f"{device} already runs this firmware ({prog.get('version')})"
    if state == "failed":
        return f"{device} update to {prog.get('version')} failed and was rolled back: {prog.get('reason')}"
    return f"{device} refused the update: {prog.get('reason')}"


def do_update(args: argparse.Namespace, config: Any) -> int:
    data_dir = Path(config.data_dir).expanduser()
    root = pending.ota_root(data_dir)
    try:
        if args.config_file:
            if not args.name or args.all:
                raise UpdateRefused("a config is for one box: name it (no --all)")
            m = config_update(args.name, Path(args.config_file).read_bytes())
        else:
            m = build_manifest(Path(args.firmware_dir or DEFAULT_FIRMWARE), compile=not args.no_compile)
    except OSError as e:
        print(f"error: cannot read {args.config_file}: {e.strerror or e}", file=sys.stderr)
        return 1
    except UpdateRefused as e:
        print(f"error: update refused: {e}", file=sys.stderr)
        return 1
    snap = _snapshot(data_dir)
    boxes: dict[str, Any] = snap.get("ota") or {}
    if args.all:
        targets = sorted(boxes)
        if not targets:
            print("error: no box has reported its firmware yet (is the gateway running?)", file=sys.stderr)
            return 1
    elif args.name:
        targets = [args.name]
    else:
        print("error: name a box or pass --all", file=sys.stderr)
        return 2
    running = _running(data_dir)
    rc = 0
    waiting: list[tuple[str, str]] = []
    for device in targets:
        box = boxes.get(device) or {}
        if args.dry_run and box.get("set"):
            state = "update available" if needs_update(box, m) else "up to date"
            print(
                f"{device}: runs {box.get('fw') or '?'} (set {str(box.get('set'))[:12]}); this checkout: "
                f"{m.version} (set {m.set_sha[:12]}): {state}"
            )
            continue
        if box.get("set") and not needs_update(box, m) and not m.partial:
            print(f"{device} already runs this firmware ({m.version}, set {m.set_sha[:12]})")
            continue
        try:
            offer = offer_update(root, device, box, m, trial_s=args.trial_s, trial_boots=args.trial_boots)
        except UpdateRefused as e:
            print(f"error: update to {device} refused: {e}", file=sys.stderr)
            rc = 1
            continue
        if m.partial:
            print(f"{device}: new config.json ({_kb(m.total_bytes)})")
        else:
            print(
                f"{device}: {box.get('fw') or '?'} -> {m.version}, {len(m.files)} files in the set "
                f"({_kb(m.total_bytes)})"
            )
        if not running:
            print(
                f"{device}: queued; the gateway sends it when it runs (parcelbox run); parcelbox status shows it"
            )
        elif not box.get("online"):
            print(
                f"{device} is asleep or offline: it takes the update at its next wake (parcelbox status: update pending)"
            )
        else:
            waiting.append((device, offer["id"]))
    for device, oid in waiting:
        if args.no_wait:
            print(f"{device}: update sent; parcelbox status shows its progress")
            continue
        prog = follow(root, device, oid, args.wait)
        if prog is None:
            print(
                f"{device}: no outcome within {args.wait:.0f} s; the update stays pending (parcelbox status)"
            )
            rc = rc or 1
            continue
        line = outcome_line(device, prog)
        print(line)
        if prog.get("state") in ("failed", "refused"):
            rc = 1
    return rc


def add_parser(dsub: Any) -> None:
    u = dsub.add_parser("update", help="send this checkout's firmware to a box over MQTT (over the air)")
    u.add_argument("name", nargs="?", help="device id")
    u.add_argument("--all", action="store_true", help="every box that reported its firmware")
    u.add_argument("--firmware-dir", help="firmware folder (default: this checkout's firmware/)")
    u.add_argument("--no-compile", action="store_true", help="send .py sources instead of mpy-cross output")
    u.add_argument(
        "--trial-s", type=int, default=300, help="seconds the new set has to be confirmed (30-3600)"
    )
    u.add_argument("--trial-boots", type=int, default=3, help="boots the new set has to be confirmed (1-10)")
    u.add_argument("--wait", type=float, default=600.0, help="seconds to follow the update (default 600)")
    u.add_argument("--no-wait", action="store_true", help="queue and return")
    u.add_argument(
        "--dry-run",
        action="store_true",
        help="say which boxes run another firmware than this checkout; send nothing",
    )
    u.add_argument(
        "--config-file",
        metavar="FILE",
        help="send this config.json instead of firmware (Wi-Fi, broker, pins, sensor); "
        "a box that cannot reach the gateway with it goes back to its previous config",
    )
