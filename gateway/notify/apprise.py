"""Apprise sink: Telegram, ntfy, e-mail, Matrix, Discord, Gotify... through Apprise URLs.

Implements `gateway.notify.base.Notifier`. Each configured URL is one outbox recipient,
with its own retries, rate limit and dead letter. URLs carry secrets (bot tokens,
passwords), so the outbox, `status`, status.json and the dashboard only ever see a
recipient id: the URL's scheme plus a hash of the whole URL (`tgram-3f9a0c21d4`). The
URL itself stays in the config and in this object.

Apprise (the `apprise` package, 2.3.0 read for this) returns an `AppriseResult` whose
status is SUCCESS, FAILURE or TIMEOUT, with captured log lines but no error class. What
we can tell (`classify`, pure): a URL Apprise cannot load and a recipient no longer in
the config are permanent; an HTTP 4xx a plugin logged as `error=4xx` (not 408/425/429)
is permanent; everything else (timeouts, 5xx, 429, SMTP or network errors) is
temporary and the outbox retries it. Only the status code goes into the error text, never
Apprise's log lines (they can name hosts and paths that belong to the secret).

`apprise` is an optional extra (`pip install 'parcelbox[apprise]'`): imported on first use.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.notify.base import Alert, RateLimit, SendResult

log = logging.getLogger(__name__)

# Plugins log failed HTTP calls as "...error=404." (apprise/plugins/*.py, "%s%serror=%s.").
_HTTP_STATUS = re.compile(r"\berror[=:]\s*(\d{3})\b")
# 4xx that retrying cannot fix: bad token, unknown chat, gone, payload refused.
_PERMANENT_HTTP = frozenset({400, 401, 403, 404, 405, 410, 413, 415, 422})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,30})://")


_ANY_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}://\S+")


class ScrubUrls(logging.Filter):
    """On Apprise's logger: every URL in a message becomes its recipient id (no secret reaches a log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a broken format string: drop the args rather than the line
            text = str(record.msg)
        scrubbed = _ANY_URL.sub(lambda m: recipient_id(m.group(0).rstrip(").,;'\"")), text)
        record.msg, record.args = scrubbed, ()
        return True


class AppriseMissing(RuntimeError):
    """`notify.apprise.urls` is set but the `apprise` package is not installed."""


def recipient_id(url: str) -> str:
    """The non-secret name of a URL in the outbox, logs and dashboard: scheme + hash (pure)."""
    m = _SCHEME.match(url.strip())
    scheme = m.group(1).lower() if m else "url"
    return f"{scheme}-{hashlib.sha256(url.strip().encode()).hexdigest()[:10]}"


def split_urls(value: Any) -> list[str]:
    """A TOML list, or one string of URLs separated by spaces or commas (Apprise's own rule)."""
    items = value if isinstance(value, list | tuple) else [value]
    out: list[str] = []
    for item in items:
        for url in _parse_urls(str(item)):
            if url and url not in out:
                out.append(url)
    return out


def _parse_urls(text: str) -> list[str]:
    try:
        from apprise.utils.parse import parse_urls
    except ImportError:  # without apprise the sink is off anyway; a plain split for `status`
        return [u for u in re.split(r"[\s,]+", text) if "://" in u]
    return [str(u) for u in parse_urls(text)]


@dataclass(frozen=True)
class AppriseMessage:
    title: str
    body: str
    attachment: Path | None


def build_message(alert: Alert, title_prefix: str = "parcelbox") -> AppriseMessage:
    """Alert -> what Apprise sends: the caption as body, the box name in the title (pure)."""
    title = f"{title_prefix}: {alert.device_name}" if title_prefix else alert.device_name
    body = alert.caption.strip() or f"{alert.kind} ({alert.device_name})"
    return AppriseMessage(title=title, body=body, attachment=alert.photo_path)


def classify(status: str, log_lines: Iterable[str]) -> SendResult:
    """Apprise's outcome (status name + captured log lines) -> our SendResult (pure)."""
    if status == "SUCCESS":
        return SendResult(ok=True)
    if status == "TIMEOUT":
        return SendResult(ok=False, error="apprise: timed out")
    codes = [int(m.group(1)) for line in log_lines for m in _HTTP_STATUS.finditer(line)]
    if codes:
        code = codes[-1]
        if code in _PERMANENT_HTTP:
            return SendResult(ok=False, error=f"apprise: HTTP {code} (permanent)", permanent=True)
        return SendResult(ok=False, error=f"apprise: HTTP {code}")
    # No status code: a network error, an SMTP refusal... Temporary; `dead_after_s` ends it.
    return SendResult(ok=False, error=f"apprise: {status.lower()} (network error or refused)")


class AppriseNotifier:
    """The `apprise` notifier: one recipient per URL; sends run in parallel per recipient."""

    name = "apprise"
    # The dispatcher gives each recipient its own lane: one slow URL never holds up the others.
    parallel_recipients = True

    def __init__(
        self,
        urls: Iterable[str],
        *,
        urls_by_box: dict[str, Any] | None = None,
        title: str = "parcelbox",
        timeout_s: float = 30.0,
        rate_per_minute: int = 0,
    ) -> None:
        try:
            import apprise  # noqa: F401
        except ImportError:
            raise AppriseMissing(
                "notify.apprise.urls is set but apprise is not installed: pip install 'parcelbox[apprise]'"
            ) from None
        # Apprise logs request URLs and payloads at DEBUG and INFO, and a URL it cannot parse in
        # full at ERROR: those hold the secrets. Quiet the first, scrub every URL from the rest.
        apprise_log = logging.getLogger("apprise")
        apprise_log.setLevel(logging.WARNING)
        if not any(isinstance(f, ScrubUrls) for f in apprise_log.filters):
            apprise_log.addFilter(ScrubUrls())
        self.title = title
        self.timeout_s = timeout_s
        self._default = [recipient_id(u) for u in split_urls(list(urls))]
        self._by_box: dict[str, list[str]] = {}
        self._urls: dict[str, str] = {}
        for u in split_urls(list(urls)):
            self._urls[recipient_id(u)] = u
        for box, value in (urls_by_box or {}).items():
            box_urls = split_urls(value)
            for u in box_urls:
                self._urls[recipient_id(u)] = u
            if box_urls:
                self._by_box[str(box)] = [recipient_id(u) for u in box_urls]
        bad = [rid for rid, u in self._urls.items() if not self._loadable(u)]
        for rid in bad:
            # Named by id only; its alerts are dead-lettered with the same reason.
            log.error("apprise: URL %s is not one Apprise can load (unknown scheme or missing parts)", rid)
        self.rate_limit: RateLimit | None = (
            RateLimit(per_recipient=(rate_per_minute, 60.0)) if rate_per_minute > 0 else None
        )
        self._lock = threading.Lock()
        self.counters = {"sent": 0, "failed": 0, "permanent": 0}
        self.last: dict[str, dict[str, Any]] = {}  # recipient id -> last outcome (dashboard)

    @staticmethod
    def _loadable(url: str) -> bool:
        import apprise

        return apprise.Apprise.instantiate(url) is not None

    # --- Notifier -------------------------------------------------------------------

    def recipients(self, device: str) -> list[str]:
        return list(self._by_box.get(device) or self._default)

    def all_recipients(self) -> list[str]:
        """Every configured recipient id (the dashboard lists them with their state)."""
        return list(self._urls)

    def describe(self, rid: str) -> dict[str, Any]:
        """A recipient's public description: id, scheme, boxes routed to it. Never the URL."""
        boxes = sorted(b for b, ids in self._by_box.items() if rid in ids)
        return {
            "id": rid,
            "scheme": rid.rsplit("-", 1)[0],
            "default": rid in self._default,
            "boxes": boxes,
            "last": dict(self.last.get(rid) or {}),
        }

    def send(self, alert: Alert) -> SendResult:
        try:
            result = self._send(alert)
        except Exception as exc:  # the contract: never raise into the outbox
            log.exception("apprise: alert %s to %s failed unexpectedly", alert.id, alert.recipient)
            result = SendResult(ok=False, error=f"apprise: {type(exc).__name__}")
        with self._lock:
            self.counters["sent" if result.ok else "failed"] += 1
            if result.permanent:
                self.counters["permanent"] += 1
            self.last[alert.recipient] = {"ok": result.ok, "error": result.error, "alert": alert.id}
        return result

    def _send(self, alert: Alert) -> SendResult:
        import apprise

        url = self._urls.get(alert.recipient)
        if url is None:
            return SendResult(
                ok=False, error=f"{alert.recipient} is no longer in notify.apprise", permanent=True
            )
        # A fresh Apprise object per send: sends to different URLs run on different threads.
        asset = apprise.AppriseAsset(storage_mode="memory")
        ap = apprise.Apprise(asset=asset)
        if not ap.add(url):
            return SendResult(
                ok=False, error=f"{alert.recipient}: not a URL Apprise can load", permanent=True
            )
        msg = build_message(alert, self.title)
        attach = None
        if msg.attachment is not None:
            if Path(msg.attachment).is_file():
                attach = apprise.AppriseAttachment(str(msg.attachment), asset=asset)
            else:
                log.warning("apprise: alert %s photo missing; sending the text alone", alert.id)
        res = ap.notify(body=msg.body, title=msg.title, attach=attach, timeout=self.timeout_s)
        status = getattr(getattr(res, "status", None), "name", None) or ("SUCCESS" if res else "FAILURE")
        lines = [str(getattr(e, "message", e)) for e in _logs(res)]
        out = classify(status, lines)
        if not out.ok:
            log.warning("apprise: alert %s to %s: %s", alert.id, alert.recipient, out.error)
        return out

    def close(self) -> None:
        pass


def _logs(res: Any) -> list[Any]:
    logs = getattr(res, "logs", None)
    if logs is None:
        return []
    try:
        return list(logs() if callable(logs) else logs)
    except Exception:  # the log capture is a convenience; the status alone still classifies
        return []
