"""Render a WhatsApp pairing QR payload as an SVG image (server-side, no browser library)."""

from __future__ import annotations

import hashlib
import io

import segno


def qr_svg(payload: str) -> str:
    """The QR code for `payload` as a standalone SVG document, black on white with a quiet zone."""
    qr = segno.make(payload, error="l", micro=False)
    buf = io.BytesIO()
    qr.save(buf, kind="svg", scale=6, border=4, dark="#111", light="#fff", xmldecl=False, svgclass=None)
    return buf.getvalue().decode("utf-8")


def qr_version(payload: str | None) -> str | None:
    """A short tag that changes when the QR rotates, so the browser knows to fetch the new image."""
    if not payload:
        return None
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]
