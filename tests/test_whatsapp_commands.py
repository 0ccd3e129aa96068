"""Two-way WhatsApp: parsing, authorisation, the photo/status/help replies in both languages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from gateway.whatsapp.commands import CommandHandler, parse_command, resolve_box
from gateway.whatsapp.component import WhatsAppComponent
from gateway.whatsapp.supervisor import SendOutcome
from gateway.whatsapp.transport import IncomingMessage
from tests.support.web import MemoryPort
from tests.support.whatsapp import fake_settings, paired_fake, wait_state, wait_until

OWNER = "628123456789"


def _port(tmp: Path, devices: list[dict[str, Any]], answer: str = "photo") -> MemoryPort:
    """The one in-memory GatewayPort (tests/support/web.py, checked against the real gateway by
    tests/test_port_contract.py); a box answers `snapshot` with an event and its photo."""
    port = MemoryPort(tmp / "photos", answer=answer, answer_delay=0.0)
    for d in devices:
        port.add_device(**{"battery_mv": None, **d})
    return port


def _sent(port: MemoryPort) -> list[tuple[str, str]]:
    return [(device, cmd) for _, device, cmd, _ in port.commands]


def _snapshot_jpeg(port: MemoryPort) -> bytes:
    [ev] = port.list_events(type="snapshot")
    path = port.photo_path(ev["device"], ev["id"], "alert")
    assert path is not None
    return path.read_bytes()


def _dev(device: str, name: str, **kw: Any) -> dict[str, Any]:
    return {"device": device, "name": name, "online": True, "last_seen": time.time(), "waiting": 0, **kw}


def _msg(text: str, phone: str = OWNER, **kw: Any) -> IncomingMessage:
    return IncomingMessage(
        id="m1",
        chat=f"{phone}@s.whatsapp.net",
        sender=f"{phone}@s.whatsapp.net",
        sender_phone=phone,
        text=text,
        ts=time.time(),
        **kw,
    )


class Replies:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, bytes | None]] = []

    def __call__(self, chat: str, text: str, image: bytes | None) -> SendOutcome:
        self.items.append((chat, text, image))
        return SendOutcome(ok=True, message_id="x")


def _handler(tmp_path: Path, devices: list[dict[str, Any]], answer: str = "photo", **settings: Any):
    port = _port(tmp_path, devices, answer)
    replies = Replies()
    s = fake_settings(tmp_path, allow=["+62 812-3456-789"], snapshot_timeout_s=2.0, **settings)
    return CommandHandler(port, replies, s), port, replies


@pytest.mark.parametrize(
    "text,name,arg,lang",
    [
        ("photo", "photo", "", "en"),
        ("Foto", "photo", "", "id"),
        ("  FOTO   Garage  box ", "photo", "Garage box", "id"),
        ("/photo box2", "photo", "box2", "en"),
        ("status", "status", "", None),
        ("help", "help", "", "en"),
        ("Bantuan", "help", "", "id"),
        ("hello there", "unknown", "", None),
    ],
)
def test_parse_command(text: str, name: str, arg: str, lang: str | None) -> None:
    c = parse_command(text)
    assert c is not None and (c.name, c.arg, c.language) == (name, arg, lang)


def test_parse_command_edge_cases() -> None:
    assert parse_command("   ") is None
    assert parse_command("photo " + "x" * 500).name == "unknown"


def test_resolve_box() -> None:
    devs = [_dev("box1", "Front gate"), _dev("box2", "Garage")]
    assert resolve_box(devs, "")[1] == "which_box"
    assert resolve_box(devs, "garage")[0]["device"] == "box2"
    assert resolve_box(devs, "BOX1")[0]["device"] == "box1"
    assert resolve_box(devs, "front")[0]["device"] == "box1"
    assert resolve_box(devs, "cellar")[1] == "no_box"
    assert resolve_box([], "")[1] == "no_boxes"
    assert resolve_box(devs[:1], "")[0]["device"] == "box1"


def test_strangers_are_ignored_and_counted(tmp_path: Path) -> None:
    h, port, replies = _handler(tmp_path, [_dev("box1", "Front gate")])
    h.submit(_msg("photo", phone="628999999999"))
    h.submit(_msg("status", phone=""))  # LID sender whose number WhatsApp hid
    h.handle(_msg("help", phone="628999999999"))
    assert h.counters["ignored_unauthorised"] == 3
    assert replies.items == [] and _sent(port) == []


def test_photo_replies_with_the_snapshot(tmp_path: Path) -> None:
    h, port, replies = _handler(tmp_path, [_dev("box1", "Front gate")])
    h.handle(_msg("photo"))
    assert _sent(port) == [("box1", "snapshot")]
    [(chat, caption, image)] = replies.items
    assert (
        chat == f"{OWNER}@s.whatsapp.net"
        and image == _snapshot_jpeg(port)
        and caption.startswith("📷 Front gate")
    )


def test_photo_on_a_multi_box_gateway(tmp_path: Path) -> None:
    h, port, replies = _handler(tmp_path, [_dev("box1", "Front gate"), _dev("box2", "Garage")])
    h.handle(_msg("foto"))
    assert (
        _sent(port) == [] and "Kotak yang mana" in replies.items[-1][1] and "Garage" in replies.items[-1][1]
    )
    h.handle(_msg("photo garage"))
    assert _sent(port) == [("box2", "snapshot")] and replies.items[-1][2] == _snapshot_jpeg(port)
    h.handle(_msg("photo cellar"))
    assert "No box called 'cellar'" in replies.items[-1][1]


def test_photo_failure_timeout_and_missing_photo(tmp_path: Path) -> None:
    h, _, replies = _handler(tmp_path, [_dev("box1", "Front gate")], answer="fail")
    h.handle(_msg("foto"))
    assert replies.items[-1][1] == "Front gate tidak dapat mengambil foto: camera init failed"
    h, _, replies = _handler(tmp_path, [_dev("box1", "Front gate", online=False)], answer="silent")
    h.handle(_msg("photo"))
    assert "did not answer within 2 s (it is offline)" in replies.items[-1][1]
    assert h.counters["snapshot_timeout"] == 1
    h, _, replies = _handler(tmp_path / "x", [_dev("box1", "Front gate")], answer="nophoto")
    h.handle(_msg("photo"))
    assert "sent no photo" in replies.items[-1][1]


def test_status_and_help_in_both_languages(tmp_path: Path) -> None:
    devs = [
        _dev("box1", "Front gate", waiting=2, battery_mv=3710, lid_open=True),
        _dev("box2", "Garage", online=False, waiting=0),
    ]
    h, _, replies = _handler(tmp_path, devs)
    h.handle(_msg("status"))
    en = replies.items[-1][1]
    assert "2 box(es)" in en and "*Front gate*: online. 2 packages waiting. Lid open. Battery 3.71 V." in en
    assert "*Garage*: offline since" in en and "The box is empty." in en
    h.handle(_msg("help"))
    assert "*photo*" in replies.items[-1][1] and "*status*" in replies.items[-1][1]
    h.handle(_msg("bantuan"))
    assert "Perintah parcelbox" in replies.items[-1][1] and "*foto*" in replies.items[-1][1]
    h.handle(_msg("dance"))
    assert "Send *help*" in replies.items[-1][1]
    hid, _, replies = _handler(tmp_path, devs, language="id")
    hid.handle(_msg("status"))
    idt = replies.items[-1][1]
    assert (
        "2 kotak" in idt
        and "2 paket menunggu. Tutup terbuka. Baterai 3.71 V." in idt
        and "Kotak kosong." in idt
    )
    hid.handle(_msg("dance"))
    assert "tidak dikenal" in replies.items[-1][1]


def test_command_flood_from_one_sender_is_limited(tmp_path: Path) -> None:
    h, _, _ = _handler(tmp_path, [_dev("box1", "Front gate")], commands_per_minute=3)
    for _ in range(5):
        h.submit(_msg("help"))
    assert h.counters["ignored_rate_limited"] == 2


def test_end_to_end_through_the_real_child(tmp_path: Path) -> None:
    """A WhatsApp message arrives in the child, the gateway takes a snapshot and the reply goes out."""
    settings, fake = paired_fake(tmp_path, allow=[f"+{OWNER}"])
    port = _port(tmp_path, [_dev("box1", "Front gate")])
    comp = WhatsAppComponent(port, settings)
    comp.start()
    try:
        wait_state(comp.supervisor, "connected")
        fake.inject("message", sender="628999999999", text="photo")  # a stranger
        fake.inject("message", sender=OWNER, text="foto")
        sent = wait_until(lambda: fake.sent(), what="the reply")
        assert sent[0]["to"] == f"{OWNER}@s.whatsapp.net" and sent[0]["image_bytes"] == len(
            _snapshot_jpeg(port)
        )
        assert sent[0]["text"].startswith("📷 Front gate")
        fake.inject("message", sender=OWNER, text="bantuan")
        wait_until(lambda: len(fake.sent()) == 2, what="the help reply")
        assert "Perintah parcelbox" in fake.sent()[1]["text"]
        assert comp.commands.counters["ignored_unauthorised"] == 1
        assert _sent(port) == [("box1", "snapshot")]
        # The fake records the send before the child confirms it to the handler: wait for the count.
        wait_until(lambda: comp.counters().get("whatsapp.commands.replied") == 2, what="the reply count")
    finally:
        comp.stop()


FAMILY = "120363012345678901@g.us"


def test_status_broadcast_and_channels_are_never_answered(tmp_path: Path) -> None:
    """Issue 16 #1: a reply to status@broadcast posts a Status to every contact (whatsmeow send.go)."""
    h, port, replies = _handler(tmp_path, [_dev("box1", "Front gate")], command_groups=[FAMILY])
    owner = f"{OWNER}@s.whatsapp.net"
    status = IncomingMessage("s1", "status@broadcast", owner, OWNER, "foto", time.time(), is_group=True)
    channel = IncomingMessage("n1", "120363111@newsletter", "120363111@newsletter", "", "status", time.time())
    blist = IncomingMessage("b1", "1700000000@broadcast", owner, OWNER, "!foto", time.time(), is_group=True)
    for m in (status, channel, blist):
        h.submit(m)
        h.handle(m)
    assert replies.items == [] and _sent(port) == []
    assert h.counters["ignored_broadcast"] == 6


def test_groups_need_a_listed_group_and_the_prefix(tmp_path: Path) -> None:
    h, port, replies = _handler(tmp_path, [_dev("box1", "Front gate")], command_groups=[FAMILY])

    def g(text: str, chat: str = FAMILY) -> IncomingMessage:
        return IncomingMessage("g1", chat, f"{OWNER}@s.whatsapp.net", OWNER, text, time.time(), is_group=True)

    for m in (g("foto"), g("status please"), g("!dance"), g("!help", chat="120363999999999999@g.us")):
        h.handle(m)
    assert replies.items == [] and _sent(port) == []
    assert h.counters["ignored_chat"] == 2 and h.counters["ignored_unknown"] == 1
    assert h.counters["ignored_group"] == 1
    h.handle(g("!foto"))
    assert _sent(port) == [("box1", "snapshot")] and replies.items[-1][0] == FAMILY
    h.handle(g("! status"))
    assert "box(es)" in replies.items[-1][1]
    h.handle(g("!bantuan"))
    assert "*!foto*" in replies.items[-1][1]  # the help says the prefix where it is needed


def test_old_commands_from_the_backlog_are_ignored(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    port = _port(tmp_path, [_dev("box1", "Front gate")])
    replies = Replies()
    s = fake_settings(tmp_path, allow=[OWNER], command_max_age_s=300.0)
    h = CommandHandler(port, replies, s, clock=lambda: now[0])
    old = IncomingMessage(
        "o1", f"{OWNER}@s.whatsapp.net", f"{OWNER}@s.whatsapp.net", OWNER, "foto", now[0] - 3600
    )
    h.handle(old)
    assert _sent(port) == [] and h.counters["ignored_stale"] == 1
    fresh = IncomingMessage("o2", old.chat, old.sender, OWNER, "status", now[0] - 10)
    h.handle(fresh)
    assert len(replies.items) == 1


def test_personal_number_answers_only_prefixed_commands(tmp_path: Path) -> None:
    h, _, replies = _handler(tmp_path, [_dev("box1", "Front gate")], personal_number=True)
    h.handle(_msg("hi, are you coming for dinner?"))
    h.handle(_msg("status"))
    h.handle(_msg("!what"))
    assert replies.items == []
    h.handle(_msg("!status"))
    assert "box(es)" in replies.items[-1][1]


def test_group_status_and_backlog_shapes_through_the_real_child(tmp_path: Path) -> None:
    """The fake's shapes (whatsmeow parseMessageSource) take the adapter's path; only the DM is answered."""
    settings, fake = paired_fake(tmp_path, allow=[f"+{OWNER}"], command_groups=[FAMILY])
    port = _port(tmp_path, [_dev("box1", "Front gate")])
    comp = WhatsAppComponent(port, settings)
    comp.start()
    try:
        wait_state(comp.supervisor, "connected")
        fake.inject("message", sender=OWNER, text="foto", status=True)  # a Status the owner posted
        fake.inject("message", sender=OWNER, text="foto", newsletter=True)
        fake.inject("message", sender=OWNER, text="foto", chat=FAMILY, is_group=True)  # chatter
        fake.inject("message", sender=OWNER, text="status", from_me=True)
        fake.inject("message", sender=OWNER, text="foto", ts=time.time() - 86_400)  # backlog
        fake.inject(
            "message", sender=OWNER, text="status", hide_phone=True, sender_alt=True, push_name="Siti, S.Pd"
        )
        sent = wait_until(lambda: fake.sent(), what="the status reply")
        wait_until(lambda: comp.counters().get("whatsapp.commands.replied") == 1, what="the reply count")
        c = comp.commands.counters
        assert c["ignored_chat"] == 1 and c["ignored_stale"] == 1, c
        assert len(sent) == 1 and "box(es)" in sent[0]["text"] and sent[0]["to"].endswith("@lid")
        assert _sent(port) == []
    finally:
        comp.stop()
