"""File descriptors: raise the soft limit at start, and say how many the dashboard may use.

systemd (and most shells) start a process with a soft RLIMIT_NOFILE of 1024 and a much higher
hard limit; the soft one can be raised to the hard one without privileges. The gateway needs
descriptors for MQTT, the store's journals, photo files, the folder sink and the dashboard's
connections; the dashboard's share is capped at a fraction of the limit so nothing a LAN client
does can leave ingest without files (`gateway/web/connections.py`).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# Where the hard limit is "unlimited", ask for this much (Linux refuses more than fs.nr_open anyway).
UNLIMITED_TARGET = 1 << 16
# The dashboard may hold at most this fraction of the limit; the rest is ingest's, whatever happens.
WEB_SHARE = 4
WEB_MIN_CONNECTIONS = 8


def nofile_limits() -> tuple[int, int]:
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit in force afterwards."""
    soft, hard = nofile_limits()
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("file descriptors: soft limit raised from %d to %d", soft, target)
            soft = target
        except (ValueError, OSError) as e:
            log.warning("file descriptors: cannot raise the soft limit from %d to %d: %s", soft, target, e)
    return soft


def web_connection_cap(configured: int, soft_limit: int | None = None) -> int:
    """The dashboard's connection cap: `configured`, but never more than a quarter of the fd limit."""
    if soft_limit is None:
        soft_limit = nofile_limits()[0]
    if soft_limit == resource.RLIM_INFINITY:
        soft_limit = UNLIMITED_TARGET
    return max(WEB_MIN_CONNECTIONS, min(configured, soft_limit // WEB_SHARE))
