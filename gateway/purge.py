"""Deleting a box's history on request (`parcelbox device forget NAME --purge`).

The request is a file, `<data>/purge/<device>.json`, written durably before anything is deleted and
removed only once everything is: a crash (or SIGKILL) at any point leaves it, and whoever opens the
store next (the CLI's re-run, or the gateway at its next start) finishes the job. This is also how the
CLI reaches a running gateway, as `device remove` does through `devices.json`: the gateway owns the
store (one process per data folder), so the CLI only writes the request and the gateway's once-a-second
tick picks it up. With no gateway running, the CLI takes the data-folder lock and purges itself.

The store does the deleting (`Store.purge_begin` / `purge_part` / `purge_finish`); `Purger` runs it
on the gateway's ingest worker one segment at a time, so ingest waits for one segment at most.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from gateway.health import Counters
from gateway.protocol import valid_device_id
from gateway.storage import atomic_write_bytes, fsync_dir
from gateway.store import PurgePlan, Store

log = logging.getLogger(__name__)

REQUEST_DIR = "purge"
# The ingest queue's sub-queue for purge slices: "#" is never in a box id, so no box shares it.
QUEUE_KEY = "#purge"


def _path(data_dir: Path, device: str) -> Path:
    if not valid_device_id(device):  # the name is the file name: never a path
        raise ValueError(f"bad device id {device!r}")
    return Path(data_dir) / REQUEST_DIR / f"{device}.json"


def request(data_dir: Path | str, device: str, now: float) -> Path:
    """Ask for `device`'s history to be deleted (durable when this returns)."""
    path = _path(Path(data_dir), device)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps({"v": 1, "device": device, "requested_at": now}).encode(), mode=0o600)
    return path


def pending(data_dir: Path | str) -> list[str]:
    """Boxes whose purge was asked for and is not finished, oldest request first. A file that is not
    a request this module wrote (a bad name, unreadable, another box inside) is logged and skipped."""
    folder = Path(data_dir) / REQUEST_DIR
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out: list[tuple[float, str]] = []
    for name in names:
        device = name[: -len(".json")] if name.endswith(".json") else ""
        if not valid_device_id(device):
            continue  # a temp file mid-write, or a stranger: never a reason to delete anything
        try:
            data = json.loads((folder / name).read_bytes())
            ok = isinstance(data, dict) and data.get("device") == device
            at = float(data.get("requested_at", 0.0)) if ok else 0.0
        except (OSError, ValueError, TypeError):
            ok, at = False, 0.0
        if not ok:
            log.warning("purge: ignoring %s (not a purge request for %s)", folder / name, device)
            continue
        out.append((at, device))
    return [d for _, d in sorted(out)]


def is_pending(data_dir: Path | str, device: str) -> bool:
    return _path(Path(data_dir), device).exists()


def done(data_dir: Path | str, device: str) -> None:
    path = _path(Path(data_dir), device)
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


def run_pending(store: Store, data_dir: Path | str, now: Callable[[], float]) -> dict[str, dict[str, int]]:
    """Every pending purge, whole (the CLI, holding the data-folder lock). Returns what each removed."""
    out = {}
    for device in pending(data_dir):
        out[device] = store.purge_device(device, now())
        done(data_dir, device)
        log.info("purge: history of %s deleted: %s", device, out[device])
    return out


class Purger:
    """The gateway's side: one purge at a time, advanced one segment per `step` (on the ingest worker,
    the only writer of events, so no event of the box is half stored while its files change)."""

    def __init__(self, store: Store, data_dir: Path | str, now: Callable[[], float]) -> None:
        self.store = store
        self.data_dir = Path(data_dir)
        self.now = now
        self._plan: PurgePlan | None = None
        self._next = 0
        self.finished: list[tuple[str, dict[str, int]]] = []  # for the caller to announce

    @property
    def busy(self) -> bool:
        return self._plan is not None

    def step(self) -> bool:
        """Do one slice of work. True while more remains (call again soon)."""
        if self._plan is None:
            waiting = pending(self.data_dir)
            if not waiting:
                return False
            self._plan = self.store.purge_begin(waiting[0], self.now())
            self._next = 0
            log.info(
                "purge: deleting the history of %s (%d segment(s) to check)",
                waiting[0],
                len(self._plan.parts),
            )
            return True
        plan = self._plan
        if self._next < len(plan.parts):
            self.store.purge_part(plan, plan.parts[self._next])
            self._next += 1
            return True
        removed = self.store.purge_finish(plan)
        done(self.data_dir, plan.device)
        self._plan = None
        self.finished.append((plan.device, removed))
        log.info("purge: history of %s deleted: %s", plan.device, removed)
        return bool(pending(self.data_dir))


class PurgeRunner:
    """Runs the purges on the ingest worker, one `Purger.step` per turn of the ingest queue.

    Each step goes into a sub-queue of its own (`QUEUE_KEY`), so boxes' messages are served between
    the slices and a long purge never holds up ingest by more than one segment. `submit` queues a call
    on the worker and says whether that sub-queue took it (the service's ingest queue); `poll` is
    called by the service's once-a-second tick; `pause` at stop (an unfinished purge goes on at the
    next start: its request file stays).
    """

    def __init__(
        self, purger: Purger, *, submit: Callable[[Callable[[], None]], bool], counters: Counters
    ) -> None:
        self.purger = purger
        self._submit = submit
        self._counters = counters
        self._queued = False  # a step is in the queue: never two
        self.paused = False

    def poll(self) -> None:
        """Queue a step when a purge is in progress or asked for."""
        if self.purger.busy or pending(self.purger.data_dir):
            self._queue_step()

    def pause(self) -> None:
        self.paused = True

    def _queue_step(self) -> None:
        if self._queued or self.paused:
            return
        self._queued = True
        if not self._submit(self._step):
            self._queued = False  # its sub-queue is full: the next tick tries again

    def _step(self) -> None:
        """On the ingest worker: one slice of the purge in progress."""
        self._queued = False
        if self.paused:
            return
        try:
            more = self.purger.step()
        finally:
            for device, removed in self.purger.finished:
                self._counters.inc("purges")
                log.info(
                    "history of box %s deleted (%s)",
                    device,
                    ", ".join(f"{v} {k}" for k, v in removed.items()),
                )
            self.purger.finished.clear()
        if more:
            self._queue_step()
