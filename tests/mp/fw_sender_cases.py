# Chunk publisher cases (firmware/sender.py). Run under CPython (tests/test_firmware_sender.py)
# and under real MicroPython. A recording client stands in for umqtt.simple: it keeps what
# publish() was handed, so the cases check topics, order, payload types and reassembly.
import hashlib

import protocol
import sender


class RecordingClient:
    def __init__(self):
        self.calls = []

    def publish(self, topic, msg, retain=False, qos=0):
        self.calls.append((bytes(topic), type(msg).__name__, bytes(msg), retain, qos))


def frame_of(n):
    b = bytearray(n)
    for i in range(n):
        b[i] = (i * 31 + 7) & 0xFF
    return b


def check_chunks(calls, topics, eid, frame, chunk_size):
    n = protocol.chunk_count(len(frame), chunk_size)
    assert len(calls) == n, (len(calls), n)
    joined = b"".join(c[2] for c in calls)
    assert joined == bytes(frame)
    for i, c in enumerate(calls):
        assert c[0] == topics.photo(eid, i), (c[0], i)
        assert c[3] is False and c[4] == 1
        if i < n - 1:
            assert len(c[2]) == chunk_size


def case_frame_chunks_are_memoryviews_in_order():
    t = protocol.Topics("box-1", "pb")
    frame = frame_of(20000)
    c = RecordingClient()
    n = sender.publish_frame(c, t, "a1b2c3d4-000001", frame, 4096)
    assert n == 5
    check_chunks(c.calls, t, "a1b2c3d4-000001", frame, 4096)
    assert all(x[1] == "memoryview" for x in c.calls)


def case_index_digits_up_to_three():
    t = protocol.Topics("box-1", "parcelbox")
    frame = frame_of(255 * 16 + 3)
    c = RecordingClient()
    fed = []
    n = sender.publish_frame(c, t, "a1b2c3d4-000002", frame, 16, feed=lambda: fed.append(1))
    assert n == 256 and len(fed) == 256
    check_chunks(c.calls, t, "a1b2c3d4-000002", frame, 16)
    assert c.calls[255][0].endswith(b"/255")
    assert c.calls[100][0].endswith(b"/100") and c.calls[9][0].endswith(b"/9")


def case_exact_multiple_has_no_empty_tail():
    t = protocol.Topics("box-1")
    frame = frame_of(8192 * 3)
    c = RecordingClient()
    assert sender.publish_frame(c, t, "a1b2c3d4-000003", frame, 8192) == 3
    check_chunks(c.calls, t, "a1b2c3d4-000003", frame, 8192)


def case_file_chunks_reuse_one_buffer(path):
    t = protocol.Topics("box-1")
    frame = frame_of(30001)
    with open(path, "wb") as f:
        f.write(frame)
    buf = bytearray(8192)
    c = RecordingClient()
    with open(path, "rb") as f:
        n = sender.publish_file(c, t, "a1b2c3d4-000004", f, len(frame), buf, 8192)
    assert n == 4
    check_chunks(c.calls, t, "a1b2c3d4-000004", frame, 8192)
    assert all(x[1] == "memoryview" for x in c.calls)
    assert hashlib.sha256(b"".join(x[2] for x in c.calls)).digest() == hashlib.sha256(bytes(frame)).digest()


def case_short_file_is_an_error(path):
    t = protocol.Topics("box-1")
    with open(path, "wb") as f:
        f.write(b"x" * 100)
    c = RecordingClient()
    with open(path, "rb") as f:
        try:
            sender.publish_file(c, t, "a1b2c3d4-000005", f, 300, bytearray(64), 64)
        except sender.ShortPhoto:
            pass
        else:
            raise AssertionError("short file not detected")


def case_event_published_as_stored():
    t = protocol.Topics("box-1", "pb")
    c = RecordingClient()
    rec = protocol.event_payload("a1b2c3d4-000006", "pickup", None, 6, {})
    sender.publish_event(c, t, rec)
    assert c.calls == [(b"pb/box-1/event", "bytes", rec, False, 1)]


CASES = [(name, fn) for name, fn in sorted(globals().items()) if name.startswith("case_") and callable(fn)]


def run_all(tmpdir):
    for name, fn in CASES:
        if name.startswith("case_file") or name.startswith("case_short"):
            fn(tmpdir + "/photo.bin")
        else:
            fn()
        print("PASS", name)
    print("DONE", len(CASES))
