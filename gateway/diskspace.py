"""Is the data folder's disk about to fill up, and is the store healthy? Policy (pure) + one statvfs.

Retention keeps everything by default, so every install fills its card one day; the store then
refuses to ack (an event it cannot make durable stays in the box's spool), which is safe but silent
unless someone is told well before. `storage_report` turns the disk's numbers and the store's
damage counters into one answer that `health()`, `parcelbox status`, the dashboard and Home Assistant
all show: `ok`, and a list of `problems` a person can act on.

"Low" means free space below `min_free_mb` or below `min_free_percent` of the disk, whichever is the
larger amount (on an 8 GB card 500 MB is the larger; on a 1 TB disk 5 % is), or free inodes (photos are
many small files) below `min_free_percent`. Either setting 0 turns that test off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 1 << 20


@dataclass(frozen=True)
class DiskThresholds:
    min_free_mb: int = 500
    min_free_percent: float = 5.0


@dataclass(frozen=True)
class DiskNumbers:
    """What statvfs says about the file system holding the data folder (as an unprivileged writer)."""

    free_bytes: int
    total_bytes: int
    free_files: int | None  # None: the file system has no inode limit (btrfs reports 0 files)
    total_files: int | None


def measure(path: Path) -> DiskNumbers:
    """statvfs of `path`, or of its nearest existing parent (a data folder not created yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    files = (st.f_favail, st.f_files) if st.f_files else (None, None)
    return DiskNumbers(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, files[0], files[1])


def disk_report(n: DiskNumbers, t: DiskThresholds) -> dict[str, Any]:
    """The disk part of the storage health: numbers, the threshold in bytes, and `low`."""
    threshold = max(t.min_free_mb * MB, int(n.total_bytes * t.min_free_percent / 100))
    low_space = threshold > 0 and n.free_bytes < threshold
    low_files = (
        n.total_files is not None
        and n.free_files is not None
        and t.min_free_percent > 0
        and n.free_files < n.total_files * t.min_free_percent / 100
    )
    return {
        "free_bytes": n.free_bytes,
        "total_bytes": n.total_bytes,
        "free_percent": round(100.0 * n.free_bytes / n.total_bytes, 1) if n.total_bytes else 0.0,
        "free_files": n.free_files,
        "threshold_bytes": threshold,
        "low": low_space or low_files,
        "low_space": low_space,
        "low_files": low_files,
    }


def human_size(n: int) -> str:
    """`812 MB`, `74.4 GB`: how the warnings and `parcelbox status` write sizes."""
    return f"{n / MB:.0f} MB" if n < 10 * 1024 * MB else f"{n / (1024 * MB):.1f} GB"


# A refused write stays a problem this long after the last one (then the boxes have re-sent, and a
# problem sensor stuck on "on" for good would teach people to ignore it); the counters stay.
WRITE_FAILURE_SHOWN_S = 900.0


def storage_report(
    disk: dict[str, Any] | None, integrity: dict[str, int], refused: int, *, failed_recently: bool = True
) -> dict[str, Any]:
    """Storage health for people and machines: `ok`, human `problems`, and the numbers behind them.

    `integrity` is `Store.integrity()`; `refused` counts events not acked because a write failed;
    `failed_recently`: the last failed write is less than `WRITE_FAILURE_SHOWN_S` old.
    Torn tails (a crash mid-append, never acknowledged) are normal after a power cut: counted, not a
    problem.
    """
    problems: list[str] = []
    kinds: list[str] = []  # one stable name per problem (the texts carry changing numbers)

    def add(kind: str, text: str) -> None:
        kinds.append(kind)
        problems.append(text)

    if disk is None:
        add("disk_unknown", "cannot read the free space of the data folder's disk")
    elif disk["low_space"]:
        add(
            "disk_low",
            f"disk almost full: {human_size(disk['free_bytes'])} free of {human_size(disk['total_bytes'])} "
            f"(warning below {human_size(disk['threshold_bytes'])}); set store.retention_days / "
            "store.photo_retention_days or free space",
        )
    elif disk["low_files"]:
        add("inodes_low", f"almost out of inodes: {disk['free_files']} files left on the data folder's disk")
    if failed_recently and (refused or integrity.get("write_errors")):
        add(
            "writes_failed",
            f"{max(refused, integrity.get('write_errors', 0))} write(s) failed since start (full disk or "
            "I/O error): those events were not acked and stay in the boxes' spools",
        )
    damaged = sum(integrity.get(k, 0) for k in ("journal_damaged", "files_salvaged", "records_unreadable"))
    kept = integrity.get("quarantined_damage", 0)
    if damaged or kept:
        # Stays a problem while the copies are in quarantine (found by this run or an earlier one, or
        # by `parcelbox status`): deleting them, once looked at, is how the owner clears it.
        add(
            "damage_found",
            f"damaged records or files found (bit rot?): {damaged} since start, {kept} kept in "
            "db/quarantine/; every readable record was kept (look at them, then delete them)",
        )
    if integrity.get("compaction_failing"):
        add(
            "compaction_failed",
            f"{integrity['compaction_failing']} file(s) could not be rewritten from their journal (no room); "
            "nothing is lost, the journals grow until there is room",
        )
    return {
        "ok": not problems,
        "problems": problems,
        "kinds": kinds,
        "disk": disk,
        "integrity": integrity,
        "refused": refused,
    }


# While storage has a problem its WARNING is repeated this often (a log line from days ago is missed).
REMIND_EVERY_S = 3600.0


class StorageWatch:
    """What to say about storage, and when: pure (the caller logs and publishes what `update` returns).

    A problem is logged when it appears (by kind, so a changing number is not a new problem) and
    again every `REMIND_EVERY_S` while any lasts; recovery is said once. The state for Home Assistant
    is published when the kinds of problem change, or free space moved by 1 % of the disk (64 MB at
    least; 8 MB once low): free space moves with every photo, and a retained message per photo is noise.
    """

    def __init__(self) -> None:
        self._seen: frozenset[str] = frozenset()
        self._logged_at: float | None = None
        self.published: dict[str, Any] | None = None
        self._published_key: tuple[Any, ...] | None = None

    def update(self, report: dict[str, Any], now: float) -> tuple[list[str], bool, dict[str, Any] | None]:
        """(problems to log now, whether storage just became ok again, state to publish or None)."""
        seen = frozenset(report["kinds"])
        remind = bool(seen) and self._logged_at is not None and now - self._logged_at >= REMIND_EVERY_S
        to_log = [
            p
            for k, p in zip(report["kinds"], report["problems"], strict=True)
            if remind or k not in self._seen
        ]
        if to_log:
            self._logged_at = now
        recovered = bool(self._seen) and not seen
        self._seen = seen
        disk = report["disk"] or {}
        state = {
            "ok": report["ok"],
            "problems": report["problems"],
            "free_mb": round(disk.get("free_bytes", 0) / MB),
            "free_percent": disk.get("free_percent"),
            "low": bool(disk.get("low")),
        }
        last, key = self.published, (state["ok"], seen, state["low"])
        # Finer steps once low: the last few hundred MB are the ones someone is watching.
        step = 8 if state["low"] else max(64, round(disk.get("total_bytes", 0) / MB / 100))
        if last is None or key != self._published_key or abs(last["free_mb"] - state["free_mb"]) >= step:
            self.published, self._published_key = state, key
            return to_log, recovered, dict(state)
        return to_log, recovered, None
