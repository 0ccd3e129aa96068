"""Request bodies are limited while they are read, not after.

Starlette's `request.body()` collects the whole body before an endpoint can look at its length, so a
400 MB `POST /login` (no login needed) once took the gateway from 76 to 832 MB. This middleware sits
outside everything else: a declared `Content-Length` over the limit is answered 413 before the app
runs (not one body byte is read), and a body without one (chunked) is counted as it streams in and
cut off at the first message that goes over. Either way the answer says `Connection: close`, so the
server stops reading the rest instead of draining it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.web.guard import SECURITY_HEADERS

# Every dashboard route takes small JSON or a login form; none uploads anything.
DEFAULT_LIMIT = 8 * 1024


class BodyTooLarge(HTTPException):
    """Raised from `receive` inside the app once a streamed body passes its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")
        self.error = "too_large"


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, None when absent; -1 when unreadable (refused as malformed)."""
    values = [v for k, v in scope.get("headers", []) if k == b"content-length"]
    if not values:
        return None
    try:
        n = int(values[0])
    except ValueError:
        return -1
    return n if n >= 0 and all(v == values[0] for v in values) else -1


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit_for(path)` bytes as they arrive.

    `received` counts the body bytes handed to the app over the server's life (what a flood could
    make it hold); `refused` the requests answered 413.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int] = lambda _path: DEFAULT_LIMIT) -> None:
        self.app = app
        self.limit_for = limit_for
        self.received = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = declared_length(scope)
        if declared is not None and (declared < 0 or declared > limit):
            self.refused += 1
            status, error = (413, "too_large") if declared > limit else (400, "bad_content_length")
            await refuse(send, status, error, f"request body must be at most {limit} bytes")
            return

        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    self.refused += 1
                    raise BodyTooLarge(limit)
                self.received += len(message.get("body", b""))
            return message

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] == 413:
                    # The client may still be sending: end the connection rather than read the rest.
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted_receive, closing_send)
        except BodyTooLarge:
            # Only reached when the app let it escape (an app without Starlette's error handling).
            if not started:
                await refuse(send, 413, "too_large", f"request body must be at most {limit} bytes")


async def refuse(send: Send, status: int, error: str, detail: str) -> None:
    data = json.dumps({"error": error, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"cache-control", b"no-store"),
                (b"connection", b"close"),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
