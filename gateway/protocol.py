"""Wire protocol v1, gateway side (docs/protocol.md).

Pure functions and dataclasses: no MQTT, no disk. Every decoder either returns
a typed message or raises `ProtocolError` with a short `reason` code that the
ingest counts under (`rejected.<reason>`) and a human `detail` that it logs.
The firmware's `firmware/protocol.py` is the other half; tests encode on one
side and decode on the other.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

from gateway.vocabulary import EVENT_TYPES

VERSION = 1
DEFAULT_PREFIX = "parcelbox"

COMMANDS: tuple[str, ...] = ("snapshot", "reboot", "ping", "config")

DEVICE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
MSG_ID_RE = re.compile(r"[A-Za-z0-9_-]{8,40}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")


class ProtocolError(ValueError):
    """A rejected message. `reason` is a stable counter key, `detail` is for logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    """Size limits enforced before anything is buffered or decoded."""

    max_json_bytes: int = 16 * 1024
    max_photo_bytes: int = 2 * 1024 * 1024
    max_chunks: int = 256
    max_chunk_bytes: int = 64 * 1024


DEFAULT_LIMITS = Limits()


# TypeGuards: after a check passes, the checker knows the value is a str (or an int) too.
def valid_device_id(s: object) -> TypeGuard[str]:
    return isinstance(s, str) and DEVICE_ID_RE.fullmatch(s) is not None


def valid_msg_id(s: object) -> TypeGuard[str]:
    return isinstance(s, str) and MSG_ID_RE.fullmatch(s) is not None


# --- topics ------------------------------------------------------------------

TopicKind = Literal["status", "event", "photo", "ack", "cmd", "cmd_result", "ota", "ota_data", "ota_reply"]
_ONE_PART_TOPICS: dict[str, TopicKind] = {"status": "status", "event": "event", "ack": "ack", "cmd": "cmd"}


@dataclass(frozen=True)
class Topic:
    device: str
    kind: TopicKind
    event_id: str | None = None
    index: int | None = None


def topic(
    prefix: str, device: str, kind: TopicKind, event_id: str | None = None, index: int | None = None
) -> str:
    base = f"{prefix}/{device}"
    if kind == "photo":
        return f"{base}/photo/{event_id}/{index}"
    if kind == "cmd_result":
        return f"{base}/cmd/result"
    if kind == "ota_data":
        return f"{base}/ota/data"
    if kind == "ota_reply":
        return f"{base}/ota/reply"
    return f"{base}/{kind}"


def subscriptions(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """What the gateway subscribes to (device -> gateway traffic only)."""
    return [
        f"{prefix}/+/status",
        f"{prefix}/+/event",
        f"{prefix}/+/photo/+/+",
        f"{prefix}/+/cmd/result",
        f"{prefix}/+/ota/reply",
    ]


def parse_topic(prefix: str, name: str, limits: Limits = DEFAULT_LIMITS) -> Topic:
    """Split a topic under `prefix` into its parts, validating every id in it.

    Ids end up in file names, so anything path-like (`..`, `/`, `%2e`) is refused here.
    """
    if not name.startswith(prefix + "/"):
        raise ProtocolError("bad_topic", f"not under {prefix!r}")
    parts = name[len(prefix) + 1 :].split("/")
    device = parts[0]
    if not valid_device_id(device):
        raise ProtocolError("bad_device_id", repr(device)[:80])
    rest = parts[1:]
    if len(rest) == 1 and rest[0] in _ONE_PART_TOPICS:
        return Topic(device, _ONE_PART_TOPICS[rest[0]])
    if rest == ["cmd", "result"]:
        return Topic(device, "cmd_result")
    if rest == ["ota", "reply"]:
        return Topic(device, "ota_reply")
    if len(rest) == 3 and rest[0] == "photo":
        eid, idx = rest[1], rest[2]
        if not valid_msg_id(eid):
            raise ProtocolError("bad_event_id", repr(eid)[:80])
        if not idx.isdigit() or len(idx) > 5 or (len(idx) > 1 and idx[0] == "0") or not idx.isascii():
            raise ProtocolError("bad_chunk_index", repr(idx)[:80])
        index = int(idx)
        if index >= limits.max_chunks:
            raise ProtocolError("too_many_chunks", f"chunk index {index} >= {limits.max_chunks}")
        return Topic(device, "photo", eid, index)
    raise ProtocolError("bad_topic", repr(name)[:120])


# --- JSON helpers ---------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _NotFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    """`1e999` is valid JSON grammar, but Python's json turns it into infinity, which the store keeps
    and no strict JSON encoder (the dashboard's) can write back. Refused here, at the boundary, in
    every field however deep (sensors included)."""
    x = float(text)
    if not math.isfinite(x):
        raise _NotFinite(f"{text[:40]} is not a finite number")
    return x


def _load_object(payload: bytes, limits: Limits) -> dict[str, Any]:
    if len(payload) > limits.max_json_bytes:
        raise ProtocolError("oversize", f"{len(payload)} bytes > {limits.max_json_bytes}")
    try:
        obj = json.loads(payload, parse_constant=_reject_constant, parse_float=_finite_float)
    except _NotFinite as exc:
        raise ProtocolError("bad_number", str(exc)[:120]) from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_json", str(exc)[:120]) from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_schema", "payload is not a JSON object")
    v = obj.get("v")
    if type(v) is not int or v != VERSION:
        raise ProtocolError("bad_version", f"v={v!r}"[:80])
    return obj


def _is_int(x: object) -> TypeGuard[int]:
    return type(x) is int


def _opt_int(obj: dict[str, Any], key: str, lo: int = -(2**53), hi: int = 2**53) -> int | None:
    x = obj.get(key)
    if x is None:
        return None
    if not _is_int(x) or not lo <= x <= hi:
        raise ProtocolError("bad_schema", f"{key} must be an integer or null")
    return x


# --- device -> gateway ------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    online: bool
    fw: str | None = None
    uptime_s: int | None = None
    rssi: int | None = None
    heap_free: int | None = None
    battery_mv: int | None = None
    spooled: int | None = None
    # Over-the-air update (docs/protocol.md, "Over-the-air update"): None from boxes without it.
    set: str | None = None
    flash_free: int | None = None
    trial: bool = False
    trial_set: str | None = None  # the set on trial (a config update's differs from `set`)
    updating: str | None = None
    update: dict[str, Any] | None = None


def _short_str(obj: dict[str, Any], key: str, n: int) -> str | None:
    x = obj.get(key)
    if x is None:
        return None
    if not isinstance(x, str) or len(x) > n:
        raise ProtocolError("bad_schema", f"{key} must be a string of at most {n} characters")
    return x


def _update_outcome(x: object) -> dict[str, Any] | None:
    """The box's last update outcome, reduced to known keys of known types."""
    if x is None:
        return None
    if not isinstance(x, dict) or not isinstance(x.get("ok"), bool):
        raise ProtocolError("bad_schema", "update must be an object with ok")
    out: dict[str, Any] = {"ok": x["ok"]}
    for k, n in (("id", 40), ("set", 64), ("version", 32), ("from", 32), ("reason", 300)):
        v = x.get(k)
        out[k] = v[:n] if isinstance(v, str) else None
    return out


def decode_status(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Status:
    obj = _load_object(payload, limits)
    online = obj.get("online")
    if not isinstance(online, bool):
        raise ProtocolError("bad_schema", "online must be true or false")
    fw = obj.get("fw")
    if fw is not None and (not isinstance(fw, str) or len(fw) > 32):
        raise ProtocolError("bad_schema", "fw must be a short string")
    return Status(
        online=online,
        fw=fw,
        uptime_s=_opt_int(obj, "uptime_s", 0),
        rssi=_opt_int(obj, "rssi", -200, 50),
        heap_free=_opt_int(obj, "heap_free", 0),
        battery_mv=_opt_int(obj, "battery_mv", 0, 100_000),
        spooled=_opt_int(obj, "spooled", 0),
        set=_sha_or_none(obj.get("set")),
        flash_free=_opt_int(obj, "flash_free", 0),
        trial=obj.get("trial") is True,
        trial_set=_sha_or_none(obj.get("trial_set")),
        updating=_short_str(obj, "updating", 32),
        update=_update_outcome(obj.get("update")),
    )


def _sha_or_none(x: object) -> str | None:
    if x is None:
        return None
    if not isinstance(x, str) or SHA256_RE.fullmatch(x) is None:
        raise ProtocolError("bad_schema", "set must be 64 lowercase hex digits")
    return x


@dataclass(frozen=True)
class PhotoMeta:
    size: int
    sha256: str
    chunks: int
    chunk_size: int


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    ts: float | None
    seq: int
    sensors: dict[str, Any] = field(default_factory=dict)
    photo: PhotoMeta | None = None
    cmd: str | None = None
    # The box's spool was full and it dropped this event's photo to keep the record (firmware spool policy).
    photo_dropped: bool = False


def _decode_photo(p: object, limits: Limits) -> PhotoMeta | None:
    if p is None:
        return None
    if not isinstance(p, dict):
        raise ProtocolError("bad_schema", "photo must be an object or null")
    size, sha, chunks, chunk_size = p.get("size"), p.get("sha256"), p.get("chunks"), p.get("chunk_size")
    if not (_is_int(size) and _is_int(chunks) and _is_int(chunk_size)):
        raise ProtocolError("bad_schema", "photo.size, .chunks and .chunk_size must be integers")
    if not isinstance(sha, str) or SHA256_RE.fullmatch(sha) is None:
        raise ProtocolError("bad_sha256", "photo.sha256 must be 64 lowercase hex digits")
    if size <= 0 or size > limits.max_photo_bytes:
        raise ProtocolError("oversize", f"photo of {size} bytes (limit {limits.max_photo_bytes})")
    if chunk_size <= 0 or chunk_size > limits.max_chunk_bytes:
        raise ProtocolError("oversize", f"chunk_size {chunk_size} (limit {limits.max_chunk_bytes})")
    if chunks <= 0 or chunks > limits.max_chunks:
        raise ProtocolError("too_many_chunks", f"{chunks} chunks (limit {limits.max_chunks})")
    if chunks != -(-size // chunk_size):
        raise ProtocolError("bad_schema", f"{chunks} chunks do not fit size {size} / chunk_size {chunk_size}")
    return PhotoMeta(size, sha, chunks, chunk_size)


def decode_event(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Event:
    obj = _load_object(payload, limits)
    eid = obj.get("id")
    if not valid_msg_id(eid):
        raise ProtocolError("bad_event_id", repr(eid)[:80])
    etype = obj.get("type")
    if etype not in EVENT_TYPES:
        raise ProtocolError("bad_type", repr(etype)[:40])
    ts = obj.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float) or not 0 <= ts < 2**33):
        raise ProtocolError("bad_schema", "ts must be unix seconds or null")
    seq = obj.get("seq")
    if not _is_int(seq) or not 0 <= seq < 2**53:
        raise ProtocolError("bad_schema", "seq must be a non-negative integer")
    sensors = obj.get("sensors", {})
    if sensors is None:
        sensors = {}
    if not isinstance(sensors, dict):
        raise ProtocolError("bad_schema", "sensors must be an object")
    cmd = obj.get("cmd")
    if cmd is not None and not valid_msg_id(cmd):
        raise ProtocolError("bad_cmd_id", repr(cmd)[:80])
    photo = _decode_photo(obj.get("photo"), limits)
    dropped = photo is None and obj.get("photo_dropped") is True
    return Event(eid, etype, ts, seq, sensors, photo, cmd, dropped)


@dataclass(frozen=True)
class CommandResult:
    id: str
    ok: bool
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def decode_cmd_result(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> CommandResult:
    obj = _load_object(payload, limits)
    cid = obj.get("id")
    if not valid_msg_id(cid):
        raise ProtocolError("bad_cmd_id", repr(cid)[:80])
    ok = obj.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError("bad_schema", "ok must be true or false")
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        raise ProtocolError("bad_schema", "error must be a string")
    extra = {k: v for k, v in obj.items() if k not in ("v", "id", "ok", "error")}
    return CommandResult(cid, ok, error, extra)


# --- gateway -> device ------------------------------------------------------------


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def encode_ack(event_id: str) -> bytes:
    return _dumps({"v": VERSION, "id": event_id, "ok": True})


def encode_nack(event_id: str, error: str, retry: bool) -> bytes:
    return _dumps({"v": VERSION, "id": event_id, "ok": False, "error": error, "retry": retry})


def encode_cmd(cmd_id: str, cmd: str, args: dict[str, Any] | None = None) -> bytes:
    if not valid_msg_id(cmd_id):
        raise ProtocolError("bad_cmd_id", cmd_id)
    if cmd not in COMMANDS:
        raise ProtocolError("bad_command", cmd)
    return _dumps({"v": VERSION, "id": cmd_id, "cmd": cmd, "args": args or {}})
