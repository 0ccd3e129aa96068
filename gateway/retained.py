"""Retained messages where the protocol never retains: recognised, so the gateway can clear them.

Only a box's `status` (and its last will, on the same topic) is retained (docs/protocol.md). Mosquitto's
ACL cannot tell a retained publish from a live one, so a stolen box login can leave a retained message
(up to a chunk's 64 KiB) on each of its own event, chunk, command-result or update-reply topics, and the
broker replays every one of them to the gateway at every (re)subscribe: every start and reconnect. The
gateway link (gateway/ingest.py) asks `RetainedGuard.check` about each message it receives; on `JUNK`
it publishes an empty retained message on that topic (MQTT 3.1.1 §3.3.1.3: a zero-byte retained
publish removes the retained message) and counts the rejection, so the junk is replayed once at most.

What the gateway can see: MQTT 3.1.1 clears the retain flag on messages forwarded to an existing
subscription (§3.3.1.3, [MQTT-3.3.1-9]), so `retained` is set only on replays from the broker's
retained store. Junk published while the gateway is connected reaches it as a live message (handled
like any other), and is cleared at its first replay.

The broker forwards our empty publish to every subscriber of the topic, the gateway included, as a live
empty message: `check` recognises that echo (bounded bookkeeping) so it is dropped quietly instead of
being counted as a malformed chunk or event.

Pure logic, no I/O: the caller publishes and counts.
"""

from __future__ import annotations

from enum import Enum

# The topic kinds (under `<prefix>/<device>/`) that the box publishes retained.
RETAINED_KINDS = frozenset({"status"})
# Clears whose echo has not come back yet, at most (a flood of junk cannot grow this without bound;
# past it an echo is handled as any empty message: one more rejection counted, nothing lost).
MAX_PENDING_ECHOES = 4096


class Verdict(Enum):
    PASS = "pass"  # handle as usual
    JUNK = "junk"  # retained where the protocol never retains: clear it on the broker, count, drop
    ECHO = "echo"  # our own clearing publish coming back: drop quietly


class RetainedGuard:
    def __init__(self, prefix: str, max_pending: int = MAX_PENDING_ECHOES) -> None:
        self.prefix = prefix
        self.max_pending = max_pending
        self._pending: dict[str, int] = {}  # topic -> clears whose echo is still due

    def may_retain(self, topic: str) -> bool:
        """True for `<prefix>/<device>/status`, the one topic the box retains."""
        if not topic.startswith(self.prefix + "/"):
            return False
        parts = topic[len(self.prefix) + 1 :].split("/")
        return len(parts) == 2 and parts[1] in RETAINED_KINDS

    def check(self, topic: str, payload: bytes, retained: bool) -> Verdict:
        if retained:
            if not payload or self.may_retain(topic):
                return Verdict.PASS
            if topic in self._pending or len(self._pending) < self.max_pending:
                self._pending[topic] = self._pending.get(topic, 0) + 1
            return Verdict.JUNK
        if not payload and topic in self._pending:
            n = self._pending.pop(topic)
            if n > 1:
                self._pending[topic] = n - 1
            return Verdict.ECHO
        return Verdict.PASS

    @property
    def pending_echoes(self) -> int:
        """Clears not yet echoed back. `check` runs on paho's thread only; this may be read from any
        (dict.copy is one step under the GIL, so the count is never taken mid-change)."""
        return sum(self._pending.copy().values())
