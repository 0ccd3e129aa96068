"""Deleting a box's history (`parcelbox device forget NAME --purge`, issue 15 item 3): real store files,
real photo files, a real gateway with a real Mosquitto, a real SIGKILL mid-purge."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway import cli
from gateway import purge as purging
from gateway.service import GatewayService
from gateway.store import Store, blank_device
from gateway.web import WebSettings, create_app
from tests.support.gateway_core import Box, gateway_config, make_jpeg, new_event_id, wait_for
from tests.support.web import LOCAL_BASE, prime

ROOT = Path(__file__).resolve().parent.parent
# Three months, so the purge meets closed segments (on disk only) and the two open ones.
MONTHS = [1_764_547_200.0 + 86_400 * 31 * m for m in range(3)]  # 2025-12-01 onwards
SEGMENT = 8


def _event(device: str, eid: str, when: float, photo: bool) -> dict:
    return {
        "device": device,
        "id": eid,
        "type": "delivery",
        "ts": when,
        "received_at": when,
        "seq": 1,
        "sensors": {"lid": "closed"},
        "photo": {"size": 3, "sha256": "0" * 64, "width": 1, "height": 1} if photo else None,
        "cmd": None,
    }


def _alert(device: str, eid: str, when: float, state: str) -> dict:
    return {
        "id": f"{device}_{eid}_folder_x",
        "kind": "delivery",
        "device": device,
        "event_ids": [eid],
        "notifier": "folder",
        "recipient": "x",
        "state": state,
        "attempts": 0,
        "created_at": when,
        "next_attempt_at": when,
        "sent_at": None,
        "last_error": None,
    }


def _fill(data: Path) -> dict[str, list[str]]:
    """Two boxes, 6 events each per month (segments of 8 records: several per month), photos, alerts
    (box-1's newest pending, the rest sent), box records. Returns each box's event ids."""
    store = Store(data, segment_records=SEGMENT)
    ids: dict[str, list[str]] = {"box-1": [], "box-2": []}
    try:
        for month in MONTHS:
            for i in range(6):
                for device in ("box-1", "box-2"):
                    eid = new_event_id()
                    when = month + i * 60 + (device == "box-2")
                    store.write_photos(device, eid, when, {"alert": b"a", "thumb": b"t"})
                    state = "pending" if month == MONTHS[-1] and i == 5 else "sent"
                    store.add_event(_event(device, eid, when, True), [_alert(device, eid, when, state)])
                    ids[device].append(eid)
        for device in ("box-1", "box-2"):
            dev = dict(blank_device(device))
            dev["last_seen"] = MONTHS[-1]
            store.put_device(dev)
        # box-1's "offline" alert, no event: found by its record's device, in whichever segment it is
        store.add_outbox(
            [{**_alert("box-1", "offline", MONTHS[0] + 3600, "dead"), "id": "box-1_offline_1"}], MONTHS[0]
        )
    finally:
        store.close()
    return ids


def _photo_files(data: Path, device: str) -> list[Path]:
    return (
        sorted(p for p in (data / "photos" / device).rglob("*") if p.is_file())
        if (data / "photos" / device).exists()
        else []
    )


def _check_purged(data: Path, ids: dict[str, list[str]]) -> None:
    """box-1 gone from every file and listing; box-2 exactly as before."""
    for f in (data / "db").glob("events-*.json"):
        text = f.read_text()
        json.loads(text)  # every segment parses: never a torn file
        assert '"box-1' not in text, f.name
    assert _photo_files(data, "box-1") == []
    assert len(_photo_files(data, "box-2")) == 2 * len(ids["box-2"])
    store = Store(data, segment_records=SEGMENT)
    try:
        assert store.list_events(device="box-1") == []
        assert [e["id"] for e in store.list_events(limit=1000)] == [e for e in reversed(ids["box-2"])]
        assert all(store.get_event("box-2", e) for e in ids["box-2"])
        assert all(store.photo_path("box-2", e, "thumb") for e in ids["box-2"])
        assert [o["device"] for o in store.list_outbox(limit=1000)] == ["box-2"] * len(ids["box-2"])
        assert [o["device"] for o in store.open_outbox()] == ["box-2"]  # box-1's pending one: cancelled
        assert store.outbox_counts() == {"pending": 1, "sent": len(ids["box-2"]) - 1, "failed": 0, "dead": 0}
        assert [d["device"] for d in store.list_devices()] == ["box-2"]
        # Tombstones: a purged event sent again is a duplicate (acked, not stored); a new one is stored.
        old = ids["box-1"][0]
        assert store.has_event("box-1", old)
        assert not store.add_event(_event("box-1", old, MONTHS[0], False))
        assert store.add_event(_event("box-1", new_event_id(), MONTHS[-1] + 9, False))
    finally:
        store.close()
    assert not purging.pending(data)


def test_store_purge_removes_one_box_from_open_and_closed_segments(tmp_path):
    """Old code: no way to delete a box's history at all (Store had no purge)."""
    data = tmp_path / "data"
    ids = _fill(data)
    store = Store(data, segment_records=SEGMENT)
    try:
        open_before = store.stats().open_partitions
        removed = store.purge_device("box-1", time.time())
        # The two open segments are still the ones open: closed segments were rewritten from disk,
        # never reopened for writing (which would have evicted and compacted the open ones).
        assert store.stats().open_partitions == open_before
        assert store.list_events(device="box-1") == [] and store.get_event("box-1", ids["box-1"][0]) is None
        assert store.event_count() == len(ids["box-2"])
    finally:
        store.close()
    assert removed == {"events": 18, "alerts": 19, "photo_files": 36, "box_records": 1}
    _check_purged(data, ids)


def _cfg(tmp_path: Path, data: Path, extra: str = "") -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{data}"\n[store]\nsegment_records = {SEGMENT}\n{extra}')
    return cfg


def test_cli_purge_with_the_gateway_stopped(tmp_path, capsys):
    """`parcelbox device forget box-1 --purge` with no gateway running: the CLI purges under the lock.
    Old code: `--purge` was a usage error and the history stayed."""
    data = tmp_path / "data"
    ids = _fill(data)
    cfg = _cfg(tmp_path, data)
    assert cli.main(["device", "forget", "box-1", "--purge", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "History of 'box-1' deleted (18 event(s), 36 photo file(s), 19 alert(s))" in out, out
    _check_purged(data, ids)
    # Without --purge the history stays (as before); forgotten first, purged later works too.
    assert cli.main(["device", "forget", "box-2", "--config", str(cfg)]) == 0
    assert "stay in the history" in capsys.readouterr().out
    assert len(_photo_files(data, "box-2")) == 2 * len(ids["box-2"])
    assert cli.main(["device", "forget", "box-2", "--purge", "--config", str(cfg)]) == 0
    assert "History of 'box-2' deleted" in capsys.readouterr().out
    assert _photo_files(data, "box-2") == [] and list((data / "db").glob("events-*.json"))
    assert cli.main(["device", "forget", "box-3", "--purge", "--config", str(cfg)]) == 1  # never seen


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import gateway.storage as storage
    n = int(sys.argv[1])
    real = os.replace
    calls = [0]
    def replace(src, dst, *a, **kw):
        calls[0] += 1
        if calls[0] == n:  # the new file is written and fsync'd, not yet renamed into place
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **kw)
    storage.os.replace = replace
    from gateway import cli
    sys.exit(cli.main(sys.argv[2:]))
    """
)


def test_sigkill_mid_purge_then_rerun_finishes(tmp_path):
    """SIGKILL at every file replacement of a purge in turn: each segment file is the old or the new one
    (always parses, box-2 intact), and the same command run again finishes the job."""
    template = tmp_path / "template"
    ids = _fill(template)
    killed = 0
    for n in range(1, 40):
        data = tmp_path / f"run{n}"
        shutil.copytree(template, data)
        cfg = _cfg(tmp_path, data)
        args = ["device", "forget", "box-1", "--purge", "--config", str(cfg)]
        p = subprocess.run(
            [sys.executable, "-c", _KILLER, str(n), *args], cwd=ROOT, capture_output=True, timeout=120
        )
        if p.returncode == 0:
            break  # n is past the purge's last replacement: every kill point is covered
        assert p.returncode == -signal.SIGKILL, p.stderr.decode()
        killed += 1
        for f in (data / "db").glob("events-*.json"):
            json.loads(f.read_text())
        store = Store(data, segment_records=SEGMENT)
        try:
            assert [e["id"] for e in store.list_events(device="box-2", limit=1000)] == list(
                reversed(ids["box-2"])
            )
        finally:
            store.close()
        # The first replacements are devices.json (the forget itself) and the request file.
        assert purging.pending(data) == ([] if n <= 2 else ["box-1"])
        assert cli.main(args) == 0  # the re-run finishes
        _check_purged(data, ids)
        shutil.rmtree(data)
    assert killed >= 5  # the purge was interrupted at several points (segments, box record)


def test_purge_while_the_gateway_runs(tmp_path, mosquitto, prefix):
    """A running gateway owns the store: the CLI writes the request, the gateway's tick does the purge
    between boxes' messages, and the dashboard's API stops listing the box's events and photos. Boxes
    keep being acked throughout; a purged event sent again is acked, not stored again."""
    data = tmp_path / "data"
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'data_dir = "{data}"\n')
    cfg = gateway_config(data, mosquitto.url, prefix)
    svc = GatewayService(cfg)
    svc.start()
    b1, b2 = Box(mosquitto.url, prefix, "box-1"), Box(mosquitto.url, prefix, "box-2")
    try:
        assert svc.wait_connected(10)
        sent: dict[str, list[str]] = {"box-1": [], "box-2": []}
        for box in (b1, b2):
            for i in range(3):
                eid = new_event_id()
                box.send(eid, make_jpeg(160, 120, seed=i))
                assert box.wait_ack(eid)["ok"]
                sent[box.device].append(eid)
        with TestClient(create_app(svc, WebSettings()), base_url=LOCAL_BASE) as client:
            prime(client)
            body = client.get("/api/events?device=box-1").json()
            assert len(body["events"]) == 3
            photo_url = body["events"][0]["photos"]["thumb"]
            assert client.get(photo_url).status_code == 200
            assert client.get(f"/api/events/box-1/{sent['box-1'][0]}").status_code == 200
            assert len(_photo_files(data, "box-1")) == 9  # original, alert copy, thumbnail
            wait_for(lambda: "box-1" in cli.seen_boxes(data), what="box-1 in the status snapshot")
            p = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "device",
                    "forget",
                    "box-1",
                    "--purge",
                    "--config",
                    str(cfg_file),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=180,
                env={**os.environ, "PARCELBOX_CONFIG": ""},
            )
            assert p.returncode == 0, p.stdout + p.stderr
            assert "running gateway" in p.stdout and "History of 'box-1' deleted" in p.stdout, p.stdout
            assert client.get("/api/events?device=box-1").json()["events"] == []
            assert client.get(photo_url).status_code == 404
            assert client.get(f"/api/events/box-1/{sent['box-1'][0]}").status_code == 404
            assert "box-1" not in {d["device"] for d in client.get("/api/devices").json()["devices"]}
            listed = {e["id"] for e in client.get("/api/events?limit=100").json()["events"]}
            assert listed == set(sent["box-2"])
        assert _photo_files(data, "box-1") == [] and len(_photo_files(data, "box-2")) == 9
        assert svc.counters.get("purges") == 1
        # box-1's spool re-sends an old event: acked, not stored again; a new one is stored.
        b1.send(sent["box-1"][0], make_jpeg(160, 120))
        assert b1.wait_ack(sent["box-1"][0])["ok"]
        assert svc.get_event("box-1", sent["box-1"][0]) is None
        eid = new_event_id()
        b1.send(eid, make_jpeg(160, 120))
        assert b1.wait_ack(eid)["ok"]
        assert [e["id"] for e in svc.list_events(device="box-1")] == [eid]
    finally:
        b1.close()
        b2.close()
        svc.stop()
    store = Store(data)
    try:
        assert {e["id"] for e in store.list_events(limit=100)} == {*sent["box-2"], eid}
    finally:
        store.close()


@pytest.mark.parametrize("name", ["../box-2", "box-2/..", "a" * 40, ".."])
def test_purge_refuses_names_that_are_not_box_ids(tmp_path, name):
    with pytest.raises(ValueError):
        purging.request(tmp_path, name, 0.0)
    (tmp_path / "purge").mkdir(exist_ok=True)
    (tmp_path / "purge" / "..json").write_text("{}")
    (tmp_path / "purge" / "box-3.json").write_text(json.dumps({"device": "box-2"}))  # names another box
    assert purging.pending(tmp_path) == []


def test_a_gateway_starting_finishes_a_purge_left_unfinished(tmp_path, mosquitto, prefix):
    """A purge interrupted before it ended (its request still there) is finished by the gateway's next
    start, between boxes' messages: box-2 keeps being acked meanwhile."""
    data = tmp_path / "data"
    ids = _fill(data)
    purging.request(data, "box-1", time.time())
    svc = GatewayService(
        gateway_config(data, mosquitto.url, prefix, PARCELBOX_STORE_SEGMENT_RECORDS=str(SEGMENT))
    )
    svc.start()
    b2 = Box(mosquitto.url, prefix, "box-2")
    try:
        assert svc.wait_connected(10)
        eid = new_event_id()
        b2.send(eid, make_jpeg(160, 120))
        assert b2.wait_ack(eid)["ok"]
        wait_for(lambda: not purging.pending(data), timeout=60, what="the purge to finish")
        assert svc.list_events(device="box-1") == []
        assert len(svc.list_events(device="box-2", limit=1000)) == len(ids["box-2"]) + 1
        assert _photo_files(data, "box-1") == []
    finally:
        b2.close()
        svc.stop()


def test_purge_runner_queues_one_slice_at_a_time_between_boxes_messages(tmp_path):
    """`gateway.purge.PurgeRunner` with a real store and a real ingest queue (`FairQueue`), the worker's
    loop done by hand: never two slices queued, a box's message served between slices, a full purge
    sub-queue tried again at the next poll, nothing queued once paused (at stop)."""
    from gateway.fairqueue import FairQueue
    from gateway.health import Counters

    data = tmp_path / "data"
    ids = _fill(data)
    store = Store(data, segment_records=SEGMENT)
    q = FairQueue(max_messages=100, device_max_messages=1, device_max_bytes=1 << 20)
    counters = Counters()

    def submit(step) -> bool:  # what gateway.parts.purge_runner does: IngestPipeline.submit
        return all(box != purging.QUEUE_KEY for box, _ in q.put(purging.QUEUE_KEY, step, 0))

    runner = purging.PurgeRunner(purging.Purger(store, data, time.time), submit=submit, counters=counters)
    runner.poll()
    assert q.empty()  # nothing asked for
    q.put(purging.QUEUE_KEY, "blocker", 0)  # the purge's sub-queue is full (one item)
    purging.request(data, "box-1", time.time())
    runner.poll()
    assert q.get(timeout=0) == "blocker" and q.empty()  # refused, and not marked as queued
    runner.poll()
    runner.poll()
    assert q.qsize() == 1  # queued once, however often the tick polls
    q.put("box-2", "message from box-2", 10)
    served: list[str] = []
    for _ in range(200):
        if q.empty():
            break
        item = q.get(timeout=0)
        if callable(item):
            item()
            served.append("slice")
        else:
            served.append(item)
    assert served.index("message from box-2") == 1 and served.count("slice") > 2
    assert counters.get("purges") == 1 and not purging.pending(data)
    runner.pause()
    purging.request(data, "box-2", time.time())
    runner.poll()
    assert q.empty()  # paused: the request stays for the next start
    store.close()
    purging.done(data, "box-2")
    _check_purged(data, ids)
