"""tools/sim/lens.py `camera_frame_size`: a simulated box runs its camera at the photos' frame size, and
a photo no ESP32-CAM could send (bigger than the driver's JPEG buffer) is refused with the numbers.

bench/latency.py ran UXGA photos through a box at the firmware's default SVGA: every frame overflowed the
driver's 96,000-byte buffer and the bench timed events without photos."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import pytest
from PIL import Image

from tools.sim.fake_camera import jpeg_buffer_bytes
from tools.sim.lens import camera_frame_size

ROOT = Path(__file__).resolve().parents[1]
# bench/common.py loaded by path: putting bench/ on sys.path would shadow the firmware's modules for
# every test in this process (bench/ota.py is found before firmware/ota.py by `import ota`).
_spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
assert _spec is not None and _spec.loader is not None
common = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = common  # its dataclasses look their module up
_spec.loader.exec_module(common)


def _jpeg(w: int, h: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h), (90, 120, 30)).save(out, "JPEG")
    return out.getvalue()


def test_the_frame_size_is_the_photos_resolution() -> None:
    assert camera_frame_size([_jpeg(1600, 1200), _jpeg(1600, 1200)]) == "UXGA"
    assert camera_frame_size([_jpeg(800, 600)]) == "SVGA"


def test_a_photo_bigger_than_the_drivers_buffer_is_refused_with_the_numbers() -> None:
    small = _jpeg(800, 600)
    # Still an 800x600 JPEG to Pillow (it reads the header), padded past the 96,000-byte buffer.
    oversize = small[:-2] + b"\x00" * (jpeg_buffer_bytes(800, 600) + 1 - len(small)) + small[-2:]
    with pytest.raises(ValueError, match=r"photo 1 \(SVGA\) is 96001 bytes: over the camera driver's 96000"):
        camera_frame_size([small, oversize])


def test_odd_sizes_and_mixed_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="not a frame size"):
        camera_frame_size([_jpeg(1000, 1000)])
    with pytest.raises(ValueError, match="several frame sizes"):
        camera_frame_size([_jpeg(800, 600), _jpeg(1600, 1200)])


def test_the_generated_fallback_photo_fits_a_uxga_box() -> None:
    # Used when ../shared/photos is missing (every worktree): at q85 it was ~520 KB, over the 384,000-byte
    # UXGA buffer, so no box setting could have sent it.
    photo = common._generated_uxga(0)
    assert camera_frame_size([photo]) == "UXGA"
