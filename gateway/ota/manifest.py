"""The file set an over-the-air update sends: which files, their sha256, the set's sha256, the offer.

Pure: takes the board files `gateway.flash.bundle.build_bundle` made (compiled with mpy-cross, the
same as USB provisioning) and returns a `Manifest` or raises `UpdateRefused` with a message a user
can act on. The limits and the set hash are the box's (`firmware/protocol.py`, `firmware/otaboot.py`;
`tests/test_gateway_ota.py` checks both sides agree); docs/protocol.md, "Over-the-air update".
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

# The box's boot files: they run the switch and the rollback, so an update never carries them
# (firmware/otaboot.py BOOT_FILES, firmware/protocol.py OTA_BOOT_FILES).
BOOT_FILES = frozenset({"boot.py", "otaboot.py", "otaboot.mpy"})
MAX_FILES = 48
MAX_FILE_BYTES = 131072
MAX_SET_BYTES = 1048576
MAX_OFFER_BYTES = 6144
DEFAULT_CHUNK = 4096
SPACE_MARGIN = 16384  # the box keeps this much free besides the new files (firmware/ota.py)
NAME_RE = re.compile(r"[a-z0-9_]{1,28}\.(py|mpy)")
CONFIG_NAME = "config.json"  # firmware/protocol.py OTA_CONFIG: only in a partial (config) offer
MAX_CONFIG_BYTES = 8192
_VERSION_RE = re.compile(r'^FW_VERSION\s*=\s*"([^"\n]{1,32})"', re.M)


class UpdateRefused(Exception):
    """This set cannot be sent; str() says why and what to do."""


@dataclass(frozen=True)
class SetFile:
    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Manifest:
    version: str
    files: tuple[SetFile, ...]  # sorted by name
    partial: bool = False  # only these files change (a config update); else the whole app set

    @property
    def set_sha(self) -> str:
        return set_sha([(f.name, f.sha256) for f in self.files])

    @property
    def total_bytes(self) -> int:
        return sum(len(f.data) for f in self.files)

    def by_name(self, name: str) -> SetFile | None:
        for f in self.files:
            if f.name == name:
                return f
        return None

    def offer(
        self, update_id: str, *, chunk: int = DEFAULT_CHUNK, trial_s: int = 300, trial_boots: int = 3
    ) -> dict:
        return {
            "v": 1,
            "op": "offer",
            "id": update_id,
            "version": self.version,
            "set": self.set_sha,
            "chunk": chunk,
            "trial_s": trial_s,
            "trial_boots": trial_boots,
            "files": [[f.name, len(f.data), f.sha256] for f in self.files],
            "partial": self.partial,
        }


def set_sha(pairs: list[tuple[str, str]]) -> str:
    """sha256 over `"<name> <sha256>\\n"` per file, sorted by name: what the box reports."""
    h = hashlib.sha256()
    for name, sha in sorted(pairs):
        h.update(f"{name} {sha}\n".encode())
    return h.hexdigest()


def firmware_version(firmware_dir: Path) -> str:
    """`FW_VERSION` from the checkout's firmware/app.py (what the box reports as `fw`)."""
    try:
        text = (firmware_dir / "app.py").read_text()
    except OSError as e:
        raise UpdateRefused(f"cannot read {firmware_dir / 'app.py'}: {e.strerror or e}") from None
    m = _VERSION_RE.search(text)
    if m is None:
        raise UpdateRefused(f'{firmware_dir / "app.py"} has no FW_VERSION = "..." line')
    return m.group(1)


def from_board_files(version: str, files: list[tuple[str, bytes]]) -> Manifest:
    """The set from (remote path, bytes) pairs as the bundle names them ("/app.mpy"); boot files left
    out. Refuses a path outside the app folder, a name the box would refuse, and sets over the limits."""
    out: list[SetFile] = []
    for remote, data in files:
        name = remote[1:] if remote.startswith("/") else remote
        if name in BOOT_FILES:
            continue
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise UpdateRefused(
                f"{remote} is outside the app folder: an update only replaces files directly in it "
                "(put the module next to main.py, or provision over USB)"
            )
        if NAME_RE.fullmatch(name) is None:
            raise UpdateRefused(
                f"{remote}: the box only takes names of a-z 0-9 _ (at most 28) ending .py or .mpy"
            )
        if len(data) > MAX_FILE_BYTES:
            raise UpdateRefused(
                f"{remote} is {len(data)} bytes, over the {MAX_FILE_BYTES} an update may carry"
            )
        out.append(SetFile(name, data))
    if not out:
        raise UpdateRefused("the set is empty")
    if len(out) > MAX_FILES:
        raise UpdateRefused(f"{len(out)} files, over the {MAX_FILES} an update may carry")
    names = [f.name for f in out]
    if len(set(names)) != len(names):
        raise UpdateRefused("two files with the same name in the set")
    total = sum(len(f.data) for f in out)
    if total > MAX_SET_BYTES:
        raise UpdateRefused(f"the set is {total} bytes, over the {MAX_SET_BYTES} an update may carry")
    m = Manifest(version, tuple(sorted(out, key=lambda f: f.name)))
    if len(json.dumps(m.offer("x" * 40)).encode()) > MAX_OFFER_BYTES:
        raise UpdateRefused("the file list does not fit in one offer message (too many files)")
    return m


def config_update(device: str, data: bytes) -> Manifest:
    """A config update: the box's whole new config.json. The box checks it with its own settings.load
    before it switches; this refuses what is plainly not a config for `device`."""
    if len(data) > MAX_CONFIG_BYTES:
        raise UpdateRefused(f"the config is {len(data)} bytes, over {MAX_CONFIG_BYTES}")
    try:
        cfg = json.loads(data)
    except ValueError as e:
        raise UpdateRefused(f"the config is not JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise UpdateRefused("the config must be a JSON object (like firmware/config.example.json)")
    if cfg.get("device_id") != device:
        raise UpdateRefused(f"the config is for {cfg.get('device_id')!r}, not {device!r} (its device_id)")
    wifi = cfg.get("wifi")
    if not isinstance(wifi, dict) or not wifi.get("ssid"):
        raise UpdateRefused("the config has no wifi.ssid")
    return Manifest("config", (SetFile(CONFIG_NAME, data),), partial=True)


def check_fits(m: Manifest, flash_free: int | None) -> None:
    """Refuse when the box reported less free flash than the whole set needs. The box only stores
    the files that differ, so this is the worst case; it checks the exact figure again itself."""
    if flash_free is None:
        return
    need = m.total_bytes + SPACE_MARGIN
    if need > flash_free:
        raise UpdateRefused(
            f"the box has {flash_free // 1024} KB of flash free; the set needs up to {need // 1024} KB "
            "(free space on the box: a smaller spool_max_bytes, or the spool on the SD card)"
        )
