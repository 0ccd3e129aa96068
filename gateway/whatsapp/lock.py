"""One owner per WhatsApp session: an exclusive `flock` on a file beside the session database.

Two clients on one session make WhatsApp drop both ("stream replaced" / conflict),
so the WhatsApp child takes this lock before it opens the session and holds it
for its whole life. The file holds the owner's pid so whoever is refused can say
who is in the way. The kernel releases the lock when the owner dies, even by
SIGKILL or a Go panic, so a stale file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "session.lock"


class SessionLocked(RuntimeError):
    """Another process owns the WhatsApp session."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"the WhatsApp session in {path.parent} is in use by {who} (lock file {path}). "
            "Only one process may own a WhatsApp session: stop the running gateway "
            f"(or the other `parcelbox whatsapp` command){f' - pid {pid}' if pid else ''} first."
        )
        self.path = path
        self.pid = pid


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def holder_of(path: Path) -> int | None:
    """The pid holding an exclusive flock on `path` (0 if it wrote none), or None when free."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(path) or 0
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class SessionLock:
    """Non-blocking exclusive lock on `<session_dir>/session.lock`."""

    def __init__(self, session_dir: Path | str) -> None:
        self.path = Path(session_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise `SessionLocked` naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SessionLocked(self.path, _read_pid(self.path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> int | None:
        """The pid holding the lock (0 if unknown), or None when free. Does not take it."""
        if self._fd is not None:
            return os.getpid()
        return holder_of(self.path)

    def __enter__(self) -> SessionLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
