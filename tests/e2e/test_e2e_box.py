"""End to end: simulated boxes (the real firmware modules) -> real Mosquitto -> `parcelbox run` -> folder sink.

The gateway is a subprocess started from its own TOML config, as a user runs it; boxes are
`tools/simulate.py` (in-process `SimulatedBox`, and its CLI as a subprocess where a power cut matters).
Everything is checked through what a user sees: alert files, stored photos, `parcelbox status --json`,
the dashboard's API.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.e2e import ROOT, GatewayProc, audit_data_folder, clean_env, sha256_file, wait_for
from tools.simulate import SimulatedBox, run_boxes

SIM = [sys.executable, str(ROOT / "tools" / "simulate.py")]


@pytest.fixture
def boxes():
    made: list[SimulatedBox] = []
    yield made
    for b in made:
        try:
            b.close()
        except Exception:
            pass


def _box(mosquitto, prefix, tmp_path, boxes, name="box-1", **kw) -> SimulatedBox:
    b = SimulatedBox(mosquitto.url, name, prefix=prefix, spool_dir=tmp_path / "spool" / name, **kw)
    boxes.append(b)
    return b


def _stored(gw: GatewayProc, device: str, eid: str, variant: str = "original") -> Path:
    """The stored photo file of an event: data/photos/<device>/<yyyy-mm>/<id><suffix>."""
    suffix = {"original": ".jpg", "alert": ".alert.jpg", "thumb": ".thumb.jpg"}[variant]
    hits = list((gw.data_dir / "photos" / device).glob(f"*/{eid}{suffix}"))
    assert len(hits) == 1, hits
    return hits[0]


def test_delivery_pickup_lid_left_open_and_snapshot_on_command(tmp_path, mosquitto, prefix, boxes):
    gw = GatewayProc(tmp_path / "gw", mosquitto.url, prefix, extra={"web": {"enabled": True, "port": 0}})
    gw.start()
    try:
        box = _box(mosquitto, prefix, tmp_path, boxes, overrides={"left_open_s": 5})
        box.deliver()
        box.pickup()
        box.leave_lid_open()
        assert run_boxes([box], timeout=90), box.summary()
        assert [t for _, t in box.made] == ["delivery", "pickup", "lid_left_open", "lid_closed"]
        delivery_id, pickup_id, left_open_id, _closed_id = (e for e, _ in box.made)

        # delivery: stored with the exact bytes the camera gave, alert + photo in the folder sink
        original = _stored(gw, "box-1", delivery_id)
        served = box.photos.served[0]
        assert original.read_bytes() == served
        assert sha256_file(original) == hashlib.sha256(served).hexdigest()
        alerts = wait_for(lambda: len(gw.alerts()) >= 3 and gw.alerts(), 30, what="three alerts")
        by_kind = {a["kind"]: a for a in alerts}
        assert sorted(by_kind) == ["delivery", "lid_left_open", "pickup"]  # lid_closed is not an alert kind
        d = by_kind["delivery"]
        assert d["event_ids"] == [delivery_id] and d["device"] == "box-1" and d["photo"]
        sink_jpg = gw.alerts_dir / d["photo"]
        assert sink_jpg.read_bytes() == _stored(gw, "box-1", delivery_id, "alert").read_bytes()
        assert by_kind["pickup"]["event_ids"] == [pickup_id]
        assert by_kind["lid_left_open"]["event_ids"] == [left_open_id]

        # snapshot on command, through the dashboard's API (the path a user's click takes)
        base = gw.web_url()  # port 0: the dashboard's own pick, so no other process can hold it
        with httpx.Client(base_url=base, timeout=10) as web:
            assert web.get("/api/health").status_code == 200  # sets the CSRF cookie
            r = web.post(
                "/api/devices/box-1/command",
                json={"cmd": "snapshot"},
                headers={"x-csrf-token": web.cookies.get("pb_csrf") or "", "origin": base},
            )
            assert r.status_code == 202, r.text
            cmd_id = r.json()["id"]

            def result():
                box.step()
                res = web.get(f"/api/commands/{cmd_id}").json()
                return None if res.get("pending") else res

            res = wait_for(result, 60, 0.01, "the command result")
            assert res["ok"] is True and res["device"] == "box-1", res
            snap_id = res["event"]
            assert box.run_until(lambda: snap_id in box.acked, timeout=60)
            ev = web.get(f"/api/events/box-1/{snap_id}").json()
            assert ev["type"] == "snapshot" and ev["cmd"] == cmd_id
            photo = web.get(f"/api/photos/box-1/{snap_id}/original")
            assert photo.status_code == 200
            assert hashlib.sha256(photo.content).hexdigest() == ev["photo"]["sha256"]
            assert photo.content == box.photos.served[-1]

        st = gw.status()
        assert st["running"] is True and st["pid"] == gw.pid
        wait_for(lambda: gw.health().get("events_total") == 5, 20, what="the status snapshot")
        assert gw.stop() == 0
    finally:
        gw.kill()
    audit = audit_data_folder(gw.data_dir, gw.alerts_dir)
    assert audit["problems"] == []
    assert len(audit["events"]) == 5 and audit["outbox_counts"]["sent"] == 3
    assert gw.status()["running"] is False


def _sim_cli(mosquitto, prefix, spool: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*SIM, "--broker", mosquitto.url, "--prefix", prefix, "--spool-dir", str(spool), *args],
        cwd=ROOT,
        env=clean_env(),
        stdout=open(log, "ab"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )


def _spooled(spool: Path) -> dict[str, dict]:
    """The box's spool on disk: event id -> record (what a power cut must not lose)."""
    out = {}
    for p in spool.glob("e*.json"):
        try:
            rec = json.loads(p.read_text())
        except ValueError:
            continue  # being written
        out[rec["id"]] = rec
    return out


def test_box_powered_off_with_spooled_events_delivers_them_after_power_on(tmp_path, mosquitto, prefix):
    gw = GatewayProc(tmp_path / "gw", mosquitto.url, prefix)
    spool = tmp_path / "spool"
    box_spool = spool / "box-7"
    log = tmp_path / "box.log"
    # The gateway is down: the box detects two deliveries and a pickup, spools them, nobody acks.
    box = _sim_cli(mosquitto, prefix, spool, "--device", "box-7", "--deliveries", "2", "--pickups", "1",
                   "--stay", "--timeout", "100", log=log)  # fmt: skip
    try:
        wait_for(lambda: len(_spooled(box_spool)) == 3, 60, what="three spooled events")
        box.send_signal(signal.SIGKILL)  # power cut: no goodbye, nothing flushed beyond the spool
        box.wait(10)
    finally:
        if box.poll() is None:
            box.kill()
            box.wait(10)
    spooled = _spooled(box_spool)
    photos = {eid: (box_spool / p.name.replace(".json", ".jpg")) for p in box_spool.glob("e*.json")
              for eid in [json.loads(p.read_text())["id"]]}  # fmt: skip
    assert sorted(r["type"] for r in spooled.values()) == ["delivery", "delivery", "pickup"]
    gw.start()
    try:
        assert gw.status()["health"]["events_total"] == 0
        # Power back on: a new process over the same spool sends what it kept, and exits 0 once acked.
        r = subprocess.run(
            [*SIM, "--broker", mosquitto.url, "--prefix", prefix, "--spool-dir", str(spool), "--device",
             "box-7", "--deliveries", "0", "--timeout", "90", "--json", "--quiet"],
            cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=110,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["boxes"][0]["spooled"] == 0
        assert _spooled(box_spool) == {}
        wait_for(lambda: len(gw.alerts()) == 3, 30, what="three alerts")
        for eid, rec in spooled.items():
            if rec.get("photo"):
                stored = _stored(gw, "box-7", eid)
                assert sha256_file(stored) == rec["photo"]["sha256"]
        assert gw.stop() == 0
    finally:
        gw.kill()
    audit = audit_data_folder(gw.data_dir, gw.alerts_dir)
    assert audit["problems"] == []
    assert sorted(e["id"] for e in audit["events"]) == sorted(spooled)
    kinds = sorted(a["kind"] for a in audit["alerts"])
    assert kinds == ["delivery", "delivery", "pickup"]
    assert sorted(i for a in audit["alerts"] for i in a["event_ids"]) == sorted(spooled)
    assert all(photos[eid].exists() is False for eid in spooled)  # deleted from the spool only after ack


def test_box_offline_then_back(tmp_path, mosquitto, prefix):
    gw = GatewayProc(
        tmp_path / "gw",
        mosquitto.url,
        prefix,
        extra={"alerts": {"offline_after_s": 2.0, "online_alert": True}},
    )
    spool = tmp_path / "spool"
    gw.start()
    box = None
    try:
        box = _sim_cli(mosquitto, prefix, spool, "--device", "box-3", "--deliveries", "0", "--stay",
                       "--timeout", "100", "--quiet", log=tmp_path / "box1.log")  # fmt: skip

        def box3():
            return next((d for d in gw.snapshot().get("devices", []) if d["device"] == "box-3"), None)

        wait_for(lambda: (box3() or {}).get("online") is True, 60, what="box-3 online")
        assert gw.alerts() == []
        box.send_signal(signal.SIGKILL)  # unplugged: the broker publishes its last will
        box.wait(10)
        offline = wait_for(lambda: gw.alerts_for("offline", "box-3"), 60, what="the offline alert")
        assert len(offline) == 1 and "box-3" in offline[0]["caption"]
        wait_for(lambda: (box3() or {}).get("online") is False, 10, what="box-3 shown offline")
        # Nothing more while it stays offline (one alert per outage).
        box = _sim_cli(mosquitto, prefix, spool, "--device", "box-3", "--deliveries", "1", "--stay",
                       "--timeout", "100", "--quiet", log=tmp_path / "box2.log")  # fmt: skip
        online = wait_for(lambda: gw.alerts_for("online", "box-3"), 60, what="the back-online alert")
        assert len(online) == 1
        wait_for(lambda: gw.alerts_for("delivery", "box-3"), 60, what="a delivery after coming back")
        assert len(gw.alerts_for("offline", "box-3")) == 1
        assert gw.stop() == 0
    finally:
        if box is not None and box.poll() is None:
            box.send_signal(signal.SIGKILL)
            box.wait(10)
        gw.kill()
    audit = audit_data_folder(gw.data_dir, gw.alerts_dir)
    assert audit["problems"] == []
    assert sorted(a["kind"] for a in audit["alerts"]) == ["delivery", "offline", "online"]
