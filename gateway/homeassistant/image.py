"""The photos of a box's two image entities (last delivery, last snapshot): the JPEG to send, and whether
to send it at all.

Why: an image entity changes state on every message, so a photo the broker already holds must not be
sent again (that fired automations after every reconnect); and a photo without an alert copy must still
fit Home Assistant, so one is made from the original, no larger than an alert copy. Pure: bytes in,
bytes out, and a ledger the bridge feeds with what the broker holds and what it sent.
"""

from __future__ import annotations

import hashlib
import io


def shrink_jpeg(data: bytes, max_px: int, quality: int = 80) -> bytes:
    """A JPEG whose long edge is at most `max_px`, decoded at a DCT-reduced scale when possible.
    ValueError for anything that is not a readable JPEG."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                raise ValueError(f"not a JPEG ({im.format})")
            im.draft("RGB", (max_px, max_px))
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            rgb.thumbnail((max_px, max_px))
            out = io.BytesIO()
            rgb.save(out, "JPEG", quality=quality, optimize=True)
            return out.getvalue()
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(str(exc)) from None


Key = tuple[str, str]  # (device, image kind)


class PhotoLedger:
    """Per (box, kind): the sha256 of the image retained on the broker (read back through the bridge's own
    subscription) and the event whose photo this session last sent. The caller serialises access."""

    def __init__(self) -> None:
        self.retained: dict[Key, str] = {}
        self.sent: dict[Key, str] = {}

    def broker_holds(self, key: Key, sha256: str | None) -> None:
        """A retained image read back (None: cleared)."""
        if sha256 is None:
            self.retained.pop(key, None)
        else:
            self.retained[key] = sha256

    def is_sent(self, key: Key, event_id: str) -> bool:
        return self.sent.get(key) == event_id

    def to_send(self, key: Key, data: bytes) -> bool:
        """True when `data` must be published; False when the broker already holds exactly this photo
        (Home Assistant has it). Either way it is then what the broker holds."""
        sha = hashlib.sha256(data).hexdigest()
        if self.retained.get(key) == sha:
            return False
        self.retained[key] = sha
        return True

    def forget_box(self, device: str) -> None:
        """The box was cleared from Home Assistant, its images with it."""
        for table in (self.retained, self.sent):
            for key in [k for k in table if k[0] == device]:
                del table[key]
