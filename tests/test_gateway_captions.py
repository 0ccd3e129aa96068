"""Captions in English and Bahasa Indonesia: box, event, local time, state."""

from __future__ import annotations

import time

from gateway.captions import caption_strip, local_time, render_caption, waiting_text


def test_delivery_captions_both_languages():
    now = time.time()
    en = render_caption("delivery", "Front gate", now, language="en", waiting=2, tz="Asia/Jakarta")
    id_ = render_caption("delivery", "Front gate", now, language="id", waiting=2, tz="Asia/Jakarta")
    hm = local_time(now, "Asia/Jakarta")
    assert en == f"📦 Package delivered to Front gate at {hm}. 2 packages waiting."
    assert id_ == f"📦 Paket diterima di Front gate pukul {hm}. 2 paket menunggu."


def test_every_kind_rendered_and_state_texts():
    for lang in ("en", "id"):
        for kind in (
            "delivery",
            "pickup",
            "lid_left_open",
            "lid_closed",
            "snapshot",
            "offline",
            "online",
            "low_battery",
        ):
            text = render_caption(
                kind, "Box A", 1_700_000_000, language=lang, waiting=1, battery_mv=3310, tz="UTC"
            )
            assert "Box A" in text and "{" not in text
    assert waiting_text(0, "en") == "The box is empty." and waiting_text(1, "id") == "1 paket menunggu."
    assert "3.31 V" in render_caption("low_battery", "B", 1_700_000_000, battery_mv=3310, tz="UTC")
    assert render_caption("delivery", "B", 1_700_000_000, event_ids=["a", "b"], tz="UTC").startswith(
        "📦 2 packages"
    )


def test_local_time_includes_date_when_not_today_and_strip():
    assert local_time(1_700_000_000, "UTC") == "22:13, 14 Nov"
    assert caption_strip("Box A", 1_700_000_000, "Asia/Jakarta") == "Box A  2023-11-15 05:13"
