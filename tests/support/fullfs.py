"""A real small file system that tests can fill up: a tmpfs mounted on a folder of the test's own.

Mounting needs root (or CAP_SYS_ADMIN); where it is not allowed the test is skipped with the reason.
`fill` takes every free byte with a filler file, so the next write gets the real ENOSPC from the
kernel, short writes included; `free` gives the space back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def mount_tmpfs(folder: Path, size: str = "4m") -> str | None:
    """Mount a tmpfs of `size` on `folder` (created if missing); None when mounted, else why not."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return "no mount(8) here: cannot make a small file system to fill"
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if res.returncode != 0:
        return f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {res.stderr.strip()}"
    return None


def unmount(folder: Path) -> None:
    # Lazy: a gateway subprocess killed a moment ago may still be closing its files.
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` on `folder` for the duration of the block; skips the test where it cannot."""
    why = mount_tmpfs(folder, size)
    if why is not None:
        pytest.skip(why)
    try:
        yield folder
    finally:
        unmount(folder)


def fill(folder: Path, name: str = "filler", leave: int = 0) -> Path:
    """Write a filler file in `folder` until the file system is full (ENOSPC), then give `leave`
    bytes back. Returns the filler's path (delete it, or call `free`, to make room again)."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = b"\0" * 65536
        for size in (65536, 4096, 512, 1):  # bounded: a 4 MiB file system holds at most 64 blocks of each
            chunk = block[:size]
            for _ in range(1 << 16):
                try:
                    if os.write(fd, chunk) < size:
                        break
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        if leave:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def free(filler: Path) -> None:
    filler.unlink(missing_ok=True)


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize
