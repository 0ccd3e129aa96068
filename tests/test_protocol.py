"""Protocol v1: firmware encoder <-> gateway decoder round trips, and every rejection rule."""

from __future__ import annotations

import hashlib
import json

import protocol as fw  # firmware/protocol.py (conftest puts firmware/ on sys.path)
import pytest

from gateway import protocol as gw

EID = "a1b2c3d4-000001"


def test_event_with_photo_round_trip():
    frame = bytes(range(256)) * 600  # 153,600 bytes
    meta = fw.photo_meta(len(frame), fw.sha256_hex(frame), 8192)
    payload = fw.event_payload(EID, "delivery", 1700000000, 7, {"lid": "closed", "range_mm": 120}, meta)
    ev = gw.decode_event(payload)
    assert ev.id == EID and ev.type == "delivery" and ev.seq == 7 and ev.ts == 1700000000
    assert ev.sensors == {"lid": "closed", "range_mm": 120}
    assert ev.photo == gw.PhotoMeta(len(frame), hashlib.sha256(frame).hexdigest(), 19, 8192)
    chunks = list(fw.iter_chunks(frame, 8192))
    assert [i for i, _ in chunks] == list(range(19))
    assert b"".join(bytes(c) for _, c in chunks) == frame
    assert all(isinstance(c, memoryview) for _, c in chunks)


@pytest.mark.parametrize("etype", gw.EVENT_TYPES)
def test_every_event_type_without_photo(etype):
    ev = gw.decode_event(fw.event_payload(EID, etype, None, 0, {}))
    assert ev.type == etype and ev.photo is None and ev.ts is None


def test_snapshot_event_carries_command_id():
    ev = gw.decode_event(fw.event_payload(EID, "snapshot", 1.5, 3, {}, None, cmd="cmd-00000001"))
    assert ev.cmd == "cmd-00000001"


def test_status_and_will_round_trip():
    st = gw.decode_status(fw.status_payload("0.1.0", 12, -61, 81234, None, 2))
    assert st == gw.Status(True, "0.1.0", 12, -61, 81234, None, 2)
    assert gw.decode_status(fw.will_payload()) == gw.Status(False)


def test_topics_match_on_both_sides():
    t = fw.Topics("box-1", "pb")
    assert gw.parse_topic("pb", t.status.decode()) == gw.Topic("box-1", "status")
    assert gw.parse_topic("pb", t.event.decode()) == gw.Topic("box-1", "event")
    assert gw.parse_topic("pb", t.cmd_result.decode()) == gw.Topic("box-1", "cmd_result")
    assert gw.parse_topic("pb", t.photo(EID, 12).decode()) == gw.Topic("box-1", "photo", EID, 12)
    assert t.ack.decode() == gw.topic("pb", "box-1", "ack")
    assert t.cmd.decode() == gw.topic("pb", "box-1", "cmd")


def test_ack_nack_and_cmd_reverse_direction():
    assert fw.decode_ack(gw.encode_ack(EID)) == (EID, True, None, False)
    assert fw.decode_ack(gw.encode_nack(EID, "sha256 mismatch", True)) == (
        EID,
        False,
        "sha256 mismatch",
        True,
    )
    assert fw.decode_cmd(gw.encode_cmd("cmd-12345678", "snapshot")) == ("cmd-12345678", "snapshot", {})
    assert fw.decode_cmd(gw.encode_cmd("cmd-12345678", "config", {"cooldown_s": 5})) == (
        "cmd-12345678",
        "config",
        {"cooldown_s": 5},
    )
    res = gw.decode_cmd_result(fw.cmd_result_payload("cmd-12345678", True, rtt_ms=3))
    assert res == gw.CommandResult("cmd-12345678", True, None, {"rtt_ms": 3})
    res = gw.decode_cmd_result(fw.cmd_result_payload("cmd-12345678", False, "unknown command"))
    assert res.ok is False and res.error == "unknown command"


def test_make_id_is_valid_on_both_sides():
    for seq in (0, 1, 999999, 1000000, 12345678):
        eid = fw.make_id(bytes([1, 2, 3, 4, 5, 6, 7, 8]), seq)
        assert fw.valid_msg_id(eid) and gw.valid_msg_id(eid)


@pytest.mark.parametrize(
    "s,ok",
    [
        ("box-1", True),
        ("a", True),
        ("0", True),
        ("-box", False),
        ("Box", False),
        ("b_x", False),
        ("", False),
        ("a" * 32, True),
        ("a" * 33, False),
        ("../x", False),
        ("box/1", False),
        ("bóx", False),
        ("+", False),
        ("#", False),
    ],
)
def test_device_id_rule_same_on_both_sides(s, ok):
    assert fw.valid_device_id(s) is ok
    assert gw.valid_device_id(s) is ok


@pytest.mark.parametrize(
    "s,ok",
    [
        ("abcdefgh", True),
        ("abcdefg", False),
        ("A_b-9" * 8, True),
        ("x" * 41, False),
        ("../../etc", False),
        ("abc.defgh", False),
        ("abcdefgh\n", False),
        ("abcdéfgh", False),
        ("abcd efgh", False),
    ],
)
def test_msg_id_rule_same_on_both_sides(s, ok):
    assert fw.valid_msg_id(s) is ok
    assert gw.valid_msg_id(s) is ok


# --- rejection rules: each bad message gives its reason code ------------------------------

GOOD = {
    "v": 1,
    "id": EID,
    "type": "delivery",
    "ts": None,
    "seq": 1,
    "sensors": {},
    "photo": {"size": 100, "sha256": "0" * 64, "chunks": 1, "chunk_size": 8192},
}


def mutate(**changes):
    d = json.loads(json.dumps(GOOD))
    for k, v in changes.items():
        if k.startswith("photo_"):
            d["photo"][k[6:]] = v
        elif v is ...:
            del d[k]
        else:
            d[k] = v
    return json.dumps(d).encode()


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"{not json", "bad_json"),
        (b"", "bad_json"),
        (b"\xff\xfe\x00", "bad_json"),
        (b'{"v":1,"id":"abcdefgh","seq":NaN}', "bad_json"),
        (b"[1,2,3]", "bad_schema"),
        (b'"just a string"', "bad_schema"),
        (b"[" * 100000 + b"]" * 100000, "oversize"),
        (mutate(v=2), "bad_version"),
        (mutate(v="1"), "bad_version"),
        (mutate(v=True), "bad_version"),
        (mutate(v=...), "bad_version"),
        (mutate(id="short"), "bad_event_id"),
        (mutate(id="../../etc/passwd"), "bad_event_id"),
        (mutate(id=12345678), "bad_event_id"),
        (mutate(type="explosion"), "bad_type"),
        (mutate(seq=-1), "bad_schema"),
        (mutate(seq="1"), "bad_schema"),
        (mutate(seq=True), "bad_schema"),
        (mutate(ts="yesterday"), "bad_schema"),
        (mutate(sensors=[1]), "bad_schema"),
        (mutate(photo="x.jpg"), "bad_schema"),
        (mutate(photo_size=3 * 1024 * 1024, photo_chunks=48, photo_chunk_size=65536), "oversize"),
        (mutate(photo_size=100, photo_chunk_size=65537), "oversize"),
        (mutate(photo_size=257 * 100, photo_chunks=257, photo_chunk_size=100), "too_many_chunks"),
        (mutate(photo_size=1000, photo_chunks=3, photo_chunk_size=100), "bad_schema"),
        (mutate(photo_sha256="abc"), "bad_sha256"),
        (mutate(photo_sha256="G" * 64), "bad_sha256"),
        (mutate(photo_sha256="A" * 64), "bad_sha256"),
        (mutate(photo_sha256=None), "bad_sha256"),
        (mutate(photo_size="100"), "bad_schema"),
        (mutate(photo_size=0, photo_chunks=0), "oversize"),
        (json.dumps({**GOOD, "pad": "x" * 20000}).encode(), "oversize"),
    ],
)
def test_event_rejections(payload, reason):
    with pytest.raises(gw.ProtocolError) as ei:
        gw.decode_event(payload)
    assert ei.value.reason == reason
    assert str(ei.value)  # a readable message for the log


@pytest.mark.parametrize(
    "decode,payload",
    [
        (gw.decode_event, mutate().replace(b'"sensors": {}', b'"sensors": {"range_mm": 1e999}')),
        (gw.decode_event, mutate().replace(b'"sensors": {}', b'"sensors": {"a": {"b": [1, -1E400]}}')),
        (gw.decode_event, mutate().replace(b'"ts": null', b'"ts": 1e999')),
        (gw.decode_status, b'{"v":1,"online":true,"extra":{"t":-1e309}}'),
        (gw.decode_cmd_result, b'{"v":1,"id":"abcdefgh","ok":true,"temp":1e999}'),
    ],
)
def test_non_finite_numbers_refused_at_any_depth(decode, payload):
    """Issue 14 item 7: `1e999` is valid JSON grammar that Python parses as infinity; once stored it
    broke every /api/events answer. Every decoder refuses it, however deeply nested."""
    assert b"e999" in payload or b"E400" in payload or b"e309" in payload
    with pytest.raises(gw.ProtocolError) as ei:
        decode(payload)
    assert ei.value.reason == "bad_number"


def test_finite_floats_and_big_exponents_that_fit_still_decode():
    ev = gw.decode_event(
        mutate().replace(b'"sensors": {}', b'"sensors": {"range_mm": 1.5e3, "t": -2.5E-300}')
    )
    assert ev.sensors == {"range_mm": 1500.0, "t": -2.5e-300}


def test_good_reference_event_decodes():
    assert gw.decode_event(mutate()).photo.chunks == 1


def test_limits_are_configurable():
    small = gw.Limits(max_photo_bytes=50)
    with pytest.raises(gw.ProtocolError, match="oversize"):
        gw.decode_event(mutate(), small)


@pytest.mark.parametrize(
    "topic,reason",
    [
        ("other/box-1/event", "bad_topic"),
        ("pb/Box/event", "bad_device_id"),
        ("pb/../event", "bad_device_id"),
        ("pb/box-1/photo/..%2f..%2fx/0", "bad_event_id"),
        ("pb/box-1/photo/../0", "bad_event_id"),
        ("pb/box-1/photo/abcdefgh/-1", "bad_chunk_index"),
        ("pb/box-1/photo/abcdefgh/01", "bad_chunk_index"),
        ("pb/box-1/photo/abcdefgh/x", "bad_chunk_index"),
        ("pb/box-1/photo/abcdefgh/\u0661", "bad_chunk_index"),
        ("pb/box-1/photo/abcdefgh/256", "too_many_chunks"),
        ("pb/box-1/photo/abcdefgh", "bad_topic"),
        ("pb/box-1/events", "bad_topic"),
        ("pb/box-1/event/extra", "bad_topic"),
    ],
)
def test_topic_rejections(topic, reason):
    with pytest.raises(gw.ProtocolError) as ei:
        gw.parse_topic("pb", topic)
    assert ei.value.reason == reason


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b'{"v":1,"online":"yes"}', "bad_schema"),
        (b'{"v":1,"online":true,"rssi":"strong"}', "bad_schema"),
        (b'{"v":1,"online":true,"fw":"' + b"x" * 100 + b'"}', "bad_schema"),
        (b'{"v":9,"online":true}', "bad_version"),
        (b"null", "bad_schema"),
    ],
)
def test_status_rejections(payload, reason):
    with pytest.raises(gw.ProtocolError) as ei:
        gw.decode_status(payload)
    assert ei.value.reason == reason


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"{", "bad_json"),
        (b'{"v":2,"id":"abcdefgh","ok":true}', "bad_version"),
        (b'{"v":1,"id":"abc","ok":true}', "bad_event_id"),
        (b'{"v":1,"id":"abcdefgh","ok":"yes"}', "bad_schema"),
        (b"x" * 5000, "oversize"),
    ],
)
def test_firmware_ack_rejections(payload, reason):
    with pytest.raises(fw.ProtocolError) as ei:
        fw.decode_ack(payload)
    assert ei.value.args[0] == reason


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b'{"v":1,"id":"abcdefgh"}', "bad_schema"),
        (b'{"v":1,"id":"abcdefgh","cmd":"ping","args":[1]}', "bad_schema"),
        (b'{"v":1,"id":"a/b","cmd":"ping"}', "bad_cmd_id"),
    ],
)
def test_firmware_cmd_rejections(payload, reason):
    with pytest.raises(fw.ProtocolError) as ei:
        fw.decode_cmd(payload)
    assert ei.value.args[0] == reason


def test_unknown_command_is_decoded_for_an_error_reply():
    assert fw.decode_cmd(b'{"v":1,"id":"abcdefgh","cmd":"dance"}')[1] == "dance"


def test_firmware_refuses_to_encode_out_of_protocol_values():
    with pytest.raises(fw.ProtocolError):
        fw.event_payload("bad", "delivery", None, 0, {})
    with pytest.raises(fw.ProtocolError):
        fw.event_payload(EID, "party", None, 0, {})
    with pytest.raises(fw.ProtocolError):
        fw.photo_meta(3 * 1024 * 1024, "0" * 64)
    with pytest.raises(fw.ProtocolError):
        fw.Topics("Bad Box")
