"""Crash-safe TinyDB storage.

TinyDB's `JSONStorage` truncates and rewrites its file in place, so a crash in the
middle leaves half a file. `AtomicJSONStorage` writes the whole database to a temp
file in the same folder, fsyncs it, renames it over the old one and fsyncs the
folder: after a crash the file is either the old or the new version, never a mix.

It also keeps the parsed data in memory (one process owns the file, so nobody else
changes it under us) and can group several TinyDB operations into one durable
write with `batch()`: an event record and its outbox entries become durable
together or not at all.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinydb.storages import Storage


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the whole new one.

    `durable=False` skips the fsyncs (still atomic, maybe not yet on disk after a power cut): for
    snapshots rewritten every few seconds, where flash wear matters more than the last copy.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


_TEMP_NAME = re.compile(r"\..+\.(\d+)\.tmp")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temp_files(folder: Path, *, recursive: bool = True) -> int:
    """Delete the `.<name>.<pid>.tmp` files `atomic_write_bytes` leaves when its process dies mid-write.

    A SIGKILL or power cut between the temp write and the rename leaves the temp file behind (the real
    file is untouched); without this sweep every such crash would leak a photo-sized file for ever.
    Only files whose writer pid is no longer running are removed. Returns how many were removed.
    """
    removed = 0
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for dirpath, _dirs, files in walker:
        for name in files:
            m = _TEMP_NAME.fullmatch(name)
            if m is None or int(m.group(1)) == os.getpid() or _pid_running(int(m.group(1))):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(dirpath, name))
                removed += 1
    return removed


class AtomicJSONStorage(Storage):
    """A TinyDB storage: whole-file atomic replace on every (batched) write, data cached in memory."""

    def __init__(self, path: str | Path, create_dirs: bool = True, **_: Any) -> None:
        self.path = Path(path)
        if create_dirs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._data: dict[str, dict[str, Any]] | None = None
        self._depth = 0
        self._dirty = False
        # buffered: writes stay in memory until flush(); the owner keeps them durable in a `Journal`.
        self.buffered = False
        self.writes = 0  # durable writes done (for tests and benches)

    def read(self) -> dict[str, dict[str, Any]] | None:
        if self._data is None:
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                return None
            # A torn file cannot happen with atomic replace; if it is unreadable something
            # outside us broke it, and refusing to start beats silently starting empty.
            self._data = json.loads(raw) if raw.strip() else {}
        return self._data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        self._data = data
        if self._depth or self.buffered:
            self._dirty = True
            return
        self._flush()

    def flush(self) -> None:
        """Write what is only in memory (buffered mode) to the file, atomically."""
        if self._dirty and self._data is not None:
            self._flush()

    def _flush(self) -> None:
        assert self._data is not None
        try:
            atomic_write_bytes(self.path, json.dumps(self._data, separators=(",", ":")).encode())
        except BaseException:
            self._data = None  # forget what did not reach the disk; reread the old file
            raise
        self._dirty = False
        self.writes += 1

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group writes: one durable write at the end, or none if the block raises (rolled back)."""
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._data = None
                self._dirty = False
            raise
        self._depth -= 1
        if self._depth == 0 and self._dirty and not self.buffered:
            self._flush()

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.read() or {})

    def close(self) -> None:
        pass


class Journal:
    """An append-only log of JSON lines, fsync'd per append: durability in O(size of the change).

    The store appends each change here before applying it in memory, and now and then writes the
    whole file atomically (`AtomicJSONStorage.flush`) and empties the journal. On open it replays the
    journal over the file; replay is idempotent, so a crash between the two steps is harmless. A line
    torn by a crash mid-append was never fsync'd, so never acknowledged: it and anything after it are
    ignored (and dropped by the compaction that follows the replay).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.entries_since_reset = 0

    def append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        if self._fd is None:
            existed = self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if not existed:
                fsync_dir(self.path.parent)
        view = memoryview(line)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)
        self.entries_since_reset += 1

    def read(self) -> list[dict[str, Any]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                break  # torn tail
        return out

    def reset(self) -> None:
        """Empty the journal (after its content reached the main file durably)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
        elif self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(0)
                os.fsync(f.fileno())
        self.entries_since_reset = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
