"""OpenAPI 3.1 description of the dashboard's JSON API, served at /api/openapi.json: the routes by hand,
the record schemas generated from gateway/ports.py (gateway/web/schema.py).

`tests/test_web_api.py` checks that every /api route of the app appears here with its methods.
"""

from __future__ import annotations

from typing import Any

from gateway.ports import DeviceRecord, EventRecord, OutboxRecord, WhatsAppState
from gateway.vocabulary import EVENT_TYPES, OUTBOX_STATES
from gateway.web.schema import record_schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _p(name: str, schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    """A path parameter (`_q`'s twin): always required."""
    out: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": schema}
    if description is not None:
        out["description"] = description
    return out


ERR = _json(_ref("Error"), "Error: {error, detail}")
DEVICE = _p("device", {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,31}$"})
MSG_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,40}$"}
EVENT_ID = _p("event_id", MSG_ID)
ALERT_ID = _p("alert_id", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,200}$"})
BEARER_OR_SESSION: list[dict[str, list[str]]] = [
    {"bearer": []},
    {},
]  # an API token, or the dashboard's session (loopback)
CSRF = {
    "name": "X-CSRF-Token",
    "in": "header",
    "required": True,
    "schema": {"type": "string"},
    "description": "Value of the pb_csrf cookie (double submit).",
}


def _body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _list_of(key: str, item: str) -> dict[str, Any]:
    """`{key: [item, ...]}`: how the list routes answer."""
    return {"type": "object", "properties": {key: {"type": "array", "items": _ref(item)}}}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    description: str | None = None,
    security: list[dict[str, Any]] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One operation; keys in the order OpenAPI documents show them (and the served JSON always had)."""
    out: dict[str, Any] = {"summary": summary}
    if description is not None:
        out["description"] = description
    if security is not None:
        out["security"] = security
    if parameters is not None:
        out["parameters"] = parameters
    if body is not None:
        out["requestBody"] = body
    out["responses"] = responses
    return out


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "parcelbox dashboard API",
        "version": "1",
        "description": (
            "JSON API behind the parcelbox dashboard. On a non-loopback bind every call needs the session "
            "cookie from POST /login. Every POST needs the X-CSRF-Token header equal to the pb_csrf cookie. "
            "Instead of both, scripts send an API token (`Authorization: Bearer <token>`, `parcelbox web token "
            "create NAME --scope send|read`): `send` for POST /api/notify and GET /api/alerts/{id} of its "
            "messages, `read` for every GET."
        ),
    },
    "paths": {
        "/api/events": {
            "get": _op(
                "Events, newest first, keyset-paginated",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "events": {"type": "array", "items": _ref("Event")},
                                "next": {
                                    "type": ["string", "null"],
                                    "description": "cursor for the next page, null at the end",
                                },
                            },
                        }
                    ),
                    "400": ERR,
                },
                parameters=[
                    _q("device", {"type": "string"}, "only this box"),
                    _q(
                        "type",
                        {"type": "string"},
                        "only these types, comma separated: delivery, pickup, lid_closed, lid_left_open, snapshot",
                    ),
                    _q("since", {"type": "number"}, "event time >= (seconds since 1970)"),
                    _q("until", {"type": "number"}, "event time < (seconds since 1970)"),
                    _q("before", {"type": "string"}, "cursor: the `next` value of the previous page"),
                    _q(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "page size"
                    ),
                ],
            )
        },
        "/api/events/{device}/{event_id}": {
            "get": _op(
                "One event",
                {"200": _json(_ref("Event")), "400": ERR, "404": ERR},
                parameters=[DEVICE, EVENT_ID],
            )
        },
        "/api/photos/{device}/{event_id}/{variant}": {
            "get": _op(
                "A photo of an event (JPEG), looked up by id in the data folder",
                {"200": {"description": "JPEG", "content": {"image/jpeg": {}}}, "400": ERR, "404": ERR},
                parameters=[DEVICE, EVENT_ID, _p("variant", {"enum": ["original", "alert", "thumb"]})],
            )
        },
        "/api/devices": {"get": _op("Boxes and their health", {"200": _json(_list_of("devices", "Device"))})},
        "/api/devices/{device}/command": {
            "post": _op(
                "Send a command to a box; the result arrives on /api/stream (command) and /api/commands/{id}",
                {
                    "202": _json(
                        {
                            "type": "object",
                            "properties": {
                                "id": MSG_ID,
                                "device": {"type": "string"},
                                "cmd": {"type": "string"},
                            },
                        },
                        "Sent",
                    ),
                    "400": ERR,
                    "403": ERR,
                    "404": ERR,
                },
                parameters=[DEVICE, CSRF],
                body=_body(
                    {
                        "type": "object",
                        "required": ["cmd"],
                        "properties": {"cmd": {"enum": ["snapshot", "reboot", "ping"]}},
                    }
                ),
            )
        },
        "/api/devices/{device}/update": {
            "post": _op(
                "Send this checkout's firmware to a box over the air (as `parcelbox device update`); "
                "progress on /api/firmware",
                {
                    "202": _json(
                        {
                            "type": "object",
                            "properties": {
                                "id": MSG_ID,
                                "device": {"type": "string"},
                                "version": {"type": "string"},
                                "from": {"type": ["string", "null"]},
                            },
                        },
                        "Queued: the box takes it now, or at its next wake",
                    ),
                    "400": ERR,
                    "403": ERR,
                    "404": ERR,
                    "409": _json(
                        _ref("Error"), "Refused: the detail says why (no room, already running it, ...)"
                    ),
                    "501": ERR,
                },
                parameters=[DEVICE, CSRF],
            )
        },
        "/api/firmware": {
            "get": _op(
                "Each box's firmware against this checkout's (by the set's sha256), and its update",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "devices": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "device": {"type": "string"},
                                            "fw": {"type": ["string", "null"]},
                                            "latest_version": {"type": ["string", "null"]},
                                            "latest_error": {"type": ["string", "null"]},
                                            "update_available": {"type": ["boolean", "null"]},
                                            "update": {
                                                "type": ["object", "null"],
                                                "properties": {
                                                    "id": {"type": "string"},
                                                    "version": {"type": ["string", "null"]},
                                                    "state": {
                                                        "enum": [
                                                            "queued",
                                                            "offered",
                                                            "receiving",
                                                            "staged",
                                                            "done",
                                                            "failed",
                                                            "refused",
                                                            "current",
                                                        ]
                                                    },  # fmt: skip
                                                    "percent": {"type": "integer"},
                                                    "reason": {"type": ["string", "null"]},
                                                    "active": {"type": "boolean"},
                                                },
                                            },
                                        },
                                    },
                                }
                            },
                        }
                    )
                },
            )
        },
        "/api/commands/{cmd_id}": {
            "get": _op(
                "Result of a command, or pending",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "id": MSG_ID,
                                "pending": {"type": "boolean"},
                                "ok": {"type": "boolean"},
                                "error": {"type": ["string", "null"]},
                                "event": {"type": "string"},
                            },
                        }
                    ),
                    "400": ERR,
                },
                parameters=[_p("cmd_id", MSG_ID)],
            )
        },
        "/api/health": {
            "get": _op(
                "Gateway counters (received, stored, duplicates, rejected.*, alerts, uptime), storage "
                "(ok, problems, disk free space, store damage counters) and web counters",
                {"200": _json({"type": "object"})},
            )
        },
        "/api/outbox": {
            "get": _op(
                "Alerts in the outbox",
                {"200": _json(_list_of("alerts", "Alert")), "400": ERR},
                parameters=[
                    _q("state", {"enum": list(OUTBOX_STATES)}, "only this state"),
                    _q("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 100}, "at most"),
                ],
            )
        },
        "/api/outbox/{alert_id}/retry": {
            "post": _op(
                "Make a failed or dead alert pending again, due now",
                {"200": _json({"type": "object"}), "400": ERR, "403": ERR, "409": ERR},
                parameters=[ALERT_ID, CSRF],
            )
        },
        "/api/notify": {
            "post": _op(
                "Send a message (and a photo) through the gateway's sinks; queued durably",
                {
                    "202": _json(_ref("NotifyQueued"), "Queued"),
                    "400": ERR,
                    "401": ERR,
                    "403": ERR,
                    "413": ERR,
                    "429": ERR,
                },
                description=(
                    "Queues one outbox entry per chosen sink and recipient (retries, rate limits and dead "
                    "letter as for box alerts) and answers 202 once they are on disk. From any address but "
                    "loopback it needs an API token (`Authorization: Bearer <token>`, scope `send`; "
                    "`parcelbox web token create NAME`); on loopback the dashboard session and X-CSRF-Token "
                    "work too. Bodies up to 5 MiB + 64 KiB; photos are JPEG, at most 5 MiB, validated and "
                    "re-encoded. Rate limited per token (web.api_rate_per_minute): 429 with Retry-After."
                ),
                security=BEARER_OR_SESSION,
                body={
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("NotifyRequest")},
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["text"],
                                "properties": {
                                    "text": {"type": "string", "maxLength": 4096},
                                    "title": {"type": "string", "maxLength": 200},
                                    "sinks": {"type": "string", "description": 'comma separated, or "all"'},
                                    "box": {"type": "string"},
                                    "photo": {"type": "string", "format": "binary", "description": "JPEG"},
                                },
                            }
                        },
                    },
                },
            )
        },
        "/api/alerts/{alert_id}": {
            "get": _op(
                "State of one alert (an id from POST /api/notify, or any outbox id)",
                {"200": _json(_ref("AlertState")), "400": ERR, "401": ERR, "404": ERR},
                security=BEARER_OR_SESSION,
                parameters=[ALERT_ID],
            )
        },
        "/api/channels": {
            "get": _op(
                "Apprise URLs by id (scheme + hash, never the URL), their routing and last outcome",
                {"200": _json({"type": "object"})},
            )
        },
        "/api/channels/{sink}/{recipient}/test": {
            "post": _op(
                "Queue a test message to one Apprise URL (rate limited)",
                {"202": _json(_ref("NotifyQueued"), "Queued"), "404": ERR, "429": ERR},
                parameters=[
                    _p("sink", {"const": "apprise"}),
                    _p("recipient", {"type": "string"}, "the URL's id from GET /api/channels"),
                    CSRF,
                ],
            )
        },
        "/api/whatsapp": {
            "get": _op(
                "WhatsApp link state; `qr_url` while pairing; which actions this gateway offers",
                {"200": _json(_ref("WhatsApp"))},
            )
        },
        "/api/whatsapp/qr.svg": {
            "get": _op(
                "The current pairing QR as SVG (it rotates; follow qr_version)",
                {"200": {"description": "SVG", "content": {"image/svg+xml": {}}}, "404": ERR},
            )
        },
        "/api/whatsapp/pair-code": {
            "post": _op(
                "Ask for a phone-number pairing code (enter it in WhatsApp > Linked devices)",
                {"200": _json({"type": "object"}), "400": ERR, "403": ERR, "501": ERR, "502": ERR},
                parameters=[CSRF],
                body=_body(
                    {"type": "object", "required": ["phone"], "properties": {"phone": {"type": "string"}}}
                ),
            )
        },
        "/api/whatsapp/test": {
            "post": _op(
                "Send a test message (to the configured recipients, or to `recipient`); "
                "a recipient that is not configured needs `confirm: true` (else 409 confirm_needed); "
                "rate-limited (429 with Retry-After)",
                {
                    "200": _json({"type": "object"}),
                    "400": ERR,
                    "403": ERR,
                    "409": ERR,
                    "429": ERR,
                    "501": ERR,
                    "502": ERR,
                },
                parameters=[CSRF],
                body=_body(
                    {
                        "type": "object",
                        "properties": {"recipient": {"type": "string"}, "confirm": {"type": "boolean"}},
                    },
                    required=False,
                ),
            )
        },
        "/api/whatsapp/unlink": {
            "post": _op(
                "Log this gateway out of WhatsApp (pair again afterwards)",
                {"200": _json({"type": "object"}), "403": ERR, "501": ERR, "502": ERR},
                parameters=[CSRF],
            )
        },
        "/api/stream": {
            "get": _op(
                "Server-Sent Events: hello, event, device, outbox, command, whatsapp, resync",
                {"200": {"description": "text/event-stream", "content": {"text/event-stream": {}}}},
            )
        },
        "/api/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"})})},
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API token from `parcelbox web token create NAME --scope send|read`",
            }
        },
        "schemas": {
            "NotifyRequest": {
                "type": "object",
                "required": ["text"],
                "additionalProperties": False,
                "properties": {
                    "text": {"type": "string", "minLength": 1, "maxLength": 4096},
                    "title": {"type": "string", "maxLength": 200},
                    "sinks": {
                        "oneOf": [
                            {"const": "all"},
                            {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        ],
                        "description": "whatsapp, apprise, webhook, folder (those configured), or all",
                    },
                    "box": {"type": "string", "description": "route like this box's alerts, and name it"},
                },
            },
            "NotifyQueued": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "alerts": {"type": "array", "items": {"type": "string"}},
                    "sinks": {"type": "array", "items": {"type": "string"}},
                },
            },
            "AlertState": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "state": {"enum": ["pending", "sent", "delivered", "read", "failed"]},
                    "sink": {"type": "string"},
                    "recipient": {"type": "string"},
                    "kind": {"type": "string"},
                    "attempts": {"type": "integer"},
                    "created_at": {"type": "number"},
                    "sent_at": {"type": ["number", "null"]},
                    "receipt_at": {"type": ["number", "null"]},
                    "next_attempt_at": {"type": ["number", "null"]},
                    "error": {"type": ["string", "null"]},
                },
            },
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
            },
            # Generated from gateway/ports.py (gateway/web/schema.py); only what a type cannot say is here.
            "Event": record_schema(
                EventRecord,
                overrides={"id": MSG_ID, "type": {"enum": list(EVENT_TYPES)}},
                extra={
                    "photos": {
                        "type": ["object", "null"],
                        "description": "URLs of original, alert and thumb",
                    }
                },
            ),
            "Device": record_schema(DeviceRecord),
            "Alert": record_schema(OutboxRecord),
            "WhatsApp": record_schema(
                WhatsAppState,
                omit=("qr",),  # served as an image instead (qr_url)
                extra={
                    "qr_version": {"type": ["string", "null"]},
                    "qr_url": {"type": ["string", "null"]},
                    "actions": {
                        "type": "object",
                        "properties": {
                            "pair_code": {"type": "boolean"},
                            "test_message": {"type": "boolean"},
                            "unlink": {"type": "boolean"},
                        },
                    },
                },
            ),
        },
    },
}
