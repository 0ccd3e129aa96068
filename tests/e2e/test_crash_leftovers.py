"""A crash between a temp write and its rename leaves `.<name>.<pid>.tmp`; the next start removes it.

Found by the chaos test: a gateway SIGKILLed while writing a photo left a photo-sized temp file in
the photo folder for ever (and one in the folder sink when killed mid-alert)."""

from __future__ import annotations

import os
import subprocess

from gateway.notify.folder import FolderNotifier
from gateway.storage import remove_stale_temp_files
from gateway.store import Store


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_store_open_removes_temp_files_of_dead_writers_only(tmp_path):
    dead = _dead_pid()
    month = tmp_path / "data" / "photos" / "box-1" / "2026-11"
    month.mkdir(parents=True)
    stale = [
        month / f".abcdefgh-000001.alert.jpg.{dead}.tmp",
        tmp_path / "data" / f".status.json.{dead}.tmp",
    ]
    for p in stale:
        p.write_bytes(b"\xff\xd8half a photo")
    live = month / f".abcdefgh-000002.jpg.{os.getppid()}.tmp"  # a running writer: not ours to touch
    mine = month / f".abcdefgh-000003.jpg.{os.getpid()}.tmp"
    kept = [live, mine, month / "abcdefgh-000004.jpg", month / "notes.tmp"]
    for p in kept:
        p.write_bytes(b"x")
    Store(tmp_path / "data").close()
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_folder_sink_removes_its_crash_leftovers(tmp_path):
    sink = tmp_path / "alerts"
    sink.mkdir()
    stale = sink / f".box-1_abcdefgh-000001_folder_e3b0c442.json.{_dead_pid()}.tmp"
    stale.write_text("{")
    done = sink / "box-1_abcdefgh-000001_folder_e3b0c442.json"
    done.write_text("{}")
    FolderNotifier(sink)
    assert not stale.exists() and done.exists()
    assert remove_stale_temp_files(sink, recursive=False) == 0


def test_photo_files_of_an_event_stored_without_its_photo_are_removed(tmp_path):
    """Gateway killed between the photo files and the record; the box, its spool full, drops the photo
    and re-sends the event without it: the first attempt's files must not stay behind as orphans."""
    store = Store(tmp_path / "data")
    try:
        t = 1_795_000_000.0
        store.write_photos("box-1", "abcdefgh-000001", t, {"alert": b"a", "thumb": b"t", "original": b"o"})
        store.write_photos("box-1", "abcdefgh-000002", t, {"alert": b"a", "thumb": b"t", "original": b"o"})
        base = {"type": "delivery", "ts": t, "received_at": t + 5, "seq": 1, "sensors": {}, "cmd": None}
        assert store.add_event({**base, "device": "box-1", "id": "abcdefgh-000001", "photo": None})
        photo = {"size": 1, "sha256": "0" * 64, "width": 1, "height": 1}
        assert store.add_event({**base, "device": "box-1", "id": "abcdefgh-000002", "photo": photo})
    finally:
        store.close()
    left = sorted(p.name for p in (tmp_path / "data" / "photos").rglob("*") if p.is_file())
    assert left == ["abcdefgh-000002.alert.jpg", "abcdefgh-000002.jpg", "abcdefgh-000002.thumb.jpg"]
