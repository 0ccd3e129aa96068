"""Fan-out of gateway bus messages to Server-Sent Events streams.

Bus handlers run on the publisher's thread (ingest worker, outbox, WhatsApp
supervisor), so the handler here only hands the message to the web server's
event loop with `call_soon_threadsafe`; the loop copies it into each stream's
bounded queue. A stream that falls behind is told to `resync` (reload what it
shows) instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from gateway import bus as busmod

log = logging.getLogger(__name__)

# bus topic -> SSE event name used by the browser
SSE_EVENTS = {
    busmod.EVENT_STORED: "event",
    busmod.DEVICE_CHANGED: "device",
    busmod.OUTBOX_CHANGED: "outbox",
    busmod.COMMAND_RESULT: "command",
    busmod.WHATSAPP_STATE: "whatsapp",
    busmod.OTA_CHANGED: "firmware",  # {"device"}: its firmware or update moved; the page asks /api/firmware
}
QUEUE_MAX = 500
HEARTBEAT_S = 15.0

_CLOSE = object()


def sse_frame(event: str, data: Any) -> bytes:
    """One SSE message; JSON never contains a raw newline, so a single `data:` line suffices."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Broadcaster:
    def __init__(
        self, bus: busmod.Bus, transform: Callable[[str, dict[str, Any]], Any] | None = None
    ) -> None:
        self._bus = bus
        self._transform = transform or (lambda _topic, data: data)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: set[asyncio.Queue[Any]] = set()
        self._unsubscribe: list[Callable[[], None]] = []
        self.closed = False
        self.dropped = 0  # messages a slow stream missed (it was sent `resync`)

    @property
    def clients(self) -> int:
        return len(self._queues)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start listening on the bus; messages are delivered on `loop`."""
        self._loop = loop
        self.closed = False
        for topic in SSE_EVENTS:
            self._unsubscribe.append(self._bus.subscribe(self._on_bus, topic))

    def detach(self) -> None:
        for unsub in self._unsubscribe:
            unsub()
        self._unsubscribe.clear()

    def _on_bus(self, topic: str, data: dict[str, Any]) -> None:
        # Publisher's thread: do nothing here but hand over to the loop.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._fanout, topic, data)
        except RuntimeError:
            pass  # loop shutting down

    def _fanout(self, topic: str, data: dict[str, Any]) -> None:
        try:
            payload = self._transform(topic, data)
        except Exception:
            log.exception("web: could not prepare %s for the live stream", topic)
            return
        frame = sse_frame(SSE_EVENTS[topic], payload)
        for q in list(self._queues):
            self._put(q, frame)

    def _put(self, q: asyncio.Queue[Any], item: Any) -> None:
        try:
            q.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += q.qsize()
            while not q.empty():
                q.get_nowait()
            q.put_nowait(sse_frame("resync", {}))

    def close(self) -> None:
        """End every open stream (call on the loop); used before the server stops."""
        self.closed = True
        for q in list(self._queues):
            try:
                q.put_nowait(_CLOSE)
            except asyncio.QueueFull:
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(_CLOSE)

    async def stream(
        self, hello: dict[str, Any] | None = None, still_allowed: Callable[[], bool] | None = None
    ) -> AsyncIterator[bytes]:
        """The byte stream for one SSE client: hello, then bus messages and heartbeats until closed.

        `still_allowed` is asked before each message: when the session behind the stream has ended
        (logout, expiry, new password) the stream stops instead of carrying on.
        """
        q: asyncio.Queue[Any] = asyncio.Queue(QUEUE_MAX)
        self._queues.add(q)
        try:
            yield b"retry: 3000\n\n" + sse_frame("hello", hello or {})
            while not self.closed:
                try:
                    item = await asyncio.wait_for(q.get(), HEARTBEAT_S)
                except TimeoutError:
                    item = b": keepalive\n\n"
                if item is _CLOSE:
                    break
                if still_allowed is not None and not still_allowed():
                    break
                yield item
        finally:
            self._queues.discard(q)
