# firmware/cam.py against the faithful driver fakes (tools/sim/fake_camera.py). Run under
# CPython (tests/test_firmware_camera.py) and real MicroPython, where the camera API's
# signed memoryview is MicroPython's own.
import cam

try:
    from board import SimPin
    from fake_camera import CameraApi, LemarivaCamera, Scene, tag_of  # MicroPython: tools/sim at /sim
except ImportError:
    from tools.sim.board import SimPin
    from tools.sim.fake_camera import CameraApi, LemarivaCamera, Scene, tag_of


def _rig(driver_cls, frame_size="SVGA", quality=80, **kw):
    flash = SimPin(0)
    scene = Scene(lambda: flash.level == 1)
    drv = driver_cls(scene, **kw)
    lines = []
    c = cam.CameraAdapter(drv, frame_size, quality, 2, flash, True, 0, None, lines.append)
    return c, drv, scene, flash, lines


def case_camera_api_frame_is_a_signed_view_and_still_a_jpeg():
    c, drv, scene, flash, lines = _rig(CameraApi)
    assert c.init() and c.api == "camera.Camera", lines
    scene.event = 1
    f = c.capture()
    assert f is not None, lines  # was: "no frame" on every event (0xFF reads as -1)
    assert f[0] == -1 and f[1] == -40  # the real view is signed: the adapter must mask
    assert tag_of(f) == b"1:lit", tag_of(f)


def case_camera_api_view_is_overwritten_by_the_next_capture():
    c, drv, scene, flash, lines = _rig(CameraApi)
    c.init()
    scene.event = 1
    first = c.capture()
    scene.event = 2
    c.capture()
    assert tag_of(first) == b"2:lit"  # valid only until the next capture, like the driver's


def case_lemariva_photo_shows_this_event_lit():
    c, drv, scene, flash, lines = _rig(LemarivaCamera)
    assert c.init() and c.api == "lemariva", lines
    for event in (1, 2, 3):
        scene.event = event
        f = c.capture()
        assert isinstance(f, bytes), lines
        # was b"0:dark", b"1:dark", ...: the frame grabbed right after the previous capture
        assert tag_of(f) == ("%d:lit" % event).encode(), (event, tag_of(f))
    assert flash.level == 0


def case_lemariva_buffer_is_sized_for_the_configured_frame():
    c, drv, scene, flash, lines = _rig(LemarivaCamera, "UXGA", 100)
    assert c.init(), lines
    assert drv.fb_bytes == 1600 * 1200 // 5, drv.fb_bytes  # was the VGA default: 61,440
    f = c.capture()
    assert f and len(f) == 1600 * 1200 // 10, lines  # quality 100 -> lemariva 10
    assert drv.overflows == 0


def case_lemariva_overflow_returns_false_and_the_event_goes_without_photo():
    c, drv, scene, flash, lines = _rig(LemarivaCamera, "UXGA", 100)
    c.init()
    drv.quality(1)  # frames of a byte per pixel: bigger than any buffer
    assert c.capture() is None and c.failures == 1
    assert drv.capture() is False and drv.overflows > 0


def case_camera_api_quality_100_is_capped():
    c, drv, scene, flash, lines = _rig(CameraApi, "SVGA", 100)
    assert c.init(), lines  # was: jpeg_quality 100 -> driver 0 -> "Failed to capture initial frame"
    assert drv.created[-1]["jpeg_quality"] == cam.API_MAX_QUALITY
    assert c.capture() is not None


def case_camera_api_generic_build_gets_ai_thinker_pins():
    c, drv, scene, flash, lines = _rig(CameraApi, needs_pins=True)
    assert c.init(), lines
    assert drv.created[-1]["pclk_pin"] == 22 and drv.created[-1]["xclk_pin"] == 0


CASES = [(n, f) for n, f in sorted(globals().items()) if n.startswith("case_") and callable(f)]


def run_all():
    for name, fn in CASES:
        fn()
        print("PASS", name)
    print("DONE", len(CASES))
