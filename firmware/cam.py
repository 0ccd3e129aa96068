"""One camera adapter over the two MicroPython ESP32 camera drivers in use.

- lemariva's `camera` module: module-level `camera.init(0, format=camera.JPEG,
  fb_location=camera.PSRAM)`, `camera.framesize(camera.FRAME_SVGA)`,
  `camera.quality(10..63, lower is better)`, `camera.capture()` -> bytes.
- the newer camera API (`from camera import Camera`): `Camera(pixel_format=
  PixelFormat.JPEG, frame_size=FrameSize.SVGA, jpeg_quality=0..100)`,
  `cam.capture()` -> memoryview over the driver's frame buffer (valid until the
  next capture, which is why the app spools and publishes a frame before it
  takes another).

The driver module is passed in (`import camera` happens in main.py, or the
simulator passes a fake), so this file never shadows or imports the board's
`camera`. The first frames after init are dark or green: `warmup` of them are
discarded. The flash LED (GPIO 4 on the AI-Thinker) is lit around a capture
when `flash` is on. An init failure is logged and remembered in `error`; the
box keeps working and sends events without photos.
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


def _lemariva_quality(q):
    # 1..100 (higher is better) -> lemariva's 10..63 (lower is better)
    return 10 + (100 - q) * 53 // 99


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
                    "jpeg_quality": self.quality,
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
                kw = {"format": d.JPEG}
                if hasattr(d, "PSRAM"):
                    kw["fb_location"] = d.PSRAM
                if d.init(0, **kw) is False:
                    raise OSError("camera.init returned False")
                d.framesize(getattr(d, "FRAME_" + self.frame_size))
                d.quality(_lemariva_quality(self.quality))
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
            for _ in range(2):
                frame = self._grab()
                if frame and len(frame) > 2 and frame[0] == 0xFF and frame[1] == 0xD8:
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
