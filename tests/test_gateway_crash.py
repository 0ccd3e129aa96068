"""SIGKILL the real gateway process in the middle of a stream of events: nothing lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.store import Store
from tests.support.gateway_core import Box, make_jpeg, new_event_id, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, url: str, prefix: str, extra: str = "") -> Path:
    cfg = tmp_path / "parcelbox.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[broker]\nurl = "{url}"\nprefix = "{prefix}"\n'
        f'[notify.folder]\npath = "{tmp_path / "alerts"}"\n'
        "[outbox]\npoll_s = 0.1\n"
        "[web]\nenabled = false\n" + extra
    )
    return cfg


def _start(cfg: Path, tmp_path: Path, n: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARCELBOX_")}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
        cwd=ROOT,
        env=env,
        stdout=open(tmp_path / f"gw{n}.out", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARCELBOX_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        text=True,
    )


@pytest.mark.parametrize("segment_records", [0, 8], ids=["default-segments", "tiny-segments"])
def test_sigkill_mid_stream_nothing_lost_or_doubled(tmp_path, mosquitto, prefix, segment_records):
    # tiny segments: the kill lands among segment roll-overs (30 events, 2-3 records each, 8 per file)
    cfg = _config(tmp_path, mosquitto.url, prefix, f"[store]\nsegment_records = {segment_records}\n")
    photos = [make_jpeg(320, 240, seed=i) for i in range(4)]
    n_events = 30
    ids = [new_event_id() for _ in range(n_events)]
    box = Box(mosquitto.url, prefix, "crashbox")
    acked: set[str] = set()
    lock = threading.Lock()

    def collect_acks(stop: threading.Event) -> None:
        while not stop.is_set():
            a = box.next_ack()
            if a is not None and a.get("ok"):
                with lock:
                    acked.add(a["id"])

    stop = threading.Event()
    t = threading.Thread(target=collect_acks, args=(stop,), daemon=True)
    t.start()
    gw = _start(cfg, tmp_path, 1)
    try:
        wait_for(lambda: (tmp_path / "data" / "status.json").exists(), 30, what="gateway up")
        # Stream events; kill the gateway hard once some are acked and others are mid-flight.
        for i, eid in enumerate(ids):
            box.send(eid, photos[i % len(photos)], order=[2, 0, 1] if i % 2 else None, event_at=i % 4)
            if i == n_events // 2:
                wait_for(lambda: len(acked) >= 5, 30, what="first acks")
                gw.send_signal(signal.SIGKILL)
                gw.wait(10)
        assert gw.returncode == -signal.SIGKILL
        with lock:
            before_restart = set(acked)
        assert 5 <= len(before_restart) < n_events
        gw = _start(cfg, tmp_path, 2)
        # Like the box's spool: re-send whatever has no ack yet, until everything is acked.
        deadline = time.monotonic() + 90
        while True:
            with lock:
                missing = [e for e in ids if e not in acked]
            if not missing:
                break
            assert time.monotonic() < deadline, f"{len(missing)} events never acked"
            time.sleep(3)
            with lock:
                missing = [e for e in ids if e not in acked]
            for eid in missing:
                i = ids.index(eid)
                box.send(eid, photos[i % len(photos)])
        # every alert reaches the folder sink exactly once
        alerts_dir = tmp_path / "alerts"

        def all_alerts():
            docs = [json.loads(p.read_text()) for p in alerts_dir.glob("*.json")]
            return docs if len(docs) >= n_events else None

        docs = wait_for(all_alerts, 60, what="alerts in the folder sink")
        referenced = [e for d in docs for e in d["event_ids"]]
        assert sorted(referenced) == sorted(ids)  # each event exactly once
        for d in docs:
            assert (alerts_dir / f"{d['id']}.jpg").is_file()
        status = _cli("status", "--json", "--config", str(cfg))
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert st["running"] is True and st["pid"] == gw.pid
        wait_for(
            lambda: (
                json.loads(_cli("status", "--json", "--config", str(cfg)).stdout)["health"]["events_total"]
                == n_events
            ),
            20,
            what="status counters",
        )
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(30) == 0
    finally:
        stop.set()
        if gw.poll() is None:
            gw.kill()
            gw.wait()
        box.close()
    # the database opens, holds each event once, and every outbox entry is sent
    store = Store(tmp_path / "data", segment_records=segment_records)
    try:
        if segment_records:
            assert len(store.stats().partitions) >= 6  # the month really was spread over segments
        events = store.list_events(limit=1000)
        assert sorted(e["id"] for e in events) == sorted(ids)
        assert store.outbox_counts()["sent"] == n_events
        assert store.outbox_counts()["pending"] == 0
    finally:
        store.close()
    st = json.loads(_cli("status", "--json", "--config", str(cfg)).stdout)
    assert st["running"] is False and st["health"]["events_total"] == n_events
