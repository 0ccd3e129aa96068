"""Alert captions in English (`en`) and Bahasa Indonesia (`id`). Pure functions, no I/O.

A caption names the box, says what happened and when (local time), and the box's
state ("2 packages waiting"). The folder and webhook sinks use it now; WhatsApp
sends it under the photo.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

LANGUAGES = ("en", "id")

_EVENT: dict[str, dict[str, str]] = {
    "en": {
        "delivery": "📦 Package delivered to {box} at {time}.",
        "delivery_many": "📦 {n} packages delivered to {box}, the last at {time}.",
        "pickup": "✅ Package picked up from {box} at {time}.",
        "lid_left_open": "⚠️ The lid of {box} has been left open ({time}).",
        "lid_closed": "{box}: lid closed at {time}.",
        "snapshot": "📷 Photo from {box} at {time}.",
        "offline": "🔌 {box} is offline (since {time}).",
        "online": "🔌 {box} is back online ({time}).",
        "low_battery": "🔋 {box} battery is low: {volts} V ({time}).",
        "whatsapp_down": "⚠️ {box}: WhatsApp alerts have stopped since {time}. Open the dashboard's WhatsApp "
        "page. (WhatsApp unlinks the gateway when the phone was offline for about 14 days: pair it again.)",
        "whatsapp_up": "✅ {box}: WhatsApp alerts work again ({time}).",
    },
    "id": {
        "delivery": "📦 Paket diterima di {box} pukul {time}.",
        "delivery_many": "📦 {n} paket diterima di {box}, terakhir pukul {time}.",
        "pickup": "✅ Paket diambil dari {box} pukul {time}.",
        "lid_left_open": "⚠️ Tutup {box} dibiarkan terbuka ({time}).",
        "lid_closed": "{box}: tutup ditutup pukul {time}.",
        "snapshot": "📷 Foto dari {box} pukul {time}.",
        "offline": "🔌 {box} offline (sejak {time}).",
        "online": "🔌 {box} kembali online ({time}).",
        "low_battery": "🔋 Baterai {box} lemah: {volts} V ({time}).",
        "whatsapp_down": "⚠️ {box}: notifikasi WhatsApp berhenti sejak {time}. Buka halaman WhatsApp di "
        "dasbor. (WhatsApp melepas gateway bila ponsel offline sekitar 14 hari: pasangkan lagi.)",
        "whatsapp_up": "✅ {box}: notifikasi WhatsApp berfungsi lagi ({time}).",
    },
}

# Said when the box kept the event but had to drop its photo (spool full during a long outage).
_PHOTO_DROPPED: dict[str, str] = {
    "en": "No photo: the box's storage was full while it was offline.",
    "id": "Tanpa foto: penyimpanan kotak penuh saat offline.",
}

_WAITING: dict[str, tuple[str, str, str]] = {
    # (none, one, many)
    "en": ("The box is empty.", "1 package waiting.", "{n} packages waiting."),
    "id": ("Kotak kosong.", "1 paket menunggu.", "{n} paket menunggu."),
}


def local_time(ts: float, tz: str = "") -> str:
    """'14:05, 22 Nov' in the configured zone (the host's local zone when empty)."""
    dt = datetime.fromtimestamp(ts, ZoneInfo(tz)) if tz else datetime.fromtimestamp(ts).astimezone()
    today = datetime.fromtimestamp(time.time(), dt.tzinfo).date()
    hm = dt.strftime("%H:%M")
    return hm if dt.date() == today else f"{hm}, {dt.day} {dt.strftime('%b')}"


def waiting_text(waiting: int, language: str = "en") -> str:
    none, one, many = _WAITING.get(language, _WAITING["en"])
    if waiting <= 0:
        return none
    return one if waiting == 1 else many.format(n=waiting)


def render_caption(
    kind: str,
    box: str,
    ts: float,
    *,
    language: str = "en",
    tz: str = "",
    waiting: int | None = None,
    battery_mv: int | None = None,
    event_ids: Sequence[str] = (),
    photo_dropped: bool = False,
) -> str:
    """The caption of one alert. Unknown kinds get a plain '<box>: <kind> at <time>'."""
    table = _EVENT.get(language, _EVENT["en"])
    when = local_time(ts, tz)
    key = "delivery_many" if kind == "delivery" and len(event_ids) > 1 else kind
    template = table.get(key)
    volts = f"{battery_mv / 1000:.2f}" if battery_mv is not None else "?"
    text = (
        template.format(box=box, time=when, n=len(event_ids), volts=volts)
        if template
        else f"{box}: {kind} at {when}."
    )
    if waiting is not None and kind in ("delivery", "pickup", "snapshot", "lid_left_open"):
        text += " " + waiting_text(waiting, language)
    if photo_dropped:
        text += " " + _PHOTO_DROPPED.get(language, _PHOTO_DROPPED["en"])
    return text


def caption_strip(box: str, ts: float, tz: str = "") -> str:
    """The short line drawn on the alert photo: box name and local time."""
    dt = datetime.fromtimestamp(ts, ZoneInfo(tz)) if tz else datetime.fromtimestamp(ts).astimezone()
    return f"{box}  {dt.strftime('%Y-%m-%d %H:%M')}"
