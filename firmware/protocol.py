"""Wire protocol v1, device side (see docs/protocol.md).

Runs unchanged on MicroPython and CPython. Pure: no sockets, no pins, no
filesystem - the link layer passes in whatever it publishes with. Payloads are
built as bytes once; photo chunks are memoryview slices of the caller's frame
buffer, so publishing a 150 KB frame never copies it.

The gateway's `gateway/protocol.py` is the typed twin of this module; the test
suite encodes here and decodes there (and back) so the two cannot drift.
"""

import json

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


VERSION = const(1)
DEFAULT_PREFIX = "parcelbox"
DEFAULT_CHUNK_SIZE = const(8192)

# Gateway defaults (docs/protocol.md, "Limits"); the device stays well inside them.
MAX_PHOTO_BYTES = const(2097152)
MAX_CHUNKS = const(256)
MAX_CHUNK_BYTES = const(65536)

# A copy of gateway/vocabulary.py EVENT_TYPES (the board cannot import the gateway); tests/test_vocabulary.py.
EVENT_TYPES = ("delivery", "pickup", "lid_closed", "lid_left_open", "snapshot")
COMMANDS = ("snapshot", "reboot", "ping", "config")

_DEVICE_ID_MAX = const(32)
_MSG_ID_MIN = const(8)
_MSG_ID_MAX = const(40)


class ProtocolError(ValueError):
    """A message the device cannot accept; args[0] is a short reason code."""


# --- identifiers -----------------------------------------------------------
# Checked by hand rather than with `re`: MicroPython's re has no {m,n} and
# building a regex object per message costs RAM for nothing.


def _is_lower_alnum(c):
    return ("a" <= c <= "z") or ("0" <= c <= "9")


def valid_device_id(s):
    """`[a-z0-9][a-z0-9-]{0,31}`"""
    if not isinstance(s, str) or not 1 <= len(s) <= _DEVICE_ID_MAX:
        return False
    if not _is_lower_alnum(s[0]):
        return False
    for c in s:
        if not (_is_lower_alnum(c) or c == "-"):
            return False
    return True


def valid_msg_id(s):
    """Event and command ids: `[A-Za-z0-9_-]{8,40}`"""
    if not isinstance(s, str) or not _MSG_ID_MIN <= len(s) <= _MSG_ID_MAX:
        return False
    for c in s:
        if not (("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "_" or c == "-"):
            return False
    return True


def make_id(random_bytes, seq):
    """An event/command id from >= 4 random bytes and a counter: unique per device
    across reboots without a clock. Example: `7f3a9c01-000042`."""
    h = "".join("%02x" % b for b in random_bytes[:8])
    return "%s-%06d" % (h, seq % 1000000)


# --- topics ----------------------------------------------------------------


class Topics:
    """All topic names of one device, built once (bytes, as umqtt wants them)."""

    def __init__(self, device, prefix=DEFAULT_PREFIX):
        if not valid_device_id(device):
            raise ProtocolError("bad_device_id", device)
        base = "%s/%s/" % (prefix, device)
        self.base = base
        self.status = (base + "status").encode()
        self.event = (base + "event").encode()
        self.ack = (base + "ack").encode()
        self.cmd = (base + "cmd").encode()
        self.cmd_result = (base + "cmd/result").encode()

    def photo(self, event_id, index):
        return ("%sphoto/%s/%d" % (self.base, event_id, index)).encode()


# --- device -> gateway -----------------------------------------------------


def _dumps(obj):
    return json.dumps(obj).encode()


def status_payload(fw, uptime_s, rssi, heap_free, battery_mv, spooled):
    return _dumps(
        {
            "v": VERSION,
            "online": True,
            "fw": fw,
            "uptime_s": uptime_s,
            "rssi": rssi,
            "heap_free": heap_free,
            "battery_mv": battery_mv,
            "spooled": spooled,
        }
    )


def will_payload():
    return b'{"v": 1, "online": false}'


def chunk_count(size, chunk_size):
    return (size + chunk_size - 1) // chunk_size


def photo_meta(size, sha256_hex, chunk_size=DEFAULT_CHUNK_SIZE):
    if size <= 0 or size > MAX_PHOTO_BYTES:
        raise ProtocolError("oversize", size)
    if chunk_size <= 0 or chunk_size > MAX_CHUNK_BYTES:
        raise ProtocolError("bad_chunk_size", chunk_size)
    n = chunk_count(size, chunk_size)
    if n > MAX_CHUNKS:
        raise ProtocolError("too_many_chunks", n)
    return {"size": size, "sha256": sha256_hex, "chunks": n, "chunk_size": chunk_size}


def event_dict(event_id, etype, ts, seq, sensors, photo=None, cmd=None):
    """The event record as a dict: what the spool stores and `event_payload` sends."""
    if not valid_msg_id(event_id):
        raise ProtocolError("bad_event_id", event_id)
    if etype not in EVENT_TYPES:
        raise ProtocolError("bad_type", etype)
    d = {
        "v": VERSION,
        "id": event_id,
        "type": etype,
        "ts": ts,
        "seq": seq,
        "sensors": sensors,
        "photo": photo,
    }
    if cmd is not None:
        d["cmd"] = cmd
    return d


def event_payload(event_id, etype, ts, seq, sensors, photo=None, cmd=None):
    return _dumps(event_dict(event_id, etype, ts, seq, sensors, photo, cmd))


def sha256_hex(buf, step=4096):
    """sha256 of a buffer, fed in slices so no copy of the frame is made."""
    import hashlib

    h = hashlib.sha256()
    mv = memoryview(buf)
    for i in range(0, len(mv), step):
        h.update(mv[i : i + step])
    return "".join("%02x" % b for b in h.digest())


def iter_chunks(buf, chunk_size=DEFAULT_CHUNK_SIZE):
    """Yield (index, memoryview) over `buf`: slices share the frame's memory."""
    mv = memoryview(buf)
    n = len(mv)
    i = 0
    idx = 0
    while i < n:
        yield idx, mv[i : i + chunk_size]
        i += chunk_size
        idx += 1


def cmd_result_payload(cmd_id, ok, error=None, **extra):
    d = {"v": VERSION, "id": cmd_id, "ok": bool(ok)}
    if error is not None:
        d["error"] = error
    for k in extra:
        d[k] = extra[k]
    return _dumps(d)


# --- gateway -> device -----------------------------------------------------


def _load(payload, limit=2048):
    if len(payload) > limit:
        raise ProtocolError("oversize", len(payload))
    try:
        d = json.loads(payload)
    except ValueError:
        raise ProtocolError("bad_json", "not JSON")
    if not isinstance(d, dict):
        raise ProtocolError("bad_schema", "not an object")
    if d.get("v") != VERSION:
        raise ProtocolError("bad_version", d.get("v"))
    return d


def decode_ack(payload):
    """-> (event_id, ok, error, retry). Raises ProtocolError."""
    d = _load(payload)
    eid = d.get("id")
    if not valid_msg_id(eid):
        raise ProtocolError("bad_event_id", eid)
    ok = d.get("ok")
    if ok is not True and ok is not False:
        raise ProtocolError("bad_schema", "ok")
    error = d.get("error")
    retry = d.get("retry") is True
    return eid, ok, error, retry


def decode_cmd(payload):
    """-> (cmd_id, cmd, args). Unknown command names are returned as-is so the
    device can answer them with an error result; only malformed messages raise."""
    d = _load(payload)
    cid = d.get("id")
    if not valid_msg_id(cid):
        raise ProtocolError("bad_cmd_id", cid)
    cmd = d.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError("bad_schema", "cmd")
    args = d.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError("bad_schema", "args")
    return cid, cmd, args
