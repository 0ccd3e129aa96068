"""Webhook sink: HTTP POST of each alert as JSON (photo as base64) or multipart/form-data.

With `events = "all"` (the default) it gets every stored event (delivery, pickup, lid
closed, snapshot...) and every box status change (offline, online, low battery), not only
the kinds in `alerts.kinds`. With a `secret`, each body is signed (`sign`, pure):

    X-Parcelbox-Signature-256: sha256=<hex HMAC-SHA256(secret, raw request body)>
    X-Parcelbox-Delivery: <alert id>   (the same on every retry: receivers drop repeats)

The body carries `sent_at` (this attempt's time, inside the signature), so a receiver can
refuse replays of old bodies. docs/webhooks.md shows how to verify.

Any 2xx is a success. 429 and 5xx are temporary (429's Retry-After is honoured);
other 4xx are permanent (the outbox dead-letters them at once). Network errors are
temporary. Nothing is raised into the outbox. Uses only the standard library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.notify.base import Alert, RateLimit, SendResult, alert_document

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Parcelbox-Signature-256"
DELIVERY_HEADER = "X-Parcelbox-Delivery"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for `body` (pure): `sha256=` + hex HMAC-SHA256 with `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return bool(header) and hmac.compare_digest(sign(secret, body), str(header))


@dataclass(frozen=True)
class WebhookRequest:
    body: bytes
    content_type: str


def build_request(
    alert: Alert, photo: bytes | None, fmt: str = "json", sent_at: float | None = None
) -> WebhookRequest:
    """The HTTP body for one alert (pure; the photo bytes and this attempt's time are passed in)."""
    doc = alert_document(alert)
    if sent_at is not None:
        doc["sent_at"] = sent_at
    if fmt == "json":
        doc["photo_jpeg_base64"] = base64.b64encode(photo).decode() if photo is not None else None
        return WebhookRequest(json.dumps(doc, ensure_ascii=False).encode(), "application/json")
    boundary = f"parcelbox-{uuid.uuid4().hex}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="alert"\r\n'
        f"Content-Type: application/json\r\n\r\n".encode()
        + json.dumps(doc, ensure_ascii=False).encode()
        + b"\r\n"
    ]
    if photo is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="{alert.id}.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode()
            + photo
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return WebhookRequest(b"".join(parts), f"multipart/form-data; boundary={boundary}")


class WebhookNotifier:
    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        fmt: str = "json",
        timeout_s: float = 10.0,
        headers: dict[str, str] | None = None,
        rate_per_minute: int = 0,
        secret: str = "",
        events: str = "all",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("notify.webhook.url must be http:// or https://")
        self.url = url
        self.fmt = fmt
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self.secret = secret
        if events not in ("all", "alerts"):
            raise ValueError("notify.webhook.events must be 'all' or 'alerts'")
        # The service plans an entry for this sink for every stored event, not only alerts.kinds.
        self.every_event = events == "all"
        self.clock = clock
        self.rate_limit: RateLimit | None = (
            RateLimit(overall=(rate_per_minute, 60.0)) if rate_per_minute > 0 else None
        )

    def recipients(self, device: str) -> list[str]:
        return [""]

    def send(self, alert: Alert) -> SendResult:
        try:
            photo = Path(alert.photo_path).read_bytes() if alert.photo_path else None
        except OSError as exc:
            photo = None
            log.warning("webhook: alert %s photo unreadable (%s); sending without it", alert.id, exc)
        req_body = build_request(alert, photo, self.fmt, sent_at=self.clock())
        headers = {
            **self.headers,
            "Content-Type": req_body.content_type,
            "User-Agent": "parcelbox",
            DELIVERY_HEADER: alert.id,
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, req_body.body)
        req = urllib.request.Request(self.url, data=req_body.body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read(1024)
                return SendResult(ok=True)
        except urllib.error.HTTPError as exc:
            status = exc.code
            if status == 429 or status >= 500:
                retry_after = None
                ra = exc.headers.get("Retry-After") if exc.headers else None
                if ra and ra.strip().isdigit():
                    retry_after = float(ra.strip())
                return SendResult(ok=False, error=f"HTTP {status}", retry_after_s=retry_after)
            return SendResult(ok=False, error=f"HTTP {status}", permanent=True)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            return SendResult(ok=False, error=f"{type(exc).__name__}: {reason}")

    def close(self) -> None:
        pass
