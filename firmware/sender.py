"""Chunk publisher: an event record and its photo onto MQTT without copying the photo.

Two sources, one rule (no second copy of a frame in RAM):
- a fresh frame: chunks are `memoryview` slices of the camera's buffer
  (`protocol.iter_chunks`), handed straight to `client.publish`;
- a spooled photo: read chunk by chunk with `readinto` into ONE buffer the
  caller allocated once at start-up, and published as a memoryview of it.

Photo topics are written into one preallocated bytearray per event (only the
index digits change), so a 150 KB photo costs a few small objects per chunk,
not a topic string, a bytes copy and a slice each. `client` is anything with
umqtt.simple's `publish(topic, msg, retain=False, qos=0)`; umqtt writes `msg`
with `sock.write`, which takes a memoryview.
"""

from protocol import iter_chunks

_INDEX_ROOM = 3  # chunk index < 256 (protocol limit): at most 3 digits


class ShortPhoto(ValueError):
    """The spooled photo file ended before its recorded size (not a link error)."""


class PhotoTopic:
    """`<prefix>/<device>/photo/<event id>/<index>` with the index patched in place."""

    def __init__(self, topics, event_id):
        head = ("%sphoto/%s/" % (topics.base, event_id)).encode()
        self._n = len(head)
        self._buf = bytearray(self._n + _INDEX_ROOM)
        self._buf[: self._n] = head
        self._mv = memoryview(self._buf)

    def at(self, index):
        b = self._buf
        n = self._n
        if index >= 100:
            b[n] = 48 + index // 100
            b[n + 1] = 48 + (index // 10) % 10
            b[n + 2] = 48 + index % 10
            return self._mv[: n + 3]
        if index >= 10:
            b[n] = 48 + index // 10
            b[n + 1] = 48 + index % 10
            return self._mv[: n + 2]
        b[n] = 48 + index
        return self._mv[: n + 1]


def publish_frame(client, topics, event_id, frame, chunk_size, qos=1, feed=None):
    """Publish `frame` (bytes/bytearray/memoryview) as photo chunks. Returns chunk count."""
    topic = PhotoTopic(topics, event_id)
    count = 0
    for index, chunk in iter_chunks(frame, chunk_size):
        client.publish(topic.at(index), chunk, False, qos)
        count += 1
        if feed is not None:
            feed()
    return count


def publish_file(client, topics, event_id, f, size, chunk_buf, chunk_size, qos=1, feed=None):
    """Publish `size` bytes from the open file `f` as photo chunks, reading each
    into `chunk_buf` (>= chunk_size bytes, allocated once by the caller)."""
    if len(chunk_buf) < chunk_size:
        raise ValueError("chunk buffer smaller than chunk size")
    topic = PhotoTopic(topics, event_id)
    mv = memoryview(chunk_buf)
    left = size
    index = 0
    while left > 0:
        want = chunk_size if left > chunk_size else left
        got = 0
        while got < want:
            n = f.readinto(mv[got:want])
            if not n:
                raise ShortPhoto(index)
            got += n
        client.publish(topic.at(index), mv[:want], False, qos)
        left -= want
        index += 1
        if feed is not None:
            feed()
    return index


def publish_event(client, topics, record_bytes, qos=1):
    """Publish the event JSON (the spool's stored bytes, published as-is)."""
    client.publish(topics.event, record_bytes, False, qos)
