"""Photo pipeline: validate a box's JPEG, then make the alert copy and the thumbnail.

Design:
- **Validate before decoding.** A photo arrives from the network, so it is hostile until proven
  otherwise. We cap its size, walk the JPEG marker structure ourselves (SOI, segments, frame header,
  scans, EOI) and read the dimensions from the frame header *without* decoding a pixel. Only a
  structurally complete baseline/progressive 8-bit JPEG within the pixel and dimension limits reaches
  a decoder. A stream without its EOI marker is ``truncated_jpeg``: libjpeg would otherwise happily
  return a half-gray image (and Pillow would too if someone turned ``LOAD_TRUNCATED_IMAGES`` on).
- **DCT-scaled decoding.** libjpeg-turbo can scale by M/8 inside the IDCT, which is much cheaper than
  a full decode plus resize. With ``simplejpeg`` (any M/8) we decode straight at the largest scale whose
  long edge fits the alert size; Pillow's ``Image.draft`` only offers 1/2, 1/4, 1/8 and is the fallback
  when simplejpeg is missing. See docs/performance.md for the measurements behind the defaults.
- **Pure function.** :func:`process_photo` takes bytes and a frozen, picklable :class:`PhotoSettings`
  and returns bytes, so it runs the same in a thread pool or a process pool.
- **Privacy.** Outputs are re-encoded from pixels only: no EXIF (GPS), comments or ICC profile.

Trailing bytes after the EOI marker are accepted and dropped: a camera frame buffer may be padded past
EOI, and refusing it would cost a delivery photo for nothing; the output is re-encoded from pixels, so
whatever follows EOI (padding or a polyglot payload) never travels further.
"""

from __future__ import annotations

import io
import math
import re
import threading
import unicodedata
from dataclasses import dataclass, fields

from PIL import Image, ImageDraw, ImageFile, ImageFont

from gateway.config import PhotosConfig
from gateway.protocol import Limits

try:  # optional accelerator (the "fast" extra); Pillow alone is always enough
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - exercised only where simplejpeg is absent
    _simplejpeg = None

__all__ = [
    "PhotoError",
    "PhotoSettings",
    "ProcessedPhoto",
    "REASONS",
    "jpeg_header",
    "process_photo",
    "simplejpeg_available",
]

REASONS = frozenset({"bad_jpeg", "truncated_jpeg", "decompression_bomb", "photo_dimensions", "oversize"})

# Progressive JPEGs with thousands of tiny scans make libjpeg spend seconds per image (a known
# CPU-exhaustion trick); real encoders emit about 10. Same spirit as djpeg's -maxscan.
_MAX_SCANS = 64
# Baseline, extended sequential and progressive Huffman, the only kinds a camera or phone produces.
_SUPPORTED_SOF = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
# Any other SOFn (lossless, hierarchical, arithmetic) is refused rather than handed to the decoder.
_OTHER_SOF = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Inside entropy-coded data 0xFF is followed by 0x00 (stuffing) or RSTn; anything else is a marker.
# (No "+" after the first byte: fill bytes are skipped by the marker loop, and a bare 0xFF prefix lets
# the regex engine skip ahead quickly, 20x faster than "\xff+" on a camera photo.)
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that undoes it (same table as ImageOps.exif_transpose).
_ORIENT_OPS: dict[int, tuple[Image.Transpose, ...]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
_CAPTION_MAX_CHARS = 120


class PhotoError(Exception):
    """A photo was refused. ``reason`` is one of :data:`REASONS` (a counter name); ``detail`` is for logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class PhotoSettings:
    """Limits and output sizes of the photo pipeline (frozen and picklable for process pools).

    The settings a user can change have their defaults in one place, `gateway.config.PhotosConfig`
    (documented in docs/configuration.md), and the photo size limit in `gateway.protocol.Limits`;
    the rest are the pipeline's own. `from_config` builds the running gateway's."""

    alert_long_edge: int = PhotosConfig.alert_long_edge
    thumb_long_edge: int = PhotosConfig.thumb_long_edge
    alert_quality: int = PhotosConfig.alert_quality
    thumb_quality: int = PhotosConfig.thumb_quality
    max_bytes: int = Limits.max_photo_bytes
    # Decoded pixels allowed (20 Mpx = 60 MB of RGB); above this the photo is a decompression bomb.
    # Pillow's own Image.MAX_IMAGE_PIXELS is applied too when it is lower.
    max_pixels: int = PhotosConfig.max_pixels
    # Longest side allowed; catches absurd shapes (1 x 60000) that pass the pixel limit.
    max_dimension: int = 8192
    caption_strip: bool = PhotosConfig.caption_strip
    # A DCT scale M/8 is used as the alert copy as-is (no resampling at all) when its long edge lands
    # within [alert_min_fill * alert_long_edge, alert_long_edge]; otherwise the image is decoded at the
    # next larger scale and resized down. 0.9 keeps a UXGA photo at 1200x900 for a 1280 target.
    alert_min_fill: float = 0.9
    # "auto": simplejpeg when installed, else Pillow; "pillow" forces the Pillow path (draft + resize).
    decoder: str = "auto"
    # Output encoding, measured on UXGA camera photos (docs/performance.md): progressive is no smaller
    # than optimized baseline and 2-3x slower to encode, so baseline it is. Huffman optimisation of the
    # alert copy saves ~4 % (~3 KB, and WhatsApp re-encodes it anyway) for +2-5 ms, a tenth to a fifth of
    # the pipeline, so it is off for the alert; the thumbnail, small and kept, is always optimised.
    progressive: bool = False
    optimize_alert: bool = False

    @classmethod
    def from_config(cls, photos: PhotosConfig, *, max_bytes: int = Limits.max_photo_bytes) -> PhotoSettings:
        """The pipeline's settings from the `[photos]` config section (every field it shares)."""
        shared = {f.name for f in fields(PhotosConfig)} & {f.name for f in fields(cls)}
        return cls(max_bytes=max_bytes, **{name: getattr(photos, name) for name in shared})


@dataclass(frozen=True)
class ProcessedPhoto:
    """Result of :func:`process_photo`; ``width``/``height`` are the oriented original's."""

    width: int
    height: int
    alert_jpeg: bytes
    thumb_jpeg: bytes


@dataclass(frozen=True)
class JpegHeader:
    """What the structural walk learned about a JPEG without decoding it."""

    width: int
    height: int
    components: int
    process: str
    scans: int
    end: int  # offset just past EOI; bytes after it are ignored


def simplejpeg_available() -> bool:
    """True when the optional simplejpeg decoder can be used."""
    return _simplejpeg is not None


def jpeg_header(data: bytes) -> JpegHeader:
    """Walk the marker structure of ``data`` and return its frame header, or raise :class:`PhotoError`.

    Reads segment lengths and the SOF only; the entropy-coded data is skipped with a regex scan for
    the next marker, so this costs well under a millisecond for a camera photo.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise PhotoError("bad_jpeg", "not a JPEG (no SOI marker)" if n else "empty photo")
    pos = 2
    frame: tuple[int, int, int, str] | None = None
    scans = 0
    while True:
        # Markers may be preceded by any number of 0xFF fill bytes.
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1
        if pos + 2 > n:
            raise PhotoError("truncated_jpeg", f"stream ends at byte {n} before the EOI marker")
        if data[pos] != 0xFF:
            raise PhotoError("bad_jpeg", f"expected a marker at byte {pos}, found 0x{data[pos]:02x}")
        marker = data[pos + 1]
        if marker == 0xD9:
            if frame is None or scans == 0:
                raise PhotoError("bad_jpeg", "EOI before any image data")
            width, height, components, process = frame
            return JpegHeader(width, height, components, process, scans, pos + 2)
        if marker == 0xD8 or marker == 0x00:
            raise PhotoError("bad_jpeg", f"unexpected marker 0x{marker:02x} at byte {pos}")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2  # standalone markers carry no length
            continue
        if pos + 4 > n:
            raise PhotoError("truncated_jpeg", f"stream ends inside the 0x{marker:02x} segment header")
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2:
            raise PhotoError("bad_jpeg", f"segment 0x{marker:02x} at byte {pos} has length {length}")
        seg_end = pos + 2 + length
        if seg_end > n:
            raise PhotoError("truncated_jpeg", f"stream ends inside the 0x{marker:02x} segment at byte {pos}")
        if marker in _SUPPORTED_SOF or marker in _OTHER_SOF:
            if frame is not None:
                raise PhotoError("bad_jpeg", "more than one frame header")
            if marker in _OTHER_SOF:
                raise PhotoError("bad_jpeg", f"unsupported JPEG process (SOF 0x{marker:02x})")
            if length < 8:
                raise PhotoError("bad_jpeg", "frame header too short")
            precision = data[pos + 4]
            height = (data[pos + 5] << 8) | data[pos + 6]
            width = (data[pos + 7] << 8) | data[pos + 8]
            components = data[pos + 9]
            if precision != 8:
                raise PhotoError("bad_jpeg", f"{precision}-bit samples are not supported")
            if components not in (1, 3, 4) or length != 8 + 3 * components:
                raise PhotoError("bad_jpeg", f"frame header with {components} components")
            if width == 0 or height == 0:
                raise PhotoError("photo_dimensions", f"frame header says {width}x{height}")
            frame = (width, height, components, _SUPPORTED_SOF[marker])
        if marker == 0xDA:
            if frame is None:
                raise PhotoError("bad_jpeg", "scan before the frame header")
            scans += 1
            if scans > _MAX_SCANS:
                raise PhotoError("bad_jpeg", f"more than {_MAX_SCANS} scans")
            found = _NEXT_MARKER.search(data, seg_end)
            if found is None:
                raise PhotoError("truncated_jpeg", f"scan {scans} runs to the end of the data without EOI")
            pos = found.start()
            continue
        pos = seg_end


def _check_limits(header: JpegHeader, settings: PhotoSettings) -> None:
    """Refuse dimensions before any decoder allocates memory for them."""
    pixels = header.width * header.height
    limit = settings.max_pixels
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None:
        limit = min(limit, int(pillow_limit))
    if pixels > limit:
        raise PhotoError(
            "decompression_bomb",
            f"{header.width}x{header.height} = {pixels} pixels exceeds the limit of {limit}",
        )
    if max(header.width, header.height) > settings.max_dimension:
        raise PhotoError(
            "photo_dimensions",
            f"{header.width}x{header.height} exceeds the maximum side of {settings.max_dimension}",
        )


def _scale_fraction(long_edge: int, settings: PhotoSettings, steps: tuple[int, ...]) -> tuple[int, bool]:
    """Pick the DCT scale (numerator over 8) for decoding; return (M, needs_resize).

    Prefers the largest M/8 that fits the alert long edge and fills at least ``alert_min_fill`` of it
    (then no resampling is needed at all); otherwise the smallest M/8 still at least as large as the
    target, to be resized down.
    """
    target = settings.alert_long_edge
    if long_edge <= target:
        return 8, False  # never upscale
    fitting = [m for m in steps if math.ceil(long_edge * m / 8) <= target]
    if fitting:
        m = max(fitting)
        if math.ceil(long_edge * m / 8) >= settings.alert_min_fill * target:
            return m, False
    return min(m for m in steps if math.ceil(long_edge * m / 8) >= target), True


def _fit(width: int, height: int, long_edge: int) -> tuple[int, int]:
    """Size of ``width``x``height`` scaled so its long edge is at most ``long_edge`` (never upscaled)."""
    scale = long_edge / max(width, height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def _shrink(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Downscale with a box pre-reduction then Lanczos: near-Lanczos quality at a fraction of the cost.

    reducing_gap=1.0 lets Pillow box-reduce by the whole integer factor first (1200 -> 400 for a
    320 px thumbnail) and run Lanczos only on what remains: measured 4.6 ms instead of 18 ms, at
    thumbnail SSIM 0.997 vs 0.999 for a full Lanczos (docs/performance.md).
    """
    if im.size == size:
        return im
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0)


def _decode_simplejpeg(data: bytes, header: JpegHeader, m: int) -> Image.Image:
    min_w = math.ceil(header.width * m / 8)
    min_h = math.ceil(header.height * m / 8)
    # RGBX, not RGB: Pillow stores RGB as 4 bytes a pixel, so an RGBX array maps into an image without
    # a copy (RGB would be copied into a new image: measured ~1 ms per UXGA photo).
    colorspace = "GRAY" if header.components == 1 else "RGBX"
    # strict=False: the structure walk already proved the stream complete; libjpeg's recoverable
    # warnings (extraneous bytes, common from camera modules) must not reject a usable photo.
    pixels = _simplejpeg.decode_jpeg(
        data, colorspace=colorspace, min_width=min_w, min_height=min_h, strict=False
    )
    height, width = pixels.shape[:2]
    mode = "L" if colorspace == "GRAY" else "RGBX"
    # frombuffer shares the array's memory; Pillow copies on write if the caption needs it.
    return Image.frombuffer(mode, (width, height), pixels, "raw", mode, 0, 1)


def _decode_pillow(im: Image.Image, header: JpegHeader, m: int) -> Image.Image:
    if m < 8:
        # draft picks the smallest of 1/1, 1/2, 1/4, 1/8 that is at least the requested size.
        im.draft(im.mode, (math.ceil(header.width * m / 8), math.ceil(header.height * m / 8)))
    im.load()
    return im


_fonts = threading.local()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # load_default(size) decodes and parses Pillow's bundled font on every call (~2 ms); keep one per
    # size, per thread, since a FreeType face must not be shared between threads.
    cache: dict[int, ImageFont.ImageFont | ImageFont.FreeTypeFont] = _fonts.__dict__.setdefault("by_size", {})
    font = cache.get(size)
    if font is None:
        try:
            font = ImageFont.load_default(size=size)  # Pillow's bundled font: nothing to download
        except (ImportError, OSError, TypeError):  # no FreeType: the small bitmap font still works
            font = ImageFont.load_default()
        if len(cache) < 32:
            cache[size] = font
    return font


def _clean_caption(caption: str) -> str:
    # Control characters (newlines, bidi overrides, ...) come from configuration or a box name; drop them.
    text = "".join(ch for ch in caption if unicodedata.category(ch)[0] != "C")
    text = " ".join(text.split())
    if len(text) > _CAPTION_MAX_CHARS:
        text = text[: _CAPTION_MAX_CHARS - 1] + "…"
    return text


def _draw_caption(im: Image.Image, caption: str) -> Image.Image:
    """Draw a dark strip with light text across the bottom of ``im`` (in place, size unchanged)."""
    text = _clean_caption(caption)
    if not text:
        return im
    width, height = im.size
    # ~1/24 of the long edge: 53 px on a 1280 alert, about 14 pt on a phone held upright.
    size = max(10, round(max(width, height) / 24))
    draw = ImageDraw.Draw(im)
    font = _font(size)
    # Shrink the text until it fits the width (long captions on narrow portrait photos).
    while size > 10 and draw.textlength(text, font=font) > width - size:
        size = max(10, int(size * 0.85))
        font = _font(size)
    strip = min(height, round(size * 1.6))
    dark = 0 if im.mode == "L" else (0, 0, 0)
    light = 255 if im.mode == "L" else (255, 255, 255)
    draw.rectangle((0, height - strip, width, height), fill=dark)
    draw.text((size // 2, height - strip / 2), text, font=font, fill=light, anchor="lm")
    return im


def _encode(im: Image.Image, quality: int, optimize: bool, progressive: bool) -> bytes:
    out = io.BytesIO()
    # A fresh info dict: Pillow would otherwise carry a JPEG comment from the original into the output.
    im.info = {}
    im.save(out, "JPEG", quality=quality, optimize=optimize, progressive=progressive)
    return out.getvalue()


def process_photo(jpeg_bytes: bytes, settings: PhotoSettings, caption: str | None = None) -> ProcessedPhoto:
    """Validate a JPEG and make the alert copy (with optional caption strip) and the thumbnail.

    Raises :class:`PhotoError` with a reason from :data:`REASONS` for every refused input; no other
    exception escapes, whatever the bytes.
    """
    if not isinstance(jpeg_bytes, bytes | bytearray | memoryview):
        raise PhotoError("bad_jpeg", f"expected bytes, got {type(jpeg_bytes).__name__}")
    if len(jpeg_bytes) > settings.max_bytes:
        raise PhotoError("oversize", f"{len(jpeg_bytes)} bytes exceeds the limit of {settings.max_bytes}")
    data = bytes(jpeg_bytes)
    header = jpeg_header(data)
    _check_limits(header, settings)
    data = data[: header.end]
    try:
        return _process_valid(data, header, settings, caption)
    except PhotoError:
        raise
    except Image.DecompressionBombError as exc:
        raise PhotoError("decompression_bomb", str(exc)) from exc
    except Exception as exc:  # hostile input must never crash the worker; keep the cause for the log
        detail = f"{type(exc).__name__}: {exc}"
        if "truncated" in str(exc).lower():
            raise PhotoError("truncated_jpeg", detail) from exc
        raise PhotoError("bad_jpeg", detail) from exc


def _process_valid(
    data: bytes, header: JpegHeader, settings: PhotoSettings, caption: str | None
) -> ProcessedPhoto:
    # Opening is lazy: this parses headers and EXIF only, no pixels.
    im = Image.open(io.BytesIO(data), formats=["JPEG"])
    if im.size != (header.width, header.height):
        raise PhotoError(
            "bad_jpeg", f"decoder sees {im.size}, frame header says {header.width}x{header.height}"
        )
    try:
        orientation = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not cost the photo; treat it as upright
        orientation = 1
    ops = _ORIENT_OPS.get(orientation, ())

    long_edge = max(header.width, header.height)
    use_simplejpeg = settings.decoder == "auto" and _simplejpeg is not None and header.components in (1, 3)
    if use_simplejpeg:
        m, _ = _scale_fraction(long_edge, settings, tuple(range(1, 9)))
        decoded = _decode_simplejpeg(data, header, m)
    else:
        m, _ = _scale_fraction(long_edge, settings, (1, 2, 4, 8))
        decoded = _decode_pillow(im, header, m)
    if decoded.mode not in ("RGB", "RGBX", "L"):
        decoded = decoded.convert("RGB")

    alert = _shrink(decoded, _fit(*decoded.size, settings.alert_long_edge))
    for op in ops:
        alert = alert.transpose(op)
    # The thumbnail comes from the reduced alert copy (before the caption), never from the original.
    thumb = _shrink(alert, _fit(*alert.size, settings.thumb_long_edge))
    if caption and settings.caption_strip:
        if thumb is alert:
            thumb = alert.copy()
        alert = _draw_caption(alert, caption)

    width, height = header.width, header.height
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ProcessedPhoto(
        width=width,
        height=height,
        alert_jpeg=_encode(alert, settings.alert_quality, settings.optimize_alert, settings.progressive),
        thumb_jpeg=_encode(thumb, settings.thumb_quality, True, settings.progressive),
    )


# Pillow must never silently accept a truncated stream; the structure walk enforces this anyway, but a
# library elsewhere in the process flipping the global would weaken the decoder's own check.
if ImageFile.LOAD_TRUNCATED_IMAGES:  # pragma: no cover - depends on the importing process
    ImageFile.LOAD_TRUNCATED_IMAGES = False
