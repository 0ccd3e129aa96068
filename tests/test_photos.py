"""Photo pipeline: sizes, orientation, caption, privacy, and every class of hostile JPEG.

Images are generated here with Pillow (the suite must not depend on ../shared/photos).
"""

from __future__ import annotations

import io
import os
import pickle
import random
from concurrent.futures import ProcessPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageDraw, ImageFile

from gateway import photos
from gateway.photos import REASONS, PhotoError, PhotoSettings, ProcessedPhoto, jpeg_header, process_photo

DECODERS = ["auto", "pillow"]


def make_image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A photo-like test card: smooth gradients plus sharp shapes (so resampling has work to do)."""
    grad = Image.linear_gradient("L").resize((width, height))
    im = Image.merge("RGB", (grad, grad.transpose(Image.Transpose.ROTATE_90).resize((width, height)), grad))
    draw = ImageDraw.Draw(im)
    rng = random.Random(width * 10007 + height)
    for _ in range(30):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(1, max(2, width // 4)), y0 + rng.randrange(1, max(2, height // 4))
        draw.rectangle((x0, y0, x1, y1), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    return im.convert(mode) if mode != "RGB" else im


def to_jpeg(im: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=kw.pop("quality", 85), **kw)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def patch_sof(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header's dimensions without touching the (tiny) pixel data."""
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[i + 9 :]


@pytest.fixture(scope="module")
def uxga() -> bytes:
    return to_jpeg(make_image(1600, 1200))


@pytest.fixture(scope="module")
def small_jpeg() -> bytes:
    return to_jpeg(make_image(64, 48))


# --- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("size", [(1600, 1200), (1200, 1600), (4000, 3000), (2048, 1536), (1281, 700)])
def test_alert_and_thumb_sizes(decoder: str, size: tuple[int, int]) -> None:
    s = PhotoSettings(decoder=decoder)
    result = process_photo(to_jpeg(make_image(*size)), s)
    assert isinstance(result, ProcessedPhoto)
    assert (result.width, result.height) == size
    alert, thumb = decode(result.alert_jpeg), decode(result.thumb_jpeg)
    assert alert.format == thumb.format == "JPEG"
    assert max(alert.size) <= s.alert_long_edge
    # Either exact, or a DCT scale that fills at least alert_min_fill of the target (no resampling).
    assert max(alert.size) >= s.alert_min_fill * s.alert_long_edge
    assert max(thumb.size) == s.thumb_long_edge
    # Aspect ratio kept (within rounding of a pixel).
    for out in (alert, thumb):
        assert abs(out.size[0] / out.size[1] - size[0] / size[1]) < 2 / min(out.size)


@pytest.mark.parametrize("decoder", DECODERS)
def test_small_images_are_never_upscaled(decoder: str) -> None:
    result = process_photo(to_jpeg(make_image(200, 150)), PhotoSettings(decoder=decoder))
    assert decode(result.alert_jpeg).size == (200, 150)
    assert decode(result.thumb_jpeg).size == (200, 150)
    result = process_photo(to_jpeg(make_image(800, 600)), PhotoSettings(decoder=decoder))
    assert decode(result.alert_jpeg).size == (800, 600)
    assert decode(result.thumb_jpeg).size == (320, 240)


def test_custom_sizes_force_a_resize_after_dct_scaling(uxga: bytes) -> None:
    # 1000 is not reachable as an M/8 scale of 1600 within 0.99 fill, so the pipeline decodes larger
    # and resizes to exactly the target.
    s = PhotoSettings(alert_long_edge=1000, thumb_long_edge=100, alert_min_fill=0.99)
    result = process_photo(uxga, s)
    assert decode(result.alert_jpeg).size == (1000, 750)
    assert decode(result.thumb_jpeg).size == (100, 75)


@pytest.mark.parametrize("decoder", DECODERS)
def test_output_resembles_input(decoder: str, uxga: bytes) -> None:
    result = process_photo(uxga, PhotoSettings(decoder=decoder))
    alert = decode(result.alert_jpeg)
    reference = decode(uxga).resize(alert.size, Image.Resampling.LANCZOS)
    diff = ImageChops.difference(alert, reference).convert("L")
    mean_error = sum(i * n for i, n in enumerate(diff.histogram())) / (alert.size[0] * alert.size[1])
    assert mean_error < 6


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_gray_and_cmyk_inputs(decoder: str, mode: str) -> None:
    result = process_photo(to_jpeg(make_image(1600, 1200, mode)), PhotoSettings(decoder=decoder))
    assert max(decode(result.alert_jpeg).size) <= 1280
    assert decode(result.alert_jpeg).mode in ("L", "RGB")


def test_progressive_input(uxga: bytes) -> None:
    data = to_jpeg(make_image(1600, 1200), progressive=True)
    assert jpeg_header(data).process == "progressive"
    assert jpeg_header(data).scans > 1
    result = process_photo(data, PhotoSettings())
    assert max(decode(result.alert_jpeg).size) <= 1280


# --- orientation ---------------------------------------------------------------------------------

# The transform that turns an upright picture into what a camera stores with EXIF orientation N.
_STORE = {
    1: [],
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_90],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_270],
}


def upright_card(width: int, height: int) -> Image.Image:
    """Solid quadrants: red top-left, green top-right, blue bottom-left, white bottom-right."""
    im = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(im)
    hw, hh = width // 2, height // 2
    draw.rectangle((0, 0, hw, hh), fill=(255, 0, 0))
    draw.rectangle((hw, 0, width, hh), fill=(0, 255, 0))
    draw.rectangle((0, hh, hw, height), fill=(0, 0, 255))
    draw.rectangle((hw, hh, width, height), fill=(255, 255, 255))
    return im


def nearest(color: tuple[int, int, int]) -> str:
    names = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}
    return min(names, key=lambda n: sum((a - b) ** 2 for a, b in zip(names[n], color, strict=True)))


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("size", [(400, 300), (1600, 1200)])
def test_every_exif_orientation_is_undone(decoder: str, orientation: int, size: tuple[int, int]) -> None:
    stored = upright_card(*size)
    for op in _STORE[orientation]:
        stored = stored.transpose(op)
    exif = Image.Exif()
    exif[0x0112] = orientation
    result = process_photo(to_jpeg(stored, exif=exif), PhotoSettings(decoder=decoder))
    assert (result.width, result.height) == size
    for data in (result.alert_jpeg, result.thumb_jpeg):
        out = decode(data).convert("RGB")
        w, h = out.size
        assert w > h
        corners = [out.getpixel((w // 4, h // 4)), out.getpixel((3 * w // 4, h // 4))]
        corners += [out.getpixel((w // 4, 3 * h // 4)), out.getpixel((3 * w // 4, 3 * h // 4))]
        assert [nearest(c) for c in corners] == ["red", "green", "blue", "white"]


# --- caption and metadata ------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", DECODERS)
def test_caption_strip_is_drawn_on_the_alert_only(decoder: str, uxga: bytes) -> None:
    s = PhotoSettings(decoder=decoder)
    plain = process_photo(uxga, s)
    captioned = process_photo(uxga, s, caption="Front gate · 22 Nov 10:41")
    a, b = decode(plain.alert_jpeg).convert("L"), decode(captioned.alert_jpeg).convert("L")
    assert a.size == b.size
    w, h = a.size
    bottom = (0, int(h * 0.9), w, h)
    top = (0, 0, w, int(h * 0.8))
    assert ImageChops.difference(a.crop(bottom), b.crop(bottom)).getbbox() is not None
    # Only the strip changes (JPEG blocks touching it may differ by a little, the rest not at all).
    assert max(ImageChops.difference(a.crop(top), b.crop(top)).getextrema()) <= 2
    # The strip is dark with light text: readable whatever the photo.
    strip = b.crop((0, h - 20, w, h - 1))
    assert strip.getextrema()[0] < 30 and strip.getextrema()[1] > 200
    assert plain.thumb_jpeg == captioned.thumb_jpeg
    # caption_strip=False turns it off.
    off = process_photo(uxga, PhotoSettings(decoder=decoder, caption_strip=False), caption="x")
    assert off.alert_jpeg == plain.alert_jpeg


def test_hostile_captions_are_sanitised(small_jpeg: bytes) -> None:
    for caption in ["\x00\n\r\u202e evil", "x" * 10_000, "", "   ", "Kotak 1 · 22 Nov 10.41 WIB"]:
        result = process_photo(to_jpeg(make_image(300, 600)), PhotoSettings(), caption=caption)
        assert decode(result.alert_jpeg).size == (300, 600)


@pytest.mark.parametrize("decoder", DECODERS)
def test_exif_gps_and_comments_are_stripped(decoder: str) -> None:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x0112] = 1
    gps = exif.get_ifd(0x8825)
    gps[2] = (51.0, 30.0, 12.0)  # GPSLatitude
    gps[1] = "N"
    data = to_jpeg(make_image(1600, 1200), exif=exif, comment=b"home address 42")
    assert b"SecretCam" in data and b"home address" in data
    result = process_photo(data, PhotoSettings(decoder=decoder), caption="box")
    for out in (result.alert_jpeg, result.thumb_jpeg):
        assert b"SecretCam" not in out and b"home address" not in out and b"Exif" not in out
        im = decode(out)
        assert len(im.getexif()) == 0
        assert "comment" not in im.info and "exif" not in im.info


def test_outputs_are_baseline_by_default_and_progressive_on_request(uxga: bytes) -> None:
    base = process_photo(uxga, PhotoSettings())
    assert jpeg_header(base.alert_jpeg).process == "baseline"
    prog = process_photo(uxga, PhotoSettings(progressive=True))
    assert jpeg_header(prog.alert_jpeg).process == "progressive"


# --- hostile input -------------------------------------------------------------------------------


def reason_of(data, s: PhotoSettings | None = None) -> str:
    with pytest.raises(PhotoError) as info:
        process_photo(data, s or PhotoSettings())
    assert info.value.reason in REASONS
    assert info.value.detail
    return info.value.reason


def test_non_jpeg_bytes_are_bad_jpeg() -> None:
    png, gif = io.BytesIO(), io.BytesIO()
    make_image(32, 32).save(png, "PNG")
    make_image(32, 32).save(gif, "GIF")
    for data in [png.getvalue(), gif.getvalue(), b"", b"\xff", b"\xff\xd8", os.urandom(5000), b"hello world"]:
        assert reason_of(data) == "bad_jpeg", data[:16]
    assert reason_of("not bytes") == "bad_jpeg"  # type: ignore[arg-type]


def test_random_bytes_after_soi_are_rejected() -> None:
    rng = random.Random(7)
    for _ in range(50):
        data = b"\xff\xd8" + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000)))
        assert reason_of(data) in {"bad_jpeg", "truncated_jpeg", "photo_dimensions"}


@pytest.mark.parametrize("decoder", DECODERS)
def test_truncated_jpeg_at_several_offsets(decoder: str, uxga: bytes) -> None:
    s = PhotoSettings(decoder=decoder)
    sos = uxga.index(b"\xff\xda")
    for cut in [
        10,
        25,
        sos - 3,
        sos + 5,
        sos + 200,
        len(uxga) // 3,
        len(uxga) // 2,
        len(uxga) - 2,
        len(uxga) - 1,
    ]:
        assert reason_of(uxga[:cut], s) == "truncated_jpeg", cut


def test_truncated_jpeg_is_refused_even_with_load_truncated_images(
    monkeypatch: pytest.MonkeyPatch, uxga: bytes
) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # importing the pipeline never turns it on
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for decoder in DECODERS:
        assert reason_of(uxga[: len(uxga) // 2], PhotoSettings(decoder=decoder)) == "truncated_jpeg"


def test_tiny_jpeg_claiming_huge_dimensions_is_a_bomb(small_jpeg: bytes) -> None:
    assert reason_of(patch_sof(small_jpeg, 60000, 60000)) == "decompression_bomb"
    assert reason_of(patch_sof(small_jpeg, 65535, 65535)) == "decompression_bomb"


def test_real_image_over_the_pixel_limit_is_a_bomb() -> None:
    # A flat gray 5000x5000 JPEG is only ~100 KB but would decode to 75 MB.
    data = to_jpeg(Image.new("L", (5000, 5000), 128), quality=50)
    assert len(data) < PhotoSettings().max_bytes
    assert reason_of(data) == "decompression_bomb"
    assert (
        reason_of(to_jpeg(make_image(300, 300)), PhotoSettings(max_pixels=200 * 200)) == "decompression_bomb"
    )


def test_pillow_pixel_limit_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    assert reason_of(to_jpeg(make_image(200, 200))) == "decompression_bomb"


def test_hostile_dimensions(small_jpeg: bytes) -> None:
    assert reason_of(patch_sof(small_jpeg, 60000, 2)) == "photo_dimensions"
    assert reason_of(patch_sof(small_jpeg, 2, 9000)) == "photo_dimensions"
    assert reason_of(patch_sof(small_jpeg, 0, 48)) == "photo_dimensions"
    assert reason_of(patch_sof(small_jpeg, 64, 0)) == "photo_dimensions"


def test_header_dimensions_not_matching_the_data_never_crash(small_jpeg: bytes) -> None:
    # Plausible but wrong dimensions: the decoder runs out of data; refused or decoded, never a crash.
    for w, h in [(65, 48), (640, 480), (1600, 1200), (1, 1)]:
        try:
            result = process_photo(patch_sof(small_jpeg, w, h), PhotoSettings())
        except PhotoError as exc:
            assert exc.reason in REASONS
        else:
            assert (result.width, result.height) == (w, h)


def test_oversize_is_refused_before_parsing(uxga: bytes) -> None:
    assert reason_of(uxga, PhotoSettings(max_bytes=len(uxga) - 1)) == "oversize"
    assert reason_of(b"\x00" * 3_000_000) == "oversize"


def test_unsupported_jpeg_kinds_are_bad_jpeg(small_jpeg: bytes) -> None:
    i = small_jpeg.index(b"\xff\xc0")
    lossless = small_jpeg[: i + 1] + b"\xc3" + small_jpeg[i + 2 :]
    assert reason_of(lossless) == "bad_jpeg"
    twelve_bit = small_jpeg[: i + 4] + b"\x0c" + small_jpeg[i + 5 :]
    assert reason_of(twelve_bit) == "bad_jpeg"
    no_frame = small_jpeg[:i] + small_jpeg[i + 2 + int.from_bytes(small_jpeg[i + 2 : i + 4], "big") :]
    assert reason_of(no_frame) == "bad_jpeg"


def test_too_many_scans_is_bad_jpeg(small_jpeg: bytes) -> None:
    # Repeat the scan: a "scan bomb" costs the decoder time per scan; refused before decoding.
    sos = small_jpeg.index(b"\xff\xda")
    scan = small_jpeg[sos:-2]
    assert reason_of(small_jpeg[:sos] + scan * 100 + b"\xff\xd9") == "bad_jpeg"


def test_garbage_after_eoi_is_accepted_and_dropped(uxga: bytes) -> None:
    expected = process_photo(uxga, PhotoSettings())
    for tail in [b"\x00" * 1000, os.urandom(3000), b"\xff\xd8\xff\xe0 polyglot"]:
        assert process_photo(uxga + tail, PhotoSettings()) == expected


# --- contract ------------------------------------------------------------------------------------


def test_settings_and_results_pickle(small_jpeg: bytes) -> None:
    s = PhotoSettings(alert_long_edge=640)
    assert pickle.loads(pickle.dumps(s)) == s
    result = process_photo(small_jpeg, s)
    assert pickle.loads(pickle.dumps(result)) == result
    err = PhotoError("bad_jpeg", "x")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.reason, copy.detail) == ("bad_jpeg", "x")


def test_runs_in_a_process_pool(uxga: bytes) -> None:
    with ProcessPoolExecutor(max_workers=2) as pool:
        good = pool.submit(process_photo, uxga, PhotoSettings(), "box")
        bad = pool.submit(process_photo, uxga[:5000], PhotoSettings())
        assert good.result(timeout=60) == process_photo(uxga, PhotoSettings(), "box")
        with pytest.raises(PhotoError) as info:
            bad.result(timeout=60)
        assert info.value.reason == "truncated_jpeg"


def test_pillow_fallback_when_simplejpeg_is_missing(monkeypatch: pytest.MonkeyPatch, uxga: bytes) -> None:
    monkeypatch.setattr(photos, "_simplejpeg", None)
    assert not photos.simplejpeg_available()
    result = process_photo(uxga, PhotoSettings())
    assert decode(result.alert_jpeg).size == (1280, 960)


# --- fuzz ----------------------------------------------------------------------------------------

_FUZZ_BASE = to_jpeg(make_image(96, 64), quality=75)
_FUZZ_BASE_PROGRESSIVE = to_jpeg(make_image(96, 64), quality=75, progressive=True)


@st.composite
def mutated_jpeg(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([_FUZZ_BASE, _FUZZ_BASE_PROGRESSIVE])))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "marker"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0xD9, 0xDA, 0xC0, 0xC2, draw(st.integers(0, 255))]))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "marker":
            data[pos:pos] = b"\xff" + bytes([draw(st.integers(0xC0, 0xFE))]) + draw(st.binary(max_size=6))
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_jpeg(), decoder=st.sampled_from(DECODERS))
def test_fuzz_mutated_jpeg_returns_a_photo_or_photo_error(data: bytes, decoder: str) -> None:
    try:
        result = process_photo(data, PhotoSettings(decoder=decoder), caption="fuzz")
    except PhotoError as exc:
        assert exc.reason in REASONS
        return
    assert result.width > 0 and result.height > 0
    assert decode(result.alert_jpeg).format == "JPEG"
    assert decode(result.thumb_jpeg).format == "JPEG"


def test_concurrent_threads_give_the_same_results(uxga: bytes) -> None:
    from concurrent.futures import ThreadPoolExecutor

    inputs = [to_jpeg(make_image(1600 - 64 * i, 1200)) for i in range(4)] + [uxga[:9000]]
    captions = [f"box {i}" for i in range(len(inputs))]

    def run(args: tuple[bytes, str]) -> ProcessedPhoto | str:
        try:
            return process_photo(args[0], PhotoSettings(), args[1])
        except PhotoError as exc:
            return exc.reason

    serial = [run(a) for a in zip(inputs, captions, strict=True)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            assert list(pool.map(run, zip(inputs, captions, strict=True))) == serial
    assert serial[-1] == "truncated_jpeg"
