"""Folder sink: each alert becomes `<alert id>.json` (+ `<alert id>.jpg` when it has a photo).

Files are written atomically (temp, fsync, rename), the photo before the JSON, and
named by the alert id, so a re-send after a crash overwrites the same files: every
alert is in the folder exactly once. Used by the demo (`make run`) and the tests.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.notify.base import Alert, RateLimit, SendResult, alert_document
from gateway.storage import atomic_write_bytes, remove_stale_temp_files

log = logging.getLogger(__name__)
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


@dataclass(frozen=True)
class FolderPayload:
    name: str  # file name stem (the alert id)
    document: dict[str, Any]


def build_payload(alert: Alert) -> FolderPayload:
    """The JSON document for one alert (pure; no I/O)."""
    if not _SAFE_ID.fullmatch(alert.id):
        raise ValueError(f"alert id {alert.id!r} is not a safe file name")
    return FolderPayload(
        alert.id,
        {**alert_document(alert), "photo": f"{alert.id}.jpg" if alert.photo_path else None},
    )


class FolderNotifier:
    name = "folder"
    rate_limit: RateLimit | None = None  # local files: nothing to protect

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if remove_stale_temp_files(self.path, recursive=False):
            log.warning("folder sink %s: removed temp files left by a crash", self.path)

    def recipients(self, device: str) -> list[str]:
        return [""]

    def send(self, alert: Alert) -> SendResult:
        try:
            payload = build_payload(alert)
            if alert.photo_path is not None:
                atomic_write_bytes(self.path / f"{payload.name}.jpg", Path(alert.photo_path).read_bytes())
            body = json.dumps(payload.document, ensure_ascii=False, indent=1).encode()
            atomic_write_bytes(self.path / f"{payload.name}.json", body)
        except ValueError as exc:
            return SendResult(ok=False, error=str(exc), permanent=True)
        except OSError as exc:
            log.warning("folder sink %s: %s", self.path, exc)
            return SendResult(ok=False, error=f"{type(exc).__name__}: {exc}")
        return SendResult(ok=True)

    def close(self) -> None:
        pass
