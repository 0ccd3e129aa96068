"""The firmware protocol module under real MicroPython, checked against the gateway decoder."""

from __future__ import annotations

import binascii
import hashlib
import json

from gateway import protocol as gw


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_micropython_encodes_what_the_gateway_decodes(micropython):
    res = micropython("import protocol_cases\nprotocol_cases.encode_cases()\n").check()
    got = {d["case"]: binascii.unhexlify(d["hex"]) for d in _lines(res.stdout)}
    frame = bytes(range(256)) * 600
    ev = gw.decode_event(got["event_photo"])
    assert ev.photo == gw.PhotoMeta(len(frame), hashlib.sha256(frame).hexdigest(), 19, 8192)
    assert ev.sensors == {"lid": "closed"} and ev.ts == 1700000000
    assert gw.decode_event(got["event_plain"]).type == "lid_left_open"
    assert gw.decode_event(got["snapshot"]).cmd == "cmd-00000001"
    assert gw.decode_status(got["status"]) == gw.Status(True, "0.1.0", 12, -61, 81234, 3900, 2)
    assert gw.decode_status(got["will"]).online is False
    r = gw.decode_cmd_result(got["cmd_result"])
    assert (r.ok, r.error) == (False, "unknown command")
    assert json.loads(got["chunk_sizes"]) == [8192] * 18 + [len(frame) - 18 * 8192]
    assert gw.parse_topic("pb", got["topic_photo"].decode()) == gw.Topic(
        "box-1", "photo", "a1b2c3d4-000001", 18
    )
    assert gw.valid_msg_id(got["make_id"].decode())


def test_micropython_decodes_what_the_gateway_encodes(micropython):
    acks = [
        gw.encode_ack("a1b2c3d4-000001"),
        gw.encode_nack("a1b2c3d4-000001", "sha256 mismatch", True),
        b'{"v":2,"id":"a1b2c3d4-000001","ok":true}',
        b"{garbage",
        b'{"v":1,"id":"../x","ok":true}',
    ]
    cmds = [
        gw.encode_cmd("cmd-00000001", "snapshot"),
        gw.encode_cmd("cmd-00000002", "config", {"cooldown_s": 9}),
        b'{"v":1,"id":"cmd-00000003","cmd":"dance"}',
        b'{"v":1,"id":"cmd-00000004","cmd":"ping","args":3}',
    ]
    code = f"import protocol_cases\nprotocol_cases.decode_cases({acks!r}, {cmds!r})\n"
    out = _lines(micropython(code).check().stdout)
    assert out == [
        {"ack": ["a1b2c3d4-000001", True, None, False]},
        {"ack": ["a1b2c3d4-000001", False, "sha256 mismatch", True]},
        {"ack_error": "bad_version"},
        {"ack_error": "bad_json"},
        {"ack_error": "bad_event_id"},
        {"cmd": ["cmd-00000001", "snapshot", {}]},
        {"cmd": ["cmd-00000002", "config", {"cooldown_s": 9}]},
        {"cmd": ["cmd-00000003", "dance", {}]},
        {"cmd_error": "bad_schema"},
    ]


def test_micropython_failure_is_reported_with_traceback(micropython):
    res = micropython("import protocol\nprotocol.Topics('Not Valid')\n")
    assert res.exit_code != 0 and "bad_device_id" in res.stderr
