"""An exclusive, non-blocking `flock` on a file that names its owner's pid.

One mechanism for both "one owner" rules of the brief: one gateway per data folder
(`gateway.datalock`) and one process per WhatsApp session (`gateway.whatsapp.lock`).
The kernel drops the lock when the owner dies (even by SIGKILL or a Go panic), so a
stale file never blocks a restart; the pid inside lets whoever is refused say who
is in the way.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LockHeld(RuntimeError):
    """Another process holds the lock; `pid` is its pid when it wrote one."""

    def __init__(self, path: Path, pid: int | None, message: str | None = None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(message or f"{path} is locked by {who}")
        self.path = path
        self.pid = pid


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def holder_of(path: Path) -> int | None:
    """The pid holding an exclusive flock on `path` (0 if it wrote none), or None when free.

    Probes with a shared lock on a fresh descriptor, so it never takes the lock for long
    and works from any process, including the owner's."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pid(path) or 0
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class PidLock:
    """Take with `acquire()` (raises `error(path, pid)` when held) or as a context manager."""

    error: type[LockHeld] = LockHeld

    def __init__(self, path: Path | str, mode: int = 0o644) -> None:
        self.path = Path(path)
        self.mode = mode
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, self.mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self.error(self.path, read_pid(self.path)) from None
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
        """The pid holding the lock (this process's when it holds it; 0 if unknown), or None when free."""
        if self._fd is not None:
            return os.getpid()
        return holder_of(self.path)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
