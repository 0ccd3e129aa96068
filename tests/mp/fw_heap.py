# Heap cost of publishing a frame, measured under real MicroPython with gc.mem_alloc().
# Used by tests/test_firmware_heap.py (asserts) and bench/firmware_heap.py (table + JSON).
# The client is umqtt-shaped: publish() writes the payload into one preallocated sink,
# the way umqtt.simple hands it to sock.write, so only the publisher's own allocations
# are counted.
#
# Everything the measured code touches lives in module globals (`S`): the WASI build's
# gc.collect() does not see objects held only by a running function's locals, and
# collecting them corrupts the heap (seen as a wasm memory fault or a mangled object).
import gc
import json

import protocol
import sender

FRAME_BYTES = 150 * 1024
CHUNK = 8192
EVENT_ID = "a1b2c3d4-000001"


class SinkClient:
    def __init__(self, cap):
        self.buf = bytearray(cap)
        self.mv = memoryview(self.buf)
        self.n = 0
        self.count = 0

    def publish(self, topic, msg, retain=False, qos=0):
        m = len(msg)
        self.mv[self.n : self.n + m] = msg
        self.n += m
        self.count += 1


class _State:
    pass


S = _State()


def _measure(fn):
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        fn()
        after = gc.mem_alloc()
    finally:
        gc.enable()
    return after - before


def _publish_frame():
    sender.publish_frame(S.sink, S.topics, EVENT_ID, S.frame, CHUNK)


def _copy_frame():
    S.copy = bytes(S.frame)


def _publish_copied_frame():
    # What the publisher would cost if anything on the way copied the frame.
    sender.publish_frame(S.sink, S.topics, EVENT_ID, bytes(S.frame), CHUNK)


def _publish_file():
    sender.publish_file(S.sink, S.topics, EVENT_ID, S.photo, FRAME_BYTES, S.chunk_buf, CHUNK)


def run(data_dir=None):
    S.frame = bytearray(FRAME_BYTES)
    for i in range(0, FRAME_BYTES, 97):
        S.frame[i] = i & 0xFF
    S.topics = protocol.Topics("box-1")
    S.sink = SinkClient(FRAME_BYTES + 1024)
    S.chunk_buf = bytearray(CHUNK)
    S.results = {}
    S.results["publish_frame"] = _measure(_publish_frame)
    assert S.sink.n == FRAME_BYTES and S.sink.buf[:FRAME_BYTES] == S.frame
    S.results["chunks"] = S.sink.count
    S.results["bytes_copy"] = _measure(_copy_frame)
    S.copy = None
    S.sink.n = 0
    S.results["publish_copied_frame"] = _measure(_publish_copied_frame)
    if data_dir is not None:
        S.path = data_dir + "/heap_photo.jpg"
        with open(S.path, "wb") as out:
            out.write(S.frame)
        S.sink.n = 0
        S.photo = open(S.path, "rb")
        S.results["publish_spooled_file"] = _measure(_publish_file)
        S.photo.close()
        assert S.sink.n == FRAME_BYTES and S.sink.buf[:FRAME_BYTES] == S.frame
    S.results["frame_bytes"] = FRAME_BYTES
    S.results["chunk_size"] = CHUNK
    print("HEAP " + json.dumps(S.results))
    return S.results
