# Runs under real MicroPython: encode with firmware/protocol.py, print one JSON line per
# case (payloads hex-encoded) for the CPython side to decode with gateway/protocol.py.
import binascii
import json

import protocol as p


def emit(name, payload):
    print(json.dumps({"case": name, "hex": binascii.hexlify(payload).decode()}))


def encode_cases():
    frame = bytes(range(256)) * 600
    meta = p.photo_meta(len(frame), p.sha256_hex(frame), 8192)
    emit(
        "event_photo", p.event_payload("a1b2c3d4-000001", "delivery", 1700000000, 7, {"lid": "closed"}, meta)
    )
    emit("event_plain", p.event_payload("a1b2c3d4-000002", "lid_left_open", None, 8, {}))
    emit("snapshot", p.event_payload("a1b2c3d4-000003", "snapshot", None, 9, {}, None, "cmd-00000001"))
    emit("status", p.status_payload("0.1.0", 12, -61, 81234, 3900, 2))
    emit("will", p.will_payload())
    emit("cmd_result", p.cmd_result_payload("cmd-00000001", False, "unknown command"))
    chunks = []
    for i, mv in p.iter_chunks(frame, 8192):
        chunks.append(len(mv))
    emit("chunk_sizes", json.dumps(chunks).encode())
    t = p.Topics("box-1", "pb")
    emit("topic_photo", t.photo("a1b2c3d4-000001", 18))
    emit("make_id", p.make_id(b"\x01\x02\x03\x04\x05\x06\x07\x08", 42).encode())


def decode_cases(acks, cmds):
    for a in acks:
        try:
            print(json.dumps({"ack": list(p.decode_ack(a))}))
        except p.ProtocolError as e:
            print(json.dumps({"ack_error": e.args[0]}))
    for c in cmds:
        try:
            print(json.dumps({"cmd": list(p.decode_cmd(c))}))
        except p.ProtocolError as e:
            print(json.dumps({"cmd_error": e.args[0]}))
