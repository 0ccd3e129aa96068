"""Request bodies are limited while they are read, not after.

Starlette's `request.body()` collects the whole body before an endpoint can look at its length, so a
400 MB `POST /login` (no login needed) once took the gateway from 76 to 832 MB. This middleware sits
outside everything else: a declared `Content-Length` over the limit is answered 413 before the app
runs (not one body byte is read), and a body without one (chunked) is counted as it streams in and
cut off at the first message that goes over. Either way the answer says `Connection: close`, so the
server stops reading the rest instead of draining it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.web.guard import json_reply

# Every dashboard route takes small JSON or a login form; none uploads anything.
DEFAULT_LIMIT = 8 * 1024


class BodyTooLarge(HTTPException):
    """Raised from `receive` inside the app once a streamed body passes its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")
        self.error = "too_large"


class BodyTimeout(HTTPException):
    """Raised from `receive` when the body has not arrived within the deadline (a slow-body client)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"request body not received within {timeout_s:g} s")
        self.error = "body_timeout"


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
    make it hold); `refused` the requests refused for their body's size. The whole body must arrive within
    `timeout_s` of the request's start, or the answer is 408 (a body trickled a byte at a time
    would otherwise hold its connection for hours).
    """

    def __init__(
        self,
        app: ASGIApp,
        limit_for: Callable[[str], int] = lambda _path: DEFAULT_LIMIT,
        timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.timeout_s = timeout_s
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
        body_done = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s

        async def counted_receive() -> Message:
            nonlocal seen, body_done
            if body_done:  # later receives wait for a disconnect (streams): no deadline on those
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise BodyTimeout(self.timeout_s) from None
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > limit:
                    self.refused += 1
                    raise BodyTooLarge(limit)
                self.received += len(message.get("body", b""))
            return message

        has_body = bool(declared) or any(k == b"transfer-encoding" for k, _ in scope.get("headers", []))

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] in (408, 413) or (has_body and not body_done):
                    # Answered before the body was read (refused, or the route had no use for it): end
                    # the connection, or the server would go on reading and discarding whatever comes.
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted_receive, closing_send)
        except (BodyTooLarge, BodyTimeout) as e:
            # Only reached when the app let it escape (an app without Starlette's error handling).
            if not started:
                await refuse(send, e.status_code, e.error, e.detail)


async def refuse(send: Send, status: int, error: str, detail: str) -> None:
    """The JSON error, then the connection closes (the rest of the body is not read)."""
    await json_reply(send, status, {"error": error, "detail": detail}, [(b"connection", b"close")])
