"""Deleting by age (`[store] retention_days`, `photo_retention_days`): the gateway's hourly clean-up.

The store removes old events and photos (`Store.apply_retention`, which keeps what an unsent alert
still needs); send-API photos go with the photo retention, but never before their alerts are
settled (sent or dead). Runs on the ingest worker, the store's one writer. Deleting a box's history
on request is `gateway.purge`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gateway.config import Config
from gateway.sendqueue import API_PHOTO_DIR, prune_api_photos
from gateway.store import Store

log = logging.getLogger("gateway")


def apply_retention(store: Store, data_dir: Path, config: Config, now: float) -> None:
    s = config.store
    if s.photo_retention_days:
        # Send-API photos: kept as long as box photos, and never before their alerts are settled.
        age = max(s.photo_retention_days * 86400.0, config.outbox.dead_after_s + 3600.0)
        n = prune_api_photos(data_dir / API_PHOTO_DIR, now, age)
        if n:
            log.info("retention removed %d send-API photo(s)", n)
    if s.retention_days or s.photo_retention_days:
        removed = store.apply_retention(now, s.retention_days, s.photo_retention_days)
        if any(removed.values()):
            log.info("retention removed %s", removed)
