"""The dashboard as a Starlette app: pages, JSON API, live stream, login.

Everything it knows comes from a `GatewayPort`; it never opens the store or a
photo path of its own making. Port calls can block (disk), so they run in the
thread pool (sync endpoints, or `run_in_threadpool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway import bus as busmod
from gateway.jsonsafe import json_safe
from gateway.ports import GatewayPort
from gateway.protocol import valid_device_id, valid_msg_id
from gateway.ratelimit import SendLimiter
from gateway.sendapi import MAX_BODY as NOTIFY_MAX_BODY
from gateway.sendapi import BadRequest, alert_state, parse_json, parse_multipart
from gateway.vocabulary import EVENT_TYPES, OUTBOX_STATES, for_browser, is_outbox_state
from gateway.web import i18n
from gateway.web.auth import (
    DEVICE_LIFETIME_S,
    LoginLimiter,
    SessionSigner,
    load_or_create_secret,
    password_fingerprint,
    read_password_hash,
    verify_password,
)
from gateway.web.bodylimit import BodyLimit
from gateway.web.guard import (
    CSRF_COOKIE,
    DEVICE_COOKIE,
    SESSION_COOKIE,
    Guard,
    cookie_header,
    parse_cookies,
)
from gateway.web.live import Broadcaster
from gateway.web.openapi import OPENAPI
from gateway.web.qr import qr_svg, qr_version
from gateway.web.settings import WebSettings
from gateway.web.tokens import TokenStore
from gateway.whatsapp.addresses import recipient_key

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
PAGES = ("/", "/boxes", "/whatsapp", "/alerts")
VARIANTS = ("original", "alert", "thumb")
WEB_COMMANDS = ("snapshot", "reboot", "ping")
MAX_PAGE = 200
MAX_BODY = 8 * 1024  # every route's body limit, enforced while reading (gateway/web/bodylimit.py)
# ...but the send API's, which carries a photo (gateway/sendapi.py).
BODY_LIMITS = {"/api/notify": NOTIFY_MAX_BODY}
PHONE_RE = re.compile(r"\+?[0-9]{7,15}")
# Alert ids are built by the gateway from device, event id, notifier and a hash: longer than a
# message id, but from the same path-safe alphabet.
# Test messages from the dashboard: (count, per seconds), overall and per recipient (gateway/ratelimit.py).
WA_TEST_OVERALL = (5, 600.0)
WA_TEST_PER_RECIPIENT = (3, 600.0)
ALERT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,200}")
NO_STORE = {"cache-control": "no-store"}
# Private but cacheable until revalidated: the browser asks again (and is refused after logout).
PRIVATE_REVALIDATE = {"cache-control": "private, no-cache"}


class ApiError(HTTPException):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail, headers)
        self.error = error


# --- record shaping ------------------------------------------------------------


class SafeJSONResponse(JSONResponse):
    """Strict JSON (Starlette's default refuses NaN/Infinity with a 500); a non-finite number that
    slipped into a record is written as null instead of failing the whole response."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:
            log.warning("non-finite number in an API response written as null")
            return super().render(json_safe(content))


def event_out(e: Mapping[str, Any]) -> dict[str, Any]:
    """An EventRecord plus the URLs of its photos (served by id, never by path); sensor values that
    are not finite numbers (stored before the protocol refused them) become null."""
    out = dict(e)
    if "sensors" in out:
        out["sensors"] = json_safe(out["sensors"])
    if e.get("photo"):
        base = f"/api/photos/{e['device']}/{e['id']}"
        out["photos"] = {v: f"{base}/{v}" for v in VARIANTS}
    else:
        out["photos"] = None
    return out


def whatsapp_out(state: dict[str, Any]) -> dict[str, Any]:
    """WhatsApp state for the browser: the QR payload becomes a versioned image URL."""
    out = {k: v for k, v in state.items() if k != "qr"}
    ver = qr_version(state.get("qr"))
    out["qr_version"] = ver
    out["qr_url"] = f"/api/whatsapp/qr.svg?v={ver}" if ver else None
    out.setdefault("state", "unknown")
    return out


def live_transform(topic: str, data: dict[str, Any]) -> Any:
    if topic == busmod.EVENT_STORED:
        return event_out(data)
    if topic == busmod.WHATSAPP_STATE:
        return whatsapp_out(data)
    return data


# --- parameter checks ----------------------------------------------------------


def _device(v: str) -> str:
    if not valid_device_id(v):
        raise ApiError(400, "bad_device_id", "device id must match [a-z0-9][a-z0-9-]{0,31}")
    return v


def _msg_id(v: str, what: str = "id") -> str:
    if not valid_msg_id(v):
        raise ApiError(400, f"bad_{what}", f"{what} must match [A-Za-z0-9_-]{{8,40}}")
    return v


def _float(q: dict[str, str], name: str) -> float | None:
    raw = q.get(name)
    if raw in (None, ""):
        return None
    try:
        v = float(raw)
    except ValueError:
        raise ApiError(400, f"bad_{name}", f"{name} must be a number (seconds since 1970)") from None
    if not math.isfinite(v):
        raise ApiError(400, f"bad_{name}", f"{name} must be finite")
    return v


def _limit(q: dict[str, str], default: int) -> int:
    raw = q.get("limit")
    if raw in (None, ""):
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(400, "bad_limit", f"limit must be 1..{MAX_PAGE}")
    return int(raw)


def parse_cursor(raw: str) -> tuple[float, int, str]:
    """`<ts>:<seq>:<event id>` -> (ts, seq, id); the colon never occurs in ids. A `<ts>:<id>` cursor
    from a page served before the order took `seq` into account still works (its ties come again)."""
    parts = raw.split(":")
    if len(parts) == 2:
        parts.insert(1, str(2**53))
    ts = math.nan
    seq = -1
    if len(parts) == 3:
        try:
            ts = float(parts[0])
        except ValueError:
            pass
        if parts[1].isdigit() and len(parts[1]) <= 16:
            seq = int(parts[1])
    if not math.isfinite(ts) or seq < 0 or not valid_msg_id(parts[-1]):
        raise ApiError(400, "bad_before", "before must be a cursor from a previous page")
    return ts, seq, parts[-1]


def make_cursor(e: Mapping[str, Any]) -> str:
    return f"{e['ts']!r}:{int(e.get('seq') or 0)}:{e['id']}"


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ApiError(413, "too_large", "request body too large")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise ApiError(400, "bad_json", "body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object")
    return data


def _port(request: Request) -> GatewayPort:
    return request.app.state.port


def _json(data: Any, status: int = 200) -> JSONResponse:
    return SafeJSONResponse(data, status_code=status, headers=NO_STORE)


# --- API endpoints -------------------------------------------------------------


def api_events(request: Request) -> JSONResponse:
    q = dict(request.query_params)
    device = q.get("device") or None
    if device is not None:
        _device(device)
    etype: str | tuple[str, ...] | None = None
    if q.get("type"):
        types = tuple(q["type"].split(","))  # `delivery,pickup`: any of them
        if len(types) > len(EVENT_TYPES) or any(t not in EVENT_TYPES for t in types):
            raise ApiError(400, "bad_type", f"type must be one or more of {', '.join(EVENT_TYPES)}")
        etype = types[0] if len(types) == 1 else types
    before = parse_cursor(q["before"]) if q.get("before") else None
    limit = _limit(q, 50)
    rows = _port(request).list_events(
        device=device,
        type=etype,
        since=_float(q, "since"),
        until=_float(q, "until"),
        before=before,
        limit=limit,
    )
    events = [event_out(e) for e in rows]
    nxt = make_cursor(rows[-1]) if len(rows) == limit else None
    return _json({"events": events, "next": nxt})


def api_event(request: Request) -> JSONResponse:
    device = _device(request.path_params["device"])
    eid = _msg_id(request.path_params["event_id"], "event_id")
    e = _port(request).get_event(device, eid)
    if e is None:
        raise ApiError(404, "not_found", "no such event")
    return _json(event_out(e))


def api_photo(request: Request) -> Response:
    device = _device(request.path_params["device"])
    eid = _msg_id(request.path_params["event_id"], "event_id")
    variant = request.path_params["variant"]
    if variant not in VARIANTS:
        raise ApiError(400, "bad_variant", f"variant must be one of {', '.join(VARIANTS)}")
    path = _port(request).photo_path(device, eid, variant)
    if path is None or not path.is_file():
        raise ApiError(404, "not_found", "no such photo")
    return FileResponse(path, media_type="image/jpeg", headers=PRIVATE_REVALIDATE)


def api_devices(request: Request) -> JSONResponse:
    return _json({"devices": _port(request).list_devices()})


async def api_command(request: Request) -> JSONResponse:
    device = _device(request.path_params["device"])
    body = await _json_body(request)
    cmd = body.get("cmd")
    if cmd not in WEB_COMMANDS:
        raise ApiError(400, "bad_cmd", f"cmd must be one of {', '.join(WEB_COMMANDS)}")
    port = _port(request)
    devices = await run_in_threadpool(port.list_devices)
    if not any(d["device"] == device for d in devices):
        raise ApiError(404, "not_found", "no such box")
    cmd_id = await run_in_threadpool(port.send_command, device, cmd, None)
    log.info("web: sent %s to %s (command %s)", cmd, device, cmd_id)
    return _json({"id": cmd_id, "device": device, "cmd": cmd}, 202)


def firmware_out(st: dict[str, Any]) -> dict[str, Any]:
    """A box's firmware against this checkout's (GatewayService.firmware_status), for the box card."""
    upd = st.get("update") or None
    return {
        "device": st.get("device"),
        "fw": st.get("fw"),
        "latest_version": st.get("latest_version"),
        "latest_error": st.get("latest_error"),
        "update_available": st.get("update_available"),
        "update": None
        if upd is None
        else {k: upd.get(k) for k in ("id", "version", "state", "percent", "reason", "active")},
    }


def api_firmware(request: Request) -> JSONResponse:
    port = _port(request)
    status = getattr(port, "firmware_status", None)
    if not callable(status):  # a gateway without over-the-air updates: no box shows one
        return _json({"devices": []})
    out = [firmware_out(status(d["device"])) for d in port.list_devices() if valid_device_id(d.get("device"))]
    return _json({"devices": out})


async def api_update(request: Request) -> JSONResponse:
    """The Update button: the offer `parcelbox device update DEVICE` makes (gateway/ota/offers.py)."""
    from gateway.ota.manifest import UpdateRefused

    device = _device(request.path_params["device"])
    await _json_body(request)  # no options; a body that is not JSON is still refused
    offer = getattr(_port(request), "offer_update", None)
    if not callable(offer):
        raise ApiError(501, "not_supported", "this gateway does not send firmware updates")
    try:
        sent = await run_in_threadpool(offer, device)
    except LookupError:
        raise ApiError(404, "not_found", "no such box") from None
    except UpdateRefused as e:
        raise ApiError(409, "refused", str(e)) from None
    log.info("web: update %s to %s queued for %s", sent.get("id"), sent.get("version"), device)
    return _json(
        {"id": sent["id"], "device": device, "version": sent.get("version"), "from": sent.get("from")}, 202
    )


def api_command_result(request: Request) -> JSONResponse:
    cmd_id = _msg_id(request.path_params["cmd_id"], "cmd_id")
    res = _port(request).command_result(cmd_id)
    if res is None:
        return _json({"id": cmd_id, "pending": True})
    return _json({**res, "pending": False})


def api_health(request: Request) -> JSONResponse:
    h = dict(_port(request).health())
    bc: Broadcaster = request.app.state.broadcaster
    guard: Guard | None = request.app.state.guard_holder.get("guard")
    body_limit: BodyLimit | None = request.app.state.guard_holder.get("body_limit")
    h["web"] = {
        "live_clients": bc.clients,
        "live_dropped": bc.dropped,
        "login_required": request.app.state.settings.login_required,
        "refused": dict(guard.counters) if guard else {},
        "login_rate_limited": request.app.state.limiter.refused,
        "login_slowed": request.app.state.limiter.slowed,
        "body_too_large": body_limit.refused if body_limit else 0,
        "api_refused": request.app.state.api_refused,
    }
    table = getattr(request.app.state, "connections", None)  # set by WebServer, absent in tests' clients
    if table is not None:
        h["web"]["connections"] = {
            "open": len(table),
            "max": table.max_connections,
            "evicted": table.evicted,
            "refused": table.refused,
            "timed_out": table.timed_out,
        }
    return _json(h)


def api_outbox(request: Request) -> JSONResponse:
    q = dict(request.query_params)
    state = q.get("state") or None
    if state is not None and not is_outbox_state(state):
        raise ApiError(400, "bad_state", f"state must be one of {', '.join(OUTBOX_STATES)}")
    return _json({"alerts": _port(request).list_outbox(state=state, limit=_limit(q, 100))})


def api_outbox_retry(request: Request) -> JSONResponse:
    alert_id = request.path_params["alert_id"]
    if not ALERT_ID_RE.fullmatch(alert_id):
        raise ApiError(400, "bad_alert_id", "alert id must match [A-Za-z0-9_-]{1,200}")
    if not _port(request).retry_alert(alert_id):
        raise ApiError(409, "not_retryable", "no failed or dead alert with this id")
    log.info("web: alert %s queued for retry", alert_id)
    return _json({"ok": True, "id": alert_id})


async def api_notify(request: Request) -> JSONResponse:
    """Queue a message through the outbox to the chosen sinks; 202 with the alert ids once durable."""
    port = _port(request)
    queue = getattr(port, "queue_message", None)
    if queue is None:
        raise ApiError(501, "not_available", "this gateway does not offer the send API")
    ctype = request.headers.get("content-type", "")
    body = await request.body()  # bounded by BodyLimit (BODY_LIMITS) while it streamed in
    try:
        if ctype.startswith("application/json"):
            req = parse_json(body)
        elif ctype.startswith("multipart/form-data"):
            req = parse_multipart(ctype, body)
        else:
            raise BadRequest("bad_content_type", "send application/json or multipart/form-data")
        result = await run_in_threadpool(queue, req)
    except BadRequest as e:
        request.app.state.api_refused += 1
        log.warning("send API: refused (%s): %s", e.error, e.detail[:200])
        raise ApiError(413 if e.error == "too_large" else 400, e.error, e.detail) from None
    who = getattr(request.state, "token", None) or "dashboard session"
    log.info("send API: message %s from %s", result["id"], who)
    return _json(result, 202)


def api_alert(request: Request) -> JSONResponse:
    alert_id = request.path_params["alert_id"]
    if not ALERT_ID_RE.fullmatch(alert_id):
        raise ApiError(400, "bad_alert_id", "alert id must match [A-Za-z0-9_-]{1,200}")
    get = getattr(_port(request), "get_alert", None)
    rec = get(alert_id) if get is not None else None
    if rec is None:
        raise ApiError(404, "not_found", "no such alert")
    return _json(alert_state(rec))


def api_channels(request: Request) -> JSONResponse:
    """Per-URL state of the Apprise sink (ids, routing, last outcome); never a URL."""
    fn = getattr(_port(request), "channels", None)
    return _json({"channels": fn() if fn is not None else []})


async def api_channel_test(request: Request) -> JSONResponse:
    sink, rid = request.path_params["sink"], request.path_params["recipient"]
    if sink != "apprise" or not ALERT_ID_RE.fullmatch(rid):
        raise ApiError(404, "not_found", "no such channel")
    fn = getattr(_port(request), "test_channel", None)
    if fn is None:
        raise ApiError(501, "not_available", "this gateway does not offer channel tests")
    limiter: SendLimiter = request.app.state.channel_test_limiter
    wait = limiter.try_acquire(rid)
    if wait > 0:
        raise ApiError(
            429,
            "rate_limited",
            f"too many test messages; try again in {math.ceil(wait)} s",
            {"retry-after": str(math.ceil(wait))},
        )
    try:
        result = await run_in_threadpool(fn, sink, rid)
    except LookupError:
        raise ApiError(404, "not_found", "no such channel") from None
    log.info("web: test message queued to %s %s", sink, rid)
    return _json(result, 202)


WA_ACTIONS = {
    "pair_code": "whatsapp_pair_code",
    "test_message": "whatsapp_test_message",
    "unlink": "whatsapp_unlink",
}


def _wa_action(request: Request, name: str) -> Any:
    """The callable behind a WhatsApp button: the app's WhatsApp actions, else an optional port method."""
    actions = request.app.state.whatsapp
    if actions is not None and actions.available():
        return getattr(actions, name)
    fn = getattr(_port(request), WA_ACTIONS[name], None)
    return fn if callable(fn) else None


def api_whatsapp(request: Request) -> JSONResponse:
    port = _port(request)
    out = whatsapp_out(dict(port.whatsapp_state()))
    out["actions"] = {name: _wa_action(request, name) is not None for name in WA_ACTIONS}
    return _json(out)


def api_whatsapp_qr(request: Request) -> Response:
    payload = _port(request).whatsapp_state().get("qr")
    if not payload:
        raise ApiError(404, "no_qr", "no pairing QR right now")
    return Response(qr_svg(payload), media_type="image/svg+xml", headers=NO_STORE)


async def _whatsapp_action(request: Request, name: str, *args: Any) -> JSONResponse:
    fn = _wa_action(request, name)
    if fn is None:
        raise ApiError(501, "not_available", "this gateway's WhatsApp link does not offer this action")
    try:
        result = await run_in_threadpool(fn, *args)
    except LookupError as e:
        raise ApiError(501, "not_available", str(e)) from None
    if not isinstance(result, dict):
        result = {"ok": bool(result)}
    if result.get("ok") is False:
        raise ApiError(502, "whatsapp_failed", str(result.get("error") or "WhatsApp refused"))
    log.info("web: WhatsApp %s done", name)
    return _json(result)


async def api_whatsapp_pair_code(request: Request) -> JSONResponse:
    body = await _json_body(request)
    phone = re.sub(r"[\s()-]", "", str(body.get("phone", "")))
    if not PHONE_RE.fullmatch(phone):
        raise ApiError(400, "bad_phone", "phone must be a full international number, e.g. +628123456789")
    return await _whatsapp_action(request, "pair_code", phone.lstrip("+"))


async def api_whatsapp_test(request: Request) -> JSONResponse:
    """A test message, to the configured recipients or to `recipient`: one that is not configured
    needs `"confirm": true` (409 `confirm_needed` otherwise), and all of them are rate-limited
    (429), because the button sends from the owner's WhatsApp account, which WhatsApp bans for bursts."""
    body = await _json_body(request)
    recipient = body.get("recipient")
    if recipient is not None and (not isinstance(recipient, str) or len(recipient) > 100):
        raise ApiError(400, "bad_recipient", "recipient must be a phone number or group id")
    recipient = recipient.strip() if recipient else None
    actions = request.app.state.whatsapp
    if (
        recipient
        and body.get("confirm") is not True
        and actions is not None
        and actions.available()
        and await run_in_threadpool(actions.needs_confirmation, recipient)
    ):
        raise ApiError(
            409,
            "confirm_needed",
            f"{recipient} is not one of the alert recipients; send with confirm to go ahead",
        )
    limiter: SendLimiter = request.app.state.wa_test_limiter
    # Keyed by the JID, as the outbox's limit is: '+62.812.3456.789', '628123456789' and
    # '628123456789@s.whatsapp.net' are one person at WhatsApp and share one window.
    wait = limiter.try_acquire(recipient_key(recipient) if recipient else "configured recipients")
    if wait > 0:
        log.warning("web: WhatsApp test message refused: rate limit (again in %.0f s)", wait)
        raise ApiError(
            429,
            "rate_limited",
            f"too many test messages; try again in {math.ceil(wait)} s",
            {"retry-after": str(math.ceil(wait))},
        )
    return await _whatsapp_action(request, "test_message", recipient)


async def api_whatsapp_unlink(request: Request) -> JSONResponse:
    return await _whatsapp_action(request, "unlink")


async def api_stream(request: Request) -> Response:
    bc: Broadcaster = request.app.state.broadcaster
    if bc.closed:
        raise ApiError(503, "stopping", "server is stopping")
    # A stream keeps its connection busy (never evicted for a newcomer): at most half the slots.
    table = getattr(request.app.state, "connections", None)
    if table is not None and bc.clients >= max(1, table.max_connections // 2):
        raise ApiError(
            503, "busy", "too many live streams open; close a dashboard tab", {"retry-after": "10"}
        )
    settings: WebSettings = request.app.state.settings
    still_allowed = None
    if settings.login_required:
        signer: SessionSigner = request.app.state.signer
        token = parse_cookies(request.headers).get(SESSION_COOKIE)

        def still_allowed() -> bool:
            stored = read_password_hash(settings.password_file)
            return signer.loads(token, password_fingerprint(stored) if stored else None) is not None

    return StreamingResponse(
        bc.stream({"login_required": settings.login_required}, still_allowed),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


def api_openapi(request: Request) -> JSONResponse:
    return JSONResponse(OPENAPI)


# --- pages and static files ----------------------------------------------------


def index_html() -> str:
    """index.html with gateway/vocabulary.py's tables injected as JSON (read by app.js), so the page
    never spells an event type or a sensor key of its own. `<` is escaped: the JSON cannot end the tag."""
    vocab = json.dumps(for_browser(), separators=(",", ":")).replace("<", "\\u003c")
    tag = f'<script id="vocabulary" type="application/json">{vocab}</script>\n'
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8").replace("</head>", tag + "</head>", 1)


INDEX_HTML = index_html()
# Pages differ by the language the browser asks for or picked: caches must keep them apart.
VARY_LANGUAGE = {"vary": "Accept-Language, Cookie"}


def page_language(request: Request) -> str:
    """The language of a page for this browser (its pick in the page, Accept-Language, the config)."""
    settings: WebSettings = request.app.state.settings
    return i18n.choose_language(
        parse_cookies(request.headers).get(i18n.LANG_COOKIE),
        request.headers.get("accept-language"),
        settings.language,
    )


I18N_TEXT_RE = re.compile(r'(<[a-z0-9]+[^<>]*\sdata-i18n="([a-z0-9_.]+)"[^<>]*>)([^<]*)(?=<)')
I18N_ATTR_RE = re.compile(r'<[a-z0-9]+[^<>]*\sdata-i18n-attr="([^"]+)"[^<>]*>')


def _keep_quotes(value: str) -> Callable[[re.Match[str]], str]:
    """A re.sub replacement putting `value` between an attribute's quotes (taken literally: no escapes)."""
    return lambda a: a.group(1) + value + a.group(2)


def translate_page(template: str, lang: str) -> str:
    """index.html in `lang`: the text of every `data-i18n` element and every `data-i18n-attr` attribute.

    app.js does the same from /i18n.js (and again on a language switch); doing it here too means the
    first paint, the copy the service worker keeps and a reader without JavaScript are already right.
    """

    def attrs(m: re.Match[str]) -> str:
        tag = m.group(0)
        for pair in m.group(1).split(";"):
            attr, _, key = pair.partition(":")
            value = html.escape(i18n.t(lang, key.strip()))
            tag = re.sub(rf'(\s{re.escape(attr.strip())}=")[^"]*(")', _keep_quotes(value), tag)
        return tag

    out = I18N_TEXT_RE.sub(
        lambda m: m.group(1) + html.escape(i18n.t(lang, m.group(2)), quote=False), template
    )
    out = I18N_ATTR_RE.sub(attrs, out)
    return out.replace('<html lang="en">', f'<html lang="{lang}">', 1)


def page(request: Request) -> Response:
    return HTMLResponse(
        translate_page(INDEX_HTML, page_language(request)), headers={**PRIVATE_REVALIDATE, **VARY_LANGUAGE}
    )


def i18n_script(request: Request) -> Response:
    """Both catalogues, the default language and the time zone, for the page and the service worker."""
    settings: WebSettings = request.app.state.settings
    return Response(
        i18n.bootstrap_js(settings.language, settings.timezone),
        media_type="text/javascript",
        headers={"cache-control": "no-cache"},
    )


def service_worker(request: Request) -> Response:
    # Served from the root so its scope covers every page; never cached by HTTP so updates apply.
    return FileResponse(
        STATIC_DIR / "sw.js",
        media_type="text/javascript",
        headers={"cache-control": "no-cache", "service-worker-allowed": "/"},
    )


MANIFEST = json.loads((STATIC_DIR / "manifest.webmanifest").read_text(encoding="utf-8"))


def manifest(request: Request) -> Response:
    # The install prompt's description in the page's language (the manifest is fetched with the cookie).
    lang = page_language(request)
    body = {**MANIFEST, "lang": lang, "description": i18n.t(lang, "manifest.description")}
    return Response(
        json.dumps(body, ensure_ascii=False, indent=2),
        media_type="application/manifest+json",
        headers={"cache-control": "no-cache", **VARY_LANGUAGE},
    )


class NoCacheStatic(StaticFiles):
    async def get_response(self, path: str, scope: Any) -> Response:
        resp = await super().get_response(path, scope)
        resp.headers["cache-control"] = "no-cache"
        return resp


# --- login ---------------------------------------------------------------------

LOGIN_HTML = (STATIC_DIR / "login.html").read_text(encoding="utf-8")
I18N_TOKEN_RE = re.compile(r"\{\{t:([a-z0-9_.]+)\}\}")
LANG_COOKIE_AGE = 365 * 86400


def _safe_next(raw: str | None) -> str:
    if raw and raw.startswith("/") and not raw.startswith("//") and "\\" not in raw and raw.isprintable():
        return raw
    return "/"


def login_page(
    lang: str,
    message: str,
    csrf: str,
    nxt: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """The login form in `lang`; `message` is a catalogue key (or "") already chosen by the caller."""
    body = (
        I18N_TOKEN_RE.sub(lambda m: html.escape(i18n.t(lang, m.group(1))), LOGIN_HTML)
        .replace("{{lang}}", lang)
        .replace("{{message}}", html.escape(message))
        .replace("{{csrf}}", html.escape(csrf))
        .replace("{{next}}", html.escape(nxt))
        .replace("{{next_q}}", html.escape(quote(nxt, safe="/")))
    )
    return HTMLResponse(body, status_code=status, headers={**NO_STORE, **(headers or {})})


async def login(request: Request) -> Response:
    settings: WebSettings = request.app.state.settings
    csrf: str = request.state.csrf
    if not settings.login_required:
        return RedirectResponse("/", 303)
    lang = page_language(request)
    if request.method == "GET":
        nxt = _safe_next(request.query_params.get("next"))
        picked = request.query_params.get("lang")
        extra: dict[str, str] = {}
        if picked in i18n.LANGUAGES:  # the page's language links: remembered like the dashboard's switch
            lang = picked
            extra["set-cookie"] = cookie_header(
                i18n.LANG_COOKIE, lang, max_age=LANG_COOKIE_AGE, http_only=False, secure=False
            ).decode("latin-1")
        stored = await run_in_threadpool(read_password_hash, settings.password_file)
        msg = "" if stored else i18n.t(lang, "login.no_password")
        return login_page(lang, msg, csrf, nxt, headers=extra)

    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "too_large", "request body too large")
    form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
    nxt = _safe_next(form.get("next"))
    cookie_csrf = parse_cookies(request.headers).get(CSRF_COOKIE, "")
    if not cookie_csrf or form.get("csrf") != cookie_csrf:
        return login_page(lang, i18n.t(lang, "login.expired"), csrf, nxt, 403)
    limiter: LoginLimiter = request.app.state.limiter
    signer: SessionSigner = request.app.state.signer
    addr = request.client.host if request.client else "?"
    device = signer.device_id(parse_cookies(request.headers).get(DEVICE_COOKIE))
    key = limiter.key(addr, device)
    wait = limiter.retry_after(key)
    if wait > 0:
        log.warning("web: login from %s refused: too many failed attempts", addr)
        return login_page(
            lang,
            i18n.t(lang, "login.locked", seconds=math.ceil(wait)),
            csrf,
            nxt,
            429,
            {"retry-after": str(math.ceil(wait))},
        )
    # Under a spray of wrong passwords from many addresses, browsers without a device cookie take
    # turns (slowed, never locked out); a browser that logged in before goes straight on.
    slow = device is None and limiter.under_attack()
    async with limiter.turn() if slow else contextlib.nullcontext(True) as may_try:
        if not may_try or (slow and limiter.retry_after(key) > 0):  # again: failures while it waited
            log.warning("web: login from %s refused: too many attempts waiting", addr)
            return login_page(
                lang,
                i18n.t(lang, "login.busy"),
                csrf,
                nxt,
                429,
                {"retry-after": "2"},
            )
        stored = await run_in_threadpool(read_password_hash, settings.password_file)
        ok = bool(stored) and await run_in_threadpool(verify_password, form.get("password", ""), stored or "")
    if not ok:
        limiter.failed(key)
        log.warning("web: failed login from %s", addr)
        msg = i18n.t(lang, "login.wrong" if stored else "login.no_password")
        return login_page(lang, msg, csrf, nxt, 401)
    limiter.succeeded(key)
    lifetime = int(settings.session_hours * 3600)
    session = signer.new_session(lifetime, password_fingerprint(stored or ""))
    secure = settings.cookie_secure or request.url.scheme == "https"
    resp = RedirectResponse(nxt, 303, headers=NO_STORE)
    resp.raw_headers.append(
        (
            b"set-cookie",
            cookie_header(
                SESSION_COOKIE, signer.dumps(session), max_age=lifetime, http_only=True, secure=secure
            ),
        )
    )
    resp.raw_headers.append(
        (
            b"set-cookie",
            cookie_header(CSRF_COOKIE, session["csrf"], max_age=None, http_only=False, secure=secure),
        )
    )
    if device is None:
        resp.raw_headers.append(
            (
                b"set-cookie",
                cookie_header(
                    DEVICE_COOKIE,
                    signer.new_device_token(),
                    max_age=int(DEVICE_LIFETIME_S),
                    http_only=True,
                    secure=secure,
                ),
            )
        )
    log.info("web: login from %s", addr)
    return resp


async def logout(request: Request) -> Response:
    """End this session; with `{"everywhere": true}`, every session of every browser."""
    session = request.state.session
    body = (
        await _json_body(request)
        if request.headers.get("content-type", "").startswith("application/json")
        else {}
    )
    signer: SessionSigner = request.app.state.signer
    if body.get("everywhere") is True:
        await run_in_threadpool(signer.revoke_all)
        log.info("web: logged out everywhere")
    elif session:
        await run_in_threadpool(signer.revoke, session)
    settings: WebSettings = request.app.state.settings
    secure = settings.cookie_secure or request.url.scheme == "https"
    resp = _json({"ok": True, "login_required": settings.login_required})
    # Forget the session and anything the browser kept from it (HTTP cache, Cache Storage).
    resp.headers["clear-site-data"] = '"cache", "storage"'
    resp.raw_headers.append(
        (b"set-cookie", cookie_header(SESSION_COOKIE, "", max_age=0, http_only=True, secure=secure))
    )
    resp.raw_headers.append(
        (b"set-cookie", cookie_header(CSRF_COOKIE, "", max_age=0, http_only=False, secure=secure))
    )
    return resp


# --- errors --------------------------------------------------------------------


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = getattr(exc, "error", None) or {404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "error"
    )
    if request.url.path.startswith("/api/") or exc.status_code != 404:
        return JSONResponse(
            {"error": error, "detail": exc.detail},
            status_code=exc.status_code,
            headers={**NO_STORE, **(exc.headers or {})},
        )
    lang = page_language(request)
    title, back = html.escape(i18n.t(lang, "notfound.title")), html.escape(i18n.t(lang, "notfound.back"))
    return HTMLResponse(
        f'<!doctype html><html lang="{lang}"><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title} · parcelbox</title><h1>{title}</h1><p><a href='/'>{back}</a></p>",
        status_code=404,
        headers=VARY_LANGUAGE,
    )


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("web: %s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"error": "internal", "detail": "the gateway could not answer; see its log"}, status_code=500
    )


# --- assembly ------------------------------------------------------------------

API_ROUTES = [
    Route("/api/events", api_events, methods=["GET"]),
    Route("/api/events/{device}/{event_id}", api_event, methods=["GET"]),
    Route("/api/photos/{device}/{event_id}/{variant}", api_photo, methods=["GET"]),
    Route("/api/devices", api_devices, methods=["GET"]),
    Route("/api/devices/{device}/command", api_command, methods=["POST"]),
    Route("/api/devices/{device}/update", api_update, methods=["POST"]),
    Route("/api/firmware", api_firmware, methods=["GET"]),
    Route("/api/commands/{cmd_id}", api_command_result, methods=["GET"]),
    Route("/api/health", api_health, methods=["GET"]),
    Route("/api/outbox", api_outbox, methods=["GET"]),
    Route("/api/outbox/{alert_id}/retry", api_outbox_retry, methods=["POST"]),
    Route("/api/notify", api_notify, methods=["POST"]),
    Route("/api/alerts/{alert_id}", api_alert, methods=["GET"]),
    Route("/api/channels", api_channels, methods=["GET"]),
    Route("/api/channels/{sink}/{recipient}/test", api_channel_test, methods=["POST"]),
    Route("/api/whatsapp", api_whatsapp, methods=["GET"]),
    Route("/api/whatsapp/qr.svg", api_whatsapp_qr, methods=["GET"]),
    Route("/api/whatsapp/pair-code", api_whatsapp_pair_code, methods=["POST"]),
    Route("/api/whatsapp/test", api_whatsapp_test, methods=["POST"]),
    Route("/api/whatsapp/unlink", api_whatsapp_unlink, methods=["POST"]),
    Route("/api/stream", api_stream, methods=["GET"]),
    Route("/api/openapi.json", api_openapi, methods=["GET"]),
]


def create_app(
    port: GatewayPort,
    settings: WebSettings | None = None,
    *,
    signer: SessionSigner | None = None,
    limiter: LoginLimiter | None = None,
    whatsapp: Any = None,
    wa_test_limiter: SendLimiter | None = None,
    tokens: TokenStore | None = None,
) -> Starlette:
    """The dashboard app for `port`. Live updates start when the app's lifespan starts.

    `whatsapp` offers the WhatsApp buttons (`gateway.web.whatsapp_actions.WhatsAppActions`);
    without it, optional `whatsapp_*` methods of the port are used when present.
    """
    settings = settings or WebSettings()
    signer = signer or SessionSigner(
        load_or_create_secret(settings.secret_file), state_file=settings.sessions_file
    )
    limiter = limiter or LoginLimiter(settings.login_max_failures, settings.login_window_s)
    tokens = tokens or TokenStore(settings.tokens_file)
    token_limiter = SendLimiter((settings.api_rate_per_minute, 60.0), None)
    broadcaster = Broadcaster(port.bus, live_transform)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        broadcaster.attach(asyncio.get_running_loop())
        try:
            yield
        finally:
            broadcaster.close()
            broadcaster.detach()

    routes = [
        *API_ROUTES,
        *(Route(p, page, methods=["GET"]) for p in PAGES),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/sw.js", service_worker, methods=["GET"]),
        Route("/i18n.js", i18n_script, methods=["GET"]),
        Route("/manifest.webmanifest", manifest, methods=["GET"]),
        Mount("/static", NoCacheStatic(directory=STATIC_DIR), name="static"),
    ]
    guard_holder: dict[str, Any] = {}

    def make_guard(app: Any) -> Guard:
        g = Guard(app, settings, signer, tokens, token_limiter)
        guard_holder["guard"] = g
        return g

    def make_body_limit(app: Any) -> BodyLimit:
        b = BodyLimit(app, lambda path: BODY_LIMITS.get(path, MAX_BODY), timeout_s=settings.body_timeout_s)
        guard_holder["body_limit"] = b
        return b

    app = Starlette(
        routes=routes,
        # Outermost first: bodies are bounded before the guard or any route (login included) reads them.
        middleware=[Middleware(make_body_limit), Middleware(make_guard)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.port = port
    app.state.settings = settings
    app.state.signer = signer
    app.state.limiter = limiter
    app.state.broadcaster = broadcaster
    app.state.whatsapp = whatsapp
    app.state.wa_test_limiter = wa_test_limiter or SendLimiter(WA_TEST_PER_RECIPIENT, WA_TEST_OVERALL)
    app.state.tokens = tokens
    app.state.channel_test_limiter = SendLimiter(WA_TEST_PER_RECIPIENT, WA_TEST_OVERALL)
    app.state.api_refused = 0
    app.state.guard_holder = guard_holder  # filled when Starlette builds the middleware stack
    return app
