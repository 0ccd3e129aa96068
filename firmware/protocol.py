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

# Over-the-air update limits (docs/protocol.md, "Over-the-air update"). The gateway refuses a set
# beyond them before sending; the box refuses an offer beyond them.
OTA_MAX_FILES = const(48)
OTA_MAX_FILE_BYTES = const(131072)
OTA_MAX_SET_BYTES = const(1048576)
OTA_MAX_CHUNK_BYTES = const(8192)
OTA_DEFAULT_CHUNK_BYTES = const(4096)
OTA_MAX_OFFER_BYTES = const(6144)
_OTA_NAME_MAX = const(32)
_OTA_HEADER_MAX = const(200)
# The boot files run the switch and the rollback; an update never replaces them (otaboot.py).
OTA_BOOT_FILES = ("boot.py", "otaboot.py", "otaboot.mpy")
# The box's config travels the same way (a "partial" offer: only the files it lists change).
OTA_CONFIG = "config.json"

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
        self.ota = (base + "ota").encode()  # gateway -> box: offer (retained), confirm
        self.ota_data = (base + "ota/data").encode()  # gateway -> box: one chunk per need
        self.ota_reply = (base + "ota/reply").encode()  # box -> gateway: need, staged, outcome

    def photo(self, event_id, index):
        return ("%sphoto/%s/%d" % (self.base, event_id, index)).encode()


# --- device -> gateway -----------------------------------------------------


def _dumps(obj):
    return json.dumps(obj).encode()


def status_payload(fw, uptime_s, rssi, heap_free, battery_mv, spooled, extra=None):
    d = {
        "v": VERSION,
        "online": True,
        "fw": fw,
        "uptime_s": uptime_s,
        "rssi": rssi,
        "heap_free": heap_free,
        "battery_mv": battery_mv,
        "spooled": spooled,
    }
    if extra:
        for k in extra:
            d[k] = extra[k]
    return _dumps(d)


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


# --- over-the-air update -------------------------------------------------------


def _is_hex64(s):
    if not isinstance(s, str) or len(s) != 64:
        return False
    for c in s:
        if not (("0" <= c <= "9") or ("a" <= c <= "f")):
            return False
    return True


def valid_ota_name(s):
    """An app file directly in the app folder: `[a-z0-9_]{1,28}` + `.py` or `.mpy`, never a
    boot file, or `config.json`. No `/`, so nothing outside the app folder can be named."""
    if s == OTA_CONFIG:
        return True
    if not isinstance(s, str) or not 4 <= len(s) <= _OTA_NAME_MAX or s in OTA_BOOT_FILES:
        return False
    if s.endswith(".py"):
        stem = s[:-3]
    elif s.endswith(".mpy"):
        stem = s[:-4]
    else:
        return False
    if not stem:
        return False
    for c in stem:
        if not (("a" <= c <= "z") or ("0" <= c <= "9") or c == "_"):
            return False
    return True


def _int_in(d, key, lo, hi, default):
    x = d.get(key, default)
    if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
        raise ProtocolError("bad_schema", key)
    return x


def decode_ota(payload):
    """A message on `<prefix>/<device>/ota` -> dict with a valid "op" ("offer" or "confirm").
    Raises ProtocolError for anything malformed or over the limits."""
    d = _load(payload, OTA_MAX_OFFER_BYTES)
    op = d.get("op")
    if op == "confirm":
        if not _is_hex64(d.get("set")):
            raise ProtocolError("bad_schema", "set")
        return d
    if op != "offer":
        raise ProtocolError("bad_op", op)
    if not valid_msg_id(d.get("id")):
        raise ProtocolError("bad_update_id", d.get("id"))
    ver = d.get("version")
    if not isinstance(ver, str) or not 1 <= len(ver) <= 32:
        raise ProtocolError("bad_schema", "version")
    if not _is_hex64(d.get("set")):
        raise ProtocolError("bad_schema", "set")
    files = d.get("files")
    if not isinstance(files, list) or not 1 <= len(files) <= OTA_MAX_FILES:
        raise ProtocolError("bad_schema", "files")
    total = 0
    seen = {}
    for f in files:
        if not isinstance(f, list) or len(f) != 3:
            raise ProtocolError("bad_schema", "file")
        name, size, sha = f
        if not valid_ota_name(name):
            raise ProtocolError("bad_path", name)
        if name in seen:
            raise ProtocolError("bad_schema", "duplicate " + name)
        seen[name] = True
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= OTA_MAX_FILE_BYTES:
            raise ProtocolError("oversize", name)
        if not _is_hex64(sha):
            raise ProtocolError("bad_schema", "sha256 of " + name)
        total += size
    if total > OTA_MAX_SET_BYTES:
        raise ProtocolError("oversize", total)
    p = d.get("partial", False)
    if p is not True and p is not False:
        raise ProtocolError("bad_schema", "partial")
    d["partial"] = p
    if OTA_CONFIG in seen and not p:
        raise ProtocolError("bad_schema", "config.json only in a partial offer")
    d["chunk"] = _int_in(d, "chunk", 256, OTA_MAX_CHUNK_BYTES, OTA_DEFAULT_CHUNK_BYTES)
    d["trial_boots"] = _int_in(d, "trial_boots", 1, 10, 3)
    d["trial_s"] = _int_in(d, "trial_s", 30, 3600, 300)
    return d


def decode_ota_chunk(payload):
    """`<header JSON>\n<data>` on `<prefix>/<device>/ota/data` -> (update id, file index, offset,
    sha256 hex of data, memoryview of data). The data is a view: never copied."""
    mv = memoryview(payload)
    end = -1
    for i in range(min(len(mv), _OTA_HEADER_MAX)):
        if mv[i] == 10:
            end = i
            break
    if end < 0:
        raise ProtocolError("bad_chunk", "no header")
    try:
        h = json.loads(bytes(mv[:end]))
    except ValueError:
        raise ProtocolError("bad_chunk", "header not JSON")
    if not isinstance(h, dict) or h.get("v") != VERSION:
        raise ProtocolError("bad_chunk", "header")
    uid = h.get("id")
    f = h.get("f")
    o = h.get("o")
    if not valid_msg_id(uid) or not isinstance(f, int) or not isinstance(o, int) or f < 0 or o < 0:
        raise ProtocolError("bad_chunk", "header fields")
    if not _is_hex64(h.get("sha")):
        raise ProtocolError("bad_chunk", "sha256")
    data = mv[end + 1 :]
    if len(data) > OTA_MAX_CHUNK_BYTES:
        raise ProtocolError("oversize", len(data))
    return uid, f, o, h["sha"], data


def ota_reply_payload(op, uid, **extra):
    d = {"v": VERSION, "op": op, "id": uid}
    for k in extra:
        d[k] = extra[k]
    return _dumps(d)
