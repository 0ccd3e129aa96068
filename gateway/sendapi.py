"""The send API's request, checked: `POST /api/notify` as JSON or multipart/form-data (pure).

Home Assistant, a doorbell script or a cron job sends a message (and maybe a photo) through the
gateway's sinks - above all its one WhatsApp session - without a second owner of that session.
`parse_json` and `parse_multipart` turn a body into a `SendRequest` or raise `BadRequest` with
an error code and a sentence for people; nothing here touches the store or the network, so the
endpoint queues nothing unless every field is right. The photo is checked later by
`gateway.photos.process_photo` (hostile JPEGs), in the service, before anything is queued.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
from dataclasses import dataclass

from gateway.protocol import valid_device_id

MAX_TEXT = 4096  # characters; WhatsApp captions allow 1024 but text messages much more
MAX_TITLE = 200
MAX_PHOTO_BYTES = 5 * 1024 * 1024
# The multipart envelope and the text fields around the photo.
MAX_BODY = MAX_PHOTO_BYTES + 64 * 1024
ALL = "all"
SINK_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class BadRequest(ValueError):
    """A request the API refuses with 400 (or 413 for `too_large`)."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


@dataclass(frozen=True)
class SendRequest:
    text: str
    title: str | None
    sinks: tuple[str, ...]  # ("all",) or sink names, in the order given, without repeats
    box: str | None  # route like that box's alerts (its recipients_by_box) and name it
    photo: bytes | None


def resolve_sinks(wanted: tuple[str, ...], available: list[str]) -> list[str]:
    """The sinks a request goes to; BadRequest naming the unknown or unconfigured ones."""
    if wanted == (ALL,):
        if not available:
            raise BadRequest("no_sinks", "no sink is configured on this gateway")
        return list(available)
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise BadRequest(
            "unknown_sink",
            f"unknown or unconfigured sink(s): {', '.join(unknown)}; "
            f'this gateway has: {", ".join(available) or "none"} (or "all")',
        )
    return list(wanted)


def _fields(text: object, title: object, sinks: object, box: object, photo: bytes | None) -> SendRequest:
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("bad_text", "text must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise BadRequest("bad_text", f"text must be at most {MAX_TEXT} characters")
    if title is not None and (not isinstance(title, str) or len(title) > MAX_TITLE):
        raise BadRequest("bad_title", f"title must be a string of at most {MAX_TITLE} characters")
    if sinks is None:
        sinks = [ALL]
    elif isinstance(sinks, str):
        sinks = [s.strip() for s in sinks.split(",") if s.strip()]
    if not isinstance(sinks, list) or not sinks or not all(isinstance(s, str) for s in sinks):
        raise BadRequest("bad_sinks", 'sinks must be a list of sink names, or "all"')
    if len(sinks) > 16 or not all(SINK_NAME.fullmatch(s) for s in sinks):
        raise BadRequest("unknown_sink", f"unknown sink name(s): {', '.join(map(str, sinks))[:200]}")
    if ALL in sinks and len(sinks) > 1:
        raise BadRequest("bad_sinks", '"all" cannot be combined with other sinks')
    if box is not None and (not isinstance(box, str) or not valid_device_id(box)):
        raise BadRequest("bad_box", "box must be a box id ([a-z0-9][a-z0-9-]{0,31})")
    if photo is not None and len(photo) > MAX_PHOTO_BYTES:
        raise BadRequest("too_large", f"photo must be at most {MAX_PHOTO_BYTES} bytes")
    return SendRequest(
        text=text.strip(),
        title=title.strip() or None if isinstance(title, str) else None,
        sinks=tuple(dict.fromkeys(sinks)),
        box=box,
        photo=photo,
    )


def parse_json(body: bytes) -> SendRequest:
    """`{"text": "...", "title": "...", "sinks": ["whatsapp"], "box": "front"}` (no photo in JSON)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("bad_json", "body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("bad_json", "body must be a JSON object")
    extra = set(data) - {"text", "title", "sinks", "box"}
    if extra:
        raise BadRequest(
            "unknown_field",
            f"unknown field(s): {', '.join(sorted(map(str, extra)))[:200]} (photos: multipart)",
        )
    return _fields(data.get("text"), data.get("title"), data.get("sinks"), data.get("box"), None)


def parse_multipart(content_type: str, body: bytes) -> SendRequest:
    """Fields `text`, `title`, `sinks` (comma separated), `box` and a file part `photo` (JPEG).

    Parsed with the standard library's e-mail parser: the body is already bounded (BodyLimit), and
    parts it cannot parse are refused, not guessed at.
    """
    if "boundary=" not in content_type:
        raise BadRequest("bad_multipart", "multipart/form-data needs a boundary")
    try:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body
        )
    except (ValueError, UnicodeEncodeError):
        raise BadRequest("bad_multipart", "the multipart body cannot be parsed") from None
    if not msg.is_multipart():
        raise BadRequest("bad_multipart", "the multipart body has no parts")
    values: dict[str, object] = {}
    photo: bytes | None = None
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise BadRequest("bad_multipart", "every part needs a name")
        raw = part.get_payload(decode=True)  # bytes for a leaf part, None for a nested multipart
        payload = raw if isinstance(raw, bytes) else b""
        if name == "photo":
            if photo is not None:
                raise BadRequest("bad_photo", "one photo per message")
            photo = payload
        elif name in ("text", "title", "sinks", "box"):
            if name in values:
                raise BadRequest("bad_multipart", f"field {name} given twice")
            try:
                values[name] = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"bad_{name}", f"{name} must be UTF-8 text") from None
        else:
            raise BadRequest("unknown_field", f"unknown field: {name[:40]}")
    return _fields(values.get("text"), values.get("title"), values.get("sinks"), values.get("box"), photo)


def alert_state(rec: dict) -> dict:
    """An outbox entry as the API shows it: pending, sent, delivered/read (WhatsApp receipts), failed."""
    state = rec.get("state")
    receipt = rec.get("receipt")
    if state == "sent":
        shown = receipt if receipt in ("delivered", "read") else "sent"
    elif state == "dead":
        shown = "failed"
    else:  # pending, or failed and waiting for its next try
        shown = "pending"
    return {
        "id": rec.get("id"),
        "state": shown,
        "sink": rec.get("notifier"),
        "recipient": rec.get("recipient"),
        "kind": rec.get("kind"),
        "attempts": rec.get("attempts"),
        "created_at": rec.get("created_at"),
        "sent_at": rec.get("sent_at"),
        "receipt_at": rec.get("receipt_at"),
        "next_attempt_at": rec.get("next_attempt_at") if shown == "pending" else None,
        "error": rec.get("last_error") if shown in ("failed", "pending") else None,
    }
