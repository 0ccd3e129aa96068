"""The alert outbox dispatcher: sends due entries through their notifier, with retry,
exponential backoff, rate limits and a dead-letter state.

One sending thread per notifier, so a slow webhook never holds up the folder sink
or WhatsApp. A notifier with `parallel_recipients = True` (Apprise: each recipient is a
different service) gets one lane per recipient instead: its thread hands each due entry
to a short-lived sender thread, at most one per recipient at a time, so one slow URL never
delays the others while each recipient's alerts still go out one by one, in order. An entry leaves `pending`/`failed` only when its notifier confirms
the send (`sent`), or when it has failed for longer than `dead_after_s` or the
notifier says retrying cannot help (`dead`). Every state change is written to the
store before the next send, so a crash re-sends at most the one in-flight entry;
the folder sink writes by alert id, so even that one lands exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.bus import OUTBOX_CHANGED, Bus
from gateway.notify.base import Alert, Notifier, SendResult
from gateway.ratelimit import SendLimiter
from gateway.store import Store
from gateway.vocabulary import RECEIPT_ORDER

log = logging.getLogger(__name__)


def backoff_s(attempts: int, initial: float, maximum: float) -> float:
    """Delay before the next try after `attempts` failures: initial * 2^(attempts-1), capped."""
    return min(maximum, initial * (2 ** max(0, attempts - 1)))


class OutboxDispatcher:
    def __init__(
        self,
        store: Store,
        notifiers: dict[str, Notifier],
        *,
        bus: Bus,
        photo_path: Callable[[str, str], Path | None],
        attachment_path: Callable[[str], Path | None] = lambda _name: None,
        backoff_initial_s: float = 2.0,
        backoff_max_s: float = 300.0,
        dead_after_s: float = 86_400.0,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.notifiers = notifiers
        self.bus = bus
        self.photo_path = photo_path
        self.attachment_path = attachment_path  # photos sent with the send API (`photo_file`)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.dead_after_s = dead_after_s
        self.poll_s = poll_s
        self.clock = clock
        self._limiters = {
            name: SendLimiter.for_limit(getattr(n, "rate_limit", None), clock)
            for name, n in notifiers.items()
        }
        # What a per-recipient limit counts under. A notifier that knows two addresses are one
        # recipient (WhatsApp: '+62 812-3456' and '628123456' are one phone) says so with an optional
        # `rate_key(recipient) -> str`; else the configured string is the key.
        self._rate_keys: dict[str, Callable[[str], str] | None] = {
            name: getattr(n, "rate_key", None) for name, n in notifiers.items()
        }
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        # Per notifier: results of sends that happened but could not be written (full disk), by alert
        # id. Such an alert is not sent again by this process; the result is written once there is room.
        self._unrecorded: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in notifiers}
        self._lanes: dict[tuple[str, str], threading.Thread] = {}  # (notifier, recipient) -> sender
        self._lanes_lock = threading.Lock()

    def start(self) -> None:
        self._stop.clear()
        for name in self.notifiers:
            t = threading.Thread(target=self._run, args=(name,), name=f"outbox-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def wake(self) -> None:
        """New or retried entries: look now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Finish the send in progress (each thread checks the flag between sends), then stop."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self._threads.clear()
        with self._lanes_lock:
            lanes = list(self._lanes.values())
        for t in lanes:
            t.join(max(0.1, deadline - time.monotonic()))

    def _run(self, name: str) -> None:
        while not self._stop.is_set():
            try:
                did = self._pass(name)
            except Exception:
                log.exception("outbox %s: dispatcher pass failed; retrying", name)
                did = False
            if not did:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def _pass(self, name: str) -> bool:
        """Send every due entry of notifier `name` once; True if anything was attempted."""
        notifier = self.notifiers[name]
        limiter = self._limiters[name]
        unrecorded = self._unrecorded[name]
        for alert_id, fields in list(unrecorded.items()):
            try:
                new = self.store.update_outbox(alert_id, **fields)
            except OSError:
                break  # still no room; try again next pass
            del unrecorded[alert_id]
            self.store.release_outbox(alert_id)  # its attempt is on record now: merges see it
            log.info("alert %s: its %s state is written now", alert_id, fields["state"])
            if new is not None:
                self.bus.publish(OUTBOX_CHANGED, _public(new))
        did = False
        for rec in self.store.open_outbox():
            if self._stop.is_set():
                break
            if rec["notifier"] != name or rec["id"] in unrecorded:
                continue
            now = self.clock()
            if (rec.get("next_attempt_at") or 0) > now:
                continue
            parallel = bool(getattr(notifier, "parallel_recipients", False))
            if parallel and self._lane_busy(name, rec["recipient"]):
                continue  # this recipient's previous send is still running; others go on
            # The list above may be stale: a lane may have finished this very entry, or a grouped
            # delivery joined it (the burst merge) while an earlier send of this pass ran. Send the
            # record as it is now, claimed: from here until its result is written no merge changes it.
            claimed = self.store.claim_outbox(rec["id"], now)
            if claimed is None:
                continue
            rec = claimed
            if limiter.try_acquire(self._rate_key(name, rec["recipient"]), now) > 0:
                self.store.release_outbox(rec["id"])
                continue  # rate limited: not a failure, the entry just waits its turn
            if parallel:
                self._start_lane(notifier, rec)
            else:
                self._send(notifier, rec)
            did = True
        return did

    def _rate_key(self, name: str, recipient: str) -> str:
        key = self._rate_keys[name]
        if key is None:
            return recipient
        try:
            return key(recipient)
        except Exception:  # a notifier's bug must not stop the pass: count it under its own spelling
            log.exception("outbox %s: rate key of %r failed; limiting it on its own", name, recipient)
            return recipient

    def wait_lanes(self, timeout: float = 30.0) -> bool:
        """Wait for the per-recipient senders in flight to finish; False if some still run."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lanes_lock:
                lanes = list(self._lanes.values())
            if not lanes:
                return True
            for t in lanes:
                t.join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                with self._lanes_lock:
                    return not self._lanes

    def _lane_busy(self, name: str, recipient: str) -> bool:
        with self._lanes_lock:
            t = self._lanes.get((name, recipient))
            return t is not None and t.is_alive()

    def _start_lane(self, notifier: Notifier, rec: dict[str, Any]) -> None:
        key = (notifier.name, rec["recipient"])

        def run() -> None:
            try:
                self._send(notifier, rec)
            except Exception:
                log.exception("outbox %s: send of %s failed", notifier.name, rec["id"])
            finally:
                with self._lanes_lock:
                    if self._lanes.get(key) is threading.current_thread():
                        del self._lanes[key]
                self._wake.set()  # the recipient's next entry may be due

        t = threading.Thread(target=run, name=f"outbox-{notifier.name}-lane", daemon=True)
        with self._lanes_lock:
            self._lanes[key] = t
        t.start()

    def _alert(self, rec: dict[str, Any]) -> Alert:
        photo = None
        if rec.get("photo_file"):
            photo = self.attachment_path(rec["photo_file"])
        elif rec.get("has_photo") and rec.get("event_ids"):
            photo = self.photo_path(rec["device"], rec["event_ids"][-1])
        return Alert(
            id=rec["id"],
            kind=rec["kind"],
            device=rec["device"],
            device_name=rec.get("device_name") or rec["device"],
            event_ids=tuple(rec.get("event_ids") or ()),
            ts=rec.get("ts") or rec["created_at"],
            caption=rec.get("caption") or "",
            recipient=rec["recipient"],
            photo_path=photo,
            state=dict(rec.get("alert_state") or {}),
        )

    def _send(self, notifier: Notifier, rec: dict[str, Any]) -> None:
        """Send a claimed entry (`Store.claim_outbox`), write the result, and release it; a result
        that could not be written keeps it claimed until it is (`_pass`): it was tried, so no burst
        may join it."""
        try:
            self._send_and_record(notifier, rec)
        finally:
            if rec["id"] not in self._unrecorded[notifier.name]:
                self.store.release_outbox(rec["id"])

    def _send_and_record(self, notifier: Notifier, rec: dict[str, Any]) -> None:
        try:
            result = notifier.send(self._alert(rec))
        except Exception as exc:  # the contract says sinks return failures; be safe anyway
            log.exception("notifier %s raised on %s", notifier.name, rec["id"])
            result = SendResult(ok=False, error=f"{type(exc).__name__}: {exc}")
        now = self.clock()
        attempts = int(rec.get("attempts") or 0) + 1
        fields: dict[str, Any]
        if result.ok:
            fields = {"state": "sent", "attempts": attempts, "sent_at": now, "next_attempt_at": None}
            if result.message_id:  # receipts (delivered, read) are matched by it later
                fields.update(message_id=result.message_id, receipt="sent")
            log.info("alert %s sent via %s", rec["id"], notifier.name)
        else:
            error = (result.error or "send failed")[:500]
            age = now - (rec.get("retried_at") or rec["created_at"])
            if result.permanent or age >= self.dead_after_s:
                fields = {"state": "dead", "attempts": attempts, "last_error": error, "next_attempt_at": None}
                log.error("alert %s dead after %d attempts: %s", rec["id"], attempts, error)
            else:
                delay = backoff_s(attempts, self.backoff_initial_s, self.backoff_max_s)
                if result.retry_after_s:
                    delay = max(delay, result.retry_after_s)
                fields = {
                    "state": "failed",
                    "attempts": attempts,
                    "last_error": error,
                    "next_attempt_at": now + delay,
                }
                # Held: the owner is already told why (banner, state); a line per alert per retry is noise.
                (log.debug if result.held else log.warning)(
                    "alert %s via %s failed (attempt %d, retry in %.0fs): %s",
                    rec["id"],
                    notifier.name,
                    attempts,
                    delay,
                    error,
                )
        try:
            new = self.store.update_outbox(rec["id"], **fields)
        except OSError as exc:
            # Full disk: the send happened (or failed) but cannot be written. Sending again on every
            # pass would spam the recipient for as long as the disk stays full; a crash before the
            # write loses only this memory, and then the alert goes out once more (at least once).
            self._unrecorded[notifier.name][rec["id"]] = fields
            log.warning("alert %s: cannot write its %s state yet (%s)", rec["id"], fields["state"], exc)
            return
        if new is not None:
            self.bus.publish(OUTBOX_CHANGED, _public(new))

    def reschedule(self, notifier: str) -> int:
        """Make `notifier`'s waiting entries due now: its channel just came back (WhatsApp connected).

        Attempts and the dead-letter clock are untouched; only the backoff wait is cut
        short, so alerts queued during an outage go out at once instead of minutes later.
        """
        now = self.clock()
        n = 0
        for rec in self.store.open_outbox():
            if rec["notifier"] != notifier or (rec.get("next_attempt_at") or 0) <= now:
                continue
            new = self.store.update_outbox(rec["id"], next_attempt_at=now)
            if new is not None:
                n += 1
                self.bus.publish(OUTBOX_CHANGED, _public(new))
        if n:
            log.info("outbox %s: %d waiting alert(s) due now", notifier, n)
            self.wake()
        return n

    def note_receipt(self, message_ids: list[str], status: str, ts: float, *, scan: int = 500) -> int:
        """A recipient's phone confirmed messages (WhatsApp receipts): sent -> delivered -> read.

        Only moves forward (a late "delivered" never hides "read"); looks among the newest
        `scan` sent entries. Returns how many entries changed.
        """
        rank = RECEIPT_ORDER.get(status)
        wanted = set(message_ids)
        if rank is None or not wanted:
            return 0
        n = 0
        for rec in self.store.list_outbox("sent", scan):
            if rec.get("message_id") not in wanted or RECEIPT_ORDER.get(rec.get("receipt") or "", 0) >= rank:
                continue
            new = self.store.update_outbox(rec["id"], receipt=status, receipt_at=ts)
            if new is not None:
                n += 1
                self.bus.publish(OUTBOX_CHANGED, _public(new))
        return n

    def retry(self, alert_id: str) -> bool:
        now = self.clock()
        # retried_at restarts the dead-letter clock without rewriting when the alert was created.
        # The state is checked in the write itself: a send that succeeded after a separate read would
        # otherwise be made pending again, and go out twice.
        new = self.store.update_outbox(
            alert_id, if_state=("failed", "dead"), state="pending", next_attempt_at=now, retried_at=now
        )
        if new is None:
            return False
        self.bus.publish(OUTBOX_CHANGED, _public(new))
        self.wake()
        return True


_PUBLIC_KEYS = (
    "id",
    "kind",
    "device",
    "event_ids",
    "notifier",
    "recipient",
    "state",
    "attempts",
    "created_at",
    "next_attempt_at",
    "sent_at",
    "last_error",
    "message_id",
    "receipt",
    "receipt_at",
)


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec.get(k) for k in _PUBLIC_KEYS}
