"""End to end: the firmware modules in simulated boxes against a real Mosquitto, with a
test-only acker (tests/support/simhw.py) standing in for the gateway."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mqtt import Collector
from tests.support.simhw import Acker
from tools.sim.lens import CAMERA_DRIVERS, PhotoSource, generated_jpeg, warmup_jpeg
from tools.simulate import SimulatedBox, run_boxes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def acker(mosquitto, prefix):
    a = Acker(mosquitto.url, prefix)
    yield a
    a.close()
    assert a.errors == []


def _box(mosquitto, prefix, tmp_path, name="box-1", **kw):
    return SimulatedBox(mosquitto.url, name, prefix=prefix, spool_dir=tmp_path / name, **kw)


def _photos_dir(tmp_path, n=3):
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(n):
        (d / f"{i:02d}.jpg").write_bytes(generated_jpeg(100 + i, size=(480, 360)))
    return d


@pytest.mark.parametrize("driver", CAMERA_DRIVERS)
def test_deliveries_arrive_with_photos_whose_sha256_match(driver, mosquitto, prefix, acker, tmp_path):
    """Each delivery's photo is the lit scene of that delivery (served[i]), through the faithful
    fake of either driver: not the dark frame lemariva's driver grabbed after the previous
    capture, and not 'no frame' from the camera API's signed view (issue 13, items 1-2)."""
    photos = PhotoSource(_photos_dir(tmp_path))
    box = _box(mosquitto, prefix, tmp_path, photos=photos, camera_driver=driver)
    for _ in range(4):
        box.deliver()
    try:
        assert run_boxes([box], timeout=60)
    finally:
        box.close()
    made = [eid for eid, t in box.made]
    assert [t for _, t in box.made] == ["delivery"] * 4
    assert sorted(acker.acked) == sorted(("box-1", e) for e in made)
    for i, eid in enumerate(made):
        ev = acker.events[("box-1", eid)]
        data = acker.photos[("box-1", eid)]
        assert hashlib.sha256(data).hexdigest() == ev.photo.sha256
        assert data == photos.served[i]  # the folder's files in turn, lit; warm-up frames discarded
        assert data != warmup_jpeg()
        assert ev.seq == i + 1 and ev.sensors["lid"] == "closed" and "range_mm" in ev.sensors
        assert ev.photo.chunk_size == 8192 and ev.photo.chunks > 1
    assert len(box.app.spool) == 0 and os.listdir(box.spool_dir) == ["state.json"]


def test_killing_the_broker_mid_run_loses_nothing_and_keeps_ids(mosquitto, prefix, acker, tmp_path):
    box = _box(mosquitto, prefix, tmp_path)
    for _ in range(2):
        box.deliver()
    assert run_boxes([box], timeout=60)
    first = [e for e, _ in box.made]
    mosquitto.kill()
    for _ in range(3):
        box.deliver()
    # Events happen while the broker is gone: they wait in the spool (on disk).
    assert box.run_until(lambda: box.script_done, timeout=60)
    assert not box.app.mqtt.connected and len(box.app.spool) == 3
    spooled_ids = [box.app.spool.record(o)["id"] for o in box.app.spool.orders()]
    mosquitto.start()
    try:
        assert run_boxes([box], timeout=60)
    finally:
        box.close()
    made = [e for e, _ in box.made]
    assert made[:2] == first and made[2:] == spooled_ids  # the same ids, re-sent oldest first
    assert len(made) == 5 and box.app.mqtt.connects >= 2
    assert acker.wait(lambda: {k[1] for k in acker.acked} >= set(made))
    for eid in made:
        ev = acker.events[("box-1", eid)]
        assert hashlib.sha256(acker.photos[("box-1", eid)]).hexdigest() == ev.photo.sha256
    assert len(box.app.spool) == 0


def test_kill_during_a_publish_then_reboot_resends_from_the_spool(mosquitto, prefix, acker, tmp_path):
    box = _box(mosquitto, prefix, tmp_path, camera_driver="lemariva")
    box.deliver()
    box.deliver()
    # Kill the broker as soon as the first event is spooled, before its ack can arrive.
    assert box.run_until(lambda: len(box.made) >= 1, timeout=30)
    mosquitto.kill()
    assert box.run_until(lambda: box.script_done, timeout=60)
    ids = [e for e, _ in box.made]
    box.reboot()  # power cycle while offline: RAM gone, spool stays
    spooled = [box.app.spool.record(o)["id"] for o in box.app.spool.orders()]
    # The second event happened with the broker dead; the first may have been acked in time.
    assert ids[1] in spooled and set(spooled) <= set(ids)
    mosquitto.start()
    try:
        assert run_boxes([box], timeout=60)
    finally:
        box.close()
    assert acker.wait(lambda: {k[1] for k in acker.acked} >= set(ids))
    assert box.app.seq == 2  # the counter survived the reboot (state.json)


def test_nack_retry_resends_the_photo_then_ack(mosquitto, prefix, tmp_path):
    a = Acker(mosquitto.url, prefix, nack_first=1)
    box = _box(mosquitto, prefix, tmp_path)
    box.deliver()
    try:
        assert run_boxes([box], timeout=60)
    finally:
        box.close()
        a.close()
    ((eid, _),) = box.made
    assert a.nacked == [("box-1", eid, True)] and a.acked == [("box-1", eid)]
    assert a.event_msgs.count(("box-1", eid)) == 2  # the event and its photo went twice
    assert box.app.counters["nacked_retry"] == 1


def test_nack_without_retry_drops_the_event_with_a_log_line(mosquitto, prefix, tmp_path):
    a = Acker(mosquitto.url, prefix, refuse=("pickup",))
    box = _box(mosquitto, prefix, tmp_path)
    box.deliver()
    box.pickup()
    try:
        assert box.run_until(lambda: box.script_done and len(box.app.spool) == 0, timeout=60)
    finally:
        box.close()
        a.close()
    types = [t for _, t in box.made]
    assert types == ["delivery", "pickup"]
    pickup_id = box.made[1][0]
    assert box.refused == [pickup_id] and box.app.counters["refused"] == 1
    assert any("refused for good" in line and pickup_id in line for line in box.lines)


def test_pickup_and_lid_left_open_scenarios(mosquitto, prefix, acker, tmp_path):
    box = _box(mosquitto, prefix, tmp_path, overrides={"left_open_s": 10})
    box.deliver()
    box.pickup()
    box.leave_lid_open()
    try:
        assert run_boxes([box], timeout=60)
    finally:
        box.close()
    assert [t for _, t in box.made] == ["delivery", "pickup", "lid_left_open", "lid_closed"]
    ev = acker.events[("box-1", box.made[2][0])]
    assert ev.sensors["lid"] == "open" and ev.sensors["open_s"] == 10


def test_commands_snapshot_ping_config_unknown_and_malformed(mosquitto, prefix, acker, tmp_path):
    box = _box(mosquitto, prefix, tmp_path)
    assert box.run_until(lambda: box.app.mqtt.connected, timeout=20)
    acker.send_cmd("box-1", "cmd-00000001", "snapshot")
    acker.send_cmd("box-1", "cmd-00000002", "ping")
    acker.send_cmd("box-1", "cmd-00000003", "config", {"cooldown_s": 9, "settle_s": 3})
    acker.send_cmd("box-1", "cmd-00000004", "config", {"broker": {"host": "evil"}})
    acker.send_cmd("box-1", "cmd-00000005", "dance")
    acker.send_cmd("box-1", "x", "ping", raw=b"{not json")
    try:
        assert box.run_until(lambda: acker.result("cmd-00000005") is not None and box.all_acked(), timeout=30)
    finally:
        box.close()
    snap = acker.result("cmd-00000001")
    assert snap["ok"] is True
    ev = acker.events[("box-1", snap["event"])]
    assert ev.type == "snapshot" and ev.cmd == "cmd-00000001"
    assert hashlib.sha256(acker.photos[("box-1", snap["event"])]).hexdigest() == ev.photo.sha256
    ping = acker.result("cmd-00000002")
    assert ping["ok"] is True and ping["fw"] == "0.1.0" and "uptime_s" in ping
    cfg = acker.result("cmd-00000003")
    assert cfg == {"v": 1, "id": "cmd-00000003", "ok": True, "changed": ["cooldown_s", "settle_s"]}
    saved = json.loads((Path(box.spool_dir) / "config.json").read_text())
    assert saved["cooldown_s"] == 9 and box.app.detector.settle_ms == 3000
    bad = acker.result("cmd-00000004")
    assert bad["ok"] is False and "not settable" in bad["error"]
    assert acker.result("cmd-00000005") == {
        "v": 1,
        "id": "cmd-00000005",
        "ok": False,
        "error": "unknown command: dance",
    }
    assert box.app.counters["bad_cmd"] == 1


def test_reboot_command_restarts_the_box_and_it_comes_back(mosquitto, prefix, acker, tmp_path):
    box = _box(mosquitto, prefix, tmp_path)
    assert box.run_until(lambda: box.app.mqtt.connected, timeout=20)
    acker.send_cmd("box-1", "cmd-0000000a", "reboot")
    try:
        assert box.run_until(lambda: box.reboots == 1 and box.app.mqtt.connected, timeout=30)
        box.deliver()
        assert run_boxes([box], timeout=60)
    finally:
        box.close()
    assert acker.result("cmd-0000000a")["ok"] is True
    # The persistent session must not hand the reboot command over again after the restart.
    assert box.reboots == 1


def test_status_is_retained_and_the_last_will_says_offline(mosquitto, prefix, tmp_path):
    box = _box(mosquitto, prefix, tmp_path)
    assert box.run_until(lambda: box.app.mqtt.connected, timeout=20)
    box.step()
    status = Collector(mosquitto.url, f"{prefix}/box-1/status")
    try:
        m = status.get()
        d = json.loads(m.payload)
        assert m.retain and d["online"] is True and d["fw"] == "0.1.0" and d["spooled"] == 0
        # Drop the TCP connection without a DISCONNECT, like a power cut.
        box.app.mqtt.client._teardown()
        m = status.get(timeout=15)
        assert json.loads(m.payload) == {"v": 1, "online": False}
    finally:
        status.close()


def test_many_boxes_in_one_process(mosquitto, prefix, acker, tmp_path):
    boxes = [_box(mosquitto, prefix, tmp_path, name=f"box-{i}", seed=i) for i in range(1, 4)]
    for b in boxes:
        b.deliver()
        b.deliver()
    try:
        assert run_boxes(boxes, timeout=90)
    finally:
        for b in boxes:
            b.close()
    assert len(acker.acked) == 6 and {d for d, _ in acker.acked} == {"box-1", "box-2", "box-3"}


def _cli(*args, timeout=90):
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "simulate.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_cli_exit_code_and_spool_survives_between_runs(mosquitto, prefix, tmp_path):
    spool = tmp_path / "spool"
    base = ["--broker", mosquitto.url, "--prefix", prefix, "--spool-dir", str(spool), "--quiet", "--json"]
    # No gateway: nothing gets acked, the run is bounded and says so.
    r = _cli(*base, "--device", "box-9", "--deliveries", "2", "--timeout", "4")
    assert r.returncode == 1, r.stderr
    first = json.loads(r.stdout)
    ids = [e["id"] for e in first["boxes"][0]["events"]]
    assert len(ids) == 2 and first["boxes"][0]["spooled"] == 2
    a = Acker(mosquitto.url, prefix)
    try:
        # A new process over the same spool: it re-sends the old events with their ids.
        r = _cli(*base, "--device", "box-9", "--deliveries", "1", "--timeout", "60")
        assert r.returncode == 0, r.stdout + r.stderr
        assert a.wait(lambda: {k[1] for k in a.acked} >= set(ids) and len(a.acked) >= 3)
    finally:
        a.close()


def test_cli_many_devices_with_auth_args(mosquitto, prefix, acker, tmp_path):
    r = _cli(
        "--broker",
        mosquitto.url,
        "--prefix",
        prefix,
        "--device",
        "lockr",
        "--devices",
        "2",
        "--deliveries",
        "1",
        "--username",
        "u",
        "--password",
        "p",
        "--timeout",
        "60",
        "--camera-driver",
        "lemariva",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: every event acked" in r.stdout
    assert {d for d, _ in acker.acked} == {"lockr-1", "lockr-2"}


def test_cli_stay_answers_a_snapshot_command(mosquitto, prefix, acker, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tools" / "simulate.py"),
            "--broker",
            mosquitto.url,
            "--prefix",
            prefix,
            "--device",
            "box-3",
            "--deliveries",
            "0",
            "--stay",
            "--timeout",
            "8",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        # The retained online status says the box is listening.
        assert acker.wait(lambda: any(d == "box-3" and s.get("online") for d, s, _r in acker.statuses), 30)
        acker.send_cmd("box-3", "cmd-000000ff", "snapshot")
        assert acker.wait(lambda: acker.result("cmd-000000ff") is not None, 30)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    res = acker.result("cmd-000000ff")
    assert res["ok"] is True and ("box-3", res["event"]) in acker.acked
    assert proc.returncode == 0, out + err
    # A goodbye on exit: the retained status says offline.
    assert acker.wait(
        lambda: [s for d, s, _r in acker.statuses if d == "box-3"][-1] == {"v": 1, "online": False}
    )


def test_random_script_every_event_acked(mosquitto, prefix, acker, tmp_path):
    r = _cli(
        "--broker",
        mosquitto.url,
        "--prefix",
        prefix,
        "--device",
        "rnd",
        "--deliveries",
        "0",
        "--random",
        "6",
        "--seed",
        "3",
        "--timeout",
        "60",
        "--quiet",
        "--json",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    events = json.loads(r.stdout)["boxes"][0]["events"]
    assert events and all(e["acked"] for e in events)
    assert {e["type"] for e in events} <= {"delivery", "pickup", "lid_closed"}
    assert acker.wait(lambda: {k[1] for k in acker.acked} >= {e["id"] for e in events})


def test_with_the_real_gateway_broker_killed_mid_run(mosquitto, prefix, tmp_path):
    """Contract check with `gateway/` as `parcelbox run` builds it: every event is stored with
    the exact photo the box took, across a broker kill, with the ids the box gave them."""
    from gateway.app import build_service
    from tests.support.gateway_core import gateway_config

    service = build_service(
        gateway_config(
            tmp_path / "data",
            mosquitto.url,
            prefix,
            PARCELBOX_WEB_ENABLED="false",
            PARCELBOX_HOMEASSISTANT_ENABLED="false",
        )
    )
    box = _box(mosquitto, prefix, tmp_path)
    service.start()
    try:
        box.deliver()
        box.deliver()
        assert run_boxes([box], timeout=60)
        mosquitto.kill()
        box.deliver()
        box.pickup()
        assert box.run_until(lambda: box.script_done, timeout=60)
        assert len(box.app.spool) == 2
        mosquitto.start()
        assert run_boxes([box], timeout=90)
    finally:
        box.close()
        service.stop()
    assert [t for _, t in box.made] == ["delivery", "delivery", "delivery", "pickup"]
    for i, (eid, _t) in enumerate(box.made):
        assert service.get_event("box-1", eid) is not None
        stored = service.photo_path("box-1", eid, "original").read_bytes()
        assert stored == box.photos.served[i]


def test_the_box_is_built_by_the_firmwares_main_build(monkeypatch, tmp_path):
    """The simulator runs the board's own wiring (firmware/main.py build()) on its fake board
    modules, on its own virtual clock, and again at every reboot; it used to rebuild the object
    graph by hand (another backoff, no updater logic, wiring that could drift from the board's)."""
    import main

    from tools.sim.board import Machine

    calls = []
    real = main.build

    def spy(cfg, machine, network, client_class, driver, config_path, **kw):
        calls.append((machine, kw))
        return real(cfg, machine, network, client_class, driver, config_path, **kw)

    monkeypatch.setattr(main, "build", spy)
    box = SimulatedBox("mqtt://127.0.0.1:9", "box-1", spool_dir=tmp_path / "spool")  # never connects
    box.reboot()
    assert len(calls) == 2
    for machine, kw in calls:
        assert isinstance(machine, Machine) and kw["clock"] is box.clock and kw["app_dir"] is None
    assert machine.Pin(box.cfg["pins"]["lid"]) is box.lid_pin  # the wiring survives the reboot
    assert box.app.mqtt.backoff.max_ms == 60000  # the board's reconnect backoff, not a simulator's own


def test_the_cli_runs_the_camera_at_the_photos_frame_size(mosquitto, prefix, acker, tmp_path, capsys):
    """`simulate.py --photos DIR` with UXGA photos: at the firmware's default SVGA each one overflowed
    the driver's 96,000-byte JPEG buffer and every delivery went out with `camera_error: "no frame"`,
    while the simulator still said OK. The box now runs at the photos' frame size."""
    from tools import simulate

    d = tmp_path / "uxga"
    d.mkdir()
    for i in range(2):
        (d / f"{i}.jpg").write_bytes(generated_jpeg(i, size=(1600, 1200)))  # ~350 KB: > SVGA's buffer
    argv = ["--broker", mosquitto.url, "--prefix", prefix, "--deliveries", "2", "--photos", str(d)]
    argv += ["--spool-dir", str(tmp_path / "spool"), "--quiet", "--timeout", "60"]
    assert simulate.main(argv) == 0
    assert "OK: every event acked" in capsys.readouterr().out
    sent = {(d / f"{i}.jpg").read_bytes() for i in range(2)}
    assert len(acker.events) == 2
    for key, ev in acker.events.items():
        assert ev.photo is not None, ev.sensors
        assert acker.photos[key] in sent


def test_the_cli_refuses_photos_no_esp32_cam_could_send(tmp_path, capsys):
    from tools import simulate

    d = tmp_path / "big"
    d.mkdir()
    (d / "0.jpg").write_bytes(generated_jpeg(0, size=(1000, 1000)))  # no ESP32-CAM frame size, > SVGA buffer
    with pytest.raises(SystemExit):
        simulate.main(["--broker", "mqtt://127.0.0.1:9", "--photos", str(d)])
    assert "not a frame size the ESP32-CAM offers" in capsys.readouterr().err
