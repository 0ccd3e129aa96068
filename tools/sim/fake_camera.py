# Faithful fakes of the two MicroPython ESP32 camera drivers firmware/cam.py drives. Plain
# Python that runs under CPython (tests, tools/simulate.py) and real MicroPython (tests/mp, which
# mounts tools/sim at /sim).
#
# What the lens sees comes from a `scene(width, height, quality)` callable that returns JPEG
# bytes for the world *now* (is the flash lit, what is in the box). The fakes call it when the
# real driver's DMA fills a frame buffer, which is not always when Python asks for a frame:
# that difference is the whole point (issue 13, items 1-3).
#
# Sources (read, not guessed):
# - espressif/esp32-camera v2.1.5 (2ac69a6): driver/cam_hal.c `cam_obj->recv_size =
#   width * height / 5` for JPEG (CONFIG_CAMERA_JPEG_MODE_FRAME_SIZE_AUTO), allocated once in
#   cam_init; a frame that does not fit prints "cam_hal: FB-OVF" and is dropped; esp_camera.c
#   FB_GET_TIMEOUT 4000 ms, then esp_camera_fb_get() returns NULL. include/esp_camera.h:
#   CAMERA_GRAB_WHEN_EMPTY "fills buffers when they are empty ... first fb_count frames might
#   be old". sensors/ov2640.c set_quality clamps to 0..63 (0 = least compression).
# - lemariva/micropython-camera-driver src/modcamera.c (1392e59, the MicroPython 1.21 build):
#   init(0, format=, framesize=FRAMESIZE_VGA, quality=12, fb_size=1, fb_location=DRAM, pins...)
#   with grab_mode = CAMERA_GRAB_WHEN_EMPTY; capture() = fb_get, mp_obj_new_bytes (a copy),
#   esp_camera_fb_return at once; NULL -> False; framesize()/quality() only set the sensor.
# - cnadler86/micropython-camera-API v0.6.2 (8df3f70) src/modcamera.c: capture() returns the
#   buffer it held, then fb_get, then mp_obj_new_memoryview('b', len, buf) - a SIGNED view over
#   the driver's buffer, valid until the next capture; NULL -> None; jpeg_quality 0..100 is
#   passed to the driver as map(q, 0, 100, 63, 0), so 100 -> 0. src/modcamera_api.c: the
#   constructor inits, captures one frame (None -> OSError "Failed to capture initial frame"),
#   then frees it. src/modcamera.h: on the ESP32 (not S3) fb_count 1, GRAB_WHEN_EMPTY.
# - micropython py/binary.c mp_binary_get_val_array: 'b' items read as signed char, so a
#   JPEG's first byte 0xFF reads as -1 through that view.
from array import array

# esp32-camera driver/include/sensor.h: resolution[] for the sizes parcelbox offers.
RESOLUTION = {
    "QVGA": (320, 240),
    "CIF": (400, 296),
    "VGA": (640, 480),
    "SVGA": (800, 600),
    "XGA": (1024, 768),
    "HD": (1280, 720),
    "SXGA": (1280, 1024),
    "UXGA": (1600, 1200),
}
# framesize_t values: lemariva's build predates FRAMESIZE_128X128 / 320X320; the camera API's
# esp32-camera submodule has them (sensor.h v2.1.5).
_LEMARIVA_FRAMESIZE = {"QVGA": 5, "CIF": 6, "VGA": 8, "SVGA": 9, "XGA": 10, "HD": 11, "SXGA": 12, "UXGA": 13}
_API_FRAMESIZE = {"QVGA": 6, "CIF": 8, "VGA": 10, "SVGA": 11, "XGA": 12, "HD": 13, "SXGA": 14, "UXGA": 15}
PIXFORMAT_JPEG = 4  # sensor.h pixformat_t
FB_IN_PSRAM = 0  # esp_camera.h camera_fb_location_t
FB_IN_DRAM = 1


def jpeg_buffer_bytes(width, height):
    """cam_hal.c: the JPEG frame buffer, sized once at init."""
    return width * height // 5


def synthetic_jpeg(tag, width, height, quality):
    """JPEG-shaped bytes whose size follows the OV2640's: about width*height/quality bytes
    (quality 10 -> 0.1 byte per pixel, 190 KB at UXGA; quality 0 or 1 -> 1 byte per pixel,
    which overflows any buffer). `tag` (bytes) identifies what the lens saw."""
    n = width * height // (quality if quality > 1 else 1)
    body = n - len(tag) - 4
    if body < 0:
        body = 0
    return b"\xff\xd8" + tag + b"\x00" * body + b"\xff\xd9"


WARMUP_TAG = b"warmup"


def warmup_frame():
    """What the OV2640 sends while its exposure settles after init: a small green frame."""
    return synthetic_jpeg(WARMUP_TAG, 160, 120, 10)


def _name_of(table, value):
    for k in table:
        if table[k] == value:
            return k
    return None


class LemarivaCamera:
    """lemariva's `camera` module (module-level functions; pass an instance where main.py
    would pass the module). One frame buffer, refilled as soon as capture() returns it, so
    the next capture gets the frame grabbed *then*; sized at init from the init frame size;
    a larger frame overflows and capture() returns False."""

    JPEG = PIXFORMAT_JPEG
    PSRAM = FB_IN_PSRAM
    DRAM = FB_IN_DRAM
    FRAME_QVGA = 5
    FRAME_CIF = 6
    FRAME_VGA = 8
    FRAME_SVGA = 9
    FRAME_XGA = 10
    FRAME_HD = 11
    FRAME_SXGA = 12
    FRAME_UXGA = 13

    _INIT_KW = ("format", "framesize", "quality", "d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7",
                "vsync", "href", "pclk", "pwdn", "reset", "xclk", "siod", "sioc", "xclk_freq",
                "fb_size", "fb_location")  # fmt: skip

    def __init__(self, scene, fail_init=False, warmup_frames=0):
        self.scene = scene
        self.fail_init = fail_init
        self.warmup_frames = warmup_frames  # sensor: green/dark frames after each init
        self._warm_left = 0
        self.warmup_source = warmup_frame
        self.inited = False
        self.calls = []
        self.fb = None  # the one frame buffer's content (None: empty / being filled)
        self.fb_bytes = 0
        self.width = 0
        self.height = 0
        self.q = 12
        self.grabs = 0
        self.overflows = 0

    def init(self, n, **kw):
        self.calls.append(("init", n, kw))
        for k in kw:
            if k not in self._INIT_KW:  # mp_arg_parse_all
                raise TypeError("unexpected keyword argument '%s'" % k)
        if self.fail_init:
            raise OSError("Camera Init Failed")
        if kw.get("format", PIXFORMAT_JPEG) != PIXFORMAT_JPEG:
            raise ValueError("parcelbox only uses JPEG")
        name = _name_of(_LEMARIVA_FRAMESIZE, kw.get("framesize", self.FRAME_VGA))
        if name is None:
            raise ValueError("Image framesize is not valid")
        self.width, self.height = RESOLUTION[name]
        self.q = kw.get("quality", 12)
        self.fb_bytes = jpeg_buffer_bytes(self.width, self.height)  # allocated once, here
        self._warm_left = self.warmup_frames
        self.inited = True
        self._fill()  # GRAB_WHEN_EMPTY: the empty buffer is filled at the first VSYNC
        return True

    def _fill(self):
        self.grabs += 1
        if self._warm_left > 0:
            self._warm_left -= 1
            frame = self.warmup_source()
        else:
            frame = self.scene(self.width, self.height, self.q)
        if len(frame) > self.fb_bytes:
            self.overflows += 1  # "cam_hal: FB-OVF": the frame is dropped
            self.fb = None
        else:
            self.fb = frame

    def framesize(self, v):
        self.calls.append(("framesize", v))
        name = _name_of(_LEMARIVA_FRAMESIZE, v)
        if name is None:
            raise ValueError("Image framesize is not valid")
        # The sensor now sends frames of this size; the buffer stays as init sized it.
        self.width, self.height = RESOLUTION[name]

    def quality(self, v):
        self.calls.append(("quality", v))
        self.q = v

    def capture(self):
        if not self.inited:
            return False  # esp_camera_fb_get() without a driver: NULL
        if self.fb is None:
            self._fill()  # fb_get waits for the next frame...
            if self.fb is None:
                return False  # ...which overflows again until FB_GET_TIMEOUT: NULL -> False
        image = bytes(self.fb)  # mp_obj_new_bytes: a copy
        self.fb = None
        self._fill()  # esp_camera_fb_return: refilled at the next VSYNC, i.e. now
        return image

    def deinit(self):
        self.calls.append(("deinit",))
        self.inited = False
        self.fb = None
        return True


def _write_signed(arr, data):
    n = len(data)
    try:
        arr[0:n] = data  # MicroPython: a raw copy between same-size items
    except TypeError:
        memoryview(arr).cast("B")[0:n] = data  # CPython wants a cast for that


class CameraApi:
    """cnadler86's `camera` module: `Camera(**kw)`, `PixelFormat`, `FrameSize`, `GrabMode`.
    capture() returns a signed ('b') memoryview over the single frame buffer, overwritten
    by the next capture; on the ESP32 (fb_count 1, GRAB_WHEN_EMPTY) the held buffer is
    returned first, so every capture after the first is grabbed at the capture."""

    class PixelFormat:
        JPEG = PIXFORMAT_JPEG

    class FrameSize:
        QVGA = 6
        CIF = 8
        VGA = 10
        SVGA = 11
        XGA = 12
        HD = 13
        SXGA = 14
        UXGA = 15

    class GrabMode:
        WHEN_EMPTY = 0
        LATEST = 1

    _KW = ("data_pins", "pclk_pin", "vsync_pin", "href_pin", "sda_pin", "scl_pin", "xclk_pin", "i2c",
           "xclk_freq", "powerdown_pin", "reset_pin", "pixel_format", "frame_size", "jpeg_quality",
           "fb_count", "grab_mode", "init")  # fmt: skip

    def __init__(self, scene, fail_init=False, needs_pins=False, warmup_frames=0):
        self.scene = scene
        self.warmup_frames = warmup_frames
        self.warmup_source = warmup_frame
        self.fail_init = fail_init
        self.needs_pins = needs_pins  # a generic build (no board pins compiled in)
        self.created = []
        self.grabs = 0
        self.overflows = 0
        api = self

        class Camera:
            def __init__(self, **kw):
                api.created.append(kw)
                for k in kw:
                    if k not in api._KW:
                        raise TypeError("unexpected keyword argument '%s'" % k)
                if api.needs_pins and "data_pins" not in kw:
                    raise TypeError("'data_pins' argument required")
                if api.fail_init:
                    raise OSError("Camera init failed")
                q = kw.get("jpeg_quality", 85)
                if q < 0 or q > 100:
                    raise ValueError("jpeg quality must be in range 0-100")
                name = _name_of(_API_FRAMESIZE, kw.get("frame_size", 1))
                if name is None:
                    raise ValueError("frame size not supported by parcelbox's fake")
                self.width, self.height = RESOLUTION[name]
                self.q = 63 - q * 63 // 100  # map(q, 0, 100, 63, 0), C integer division
                fb = jpeg_buffer_bytes(self.width, self.height)
                self._buf = array("b", bytes(fb))
                self._len = 0
                self._held = False
                self._warm_left = api.warmup_frames
                self.initialized = True
                self._fill()  # the first VSYNC after init fills the free buffer
                if self.capture() is None:  # the constructor's test capture
                    self.initialized = False
                    raise OSError(
                        "Failed to capture initial frame. Construct a new object with appropriate configuration."
                    )
                self._free()  # mp_camera_hal_free_buffer: refilled at the next VSYNC

            def _fill(self):
                api.grabs += 1
                if self._warm_left > 0:
                    self._warm_left -= 1
                    frame = api.warmup_source()
                else:
                    frame = api.scene(self.width, self.height, self.q)
                if len(frame) > len(self._buf):
                    api.overflows += 1
                    self._len = 0
                    return False
                _write_signed(self._buf, frame)
                self._len = len(frame)
                return True

            def _free(self):
                self._held = False
                self._fill()

            def capture(self):
                if not self.initialized:
                    raise OSError(2)  # check_init: ENOENT
                if self._held:
                    self._held = False
                    self._fill()  # fb_return, then fb_get waits for the next frame
                if self._len == 0 and not self._fill():
                    return None  # FB-OVF until the timeout: NULL -> None
                self._held = True
                return memoryview(self._buf)[: self._len]

            def free_buffer(self):
                self._free()

            def deinit(self):
                self.initialized = False

        self.Camera = Camera


class Scene:
    """A simple world for the cases: `lit()` says whether the flash is on when a frame is
    grabbed; `event` is what is in the box now. A frame's tag is b"<event>:lit" or
    b"<event>:dark" so a case can tell which moment a photo shows."""

    def __init__(self, lit=None):
        self.lit = lit or (lambda: False)
        self.event = 0

    def tag(self):
        return ("%d:%s" % (self.event, "lit" if self.lit() else "dark")).encode()

    def __call__(self, width, height, quality):
        return synthetic_jpeg(self.tag(), width, height, quality)


def tag_of(frame):
    """The scene tag a synthetic frame carries (bytes after the SOI marker, up to a NUL)."""
    b = bytes(frame[2:40])
    i = b.find(b"\x00")
    return b if i < 0 else b[:i]
