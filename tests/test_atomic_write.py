"""The one atomic write (gateway/storage.py atomic_write_bytes): every writer of a file that must
never be torn uses it (store, device registry, broker files, dashboard secrets and tokens, Home
Assistant state, WhatsApp state)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gateway import storage
from gateway.storage import atomic_write_bytes, remove_stale_temp_files


def test_a_second_write_of_the_same_file_during_the_first_leaves_a_whole_file(
    tmp_path: Path, monkeypatch
) -> None:
    """Two writers of one path (two web requests saving the session state, a token created while one
    is revoked) at once: each has its own temp file. With one temp name per process the inner write
    renamed the outer one's temp file away and the outer rename failed (FileNotFoundError)."""
    target = tmp_path / "state.json"
    real_fsync = os.fsync
    nested = []

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if not nested and not os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            nested.append(1)  # the second writer runs while the first is between write and rename
            atomic_write_bytes(target, b"second" * 1000)

    monkeypatch.setattr(storage.os, "fsync", fsync)
    atomic_write_bytes(target, b"first" * 1000)
    assert nested and target.read_bytes() == b"first" * 1000  # the last rename wins, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp file left


def test_private_files_are_never_readable_by_others(tmp_path: Path) -> None:
    from gateway.web.auth import set_password

    old = os.umask(0o022)
    try:
        set_password(tmp_path / "deep" / "web_password", "correct horse")  # the folder is made too
        atomic_write_bytes(tmp_path / "secret", b"x", mode=0o600)
    finally:
        os.umask(old)
    for p in (tmp_path / "deep" / "web_password", tmp_path / "secret"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_temp_files_of_a_dead_writer_are_swept_old_and_new_names(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above the default pid_max: no such process
    for name in (f".a.json.{dead}.tmp", f".b.jpg.{dead}-7.tmp", f".c.jpg.{os.getpid()}-3.tmp", "d.tmp"):
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".c.jpg.{os.getpid()}-3.tmp", "d.tmp"]
