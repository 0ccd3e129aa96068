"""One owner per WhatsApp session: an exclusive `flock` on a file beside the session database.

Two clients on one session make WhatsApp drop both ("stream replaced" / conflict),
so the WhatsApp child takes this lock before it opens the session and holds it
for its whole life. The file holds the owner's pid so whoever is refused can say
who is in the way. The kernel releases the lock when the owner dies, even by
SIGKILL or a Go panic, so a stale file never blocks a restart.
"""

from __future__ import annotations

from pathlib import Path

from gateway.pidlock import LockHeld, PidLock, holder_of

__all__ = ["LOCK_NAME", "SessionLock", "SessionLocked", "holder_of"]

LOCK_NAME = "session.lock"


class SessionLocked(LockHeld):
    """Another process owns the WhatsApp session."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            path,
            pid,
            f"the WhatsApp session in {path.parent} is in use by {who} (lock file {path}). "
            "Only one process may own a WhatsApp session: stop the running gateway "
            f"(or the other `parcelbox whatsapp` command){f' - pid {pid}' if pid else ''} first.",
        )


class SessionLock(PidLock):
    """Non-blocking exclusive lock on `<session_dir>/session.lock` (mode 0600: it sits beside the session)."""

    error = SessionLocked

    def __init__(self, session_dir: Path | str) -> None:
        super().__init__(Path(session_dir) / LOCK_NAME, mode=0o600)
