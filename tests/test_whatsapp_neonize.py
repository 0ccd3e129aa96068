"""The neonize adapter against the real neonize package (no network).

Proves `gateway.whatsapp.neonize_adapter` matches neonize's API: it builds an
image message from real JPEG bytes (only `upload`, the network call, is
replaced), converts hand-built neonize protobuf events into the gateway's own
types, and a real neonize child with no network reports its state and retries.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _neonize_dir() -> Path | None:
    spec = importlib.util.find_spec("neonize")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


_NEONIZE = _neonize_dir()
if _NEONIZE is None:
    pytest.skip("neonize is not installed (pip install 'parcelbox[whatsapp]')", allow_module_level=True)
if not any(_NEONIZE.glob("neonize-*.so")) and not any(_NEONIZE.glob("neonize-*.dylib")):
    # Without its bundled Go library neonize would try to download it from GitHub at import.
    pytest.skip(
        "neonize is installed without its Go shared library for this platform", allow_module_level=True
    )

from neonize.client import NewClient  # noqa: E402
from neonize.events import (  # noqa: E402
    ClientOutdatedEv,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    LoggedOutEv,
    MessageEv,
    PairStatusEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.proto.Neonize_pb2 import (  # noqa: E402
    JID,
    AddressingMode,
    ConnectFailureReason,
    MessageInfo,
    MessageSource,
    PairStatus,
    TemporaryBan,
    UploadResponse,
)
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (  # noqa: E402
    ExtendedTextMessage,
    ImageMessage,
)
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage  # noqa: E402

from gateway.whatsapp import neonize_adapter as na  # noqa: E402
from gateway.whatsapp.settings import WhatsAppSettings  # noqa: E402
from tests.support.whatsapp import running, wait_state, wait_until  # noqa: E402


def _jpeg(w: int = 640, h: int = 480) -> bytes:
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(0, h, 4):
        for x in range(0, w, 4):
            px[x, y] = (x % 256, y % 256, (x * y) % 256)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _jid(user: str, server: str = "s.whatsapp.net") -> JID:
    return JID(User=user, Server=server, Device=0, RawAgent=0, Integrator=0, IsEmpty=False)


def test_import_does_not_download_anything() -> None:
    # Any HTTP(S) attempt would go to a closed loopback port and fail loudly.
    env = {
        **os.environ,
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import gateway.whatsapp.neonize_adapter, neonize; print(neonize.__version__)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "download" not in (r.stderr + r.stdout).lower()


def test_builds_the_image_message_from_real_jpeg_bytes(tmp_path: Path) -> None:
    jpeg = _jpeg()
    client = NewClient(str(tmp_path / "neonize.sqlite3"))
    uploaded: list[bytes] = []

    def fake_upload(binary: bytes, media_type=None) -> UploadResponse:
        uploaded.append(binary)
        return UploadResponse(
            url="https://mmg.example.invalid/d/f/abc.enc",
            DirectPath="/v/t62.7118-24/abc.enc",
            MediaKey=b"k" * 32,
            FileEncSHA256=b"e" * 32,
            FileSHA256=b"s" * 32,
            FileLength=len(binary),
        )

    client.upload = fake_upload  # the only network step
    msg = na.build_outgoing(client, "📦 Package delivered to Front gate at 14:05.", jpeg)
    assert uploaded == [jpeg]
    im: ImageMessage = msg.imageMessage
    assert im.caption == "📦 Package delivered to Front gate at 14:05."
    assert im.mimetype == "image/jpeg"
    assert im.fileLength == len(jpeg) and im.directPath == "/v/t62.7118-24/abc.enc"
    assert im.mediaKey == b"k" * 32 and im.fileSHA256 == b"s" * 32
    thumb = Image.open(io.BytesIO(im.JPEGThumbnail))
    assert thumb.format == "JPEG" and max(thumb.size) <= 200
    # It survives the trip to Go: serialised as the send call does.
    assert WAMessage.FromString(msg.SerializeToString()).imageMessage.caption == im.caption
    # Text-only alerts stay plain strings (neonize wraps them as a conversation message).
    assert na.build_outgoing(client, "Box offline", None) == "Box offline"


_EMPTY_JID = JID(User="", Server="", Device=0, RawAgent=0, Integrator=0, IsEmpty=True)


def _event(
    body: WAMessage, sender: JID, chat: JID | None = None, ts: int = 1_795_000_000_123, **src: object
) -> MessageEv:
    """A MessageEv with every field neonize's Go side always fills (they are `required`)."""
    source = {
        "IsFromMe": False,
        "IsGroup": False,
        "AddressingMode": AddressingMode.PN,
        "SenderAlt": _EMPTY_JID,
        "RecipientAlt": _EMPTY_JID,
        "BroadcastListOwner": _EMPTY_JID,
        **src,
    }
    ev = MessageEv(
        Info=MessageInfo(
            ID="3EB0C0FFEE1234",
            ServerID=0,
            Timestamp=ts,
            Pushname="Ani",
            Type="text",
            Category="",
            Multicast=False,
            MediaType="",
            Edit="",
            MessageSource=MessageSource(Chat=chat or sender, Sender=sender, **source),
        ),
        Message=body,
        IsEphemeral=False,
        IsViewOnce=False,
        IsViewOnceV2=False,
        IsViewOnceV2Extension=False,
        IsDocumentWithCaption=False,
        IsLottieSticker=False,
        IsEdit=False,
        UnavailableRequestID="",
        RetryCount=0,
    )
    return MessageEv.FromString(ev.SerializeToString())  # the bytes Go hands over, parsed as neonize does


def _message_event(text: str, sender: JID, chat: JID | None = None, **src: object) -> MessageEv:
    return _event(WAMessage(conversation=text), sender, chat, **src)


def test_converts_an_incoming_message_event() -> None:
    ev = _message_event("foto garasi", _jid("628123456789"), IsFromMe=False, IsGroup=False)
    msg = na.message_from_event(ev)
    assert msg is not None
    assert msg.text == "foto garasi" and msg.sender_phone == "628123456789"
    assert msg.chat == "628123456789@s.whatsapp.net" and msg.sender == msg.chat
    assert msg.id == "3EB0C0FFEE1234" and msg.push_name == "Ani" and not msg.is_group
    assert abs(msg.ts - 1_795_000_000.123) < 1e-6  # milliseconds from this neonize


def test_converts_group_lid_and_extended_text_messages() -> None:
    group = _jid("120363012345678901", "g.us")
    lid = _jid("98765432109876", "lid")
    ev = _event(
        WAMessage(extendedTextMessage=ExtendedTextMessage(text="status")),
        lid,
        group,
        ts=1_795_000_000,
        SenderAlt=_jid("628111222333"),
        IsGroup=True,
        AddressingMode=AddressingMode.LID,
    )
    msg = na.message_from_event(ev)
    assert msg is not None and msg.is_group and msg.chat == "120363012345678901@g.us"
    assert msg.sender_phone == "628111222333" and msg.text == "status" and msg.ts == 1_795_000_000
    # LID without SenderAlt: looked up, and left empty (unauthorised) when unknown.
    bare = _message_event("help", lid)
    assert na.message_from_event(bare, lambda j: _jid("628444555666")).sender_phone == "628444555666"
    assert na.message_from_event(bare, lambda j: JID()).sender_phone == ""
    assert na.message_from_event(bare).sender_phone == ""
    # Our own messages and messages without text are not commands.
    assert na.message_from_event(_message_event("photo", _jid("62811"), IsFromMe=True)) is None
    assert na.message_from_event(_message_event("   ", _jid("62811"))) is None


def test_status_broadcast_and_channel_posts_are_dropped() -> None:
    """Issue 16 #1, shapes from whatsmeow message.go parseMessageSource: never commands."""
    owner = _jid("628123456789")
    status = _message_event("foto", owner, _jid("status", "broadcast"), IsGroup=True)
    assert na.message_from_event(status) is None
    blist = _message_event("foto", owner, _jid("1700000000", "broadcast"), IsGroup=True)
    assert na.message_from_event(blist) is None
    channel = _jid("120363111111111111", "newsletter")
    assert na.message_from_event(_message_event("status", channel, channel)) is None
    # A group message still arrives (the command handler decides whether to answer it).
    group = na.message_from_event(
        _message_event("!foto", owner, _jid("120363012345678901", "g.us"), IsGroup=True)
    )
    assert group is not None and group.is_group and group.chat.endswith("@g.us")


def test_maps_connection_events() -> None:
    m = na.event_from_neonize
    assert m(ConnectedEv(status=True)).kind == "connected"
    assert m(DisconnectedEv(status=True)).kind == "disconnected"
    assert m(StreamReplacedEv()).kind == "stream_replaced"
    assert m(ClientOutdatedEv()).kind == "client_outdated"
    lo = m(LoggedOutEv(OnConnect=True, Reason=ConnectFailureReason.LOGGED_OUT))
    assert lo.kind == "logged_out" and lo.code == "LOGGED_OUT"
    ban = m(TemporaryBanEv(Code=TemporaryBan.SEND_TO_TOO_MANY_PEOPLE, Expire=3600))
    assert ban.kind == "temporary_ban" and ban.expire_s == 3600 and ban.code == "SEND_TO_TOO_MANY_PEOPLE"
    cf = m(ConnectFailureEv(Reason=ConnectFailureReason.SERVICE_UNAVAILABLE, Message="try later"))
    assert cf.kind == "connect_failure" and cf.code == "SERVICE_UNAVAILABLE" and cf.detail == "try later"
    ok = m(PairStatusEv(ID=_jid("628123456789"), Status=PairStatus.SUCCESS))
    assert ok.kind == "paired" and ok.jid == "628123456789@s.whatsapp.net"
    assert m(PairStatusEv(Status=PairStatus.ERROR, Error="bad")).code == "PAIR_ERROR"
    assert m(WAMessage()) is None


def test_jid_round_trip() -> None:
    assert na.jid_str(na.jid_proto("120363012345678901@g.us")) == "120363012345678901@g.us"
    assert na.jid_proto("628123@s.whatsapp.net").Server == "s.whatsapp.net"


def test_real_neonize_child_without_network_reports_and_retries(tmp_path: Path) -> None:
    """Done-means: no network -> the child says why, retries with backoff, and stops cleanly."""
    settings = WhatsAppSettings(
        session_dir=tmp_path / "whatsapp", transport="neonize", reconnect_backoff_s=(0.3, 1.0)
    )
    from gateway.whatsapp.supervisor import WhatsAppSupervisor

    seen: list[float] = []
    with running(settings) as sup:
        assert isinstance(sup, WhatsAppSupervisor)
        for _ in range(2):
            st = wait_state(
                sup,
                lambda s: (
                    s.get("state") == "not_paired"
                    and "Cannot reach WhatsApp" in s.get("detail", "")
                    and s.get("retry_at") is not None
                    and s.get("retry_at") not in seen
                ),
                timeout=60,
            )
            seen.append(st["retry_at"])
        assert "parcelbox whatsapp pair" in st["detail"] and "retrying in" in st["detail"]
        # Each retry is a fresh child process (one neonize client per process, issue 16 #2).
        assert sup.restarts >= 1
        pid = wait_until(sup.child_pid, timeout=60, what="a child process")
        assert pid != os.getpid()
        r = sup.send("628123456789@s.whatsapp.net", "hello")
        assert not r.ok and "not connected" in r.error
    assert sup.finished.is_set() and sup.crashes == 0
    assert (settings.session_dir / "session.lock").exists()
    assert oct(settings.session_dir.stat().st_mode & 0o777) == "0o700"


def test_converts_joined_groups() -> None:
    from neonize.proto.Neonize_pb2 import GroupInfo, GroupName

    groups = [
        GroupInfo(JID=_jid("120363098765432109", "g.us"), GroupName=GroupName(Name="Rumah")),
        GroupInfo(JID=_jid("120363012345678901", "g.us"), GroupName=GroupName(Name="kantor")),
    ]
    assert na.groups_from_neonize(groups) == [
        ("120363012345678901@g.us", "kantor"),
        ("120363098765432109@g.us", "Rumah"),
    ]


def _probe(*args: str, timeout: float = 120) -> tuple[int, dict, str]:
    """Run tests/support/neonize_probe.py in its own process (a Go panic aborts it)."""
    p = subprocess.run(
        [sys.executable, "-m", "tests.support.neonize_probe", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    return p.returncode, (json.loads(lines[-1]) if lines else {}), p.stderr[-2000:]


def test_failed_connects_do_not_stop_the_live_client(tmp_path: Path) -> None:
    """Issue 16 #2: neonize's weakref.finalize(_release_ffi) of an old NewClient ran Go Stop(uuid) on
    the live one (same uuid), and the next get_me panicked in Go (process abort)."""
    code, out, err = _probe("gc", str(tmp_path))
    assert code == 0, f"the probe died ({code}): {err}"
    assert out["clients_made"] == 1 and out["me"] == ""
    assert len(out["errors"]) == 3 and "once per process" in out["errors"][-1]


def test_no_sqlite_connection_leaks_per_check_or_connect(tmp_path: Path) -> None:
    """Issue 16 #5: each is_paired() (get_all_devices_from_db) and each connect opened a whatsmeow
    container that was never closed: one fd on the session database each time."""
    code, out, err = _probe("fds", str(tmp_path))
    assert code == 0, err
    assert out["db_fds"] <= 1, out


def _insert_device(db: Path, jid: str, push_name: str = "", business_name: str = "") -> None:
    """A linked-device row in whatsmeow's table (what pairing leaves), key columns of the right sizes."""
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key, signed_pre_key,"
        " signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig,"
        " adv_account_sig_key, adv_device_sig, push_name, business_name)"
        " VALUES (?, 1, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            jid,
            *(bytes(32),) * 3,
            bytes(64),
            b"k",
            b"d",
            bytes(64),
            bytes(32),
            bytes(64),
            push_name,
            business_name,
        ),
    )
    con.commit()
    con.close()


def test_a_comma_in_the_push_name_still_reads_as_paired(tmp_path: Path) -> None:
    """Issue 16 #4: neonize joins device fields with commas in Go and splits them in Python."""
    db = tmp_path / "neonize.sqlite3"
    code, _, err = _probe("schema", str(db))
    assert code == 0 and db.exists(), err
    _insert_device(db, "628123456789:12@s.whatsapp.net", "Siti, S.Pd", "Toko Siti, Jakarta")
    code, out, err = _probe("paired", str(db))
    assert code == 0, err
    assert out["paired"] is True and out["jid"] == "628123456789:12@s.whatsapp.net"
    assert out["paired_after_connect"] is True  # offline is "disconnected", not "not paired"


@pytest.mark.parametrize("odd", ["a#b", "a?b"])
def test_a_session_path_with_uri_characters_is_refused(tmp_path: Path, odd: str) -> None:
    """Issue 16 #6: neonize builds `file:<path>?_foreign_keys=on` unescaped; `#`/`?` moved the
    session database (the account's keys) out of the 0700 folder."""
    session = tmp_path / odd / "whatsapp"
    session.mkdir(parents=True)
    code, out, err = _probe("path", str(session / "neonize.sqlite3"))
    assert code == 0, err
    stray = [p for p in tmp_path.iterdir() if p.is_file()]
    assert stray == [] and not any(session.iterdir()), stray
    assert "BadSessionPath" in out.get("error", "") and repr(odd[1]) in out["error"]


def test_presence_and_push_name_are_sent_on_connect(tmp_path: Path) -> None:
    """Issue 16 #8: with no presence ever sent recipients see "-" as the sender (whatsmeow presence.go)."""
    code, out, err = _probe("presence", str(tmp_path / "neonize.sqlite3"))
    assert code == 0, err
    # Unpaired here (offline), so the push name is left alone: setting it needs app-state keys.
    assert out["calls"] == ["send_presence:UNAVAILABLE"], out


def test_status_of_a_never_paired_session_says_not_paired(tmp_path: Path) -> None:
    """Issue 16 #10: a connect that never paired leaves neonize's database behind; status said
    "session database present" for it."""
    session = tmp_path / "data" / "whatsapp"
    session.mkdir(parents=True)
    code, _, err = _probe("schema", str(session / "neonize.sqlite3"))
    assert code == 0 and (session / "neonize.sqlite3").exists(), err
    p = subprocess.run(
        [sys.executable, "-m", "gateway.whatsapp.cli", "status", "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "session database present" not in p.stdout and "not paired" in p.stdout, p.stdout


def test_converts_receipts() -> None:
    """neonize Receipt (goneonize EncodeReceipts: Timestamp in seconds, Type from whatsmeow's receipt type)."""
    from neonize.events import ReceiptEv
    from neonize.proto.Neonize_pb2 import MessageSource

    src = MessageSource(
        Chat=_jid("628123456789"),
        Sender=_jid("628123456789"),
        IsFromMe=False,
        IsGroup=False,
        AddressingMode=AddressingMode.PN,
        SenderAlt=_EMPTY_JID,
        RecipientAlt=_EMPTY_JID,
        BroadcastListOwner=_EMPTY_JID,
    )

    def ev(t: int) -> ReceiptEv:
        r = ReceiptEv(MessageSource=src, MessageIDs=["3EB0A1", "3EB0A2"], Timestamp=1_795_000_000, Type=t)
        return ReceiptEv.FromString(r.SerializeToString())

    d = na.receipt_from_event(ev(ReceiptEv.DELIVERED))
    assert d is not None and d.kind == "receipt" and d.code == "delivered" and d.ids == ("3EB0A1", "3EB0A2")
    assert d.ts == 1_795_000_000 and d.jid == "628123456789@s.whatsapp.net"
    assert na.receipt_from_event(ev(ReceiptEv.READ)).code == "read"
    for other in (ReceiptEv.SENDER, ReceiptEv.READ_SELF, ReceiptEv.RETRY, ReceiptEv.SERVER_ERROR):
        assert na.receipt_from_event(ev(other)) is None


def test_unlink_without_network_deletes_the_local_session(tmp_path: Path) -> None:
    """`parcelbox whatsapp unlink` offline: the one connection attempt fails; the session is still deleted."""
    session = tmp_path / "data" / "whatsapp"
    session.mkdir(parents=True)
    db = session / "neonize.sqlite3"
    code, _, err = _probe("schema", str(db))
    assert code == 0, err
    _insert_device(db, "628123456789:12@s.whatsapp.net", "Ani")
    p = subprocess.run(
        [sys.executable, "-m", "gateway.whatsapp.cli", "unlink", "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Unlinked" in p.stdout and "could not be reached" in p.stdout
    assert not db.exists()
