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
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tinydb.storages import Storage

from gateway.framing import HEADER, Damage, encode_line, salvage_tables, scan_lines

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_temp_serial = itertools.count(1)  # next() on a count is atomic under the GIL: one name per write


def atomic_write_bytes(
    path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True, make_parent: bool = False
) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the whole new one.

    The one atomic write of the gateway (temp file, fsync, rename, fsync of the folder): the store,
    the device registry, the broker's files, the dashboard's secrets and the Home Assistant state all
    use it. `mode` is the new file's mode (0o600 for secrets: the temp file is never wider).
    `durable=False` skips the fsyncs (still atomic, maybe not yet on disk after a power cut): for
    snapshots rewritten every few seconds, where flash wear matters more than the last copy.
    `make_parent` creates the folder first. Two threads may write the same path at once: each has its
    own temp file (`.<name>.<pid>-<serial>.tmp`), and the last rename wins whole.
    """
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{next(_temp_serial)}.tmp")
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


_TEMP_NAME = re.compile(r"\..+\.(\d+)(?:-\d+)?\.tmp")  # .<name>.<pid>[-<serial>].tmp


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temp_files(folder: Path, *, recursive: bool = True) -> int:
    """Delete the `.<name>.<pid>-<serial>.tmp` files `atomic_write_bytes` leaves when its process dies mid-write.

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
    """A TinyDB storage: whole-file atomic replace on every (batched) write, data cached in memory.

    With `classify` (doc -> table name, or None for "not a doc of this file"), a file that does not
    parse is not the end: its readable docs are salvaged (`gateway.framing.salvage_tables`), the
    damaged file is copied to `quarantine_dir` first, and the salvaged data replaces it. Without
    `classify` an unreadable file raises, as before.
    """

    def __init__(
        self,
        path: str | Path,
        create_dirs: bool = True,
        *,
        quarantine_dir: Path | None = None,
        classify: Callable[[dict[str, Any]], str | None] | None = None,
        **_: Any,
    ) -> None:
        self.path = Path(path)
        if create_dirs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._data: dict[str, dict[str, Any]] | None = None
        self._depth = 0
        self._dirty = False
        # buffered: writes stay in memory until flush(); the owner keeps them durable in a `Journal`.
        self.buffered = False
        self.writes = 0  # durable writes done (for tests and benches)
        self.quarantine_dir = quarantine_dir
        self.classify = classify
        self.salvaged: list[dict[str, Any]] = []  # one report per damaged file read
        self._unsaved: bytes | None = None  # the damaged original, until it is in quarantine

    def read(self) -> dict[str, dict[str, Any]] | None:
        if self._data is None:
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                return None
            self._data = self._parse(raw)
        return self._data

    def _parse(self, raw: bytes) -> dict[str, dict[str, Any]]:
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
            if isinstance(data, dict) and all(
                isinstance(t, dict) and all(isinstance(d, dict) for d in t.values()) for t in data.values()
            ):
                return data
            problem = "not a TinyDB document"
        except ValueError as exc:  # includes UnicodeDecodeError
            problem = str(exc)[:200]
        if self.classify is None or self.quarantine_dir is None:
            # Atomic replace cannot tear a file; something outside us broke it. Without a way to
            # salvage, refusing to start beats silently starting empty.
            raise ValueError(f"{self.path}: unreadable ({problem})")
        tables, skipped = salvage_tables(raw, self.classify)
        kept = sum(len(t) for t in tables.values())
        log.warning(
            "%s: unreadable (%s); salvaged %d record(s), %d unreadable stretch(es); "
            "the damaged file is kept in %s",
            self.path,
            problem,
            kept,
            skipped,
            self.quarantine_dir,
        )
        self.salvaged.append({"file": self.path.name, "problem": problem, "kept": kept, "skipped": skipped})
        self._unsaved = raw
        self._data = tables
        self._dirty = True
        try:
            self._flush()  # quarantine first, then the salvaged file
        except OSError as exc:
            # Keep serving the salvaged data; the damaged file stays in place until a flush works.
            log.error("%s: could not write the salvaged file yet (%s)", self.path, exc)
            self._data, self._dirty = tables, True
        return tables

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
            if self._unsaved is not None:  # never overwrite a damaged file before it is kept aside
                saved = quarantine_bytes(
                    self.quarantine_dir or self.path.parent, self.path.name, self._unsaved
                )
                log.warning("%s: damaged file kept in %s", self.path.name, saved)
                self._unsaved = None
            atomic_write_bytes(self.path, json.dumps(self._data, separators=(",", ":")).encode())
        except BaseException:
            if not self.buffered:
                self._data = None  # forget what did not reach the disk; reread the old file
            # Buffered: memory holds what the journal holds, the truth until a flush works.
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
    """An append-only log of framed JSON lines (`gateway.framing`), fsync'd per append: durability in
    O(size of the change).

    The store appends each change here before applying it in memory, and now and then writes the
    whole file atomically (`AtomicJSONStorage.flush`) and empties the journal. On open it replays the
    journal over the file; replay is idempotent, so a crash between the two steps is harmless.

    Damage never costs more than the damaged line. An append that fails (ENOSPC, EIO) is cut off
    again (truncated back to where it began), so it leaves no half line for the next one to follow. A
    line that does not read back (bit rot, or a half line a crash left) is skipped and every readable
    line after it is kept; the bytes that were not understood are reported (`damage`, logged with the
    file and offset) and copied to `quarantine_dir` before `reset()` may drop them.
    """

    def __init__(
        self,
        path: Path,
        *,
        quarantine_dir: Path | None = None,
        valid: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.path = path
        # Never None: `reset` must have somewhere to keep damaged bytes before it empties the file.
        self.quarantine_dir = quarantine_dir or path.parent / "quarantine"
        self._valid = valid
        self._fd: int | None = None
        self._needs_newline = False  # the file ends in an unfinished line we could not cut off
        self.entries_since_reset = 0
        self.damage: list[Damage] = []  # read but not yet quarantined
        self.cut_failures = 0  # failed appends whose bytes could not be truncated away

    def _open(self) -> int:
        if self._fd is None:
            existed = self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(fd).st_size
            # A crash left an unfinished line (and the store could not reset the journal): start ours
            # on a line of its own, so the reader loses only the unfinished one.
            self._needs_newline = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            self._fd = fd
            if not existed:
                fsync_dir(self.path.parent)
        return self._fd

    def append(self, entry: dict[str, Any]) -> None:
        """Make `entry` durable, or raise leaving the journal as it was (no partial line)."""
        line = encode_line(entry)
        fd = self._open()
        if self._needs_newline:
            line = b"\n" + line
        start = os.lseek(fd, 0, os.SEEK_END)
        if start == 0:
            line = HEADER + line  # the format, for the reader (`gateway.framing`)
        try:
            view = memoryview(line)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except BaseException:
            self._cut(fd, start)
            raise
        self._needs_newline = False
        self.entries_since_reset += 1

    def _cut(self, fd: int, start: int) -> None:
        """Undo a failed append: shrinking a file needs no free space, so this works at a full disk."""
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError as exc:
            self.cut_failures += 1
            self._needs_newline = True  # the reader resynchronises past what is left
            log.error("%s: could not cut a failed append back to %d bytes (%s)", self.path, start, exc)

    def read(self) -> list[dict[str, Any]]:
        """The readable records, in order. Damaged stretches are logged and kept in `damage`."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        scan = scan_lines(raw, self._valid)
        for d in scan.damage:
            if d.reason == "torn":
                log.warning(
                    "%s: unfinished last line at byte %d (%d bytes; a crash mid-append, never acknowledged)",
                    self.path,
                    d.offset,
                    len(d.data),
                )
            else:
                log.warning(
                    "%s: %d unreadable byte(s) at byte %d (%s); every readable record after them is kept",
                    self.path,
                    len(d.data),
                    d.offset,
                    d.reason,
                )
        self.damage = scan.damage
        return scan.entries

    def quarantine(self) -> list[Path]:
        """Copy the damaged stretches `read` found into `quarantine_dir` (durably); raises if it cannot."""
        saved = []
        for d in list(self.damage):
            saved.append(
                quarantine_bytes(self.quarantine_dir, f"{self.path.name}.at{d.offset}.{d.reason}", d.data)
            )
            self.damage.remove(d)
        return saved

    def reset(self) -> None:
        """Empty the journal (after its content reached the main file durably). Damaged bytes are
        quarantined first: a reset never drops bytes that were not understood."""
        for path in self.quarantine():
            log.warning("%s: damaged bytes kept in %s", self.path.name, path)
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
        elif self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(0)
                os.fsync(f.fileno())
        self._needs_newline = False
        self.entries_since_reset = 0

    def replace(self, entries: list[dict[str, Any]]) -> None:
        """Rewrite the journal atomically to hold `entries` only (a journal that is never reset drops
        lines that expired). Damaged bytes are quarantined first, as by `reset`; raises OSError
        leaving the journal as it was."""
        self.quarantine()
        self.close()  # reopened by the next append, on the new file
        data = HEADER + b"".join(encode_line(e) for e in entries) if entries else b""
        atomic_write_bytes(self.path, data, mode=0o644)

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


def quarantine_bytes(folder: Path, name: str, data: bytes) -> Path:
    """Keep bytes the store could not read in `folder` (durably, never overwriting an earlier copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = folder / f"{name}.{stamp}.bad"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{name}.{stamp}-{n}.bad"
    atomic_write_bytes(path, data, mode=0o600)
    return path
