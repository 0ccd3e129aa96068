"""Property-based fuzzing of the protocol decoders: any bytes in, a typed value or ProtocolError out."""

from __future__ import annotations

import json

import protocol as fw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import protocol as gw

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
KEYS = ["v", "id", "type", "ts", "seq", "sensors", "photo", "cmd", "online", "fw", "rssi", "ok", "error"]
near_valid = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1", None, True])},
    optional={
        k: json_values
        | st.sampled_from(["delivery", "abcdefgh", "../../x", "0" * 64, 1, -1, 2**64])
        | st.fixed_dictionaries(
            {},
            optional={
                "size": st.integers(-5, 3 * 2**20),
                "sha256": st.sampled_from(["0" * 64, "x", None, "A" * 64]),
                "chunks": st.integers(-1, 300),
                "chunk_size": st.integers(-1, 2**17),
            },
        )
        for k in KEYS[1:]
    },
)


def _decoders():
    return [gw.decode_event, gw.decode_status, gw.decode_cmd_result]


@FUZZ
@given(st.binary(max_size=2048))
def test_gateway_decoders_on_random_bytes(data):
    for decode in _decoders():
        try:
            decode(data)
        except gw.ProtocolError as exc:
            assert exc.reason
    try:
        fw.decode_ack(data)
        fw.decode_cmd(data)
    except fw.ProtocolError:
        pass


@FUZZ
@given(near_valid)
def test_gateway_decoders_on_near_valid_objects(obj):
    data = json.dumps(obj).encode()
    for decode in _decoders():
        try:
            msg = decode(data)
        except gw.ProtocolError as exc:
            assert exc.reason
            continue
        if isinstance(msg, gw.Event):
            # Whatever was accepted is safe to use as a file name component and consistent.
            assert gw.valid_msg_id(msg.id) and "/" not in msg.id and ".." not in msg.id
            if msg.photo:
                assert 0 < msg.photo.size <= gw.DEFAULT_LIMITS.max_photo_bytes
                assert msg.photo.chunks == -(-msg.photo.size // msg.photo.chunk_size)


@FUZZ
@given(st.text(max_size=120))
def test_parse_topic_never_accepts_path_like_parts(name):
    try:
        t = gw.parse_topic("pb", "pb/" + name)
    except gw.ProtocolError:
        return
    for part in (t.device, t.event_id or "abcdefgh"):
        assert "/" not in part and ".." not in part and "\x00" not in part
