"""Commands this gateway sent, and the results boxes sent back: bounded, matched, expiring.

A box answers a command on `<prefix>/<device>/cmd/result`; anything can be published there by the
box that owns the topic, so a result is only kept when it answers a command *this gateway sent to
that box* and has not been answered yet. Everything else is refused (`unknown_command`), so a box
publishing results with made-up ids costs a counter, not memory (issue 14 item 4: 63 MB -> 364 MB in
14 s, never freed).

The table is bounded three ways: commands waiting per box, commands in total (the oldest is
forgotten first) and age; and a big result is kept without its extra keys (`MAX_RESULT_BYTES`) (an entry, answered or not, is forgotten `ttl_s` after it was sent: the
dashboard polls a result for seconds, not hours). Pure logic with an injected clock; not thread-safe
on its own (`Commands`, below, calls it under its lock and does the decoding and publishing).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.bus import COMMAND_RESULT, Bus
from gateway.protocol import Limits, ProtocolError, decode_cmd_result, encode_cmd, topic, valid_device_id

# What the dashboard, WhatsApp and Home Assistant send is a few commands a minute; these bounds are
# far above that and far below what a flood could use.
PER_DEVICE = 16
TOTAL = 256
TTL_S = 600.0
# A result's extra keys are kept only when its payload is at most this big (real ones are a few
# dozen bytes: ping's rtt, config's changed keys); a 16 KiB result of nested junk decodes to ~200 KB.
MAX_RESULT_BYTES = 2048


@dataclass
class SentCommand:
    id: str
    device: str
    cmd: str
    sent_at: float
    result: dict[str, Any] | None = field(default=None)


class UnknownResult(Exception):
    """A result that answers no command this gateway has waiting for that box. `reason` is the
    rejection counter: `unknown_command`, or `duplicate_cmd_result` for a second answer."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CommandTable:
    def __init__(self, *, per_device: int = PER_DEVICE, total: int = TOTAL, ttl_s: float = TTL_S) -> None:
        self.per_device = per_device
        self.total = total
        self.ttl_s = ttl_s
        self._by_id: OrderedDict[str, SentCommand] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._by_id)

    def expire(self, now: float) -> None:
        """Forget every entry older than `ttl_s` (they are in send order, so stop at the first young one)."""
        while self._by_id:
            first = next(iter(self._by_id.values()))
            if now - first.sent_at < self.ttl_s:
                break
            self._by_id.popitem(last=False)

    def sent(self, cmd_id: str, device: str, cmd: str, now: float) -> None:
        """Remember a command just published to `device`, making room per box and in total."""
        self.expire(now)
        waiting = [c.id for c in self._by_id.values() if c.device == device and c.result is None]
        for old in waiting[: max(0, len(waiting) - self.per_device + 1)]:
            del self._by_id[old]
        while len(self._by_id) >= self.total:
            self._by_id.popitem(last=False)
        self._by_id[cmd_id] = SentCommand(cmd_id, device, cmd, now)

    def answer(self, device: str, cmd_id: str, result: dict[str, Any], now: float) -> SentCommand:
        """Record `device`'s result for `cmd_id`; raises UnknownResult unless it answers a command this
        gateway sent to that same box that is still waiting. A second answer (QoS 1 redelivery) is
        refused the same way: the first one stands."""
        self.expire(now)
        entry = self._by_id.get(cmd_id)
        if entry is None:
            raise UnknownResult("unknown_command", f"no command {cmd_id} waiting")
        if entry.device != device:
            raise UnknownResult("unknown_command", f"command {cmd_id} was sent to another box")
        if entry.result is not None:
            raise UnknownResult("duplicate_cmd_result", f"command {cmd_id} already answered")
        entry.result = result
        return entry

    def result(self, cmd_id: str, now: float) -> dict[str, Any] | None:
        self.expire(now)
        entry = self._by_id.get(cmd_id)
        return entry.result if entry else None


class Commands:
    """Commands to boxes and their results: the I/O around `CommandTable` (send, answer, look up).

    `send` runs on the web, Home Assistant and WhatsApp threads, `on_result` and `expire` on the ingest
    worker, `result` on the web's: the table is guarded by one lock here. A result is told on the bus
    (COMMAND_RESULT) only when it answers a command this gateway sent.
    """

    def __init__(
        self,
        *,
        prefix: str,
        limits: Limits,
        bus: Bus,
        publish: Callable[[str, bytes], None],
        running: Callable[[], bool],
        reject: Callable[[str, str, str], None],
        clock: Callable[[], float],
    ) -> None:
        self._prefix = prefix
        self._limits = limits
        self._bus = bus
        self._publish = publish  # (topic, payload) on the gateway's MQTT link
        self._running = running  # the link exists (between start and stop)
        self._reject = reject  # (reason, detail, where): counted and logged by the service
        self._clock = clock
        self._table = CommandTable()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._table)

    def send(self, device: str, cmd: str, args: dict[str, Any] | None = None) -> str:
        """Publish a command to a box; returns its id (`gateway.ports.GatewayPort.send_command`)."""
        if not valid_device_id(device):
            raise ValueError(f"bad device id {device!r}")
        if not self._running():
            raise RuntimeError("gateway is not running")
        cmd_id = f"cmd-{uuid.uuid4().hex[:12]}"
        payload = encode_cmd(cmd_id, cmd, args)  # raises ProtocolError for unknown commands
        with self._lock:  # before publishing: the answer can come back before publish returns
            self._table.sent(cmd_id, device, cmd, self._clock())
        self._publish(topic(self._prefix, device, "cmd"), payload)
        return cmd_id

    def on_result(self, device: str, payload: bytes) -> None:
        """A box's `cmd/result` (on the ingest worker): kept and told on the bus, or refused."""
        try:
            res = decode_cmd_result(payload, self._limits)
        except ProtocolError as exc:
            self._reject(exc.reason, exc.detail, f"command result from {device}")
            return
        extra = res.extra if len(payload) <= MAX_RESULT_BYTES else {"extra_dropped": True}
        data = {"device": device, "id": res.id, "ok": res.ok, "error": res.error, **extra}
        try:
            with self._lock:
                self._table.answer(device, res.id, data, self._clock())
        except UnknownResult as exc:
            # Only answers to commands this gateway sent to this box are kept (issue 14 item 4).
            self._reject(exc.reason, exc.detail, f"command result from {device}")
            return
        self._bus.publish(COMMAND_RESULT, data)

    def result(self, cmd_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._table.result(cmd_id, self._clock())

    def expire(self) -> None:
        """Forget old entries (the service's once-a-second tick)."""
        with self._lock:
            self._table.expire(self._clock())
