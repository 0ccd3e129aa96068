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


ERR = _json(_ref("Error"), "Error: {error, detail}")
DEVICE = {
    "name": "device",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,31}$"},
}
MSG_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,40}$"}
EVENT_ID = {"name": "event_id", "in": "path", "required": True, "schema": MSG_ID}
CSRF = {
    "name": "X-CSRF-Token",
    "in": "header",
    "required": True,
    "schema": {"type": "string"},
    "description": "Value of the pb_csrf cookie (double submit).",
}


def _q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


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
            "get": {
                "summary": "Events, newest first, keyset-paginated",
                "parameters": [
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
                "responses": {
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
            }
        },
        "/api/events/{device}/{event_id}": {
            "get": {
                "summary": "One event",
                "parameters": [DEVICE, EVENT_ID],
                "responses": {"200": _json(_ref("Event")), "400": ERR, "404": ERR},
            }
        },
        "/api/photos/{device}/{event_id}/{variant}": {
            "get": {
                "summary": "A photo of an event (JPEG), looked up by id in the data folder",
                "parameters": [
                    DEVICE,
                    EVENT_ID,
                    {
                        "name": "variant",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["original", "alert", "thumb"]},
                    },
                ],
                "responses": {
                    "200": {"description": "JPEG", "content": {"image/jpeg": {}}},
                    "400": ERR,
                    "404": ERR,
                },
            }
        },
        "/api/devices": {
            "get": {
                "summary": "Boxes and their health",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"devices": {"type": "array", "items": _ref("Device")}},
                        }
                    )
                },
            }
        },
        "/api/devices/{device}/command": {
            "post": {
                "summary": "Send a command to a box; the result arrives on /api/stream (command) and /api/commands/{id}",
                "parameters": [DEVICE, CSRF],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["cmd"],
                                "properties": {"cmd": {"enum": ["snapshot", "reboot", "ping"]}},
                            }
                        }
                    },
                },
                "responses": {
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
            }
        },
        "/api/devices/{device}/update": {
            "post": {
                "summary": "Send this checkout's firmware to a box over the air (as `parcelbox device update`); "
                "progress on /api/firmware",
                "parameters": [DEVICE, CSRF],
                "responses": {
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
            }
        },
        "/api/firmware": {
            "get": {
                "summary": "Each box's firmware against this checkout's (by the set's sha256), and its update",
                "responses": {
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
            }
        },
        "/api/commands/{cmd_id}": {
            "get": {
                "summary": "Result of a command, or pending",
                "parameters": [{"name": "cmd_id", "in": "path", "required": True, "schema": MSG_ID}],
                "responses": {
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
            }
        },
        "/api/health": {
            "get": {
                "summary": "Gateway counters (received, stored, duplicates, rejected.*, alerts, uptime), storage "
                "(ok, problems, disk free space, store damage counters) and web counters",
                "responses": {"200": _json({"type": "object"})},
            }
        },
        "/api/outbox": {
            "get": {
                "summary": "Alerts in the outbox",
                "parameters": [
                    _q("state", {"enum": list(OUTBOX_STATES)}, "only this state"),
                    _q("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 100}, "at most"),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"alerts": {"type": "array", "items": _ref("Alert")}},
                        }
                    ),
                    "400": ERR,
                },
            }
        },
        "/api/outbox/{alert_id}/retry": {
            "post": {
                "summary": "Make a failed or dead alert pending again, due now",
                "parameters": [
                    {
                        "name": "alert_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,200}$"},
                    },
                    CSRF,
                ],
                "responses": {"200": _json({"type": "object"}), "400": ERR, "403": ERR, "409": ERR},
            }
        },
        "/api/notify": {
            "post": {
                "summary": "Send a message (and a photo) through the gateway's sinks; queued durably",
                "description": (
                    "Queues one outbox entry per chosen sink and recipient (retries, rate limits and dead "
                    "letter as for box alerts) and answers 202 once they are on disk. From any address but "
                    "loopback it needs an API token (`Authorization: Bearer <token>`, scope `send`; "
                    "`parcelbox web token create NAME`); on loopback the dashboard session and X-CSRF-Token "
                    "work too. Bodies up to 5 MiB + 64 KiB; photos are JPEG, at most 5 MiB, validated and "
                    "re-encoded. Rate limited per token (web.api_rate_per_minute): 429 with Retry-After."
                ),
                "security": [{"bearer": []}, {}],
                "requestBody": {
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
                "responses": {
                    "202": _json(_ref("NotifyQueued"), "Queued"),
                    "400": ERR,
                    "401": ERR,
                    "403": ERR,
                    "413": ERR,
                    "429": ERR,
                },
            }
        },
        "/api/alerts/{alert_id}": {
            "get": {
                "summary": "State of one alert (an id from POST /api/notify, or any outbox id)",
                "security": [{"bearer": []}, {}],
                "parameters": [
                    {
                        "name": "alert_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,200}$"},
                    }
                ],
                "responses": {"200": _json(_ref("AlertState")), "400": ERR, "401": ERR, "404": ERR},
            }
        },
        "/api/channels": {
            "get": {
                "summary": "Apprise URLs by id (scheme + hash, never the URL), their routing and last outcome",
                "responses": {"200": _json({"type": "object"})},
            }
        },
        "/api/channels/{sink}/{recipient}/test": {
            "post": {
                "summary": "Queue a test message to one Apprise URL (rate limited)",
                "parameters": [
                    {"name": "sink", "in": "path", "required": True, "schema": {"const": "apprise"}},
                    {
                        "name": "recipient",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "the URL's id from GET /api/channels",
                    },
                    CSRF,
                ],
                "responses": {"202": _json(_ref("NotifyQueued"), "Queued"), "404": ERR, "429": ERR},
            }
        },
        "/api/whatsapp": {
            "get": {
                "summary": "WhatsApp link state; `qr_url` while pairing; which actions this gateway offers",
                "responses": {"200": _json(_ref("WhatsApp"))},
            }
        },
        "/api/whatsapp/qr.svg": {
            "get": {
                "summary": "The current pairing QR as SVG (it rotates; follow qr_version)",
                "responses": {"200": {"description": "SVG", "content": {"image/svg+xml": {}}}, "404": ERR},
            }
        },
        "/api/whatsapp/pair-code": {
            "post": {
                "summary": "Ask for a phone-number pairing code (enter it in WhatsApp > Linked devices)",
                "parameters": [CSRF],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["phone"],
                                "properties": {"phone": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json({"type": "object"}),
                    "400": ERR,
                    "403": ERR,
                    "501": ERR,
                    "502": ERR,
                },
            }
        },
        "/api/whatsapp/test": {
            "post": {
                "summary": "Send a test message (to the configured recipients, or to `recipient`); "
                "a recipient that is not configured needs `confirm: true` (else 409 confirm_needed); "
                "rate-limited (429 with Retry-After)",
                "parameters": [CSRF],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "recipient": {"type": "string"},
                                    "confirm": {"type": "boolean"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json({"type": "object"}),
                    "400": ERR,
                    "403": ERR,
                    "409": ERR,
                    "429": ERR,
                    "501": ERR,
                    "502": ERR,
                },
            }
        },
        "/api/whatsapp/unlink": {
            "post": {
                "summary": "Log this gateway out of WhatsApp (pair again afterwards)",
                "parameters": [CSRF],
                "responses": {"200": _json({"type": "object"}), "403": ERR, "501": ERR, "502": ERR},
            }
        },
        "/api/stream": {
            "get": {
                "summary": "Server-Sent Events: hello, event, device, outbox, command, whatsapp, resync",
                "responses": {
                    "200": {"description": "text/event-stream", "content": {"text/event-stream": {}}}
                },
            }
        },
        "/api/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}
        },
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
