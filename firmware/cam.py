"""One camera adapter over the two MicroPython ESP32 camera drivers in use.

- lemariva's `camera` module (lemariva/micropython-camera-driver src/modcamera.c):
  module-level `camera.init(0, format=camera.JPEG, framesize=..., quality=10..63 (lower is
  better), fb_location=camera.PSRAM)`, `camera.capture()` -> bytes (a copy), False when the
  driver returns no frame. Two traps, both from its source: (1) init allocates the JPEG
  buffer (width*height/5, esp32-camera cam_hal.c) for the *init* frame size, default VGA,
  and `framesize()` later does not reallocate it, so a larger frame overflows and capture()
  returns False: size and quality go to init(). (2) capture() hands the buffer back to the
  driver at once; with one buffer and CAMERA_GRAB_WHEN_EMPTY the driver refills it at the
  next VSYNC, so the next capture - hours later - returns the frame grabbed right after the
  previous one (dark, one event behind). So one frame is discarded after the flash is lit.
- the newer camera API (cnadler86/micropython-camera-API, `from camera import Camera`):
  `Camera(pixel_format=PixelFormat.JPEG, frame_size=FrameSize.SVGA, jpeg_quality=0..100)`,
  `cam.capture()` -> `memoryview('b', ...)` over the driver's frame buffer (valid until the
  next capture, which is why the app spools and publishes a frame before it takes another).
  The view is SIGNED: `frame[0]` of a JPEG is -1, not 0xFF (MicroPython py/binary.c), so the
  JPEG check masks each byte. The API passes `jpeg_quality` to the driver as
  map(q, 0, 100, 63, 0): 100 -> driver quality 0, frames bigger than the buffer and a
  constructor that fails; it is capped at API_MAX_QUALITY (85 -> driver 10, lemariva's best).

The driver module is passed in (`import camera` happens in main.py, or the
simulator passes a fake), so this file never shadows or imports the board's
`camera`. The first frames after init are dark or green: `warmup` of them are
discarded. The flash LED (GPIO 4 on the AI-Thinker) is lit around a capture
when `flash` is on. An init failure is logged and remembered in `error`; the
box keeps working and sends events without photos. Nothing initialises the
camera until `init()` or the first `capture()` (main.py skips it on heartbeat wakes).
"""

# AI-Thinker ESP32-CAM camera wiring, for camera-API firmware images built without it.
AI_THINKER_PINS = {
    "data_pins": [5, 18, 19, 21, 36, 39, 34, 35],
    "vsync_pin": 25,
    "href_pin": 23,
    "sda_pin": 26,
    "scl_pin": 27,
    "pclk_pin": 22,
    "xclk_pin": 0,
    "xclk_freq": 20000000,
    "powerdown_pin": 32,
    "reset_pin": -1,
}


# The camera API's best usable jpeg_quality: map(85, 0, 100, 63, 0) = driver quality 10.
API_MAX_QUALITY = 85


def _lemariva_quality(q):
    # 1..100 (higher is better) -> lemariva's 10..63 (lower is better)
    return 10 + (100 - q) * 53 // 99


def is_jpeg(frame):
    """True for a frame starting with the JPEG SOI marker FF D8. Masks each item: the camera
    API's view is signed ('b'), where 0xFF reads as -1."""
    return bool(frame) and len(frame) > 2 and frame[0] & 0xFF == 0xFF and frame[1] & 0xFF == 0xD8


class CameraAdapter:
    def __init__(
        self,
        driver,
        frame_size="SVGA",
        quality=80,
        warmup=2,
        flash_pin=None,
        flash=True,
        flash_ms=150,
        sleep_ms=None,
        log=print,
    ):
        self.driver = driver
        self.frame_size = frame_size
        self.quality = quality
        self.warmup = warmup
        self.flash_pin = flash_pin
        self.flash = flash
        self.flash_ms = flash_ms
        self._sleep_ms = sleep_ms
        self.log = log
        self.ok = False
        self.error = None
        self.failures = 0
        self.api = None
        self._cam = None
        if flash_pin is not None:
            flash_pin.value(0)

    def init(self):
        """Start the camera; True on success. Never raises."""
        d = self.driver
        try:
            if d is None:
                raise OSError("no camera driver")
            if hasattr(d, "Camera"):
                self.api = "camera.Camera"
                kw = {
                    "pixel_format": d.PixelFormat.JPEG,
                    "frame_size": getattr(d.FrameSize, self.frame_size),
                    "jpeg_quality": min(self.quality, API_MAX_QUALITY),
                }
                try:
                    self._cam = d.Camera(**kw)
                except Exception as e:
                    # A generic (not AI-Thinker) firmware image knows no pins: name them.
                    self.log("camera: default init failed (%s), retrying with AI-Thinker pins" % (e,))
                    for k in AI_THINKER_PINS:
                        kw[k] = AI_THINKER_PINS[k]
                    self._cam = d.Camera(**kw)
            else:
                self.api = "lemariva"
                size = getattr(d, "FRAME_" + self.frame_size)
                q = _lemariva_quality(self.quality)
                # Size and quality at init: the driver sizes its frame buffer there, once.
                kw = {"format": d.JPEG, "framesize": size, "quality": q}
                if hasattr(d, "PSRAM"):
                    kw["fb_location"] = d.PSRAM
                try:
                    ok = d.init(0, **kw)
                except TypeError:
                    # An old build without these keywords: it works, but at VGA size.
                    self.log(
                        "camera: this camera.init() takes no framesize/quality; large frames may not fit"
                    )
                    del kw["framesize"], kw["quality"]
                    ok = d.init(0, **kw)
                if ok is False:
                    raise OSError("camera.init returned False")
                d.framesize(size)
                d.quality(q)
            self.ok = True
            self.error = None
            for _ in range(self.warmup):
                self._grab()
            return True
        except Exception as e:  # any driver failure: report, keep the box running
            self.ok = False
            self.error = "%s: %s" % (type(e).__name__, e)
            self.log("camera: init failed (%s); events go out without photos" % self.error)
            return False

    def _grab(self):
        if self._cam is not None:
            return self._cam.capture()
        return self.driver.capture()

    def capture(self):
        """A JPEG frame (bytes or memoryview) or None. Lights the flash if set."""
        if not self.ok and not self.init():
            return None
        lit = self.flash and self.flash_pin is not None
        try:
            if lit:
                self.flash_pin.value(1)
                if self._sleep_ms is not None and self.flash_ms:
                    self._sleep_ms(self.flash_ms)
            if self._cam is None:
                # lemariva: the buffer holds the frame grabbed right after the previous
                # capture; dropping it makes the driver grab a new one now (flash lit).
                self._grab()
            for _ in range(2):
                frame = self._grab()
                if is_jpeg(frame):
                    return frame
            self.failures += 1
            self.log("camera: capture returned no JPEG")
            return None
        except Exception as e:
            self.failures += 1
            self.ok = False  # re-init on the next capture
            self.error = "%s: %s" % (type(e).__name__, e)
            self.log("camera: capture failed (%s)" % self.error)
            return None
        finally:
            if lit:
                self.flash_pin.value(0)

    def deinit(self):
        """Power the camera down (before deep sleep). Never raises."""
        try:
            if self._cam is not None:
                self._cam.deinit()
            elif self.driver is not None and self.ok:
                self.driver.deinit()
        except Exception as e:
            self.log("camera: deinit failed (%s)" % e)
        self.ok = False
        if self.flash_pin is not None:
            self.flash_pin.value(0)
