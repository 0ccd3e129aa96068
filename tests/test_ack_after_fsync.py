"""The brief's "ack only after the event is durably stored (fsync'd)", checked as an order of system calls.

SIGKILL tests prove nothing acked is lost when a process dies, but a killed process's writes still reach
the disk through the page cache: they would pass with every fsync removed. What a power cut needs is
that, when the ack leaves, the event's journal line and its photo files have been fsync'd and the photo
folder's new names too. So every `os.fsync` in the gateway is recorded (which file, and for the journal
which events it then held), and every ack is checked against that record at the moment it is sent.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from gateway.framing import decode_line
from gateway.pipeline import IngestPipeline
from gateway.service import GatewayService
from tests.support.gateway_core import gateway_config, make_jpeg, new_event_id, wait_for

_TEMP = re.compile(r"\.(.+)\.\d+-\d+\.tmp")  # gateway/storage.py atomic_write_bytes


class FsyncLog:
    """Wraps os.fsync: what was made durable so far."""

    def __init__(self, real) -> None:
        self._real = real
        self.lock = threading.Lock()
        self.journal_keys: set[str] = set()  # device/event id found in a journal when it was fsync'd
        self.seq = 0
        self.files: dict[str, int] = {}  # final name of a file fsync'd before its rename -> when
        self.dirs: dict[str, int] = {}  # folder -> when it was last fsync'd

    def __call__(self, fd: int) -> None:
        self._real(fd)  # record only what really reached the disk
        path = os.readlink(f"/proc/self/fd/{fd}")
        with self.lock:
            self.seq += 1
            if path.endswith(".journal"):
                for line in Path(path).read_bytes().splitlines():
                    entry = decode_line(line)
                    if entry is not None and "ev" in entry:
                        self.journal_keys.add(entry["ev"]["key"])
            elif os.path.isdir(path):
                self.dirs[path] = self.seq
            else:
                m = _TEMP.fullmatch(os.path.basename(path))
                if m:
                    self.files[os.path.join(os.path.dirname(path), m.group(1))] = self.seq


def test_every_ack_follows_the_fsync_of_its_record_and_photos(tmp_path, mosquitto, prefix, box, monkeypatch):
    fsyncs = FsyncLog(os.fsync)
    monkeypatch.setattr(os, "fsync", fsyncs)
    cfg = gateway_config(tmp_path / "data", mosquitto.url, prefix)
    svc = GatewayService(cfg)
    checked: list[str] = []
    problems: list[str] = []
    real_ack = IngestPipeline._ack  # the ingest worker's ack (gateway/pipeline.py)

    def checking_ack(self, device: str, event_id: str) -> None:
        with fsyncs.lock:
            if f"{device}/{event_id}" not in fsyncs.journal_keys:
                problems.append(f"{event_id}: acked before its journal line was fsync'd")
            rec = self.store.get_event(device, event_id)
            if rec is not None and rec["photo"] is not None:
                for variant in ("original", "alert", "thumb"):
                    p = self.store.photo_path(device, event_id, variant)
                    if p is None or str(p) not in fsyncs.files:
                        problems.append(f"{event_id}: {variant} photo not fsync'd before the ack")
                    elif fsyncs.dirs.get(str(p.parent), 0) < fsyncs.files[str(p)]:  # its new name
                        problems.append(f"{event_id}: photo folder not fsync'd after the rename")
            checked.append(event_id)
        real_ack(self, device, event_id)

    monkeypatch.setattr(IngestPipeline, "_ack", checking_ack)
    svc.start()
    try:
        assert svc.wait_connected(10)
        photo = make_jpeg(320, 240, seed=3)
        ids = [new_event_id() for _ in range(4)]
        for i, eid in enumerate(ids):
            box.send(eid, photo if i % 2 == 0 else None, etype="delivery" if i % 2 == 0 else "lid_closed")
        for eid in ids:
            assert box.wait_ack(eid)["ok"]
        box.send(ids[0], photo)  # a re-send of a stored event is acked again: still after the fsync
        wait_for(lambda: checked.count(ids[0]) >= 2, what="the second ack")
    finally:
        svc.stop()
    assert set(checked) == set(ids)
    assert problems == []
    assert any(p.endswith(".journal") for p in os.listdir(tmp_path / "data" / "db"))
