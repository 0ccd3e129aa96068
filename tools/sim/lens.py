"""What the simulated box's camera sees, and the driver fake that takes it.

A scene is what is in the box between two lid openings; its photo is a JPEG from a folder (sorted,
cycled) or generated with Pillow, lit while the flash LED is on and dark otherwise. `camera_driver`
puts either faithful driver fake of `fake_camera` (sources cited there) over it.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

from tools.sim import fake_camera


def camera_frame_size(photos: list[bytes]) -> str:
    """The firmware `frame_size` an ESP32-CAM sending `photos` runs at (their common resolution).

    A simulated box must be set to the photos' size: the camera driver sizes its one JPEG buffer at
    init from the frame size (esp32-camera cam_hal.c: width * height / 5, `fake_camera.jpeg_buffer_bytes`)
    and drops a bigger frame ("FB-OVF"), so UXGA photos through an SVGA box (the firmware default,
    96,000 bytes) arrive as events with `camera_error: "no frame"` and no photo at all. A real OV2640
    never sends a JPEG larger than that buffer at its frame size (its quality setting bounds the size),
    so a photo that does not fit is refused here with the numbers, not silently dropped by the box.
    Used by the benches (bench/common.py) and `tools/simulate.py --photos`."""
    from PIL import Image

    by_size = {wh: name for name, wh in fake_camera.RESOLUTION.items()}
    names = set()
    for i, p in enumerate(photos):
        wh = Image.open(io.BytesIO(p)).size
        if wh not in by_size:
            raise ValueError(
                f"photo {i} is {wh[0]}x{wh[1]}: not a frame size the ESP32-CAM offers "
                f"({', '.join(f'{n} {w}x{h}' for n, (w, h) in fake_camera.RESOLUTION.items())})"
            )
        room = fake_camera.jpeg_buffer_bytes(*wh)
        if len(p) > room:
            raise ValueError(
                f"photo {i} ({by_size[wh]}) is {len(p)} bytes: over the camera driver's {room}-byte JPEG "
                f"buffer at that size (width*height/5), so a real box could never send it"
            )
        names.add(by_size[wh])
    if len(names) != 1:
        raise ValueError(f"photos of several frame sizes ({', '.join(sorted(names))}); a box has one")
    return names.pop()


def generated_jpeg(index: int, size=(640, 480), seed: int = 0) -> bytes:
    """A distinct, realistic-size JPEG for event `index` (Pillow; no files needed)."""
    from PIL import Image, ImageDraw

    rnd = random.Random(seed * 100003 + index)
    w, h = size
    img = Image.new("RGB", (w, h), (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    d = ImageDraw.Draw(img)
    for _ in range(60):
        x, y = rnd.randrange(w), rnd.randrange(h)
        d.rectangle(
            (x, y, x + rnd.randrange(20, 160), y + rnd.randrange(20, 120)),
            fill=(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)),
        )
    noise = Image.effect_noise((w // 2, h // 2), 60).convert("RGB")
    img.paste(noise, (rnd.randrange(w // 2), rnd.randrange(h // 2)))
    d.text((10, 10), f"parcelbox simulated photo {index}", fill=(255, 255, 255))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


class PhotoSource:
    """What the camera sees: one JPEG per scene (the files of a folder, sorted and cycled, or
    generated ones), lit by the flash or dark without it.

    A scene is what is in the box between two lid openings (`SimulatedBox.scene`). The first
    time a scene is photographed lit, its JPEG is taken from the folder (or generated) and
    appended to `served`: so `served[i]` is the photo the i-th photographed scene must arrive
    with, and a dark or stale frame (what the real drivers give when used wrongly) matches
    nothing in it."""

    def __init__(self, folder: str | Path | None = None, seed: int = 0) -> None:
        self.files: list[Path] = []
        if folder:
            self.files = sorted(
                p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file()
            )
            if not self.files:
                raise SystemExit(f"no .jpg files in {folder}")
        self.seed = seed
        self.n = 0
        self.served: list[bytes] = []
        self._lit: dict[object, bytes] = {}
        self._dark: dict[object, bytes] = {}

    def next(self) -> bytes:
        """The next photo in turn (recorded in `served`)."""
        if self.files:
            data = self.files[self.n % len(self.files)].read_bytes()
        else:
            data = generated_jpeg(self.n, seed=self.seed)
        self.n += 1
        self.served.append(data)
        return data

    def frame(self, scene: object, lit: bool) -> bytes:
        """The JPEG of `scene` as the lens sees it now: lit by the flash, or dark."""
        if lit:
            if scene not in self._lit:
                self._lit[scene] = self.next()
            return self._lit[scene]
        if scene not in self._lit:
            return black_jpeg()  # never lit: nothing to see (and no photo used up)
        if scene not in self._dark:
            self._dark[scene] = dark_jpeg(self._lit[scene])
        return self._dark[scene]


def dark_jpeg(data: bytes) -> bytes:
    """The same view without the flash: a closed box is nearly black inside."""
    from PIL import Image, ImageEnhance, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data)).convert("RGB")
    except (UnidentifiedImageError, OSError):
        return data[:2] + b"dark" + data[2:]  # not decodable (a test's stand-in bytes): still different
    out = io.BytesIO()
    ImageEnhance.Brightness(img).enhance(0.06).save(out, "JPEG", quality=70)
    return out.getvalue()


_BLACK_JPEG: bytes | None = None


def black_jpeg() -> bytes:
    """The inside of a closed box without the flash."""
    global _BLACK_JPEG
    if _BLACK_JPEG is None:
        from PIL import Image

        out = io.BytesIO()
        Image.new("RGB", (640, 480), (3, 3, 3)).save(out, "JPEG")
        _BLACK_JPEG = out.getvalue()
    return _BLACK_JPEG


_WARMUP_JPEG: bytes | None = None


def warmup_jpeg() -> bytes:
    """A green frame, like the sensor's first frames after init (must never be sent)."""
    global _WARMUP_JPEG
    if _WARMUP_JPEG is None:
        from PIL import Image

        out = io.BytesIO()
        Image.new("RGB", (160, 120), (0, 255, 0)).save(out, "JPEG")
        _WARMUP_JPEG = out.getvalue()
    return _WARMUP_JPEG


CAMERA_DRIVERS = ("camera-api", "lemariva")


def camera_driver(
    name: str, scene: Callable[[int, int, int], bytes], warmup: int = 2, fail_init: bool = False
):
    """The faithful fake of a camera driver (tests/mp/fake_camera.py: sources cited there):
    `camera-api` (cnadler86's `camera.Camera`, signed memoryview over its one buffer) or
    `lemariva` (module-level functions; one buffer refilled as soon as capture() returns)."""
    drv: fake_camera.CameraApi | fake_camera.LemarivaCamera
    if name in ("camera-api", "camera"):
        drv = fake_camera.CameraApi(scene, fail_init=fail_init, warmup_frames=warmup)
    elif name == "lemariva":
        drv = fake_camera.LemarivaCamera(scene, fail_init=fail_init, warmup_frames=warmup)
    else:
        raise ValueError(f"unknown camera driver {name!r} (use one of {', '.join(CAMERA_DRIVERS)})")
    drv.warmup_source = warmup_jpeg
    return drv
