"""Pure parts of the WhatsApp side: addresses, rate limits, message building, captions, settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.captions import render_caption
from gateway.config import WhatsAppConfig
from gateway.notify.base import Alert, Notifier
from gateway.notify.whatsapp import WhatsAppNotifier, build_message
from gateway.ratelimit import SendLimiter, SlidingWindow
from gateway.whatsapp import texts
from gateway.whatsapp.addresses import BadRecipient, is_group, jid_user, to_jid
from gateway.whatsapp.settings import WhatsAppSettings, settings_from_config
from gateway.whatsapp.supervisor import SendOutcome


@pytest.mark.parametrize(
    "given,jid",
    [
        ("+62 812-3456-789", "628123456789@s.whatsapp.net"),
        ("628123456789", "628123456789@s.whatsapp.net"),
        ("+1 (555) 010-9999", "15550109999@s.whatsapp.net"),
        ("628123456789@s.whatsapp.net", "628123456789@s.whatsapp.net"),
        ("120363012345678901@g.us", "120363012345678901@g.us"),
        ("6281234567-1600000000@g.us", "6281234567-1600000000@g.us"),
    ],
)
def test_to_jid(given: str, jid: str) -> None:
    assert to_jid(given) == jid


@pytest.mark.parametrize(
    "bad", ["0812345678", "hello", "+62", "x@y.z", "+1234567890123456789", "../../etc@g.us", ""]
)
def test_to_jid_rejects(bad: str) -> None:
    with pytest.raises(BadRecipient):
        to_jid(bad)


def test_jid_helpers() -> None:
    assert is_group("1203@g.us") and not is_group("62811@s.whatsapp.net")
    assert jid_user("628123:12@s.whatsapp.net") == "628123"


def test_sliding_window_and_limiter_with_a_fake_clock() -> None:
    now = [1000.0]
    lim = SendLimiter((2, 60.0), (3, 60.0), clock=lambda: now[0])
    assert lim.try_acquire("a") == 0 and lim.try_acquire("a") == 0
    assert lim.try_acquire("a") == pytest.approx(60.0)  # per recipient
    assert lim.try_acquire("b") == 0
    assert lim.try_acquire("c") == pytest.approx(60.0)  # overall
    now[0] += 30
    assert lim.try_acquire("c") == pytest.approx(30.0)
    now[0] += 30.01
    assert lim.try_acquire("c") == 0 and lim.try_acquire("a") == 0
    assert lim.limited == 3
    w = SlidingWindow(1, 10)
    assert w.wait_s(0) == 0
    with pytest.raises(ValueError):
        SlidingWindow(0, 10)


def _alert(**kw) -> Alert:
    base = dict(
        id="a1",
        kind="delivery",
        device="box1",
        device_name="Front gate",
        event_ids=("e1",),
        ts=1_795_000_000.0,
        caption="📦 Package delivered to Front gate at 14:05.",
        recipient="+628123456789",
    )
    base.update(kw)
    return Alert(**base)


def test_build_message_photo_and_text(tmp_path: Path) -> None:
    p = tmp_path / "x.alert.jpg"
    p.write_bytes(b"\xff\xd8jpeg\xff\xd9")
    m = build_message(_alert(photo_path=p))
    assert m.to == "628123456789@s.whatsapp.net" and m.image == p.read_bytes() and m.text.startswith("📦")
    m = build_message(_alert(kind="offline", caption="", photo_path=None), "id")
    assert m.image is None and m.text == render_caption(
        "offline", "Front gate", 1_795_000_000.0, language="id"
    )
    with pytest.raises(OSError):
        build_message(_alert(photo_path=tmp_path / "gone.jpg"))


class _Sender:
    def __init__(self, outcome: SendOutcome | Exception) -> None:
        self.outcome = outcome
        self.calls: list[tuple] = []

    def send(self, to: str, text: str, image: bytes | None = None) -> SendOutcome:
        self.calls.append((to, text, image))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def _settings(tmp_path: Path, **kw) -> WhatsAppSettings:
    return WhatsAppSettings(session_dir=tmp_path, **kw)


def test_notifier_contract(tmp_path: Path) -> None:
    s = _settings(tmp_path, recipients=["+62811"], recipients_by_box={"box2": ["120363012345678901@g.us"]})
    n = WhatsAppNotifier(s, _Sender(SendOutcome(ok=True)))
    assert isinstance(n, Notifier) and n.name == "whatsapp" and n.language == "en"
    assert n.recipients("box1") == ["+62811"] and n.recipients("box2") == ["120363012345678901@g.us"]
    assert n.rate_limit.per_recipient == (10, 60.0) and n.rate_limit.overall == (20, 60.0)
    # A bad address can never work: permanent, so the outbox dead-letters it at once.
    r = n.send(_alert(recipient="0812345678"))
    assert not r.ok and r.permanent and "international format" in r.error
    # A missing photo file is retried (it may be a slow disk), never raised.
    r = n.send(_alert(photo_path=tmp_path / "missing.jpg"))
    assert not r.ok and not r.permanent and "cannot read the alert photo" in r.error
    # Whatever the sender does, send() returns a result.
    boom = WhatsAppNotifier(s, _Sender(RuntimeError("pipe exploded")))
    r = boom.send(_alert())
    assert not r.ok and "pipe exploded" in r.error
    failed = WhatsAppNotifier(s, _Sender(SendOutcome(ok=False, error="x", retry_after_s=12.0)))
    r = failed.send(_alert())
    assert not r.ok and r.retry_after_s == 12.0


def test_texts_fall_back_to_english() -> None:
    assert texts.text("help", "fr") == texts.help_text("en")
    assert texts.status_text([], "id") == "Belum ada kotak yang terdaftar di gateway ini."


def test_settings_from_the_gateway_config(tmp_path: Path) -> None:
    wa = WhatsAppConfig(enabled=True, language="id", recipients=["+62811"], allow=["+62822"])
    s = settings_from_config(wa, tmp_path)
    assert (
        s.session_dir == tmp_path / "whatsapp" and s.session_db == tmp_path / "whatsapp" / "neonize.sqlite3"
    )
    assert (
        s.language == "id"
        and s.recipients == ["+62811"]
        and s.allow == ["+62822"]
        and s.transport == "neonize"
    )
    assert s.rate_per_minute == wa.rate_per_minute and s.rate_per_minute_overall == wa.rate_per_minute_overall


def test_per_box_recipients_from_config_values(tmp_path: Path) -> None:
    class Wa:
        enabled = True
        recipients = ["+62811"]
        recipients_by_box = {"box2": "+62 822-1, 120363012345678901@g.us", "box3": ["+62833"]}

    s = settings_from_config(Wa(), tmp_path)
    assert s.recipients_for("box1") == ["+62811"]
    assert s.recipients_for("box2") == ["+62 822-1", "120363012345678901@g.us"]
    assert s.recipients_for("box3") == ["+62833"]


def test_one_number_in_two_spellings_is_one_recipient(tmp_path: Path) -> None:
    # Every recipient becomes an outbox entry: listed twice, one person got every alert twice.
    s = _settings(
        tmp_path,
        recipients=["+62 812-3456-789", "+62 811 1111 111", "628123456789", "628123456789@s.whatsapp.net"],
        recipients_by_box={
            "garage": [
                "120363012345678901@g.us",
                "+62 833 3333 333",
                "120363012345678901@g.us",
                "6283333-33333",
            ]
        },
    )
    n = WhatsAppNotifier(s, _Sender(SendOutcome(ok=True)))
    assert n.recipients("front") == ["+62 812-3456-789", "+62 811 1111 111"]  # the first spelling stays
    assert n.recipients("garage") == ["120363012345678901@g.us", "+62 833 3333 333"]
    # The same key as the outbox's per-recipient rate limit.
    assert {n.rate_key(r) for r in s.recipients} == {
        "628123456789@s.whatsapp.net",
        "628111111111@s.whatsapp.net",
    }


def test_a_repeated_recipient_is_named_once_at_config_load(tmp_path: Path, caplog) -> None:
    class Wa:
        enabled = True
        recipients = ["+62 812-3456-789", "628123456789", "0812 bad", "0812 bad"]
        recipients_by_box = {"garage": "+62 833 3333 333, 62-833-3333-333", "front": ["+62 844 4444 444"]}

    with caplog.at_level("WARNING", logger="gateway.whatsapp.settings"):
        s = settings_from_config(Wa(), tmp_path)
    assert s.recipients == ["+62 812-3456-789", "0812 bad"]  # a bad one stays: its send says what is wrong
    assert s.recipients_by_box == {"garage": ["+62 833 3333 333"], "front": ["+62 844 4444 444"]}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3
    assert "recipients lists '+62 812-3456-789' and '628123456789'" in warnings[0]
    assert "recipients lists '0812 bad' and '0812 bad'" in warnings[1]
    assert "recipients_by_box.garage lists '+62 833 3333 333' and '62-833-3333-333'" in warnings[2]


def test_whatsapp_section_of_a_toml_config(tmp_path: Path) -> None:
    from gateway.config import load_config

    cfg_file = tmp_path / "parcelbox.toml"
    cfg_file.write_text(
        f"""
data_dir = "{tmp_path / "data"}"
[whatsapp]
enabled = true
language = "id"
recipients = ["+62 811 1111 111"]
allow = ["+62 811 1111 111", "+62 822 2222 222"]
commands_per_minute = 4
[whatsapp.recipients_by_box]
garage = ["120363012345678901@g.us", "+62 833 3333 333"]
"""
    )
    cfg = load_config(cfg_file, env={})
    s = settings_from_config(cfg.whatsapp, cfg.data_dir)
    assert s.enabled and s.language == "id" and s.transport == "neonize" and s.commands_per_minute == 4
    assert s.session_dir == Path(cfg.data_dir) / "whatsapp"
    assert s.recipients_for("garage") == ["120363012345678901@g.us", "+62 833 3333 333"]
    assert s.recipients_for("front") == ["+62 811 1111 111"]


def test_link_watch_tells_once_per_outage_and_when_back() -> None:
    from gateway.whatsapp.watch import DOWN, UP, LinkWatch

    w = LinkWatch(after_s=300)
    assert w.check({"state": "disabled"}, 0) is None
    assert w.check({"state": "connected", "down_since": None}, 100) is None
    down = {"state": "not_paired", "down_since": 1000.0}
    assert w.check(down, 1200) is None  # not long enough yet
    assert w.check(down, 1300) == DOWN
    assert w.check(down, 5000) is None  # once per outage
    assert w.check({**down, "state": "disconnected"}, 6000) is None  # same outage, other state
    assert w.check({"state": "connected", "down_since": None}, 7000) == UP
    assert w.check({"state": "connected", "down_since": None}, 7001) is None
    assert LinkWatch(after_s=0).check(down, 10**9) is None  # off


def test_the_fake_message_shapes_follow_whatsmeow() -> None:
    """gateway.whatsapp.fake.raw_message makes what whatsmeow parseMessageSource makes; the shared
    conversion then keeps or drops them exactly as for real neonize events."""
    from gateway.whatsapp.fake import STATUS_BROADCAST, lid_for, raw_message
    from gateway.whatsapp.incoming import incoming_from_raw

    now = 1_800_000_000.0
    dm = raw_message({"sender": "628123", "text": "status", "push_name": "Siti, S.Pd"}, "m1", now)
    assert (
        dm.chat == dm.sender == "628123@s.whatsapp.net" and dm.timestamp == now * 1000
    )  # ms, as neonize 0.5
    m = incoming_from_raw(dm)
    assert m is not None and m.ts == now and m.push_name == "Siti, S.Pd" and m.sender_phone == "628123"
    status = raw_message({"sender": "628123", "text": "foto", "status": True}, "m2", now)
    assert status.chat == STATUS_BROADCAST and status.is_group and incoming_from_raw(status) is None
    channel = raw_message({"sender": "628123", "text": "foto", "newsletter": True}, "m3", now)
    assert channel.chat == channel.sender and channel.chat.endswith("@newsletter")
    assert incoming_from_raw(channel) is None
    assert (
        incoming_from_raw(raw_message({"sender": "628123", "text": "x", "from_me": True}, "m4", now)) is None
    )
    hidden = {"sender": "628123", "text": "status", "hide_phone": True}
    lid = raw_message(hidden, "m5", now)
    assert lid.sender == lid_for("628123") and lid.sender.endswith("@lid") and lid.sender_alt == ""
    assert incoming_from_raw(lid).sender_phone == ""  # unknown: not authorised
    assert incoming_from_raw(lid, lambda _l: "628123@s.whatsapp.net").sender_phone == "628123"
    alt = raw_message({**hidden, "sender_alt": True}, "m6", now)
    assert alt.sender_alt == "628123@s.whatsapp.net" and incoming_from_raw(alt).sender_phone == "628123"
    group = raw_message({"sender": "628123", "text": "!foto", "is_group": True}, "m7", now)
    assert group.chat.endswith("@g.us") and group.sender == "628123@s.whatsapp.net" and group.is_group
    old = raw_message({"sender": "628123", "text": "foto", "ts": now - 86_400}, "m8", now)
    assert incoming_from_raw(old).ts == now - 86_400  # the backlog keeps its own time
