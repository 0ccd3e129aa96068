"""The dashboard's front door: Host check, login, CSRF, and the cookies that carry them.

A pure ASGI middleware (not BaseHTTPMiddleware) so Server-Sent Events stream through untouched.

- Host: on a loopback bind only loopback names (plus `allowed_hosts`) are served, so a web page
  that rebinds its DNS name to 127.0.0.1 cannot read the API.
- Login: when required, every path but `/login` needs a valid session cookie; pages redirect to
  the login form, everything else answers 401.
- CSRF, on every state-changing request, logged in or not (a loopback dashboard is just as
  reachable from a hostile page in the same browser): the Origin (or Sec-Fetch-Site) must be this
  site, and the `X-CSRF-Token` header must equal the session's token (login) or the `pb_csrf`
  cookie (no login, double-submit). The login form carries the token as a form field instead.
- API tokens (gateway/web/tokens.py): a request with `Authorization: Bearer <token>` is judged by
  its token alone - known, not revoked, its scope allows this method and path, within its rate
  limit - and needs no session or CSRF token (no cookie carries it, so no other site can make a
  browser send it). The send API (`POST /api/notify`) from any address but loopback needs a token;
  on loopback the dashboard's session and CSRF token do too.
"""

from __future__ import annotations

import json
import secrets
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.ratelimit import SendLimiter
from gateway.web.auth import SessionSigner, password_fingerprint, read_password_hash
from gateway.web.settings import LOOPBACK_NAMES, WebSettings, is_loopback
from gateway.web.tokens import TokenStore, bearer, scope_allows

SESSION_COOKIE = "pb_session"
DEVICE_COOKIE = "pb_device"  # "this browser logged in before" (gateway/web/auth.py LoginLimiter)
CSRF_COOKIE = "pb_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PUBLIC_PATHS = {"/login"}
TOKEN_REQUIRED_BEYOND_LOOPBACK = {"/api/notify"}
# On every response. No framing (a hostile page could otherwise overlay the Unlink or Reboot buttons),
# scripts only from our own files, no referrer leaking dashboard URLs, no MIME sniffing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


def parse_cookies(headers: Headers) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for raw in headers.getlist("cookie"):
        try:
            jar.load(raw)
        except Exception:  # a malformed cookie header must not take the request down
            continue
    return {k: m.value for k, m in jar.items()}


def cookie_header(
    name: str,
    value: str,
    *,
    max_age: int | None,
    http_only: bool,
    secure: bool,
) -> bytes:
    parts = [f"{name}={value}", "Path=/", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if http_only:
        parts.append("HttpOnly")
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode("latin-1")


def host_name(host_header: str) -> str:
    """`example.lan:8080` -> `example.lan`, `[::1]:8080` -> `[::1]`."""
    h = host_header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[: end + 1] if end > 0 else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        settings: WebSettings,
        signer: SessionSigner,
        tokens: TokenStore | None = None,
        token_limiter: SendLimiter | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.signer = signer
        self.tokens = tokens
        self.token_limiter = token_limiter
        self.counters: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def password_fp(self) -> str | None:
        stored = read_password_hash(self.settings.password_file)
        return password_fingerprint(stored) if stored else None

    def secure_cookies(self, scope: Scope) -> bool:
        return self.settings.cookie_secure or scope.get("scheme") == "https"

    def _host_ok(self, headers: Headers) -> bool:
        name = host_name(headers.get("host", ""))
        if name in self.settings.allowed_hosts:
            return True
        if self.settings.login_required and not self.settings.allowed_hosts:
            return True  # exposed without a host list: the login protects it
        return name in LOOPBACK_NAMES or name == self.settings.host.lower()

    def _same_origin(self, headers: Headers) -> bool:
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = headers.get("origin")
        if origin is None:
            return True  # not a browser (or a very old one): the token check still applies
        # Compare host:port only: behind a TLS proxy the browser says https while we see http.
        u = urlsplit(origin)
        return u.scheme in ("http", "https") and u.netloc.lower() == headers.get("host", "").lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path: str = scope["path"]
        method: str = scope["method"]
        if not self._host_ok(headers):
            self._count("bad_host")
            await json_reply(send, 400, {"error": "bad_host", "detail": "this Host name is not served here"})
            return

        token = bearer(headers)
        if token is not None:
            await self._with_token(token, scope, receive, send)
            return
        client = scope.get("client") or ("", 0)
        if path in TOKEN_REQUIRED_BEYOND_LOOPBACK and not is_loopback(str(client[0])):
            self._count("token_required")
            await json_reply(
                send,
                401,
                {"error": "token_required", "detail": "send an API token: Authorization: Bearer ..."},
            )
            return

        cookies = parse_cookies(headers)
        session: dict[str, Any] | None = None
        if self.settings.login_required:
            session = self.signer.loads(cookies.get(SESSION_COOKIE), self.password_fp())
            if session is None and path not in PUBLIC_PATHS:
                self._count("unauthenticated")
                if method in ("GET", "HEAD") and not path.startswith("/api/"):
                    target = path if path.startswith("/") and not path.startswith("//") else "/"
                    await _redirect(send, "/login?next=" + _quote(target))
                else:
                    await json_reply(send, 401, {"error": "login_required", "detail": "log in first"})
                return
            expected = session["csrf"] if session else cookies.get(CSRF_COOKIE) or ""
        else:
            expected = cookies.get(CSRF_COOKIE) or ""

        if method not in SAFE_METHODS:
            if not self._same_origin(headers):
                self._count("csrf_origin")
                await json_reply(send, 403, {"error": "csrf", "detail": "cross-site request refused"})
                return
            if path not in PUBLIC_PATHS:  # the login form checks its own field
                given = headers.get(CSRF_HEADER, "")
                if not expected or not secrets.compare_digest(given.encode(), expected.encode()):
                    self._count("csrf_token")
                    await json_reply(send, 403, {"error": "csrf", "detail": "missing or wrong CSRF token"})
                    return

        scope.setdefault("state", {})
        scope["state"]["session"] = session
        new_csrf = expected or secrets.token_urlsafe(24)
        scope["state"]["csrf"] = new_csrf
        set_csrf = cookies.get(CSRF_COOKIE) != new_csrf
        secure = self.secure_cookies(scope)

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                hdrs = list(message.get("headers", [])) + SECURITY_HEADERS
                # Skip when the endpoint sets it itself (login, logout).
                if set_csrf and not any(
                    k == b"set-cookie" and v.startswith(CSRF_COOKIE.encode() + b"=") for k, v in hdrs
                ):
                    hdrs.append(
                        (
                            b"set-cookie",
                            cookie_header(
                                CSRF_COOKIE, new_csrf, max_age=None, http_only=False, secure=secure
                            ),
                        )
                    )
                message = {**message, "headers": hdrs}
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    async def _with_token(self, token: str, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        info = self.tokens.check(token) if self.tokens is not None and path.startswith("/api/") else None
        if info is None:
            self._count("bad_token")
            await json_reply(send, 401, {"error": "bad_token", "detail": "unknown or revoked API token"})
            return
        if not scope_allows(info.scope, method, path):
            self._count("token_scope")
            await json_reply(
                send,
                403,
                {"error": "insufficient_scope", "detail": f"a {info.scope!r} token may not {method} {path}"},
            )
            return
        if self.token_limiter is not None:
            wait = self.token_limiter.try_acquire(info.name)
            if wait > 0:
                self._count("token_rate_limited")
                secs = str(max(1, int(wait + 0.999)))
                await json_reply(
                    send,
                    429,
                    {"error": "rate_limited", "detail": f"token {info.name!r}: too many requests"},
                    [(b"retry-after", secs.encode())],
                )
                return
        scope.setdefault("state", {})
        scope["state"].update({"session": None, "csrf": "", "token": info.name})

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + SECURITY_HEADERS}
            await send(message)

        await self.app(scope, receive, send_secure)


def _quote(s: str) -> str:
    return quote(s, safe="/")


async def json_reply(
    send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A small JSON answer sent straight from middleware (before or instead of the app), uncached."""
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"cache-control", b"no-store"),
                *SECURITY_HEADERS,
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _redirect(send: Send, location: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode("latin-1")),
                (b"content-length", b"0"),
                (b"cache-control", b"no-store"),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})
