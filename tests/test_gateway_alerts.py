"""Alerts end to end through a real broker into the folder sink; box health alerts; commands; the bus.

Time-driven rules (offline, silent boxes, the grouping window, retention) run on a `JumpClock` and
`GatewayService.tick()`: the test makes the hour pass instead of sleeping. The rules themselves, row by
row, are tests/test_alert_rules.py."""

from __future__ import annotations

import json

import pytest

from gateway.bus import COMMAND_RESULT, DEVICE_CHANGED, EVENT_STORED, OUTBOX_CHANGED
from gateway.service import GatewayService
from tests.support.gateway_core import Box, JumpClock, gateway_config, make_jpeg, new_event_id, wait_for
from tests.support.mqtt import Collector

PHOTO = make_jpeg(320, 240, seed=5)


def _alerts(folder):
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _planned(svc, kind):
    """Outbox entries of `kind`, sent or not: what the rules planned."""
    return [o for o in svc.list_outbox(limit=1000) if o["kind"] == kind]


def _start(tmp_path, mosquitto, prefix, clock=None, **env):
    env.setdefault("PARCELBOX_DEVICES_NAMES", "box1=Front gate")
    cfg = gateway_config(tmp_path / "data", mosquitto.url, prefix, **env)
    svc = GatewayService(cfg, clock=clock) if clock is not None else GatewayService(cfg)
    from gateway.app import build_notifiers

    for n in build_notifiers(cfg):
        svc.add_notifier(n)
    svc.start()
    assert svc.wait_connected(10)
    return svc


@pytest.fixture
def box(mosquitto, prefix):
    b = Box(mosquitto.url, prefix, "box1")
    yield b
    b.close()


def test_delivery_pickup_lid_alerts_with_captions_photos_and_bus(tmp_path, mosquitto, prefix, box):
    svc = _start(tmp_path, mosquitto, prefix, PARCELBOX_ALERTS_LANGUAGE="id")
    seen: list[tuple[str, dict]] = []
    svc.bus.subscribe(lambda t, d: seen.append((t, d)))
    try:
        folder = svc.config.folder_sink_path
        e1, e2, e3, e4 = (new_event_id() for _ in range(4))
        box.send(e1, PHOTO)
        box.send(e2, PHOTO)
        box.send(e3, None, etype="lid_left_open")
        box.send(e4, None, etype="pickup")
        for e in (e1, e2, e3, e4):
            assert box.wait_ack(e)["ok"]
        docs = wait_for(lambda: (d := _alerts(folder)) and len(d) == 4 and d, what="4 alerts")
        by_event = {d["event_ids"][0]: d for d in docs}
        assert "Paket diterima di Front gate" in by_event[e1]["caption"]
        # Photo events finish after photo-less ones; the state still follows the events' own times.
        assert by_event[e3]["kind"] == "lid_left_open"
        assert "Kotak kosong" in by_event[e4]["caption"]
        assert (folder / f"{by_event[e1]['id']}.jpg").read_bytes()[:2] == b"\xff\xd8"
        assert by_event[e4]["photo"] is None
        dev = svc.list_devices()[0]
        assert dev["waiting"] == 0 and dev["name"] == "Front gate" and dev["last_event_id"] == e4
        wait_for(lambda: svc.health()["alerts"]["sent"] == 4, what="sent counter")
        topics = {t for t, _ in seen}
        assert {EVENT_STORED, DEVICE_CHANGED, OUTBOX_CHANGED} <= topics
        assert sorted(d["id"] for t, d in seen if t == EVENT_STORED) == sorted([e1, e2, e3, e4])
        assert any(d["state"] == "sent" for t, d in seen if t == OUTBOX_CHANGED)
        assert svc.list_outbox("sent", limit=10)[0]["notifier"] == "folder"
    finally:
        svc.stop()


def test_offline_online_and_low_battery_alerts(tmp_path, mosquitto, prefix, box):
    clock = JumpClock()
    svc = _start(
        tmp_path,
        mosquitto,
        prefix,
        clock,
        PARCELBOX_ALERTS_OFFLINE_AFTER_S="3600",
        PARCELBOX_ALERTS_LOW_BATTERY_MV="3500",
    )
    try:
        folder = svc.config.folder_sink_path
        st = {"v": 1, "online": True, "fw": "0.1.0", "battery_mv": 3300}
        box.pub("status", json.dumps(st).encode())
        box.pub("status", json.dumps(st).encode())  # still low: no second alert
        wait_for(lambda: [d for d in _alerts(folder) if d["kind"] == "low_battery"], what="low battery alert")
        box.pub("status", json.dumps({"v": 1, "online": False}).encode())
        wait_for(lambda: svc.health()["statuses"] == 3, what="the offline status")
        svc.tick()
        assert _planned(svc, "offline") == []  # offline for seconds, not an hour
        clock.advance(3600)
        svc.tick()
        assert len(_planned(svc, "offline")) == 1  # planned by the tick itself
        off = wait_for(lambda: [d for d in _alerts(folder) if d["kind"] == "offline"], what="offline alert")
        assert "Front gate" in off[0]["caption"] and "offline" in off[0]["caption"]
        clock.advance(3600)
        svc.tick()
        assert len(_planned(svc, "offline")) == 1  # one alert per outage
        box.pub("status", json.dumps({**st, "battery_mv": 4000}).encode())
        wait_for(lambda: [d for d in _alerts(folder) if d["kind"] == "online"], what="online alert")
        kinds = sorted(d["kind"] for d in _alerts(folder))
        assert kinds == ["low_battery", "offline", "online"]
        assert "3.30 V" in [d for d in _alerts(folder) if d["kind"] == "low_battery"][0]["caption"]
    finally:
        svc.stop()


def test_burst_grouping_makes_one_alert(tmp_path, mosquitto, prefix, box):
    clock = JumpClock()
    svc = _start(tmp_path, mosquitto, prefix, clock, PARCELBOX_ALERTS_GROUP_WINDOW_S="3600")
    try:
        folder = svc.config.folder_sink_path
        ids = [new_event_id() for _ in range(3)]
        for e in ids:
            box.send(e, PHOTO)
            assert box.wait_ack(e)["ok"]
        (entry,) = _planned(svc, "delivery")
        assert entry["event_ids"] == ids and entry["state"] == "pending"
        assert _alerts(folder) == []  # the window holds it back
        clock.advance(3600)
        docs = wait_for(lambda: _alerts(folder), what="grouped alert")
        assert len(docs) == 1 and docs[0]["event_ids"] == ids
        assert docs[0]["caption"].startswith("📦 3 packages delivered to Front gate")
        assert docs[0]["state"] == {"waiting": 3} and "3 packages waiting" in docs[0]["caption"]
    finally:
        svc.stop()


def test_send_command_and_result_on_bus(tmp_path, mosquitto, prefix, box):
    svc = _start(tmp_path, mosquitto, prefix)
    results: list[dict] = []
    svc.bus.subscribe(lambda t, d: results.append(d), COMMAND_RESULT)
    cmds = Collector(mosquitto.url, f"{prefix}/box1/cmd")
    try:
        cid = svc.send_command("box1", "ping")
        msg = json.loads(cmds.get().payload)
        assert msg == {"v": 1, "id": cid, "cmd": "ping", "args": {}}
        box.pub("cmd/result", json.dumps({"v": 1, "id": cid, "ok": True, "uptime_s": 9}).encode())
        wait_for(lambda: results, what="command result")
        assert results[0] == {"device": "box1", "id": cid, "ok": True, "error": None, "uptime_s": 9}
        assert svc.command_result(cid)["ok"] is True
        with pytest.raises(ValueError):
            svc.send_command("../x", "ping")
    finally:
        cmds.close()
        svc.stop()


def test_command_results_kept_only_for_commands_sent_to_that_box(tmp_path, mosquitto, prefix, box):
    """Issue 14 item 4: every result with a made-up id used to be kept forever (63 -> 364 MB in 14 s).
    Now only the answer to a command this gateway sent to that same box is kept (once); the rest is
    counted under rejected.unknown_command and holds no memory."""
    svc = _start(tmp_path, mosquitto, prefix)
    results: list[dict] = []
    svc.bus.subscribe(lambda t, d: results.append(d), COMMAND_RESULT)
    other = Box(mosquitto.url, prefix, "box2")
    try:
        cid = svc.send_command("box1", "ping")
        n = 300
        for i in range(n):  # made-up ids, each with a fat payload
            box.pub(
                "cmd/result",
                json.dumps({"v": 1, "id": f"madeup-{i:06d}", "ok": True, "x": "y" * 8000}).encode(),
            )
        other.pub("cmd/result", json.dumps({"v": 1, "id": cid, "ok": False, "error": "mine"}).encode())
        box.pub("cmd/result", json.dumps({"v": 1, "id": cid, "ok": True}).encode())
        box.pub("cmd/result", json.dumps({"v": 1, "id": cid, "ok": False, "error": "again"}).encode())
        wait_for(
            lambda: (
                svc.health()["rejected"].get("unknown_command", 0) == n + 1
                and svc.health()["rejected"].get("duplicate_cmd_result") == 1
            ),
            what="every unknown result counted",
        )
        assert [r["id"] for r in results] == [cid] and results[0]["ok"] is True
        assert svc.command_result(cid) == {"device": "box1", "id": cid, "ok": True, "error": None}
        assert svc.command_result("madeup-000001") is None
        assert svc.health()["commands_held"] == 1
        # a real answer carrying 8 KB of junk is kept without the junk
        big = svc.send_command("box1", "ping")
        box.pub("cmd/result", json.dumps({"v": 1, "id": big, "ok": True, "x": "y" * 8000}).encode())
        got = wait_for(lambda: svc.command_result(big), what="the big result")
        assert got == {"device": "box1", "id": big, "ok": True, "error": None, "extra_dropped": True}
    finally:
        other.close()
        svc.stop()


def test_silent_box_counts_as_offline_when_configured(tmp_path, mosquitto, prefix, box):
    """A battery box disconnects cleanly to sleep (no last will); one that never wakes again is reported."""
    clock = JumpClock()
    svc = _start(tmp_path, mosquitto, prefix, clock, PARCELBOX_ALERTS_SILENT_AFTER_S="3600")
    try:
        folder = svc.config.folder_sink_path
        box.pub("status", json.dumps({"v": 1, "online": True, "fw": "0.1.0"}).encode())
        wait_for(lambda: svc.health()["statuses"] == 1, what="the status")
        svc.tick()
        assert _planned(svc, "offline") == []  # heard from seconds ago
        clock.advance(3600)
        svc.tick()
        assert len(_planned(svc, "offline")) == 1
        off = wait_for(lambda: [d for d in _alerts(folder) if d["kind"] == "offline"], what="offline alert")
        assert len(off) == 1 and off[0]["ts"] <= clock() - 3600  # offline since it was last seen
        box.pub("status", json.dumps({"v": 1, "online": True, "fw": "0.1.0"}).encode())  # it woke up
        wait_for(lambda: [d for d in _alerts(folder) if d["kind"] == "online"], what="online alert")
    finally:
        svc.stop()


def test_removed_box_is_hidden_and_never_reported_offline(tmp_path, mosquitto, prefix, box):
    """`parcelbox device remove` (another process, same devices.json) while the gateway runs."""
    from gateway.devices import DeviceRegistry

    clock = JumpClock()
    svc = _start(tmp_path, mosquitto, prefix, clock, PARCELBOX_ALERTS_OFFLINE_AFTER_S="3600")
    try:
        folder = svc.config.folder_sink_path
        registry = DeviceRegistry(svc.data_dir)
        registry.add("box1")
        e1 = new_event_id()
        box.send(e1, None, etype="lid_closed")
        assert box.wait_ack(e1)["ok"]
        wait_for(lambda: [d["device"] for d in svc.list_devices()] == ["box1"], what="box listed")
        # Removed after it was last heard from (the registry stamps the wall clock; equal counts as after).
        assert registry.remove("box1")
        wait_for(lambda: svc.list_devices() == [], what="removed box hidden")
        box.pub("status", json.dumps({"v": 1, "online": False}).encode())  # its last will
        wait_for(lambda: svc.health()["statuses"] == 1, what="the last will")
        clock.advance(2 * 3600)
        svc.tick()  # past offline_after_s
        assert svc.list_devices() == []
        assert _planned(svc, "offline") == []
        assert not [d for d in _alerts(folder) if d["kind"] == "offline"]
        assert svc.get_event("box1", e1) is not None  # its history stays
        box.pub("status", json.dumps({"v": 1, "online": True, "fw": "0.1.0"}).encode())  # heard again
        wait_for(lambda: [d["device"] for d in svc.list_devices()] == ["box1"], what="box back in the list")
    finally:
        svc.stop()


def test_retention_follows_the_clock_of_tick(tmp_path, mosquitto, prefix, box):
    """Retention runs from `tick`, hourly by the service clock: a month file past the kept days goes."""
    clock = JumpClock()
    svc = _start(tmp_path, mosquitto, prefix, clock, PARCELBOX_STORE_RETENTION_DAYS="1")
    try:
        e1 = new_event_id()
        box.send(e1, None, etype="lid_closed")  # no alert: nothing keeps its month file open
        assert box.wait_ack(e1)["ok"]
        svc.tick()
        assert svc.get_event("box1", e1) is not None
        clock.advance(40 * 86400)  # past the end of its month file, and the day kept after it
        svc.tick()
        assert svc.get_event("box1", e1) is None
        assert svc.health()["events_total"] == 0
    finally:
        svc.stop()
