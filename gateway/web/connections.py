"""A cap on the dashboard's open connections, so the LAN cannot spend the gateway's file descriptors.

About 1,000 idle connections once used up systemd's default 1024 descriptors: photo deliveries
failed with EMFILE in the ingest worker and the folder sink, and asyncio logged
"socket.accept() out of system resource" 229,319 times in 25 s. uvicorn does not cap connections:
`limit_concurrency` answers 503 to *requests* once over the limit, but every idle socket that never
sends a request stays open (its keep-alive timer only starts after a first response), and h11 has
no header timeout.

`ConnectionTable` (pure, clock passed in) decides; `capped_protocol` applies it in uvicorn's h11
protocol:
- at most `max_connections` open; a new connection over the cap evicts the connection that has
  been idle longest (no request in progress: it is sending nothing, or trickling headers, or
  waiting on keep-alive), so a browser arriving now is served and a flood only churns itself;
  when every connection is busy, the new one is closed at once;
- one client (an address; an IPv6 /64) holds at most a quarter of the slots, so one LAN host
  cannot keep every slot busy (bodies sent slowly) and lock newcomers out; loopback clients (a
  reverse proxy) are exempt;
- a connection idle for `idle_timeout_s` is closed (slowloris: headers that never finish).
The listening socket's backlog bounds how many sockets asyncio accepts per loop pass before
they reach this table, so the web side holds at most about `max_connections + 3 * backlog`
descriptors however fast connections arrive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.web.auth import client_key
from gateway.web.settings import is_loopback

log = logging.getLogger(__name__)


@dataclass
class ConnectionTable:
    """Which connections to close. Every method returns the connections to close now.

    `per_client` (None: no such cap) bounds one client's share (an address, an IPv6 /64), so a
    single LAN host cannot hold every slot with requests kept busy (a body sent slowly); over it,
    that client's own longest-idle connection goes, or the new one. Connections admitted with
    client "" (loopback: a reverse proxy, this machine) are not counted per client.
    """

    max_connections: int
    idle_timeout_s: float
    per_client: int | None = None
    # conn -> since when it has been idle (None: a request is in progress). Insertion-ordered.
    _idle_since: dict[Hashable, float | None] = field(default_factory=dict)
    _client_of: dict[Hashable, str] = field(default_factory=dict)
    _per_client: dict[str, int] = field(default_factory=dict)
    evicted: int = 0  # idle connections closed to make room for a new one
    refused: int = 0  # new connections closed because every slot (of the table, or the client's) was busy
    timed_out: int = 0  # idle longer than idle_timeout_s

    def __len__(self) -> int:
        return len(self._idle_since)

    def _refresh(self, now: float, busy: Callable[[Any], bool]) -> None:
        for conn, since in self._idle_since.items():
            if busy(conn):
                self._idle_since[conn] = None
            elif since is None:
                self._idle_since[conn] = now

    def _add(self, conn: Hashable, client: str, now: float) -> None:
        self._idle_since[conn] = now
        if client:
            self._client_of[conn] = client
            self._per_client[client] = self._per_client.get(client, 0) + 1

    def remove(self, conn: Hashable) -> None:
        self._idle_since.pop(conn, None)
        client = self._client_of.pop(conn, None)
        if client is not None:
            left = self._per_client[client] - 1
            if left:
                self._per_client[client] = left
            else:
                del self._per_client[client]

    def _evict_one(self, candidates: list[Hashable], conn: Hashable) -> list[Hashable]:
        """Close the longest-idle of `candidates` (refreshed) to make room, else refuse `conn`."""
        idle = [(t, c) for c in candidates if (t := self._idle_since[c]) is not None]
        if not idle:
            self.refused += 1
            return [conn]
        _, victim = min(idle, key=lambda tc: tc[0])
        self.remove(victim)
        self.evicted += 1
        return [victim]

    def admit(
        self, conn: Hashable, now: float, busy: Callable[[Any], bool], client: str = ""
    ) -> list[Hashable]:
        """A new connection: room is made by evicting the longest-idle one, else `conn` itself goes."""
        if client and self.per_client is not None and self._per_client.get(client, 0) >= self.per_client:
            self._refresh(now, busy)
            out = self._evict_one([c for c, k in self._client_of.items() if k == client], conn)
        elif len(self._idle_since) >= self.max_connections:
            self._refresh(now, busy)
            out = self._evict_one(list(self._idle_since), conn)
        else:
            out = []
        if conn not in out:
            self._add(conn, client, now)
        return out

    def sweep(self, now: float, busy: Callable[[Any], bool]) -> list[Hashable]:
        """Connections idle for longer than the timeout (they leave the table)."""
        self._refresh(now, busy)
        expired = [
            c
            for c, since in self._idle_since.items()
            if since is not None and now - since >= self.idle_timeout_s
        ]
        for c in expired:
            self.remove(c)
        self.timed_out += len(expired)
        return expired


def request_in_progress(proto: Any) -> bool:
    """True while uvicorn's h11 protocol has a request whose response is not complete."""
    cycle = getattr(proto, "cycle", None)
    return cycle is not None and not cycle.response_complete


class CappedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, admitted through a `ConnectionTable` (set on a subclass per server)."""

    table: ConnectionTable

    # uvicorn's H11Protocol narrows asyncio's BaseTransport to Transport the same way (asyncio passes one).
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else ""
        client = "" if not host or is_loopback(host) else client_key(host)
        for conn in self.table.admit(self, self.loop.time(), request_in_progress, client):
            if isinstance(conn, CappedH11Protocol):  # the table holds only these (typed Hashable)
                conn.drop()

    def connection_lost(self, exc: Exception | None) -> None:
        self.table.remove(self)
        super().connection_lost(exc)

    def drop(self) -> None:
        self.table.remove(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def capped_protocol(table: ConnectionTable) -> type[CappedH11Protocol]:
    """A protocol class bound to `table`, for `uvicorn.Config(http=...)`."""
    return type("CappedH11Protocol", (CappedH11Protocol,), {"table": table})


async def sweep_forever(table: ConnectionTable, every_s: float = 1.0) -> None:
    """Close connections idle past the table's timeout; runs on the server's loop until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every_s)
        for conn in table.sweep(loop.time(), request_in_progress):
            if isinstance(conn, CappedH11Protocol):  # the table holds only these (typed Hashable)
                conn.drop()
