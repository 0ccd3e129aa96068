"""What the WhatsApp side says, in English (`en`) and Bahasa Indonesia (`id`): command replies,
help, box status, and a text for alerts that arrive without a caption.

Alert captions proper come from `gateway.captions` (the outbox renders them);
these are the WhatsApp-only texts. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.captions import local_time, render_caption, waiting_text

_T: dict[str, dict[str, str]] = {
    "en": {
        "help": (
            "parcelbox commands:\n"
            "• *photo* – take a photo now (*photo <box>* when you have several boxes)\n"
            "• *status* – every box: online, packages waiting, battery\n"
            "• *help* – this list"
        ),
        "help_prefix": "Here, start each command with {prefix}: *{prefix}photo*, *{prefix}status*.",
        "unknown": "Sorry, I don't know {word!r}. Send *help* for the commands.",
        "which_box": "Which box? Send *photo <box>*, one of: {boxes}.",
        "no_box": "No box called {name!r}. Boxes: {boxes}.",
        "no_boxes": "No boxes are registered with this gateway yet.",
        "asking": "📷 Asking {box} for a photo…",
        "snapshot_caption": "📷 {box}, {time}.",
        "snapshot_no_photo": "{box} answered but sent no photo (camera problem?).",
        "snapshot_failed": "{box} could not take a photo: {error}",
        "snapshot_timeout": "{box} did not answer within {seconds} s ({online}). Try again later.",
        "offline_word": "it is offline",
        "online_word": "it is online",
        "gateway_busy": "The gateway cannot reach the box right now: {error}",
        "status_header": "📦 parcelbox – {n} box(es):",
        "status_line": "• *{box}*: {online}. {waiting}{lid}{battery}{last}",
        "online": "online",
        "offline": "offline since {time}",
        "offline_never": "never seen",
        "lid_open": " Lid open.",
        "battery": " Battery {volts} V.",
        "last_delivery": " Last delivery {time}.",
        "too_many": "Too many commands; please wait a minute.",
    },
    "id": {
        "help": (
            "Perintah parcelbox:\n"
            "• *foto* – ambil foto sekarang (*foto <kotak>* jika ada beberapa kotak)\n"
            "• *status* – semua kotak: online, paket menunggu, baterai\n"
            "• *bantuan* – daftar ini"
        ),
        "help_prefix": "Di sini, awali setiap perintah dengan {prefix}: *{prefix}foto*, *{prefix}status*.",
        "unknown": "Maaf, perintah {word!r} tidak dikenal. Kirim *bantuan* untuk daftar perintah.",
        "which_box": "Kotak yang mana? Kirim *foto <kotak>*, salah satu dari: {boxes}.",
        "no_box": "Tidak ada kotak bernama {name!r}. Kotak: {boxes}.",
        "no_boxes": "Belum ada kotak yang terdaftar di gateway ini.",
        "asking": "📷 Meminta foto dari {box}…",
        "snapshot_caption": "📷 {box}, {time}.",
        "snapshot_no_photo": "{box} menjawab tetapi tidak mengirim foto (masalah kamera?).",
        "snapshot_failed": "{box} tidak dapat mengambil foto: {error}",
        "snapshot_timeout": "{box} tidak menjawab dalam {seconds} detik ({online}). Coba lagi nanti.",
        "offline_word": "kotak sedang offline",
        "online_word": "kotak sedang online",
        "gateway_busy": "Gateway tidak dapat menghubungi kotak saat ini: {error}",
        "status_header": "📦 parcelbox – {n} kotak:",
        "status_line": "• *{box}*: {online}. {waiting}{lid}{battery}{last}",
        "online": "online",
        "offline": "offline sejak {time}",
        "offline_never": "belum pernah terlihat",
        "lid_open": " Tutup terbuka.",
        "battery": " Baterai {volts} V.",
        "last_delivery": " Paket terakhir {time}.",
        "too_many": "Terlalu banyak perintah; tunggu sebentar.",
    },
}


def text(key: str, language: str = "en", **kw: Any) -> str:
    """One reply in `language` (English when the language or key is unknown)."""
    table = _T.get(language, _T["en"])
    return table.get(key, _T["en"][key]).format(**kw)


def help_text(language: str = "en", prefix: str = "") -> str:
    """The command list; `prefix` when this chat needs it (a group, a personal number)."""
    out = text("help", language)
    return f"{out}\n{text('help_prefix', language, prefix=prefix)}" if prefix else out


def box_label(dev: Mapping[str, Any]) -> str:
    return str(dev.get("name") or dev.get("device") or "?")


def status_text(devices: Sequence[Mapping[str, Any]], language: str = "en", tz: str = "") -> str:
    """The `status` reply: one line per box."""
    if not devices:
        return text("no_boxes", language)
    lines = [text("status_header", language, n=len(devices))]
    for d in devices:
        if d.get("online"):
            online = text("online", language)
        elif d.get("last_seen"):
            online = text("offline", language, time=local_time(float(d["last_seen"]), tz))
        else:
            online = text("offline_never", language)
        waiting = waiting_text(int(d.get("waiting") or 0), language)
        lid = text("lid_open", language) if d.get("lid_open") else ""
        mv = d.get("battery_mv")
        battery = text("battery", language, volts=f"{mv / 1000:.2f}") if mv else ""
        last = d.get("last_delivery_ts")
        last_s = text("last_delivery", language, time=local_time(float(last), tz)) if last else ""
        lines.append(
            text(
                "status_line",
                language,
                box=box_label(d),
                online=online,
                waiting=waiting,
                lid=lid,
                battery=battery,
                last=last_s,
            )
        )
    return "\n".join(lines)


def alert_text(alert: Any, language: str = "en", tz: str = "") -> str:
    """Text for an alert that came without a caption (the outbox normally renders one)."""
    return render_caption(
        alert.kind,
        alert.device_name or alert.device,
        alert.ts,
        language=language,
        tz=tz,
        waiting=(alert.state or {}).get("waiting"),
        event_ids=alert.event_ids,
    )
