"""One process per data folder: a `PidLock` on `<data>/gateway.lock` (see `gateway.pidlock`)."""

from __future__ import annotations

from pathlib import Path

from gateway.pidlock import LockHeld, PidLock, holder_of, read_pid


class DataDirLocked(LockHeld):
    """Another process owns the data folder."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            path, pid, f"data folder {path.parent} is in use by {who} (lock {path}); stop it first"
        )


def read_owner(path: Path) -> int | None:
    return read_pid(path)


class DataDirLock(PidLock):
    error = DataDirLocked

    def __init__(self, data_dir: Path | str, name: str = "gateway.lock") -> None:
        super().__init__(Path(data_dir) / name)

    def is_held_elsewhere(self) -> int | None:
        """The pid holding the lock, 0 if held by an unknown pid, None if free (does not take it)."""
        return holder_of(self.path)
