"""Home Assistant bridge inside the real gateway (`GatewayService`), a box talking protocol v1 to it,
and a real Mosquitto: what Home Assistant would see of a delivery, a snapshot and a pickup."""

from __future__ import annotations

import io
import json
import time

from PIL import Image

from gateway.config import ConfigError
from gateway.homeassistant import HAConfig, HomeAssistantBridge, homeassistant_component
from gateway.homeassistant import discovery as d
from gateway.service import GatewayService
from tests.support.gateway_core import Box, event_payload, gateway_config, make_jpeg, new_event_id, wait_for
from tests.support.ha_gateway import Mirror, all_configs_present
from tests.support.mqtt import Collector, client
from tests.test_homeassistant import check_discovery


def _status(**kw) -> bytes:
    body = {"v": 1, "online": True, "fw": "0.3.0", "uptime_s": 5, "rssi": -58, "heap_free": 80000}
    body.update(kw)
    return json.dumps(body).encode()


def test_gateway_delivery_snapshot_pickup_in_home_assistant(mosquitto, prefix, tmp_path):
    config = gateway_config(tmp_path / "data", mosquitto.url, prefix)
    ha = HAConfig(prefix=f"{prefix}-ha", protocol_prefix=prefix, gateway_id="gw")
    service = GatewayService(config)
    bridge = HomeAssistantBridge.for_service(service, ha)
    service.add_component(bridge)
    discovery = Mirror(mosquitto.url, f"{ha.prefix}/#")
    states = Mirror(mosquitto.url, f"{ha.base}/#")
    box = Box(mosquitto.url, prefix, "porch")
    cmds = Collector(mosquitto.url, f"{prefix}/porch/cmd")
    service.start()
    try:
        box.pub("status", _status(battery_mv=3950), retain=True)
        discovery.wait(lambda: all_configs_present(discovery, ha, {"porch": True}), what="porch configs")
        for topic, msg in discovery.latest.items():
            check_discovery(topic, msg.payload, ha)
        waiting_cfg = json.loads(
            discovery.payload(d.config_topic(ha, "sensor", d.box_identifier(ha, "porch"), "waiting"))
        )
        assert waiting_cfg["device"]["sw_version"] == "0.3.0"
        st = d.state_topic(ha, "porch")
        states.wait(lambda: states.json(st)["battery_v"] == 3.95, what="battery state")
        assert states.payload(d.gateway_availability_topic(ha)) == b"online"
        assert states.payload(d.availability_topic(ha, "porch")) == b"online"

        # A delivery with its photo, through the real ingest, store and photo pipeline.
        photo = make_jpeg(1600, 1200, seed=3)
        eid = new_event_id()
        box.send(eid, photo, etype="delivery", sensors={"lid": "closed"})
        assert box.wait_ack(eid)["ok"] is True
        states.wait(lambda: states.json(st)["waiting"] == 1, what="one waiting")
        assert states.json(st)["package"] is True and states.json(st)["lid_open"] is False
        alert = service.photo_path("porch", eid, "alert")
        assert alert is not None
        img = d.image_topic(ha, "porch", "delivery")
        states.wait(lambda: states.payload(img) == alert.read_bytes(), what="delivery image")
        with Image.open(io.BytesIO(states.payload(img))) as im:
            im.load()
            assert im.format == "JPEG" and max(im.size) <= config.photos.alert_long_edge
        assert len(states.payload(img)) <= alert.stat().st_size < len(photo)

        # "Take snapshot" in Home Assistant -> the command reaches the box -> its snapshot shows up.
        ha_client = client(mosquitto.url)
        try:
            ha_client.publish(d.press_topic(ha, "porch"), "PRESS", qos=1).wait_for_publish(5)
        finally:
            ha_client.disconnect()
            ha_client.loop_stop()
        cmd = json.loads(cmds.get(timeout=15).payload)
        assert cmd["cmd"] == "snapshot"
        box.pub("cmd/result", json.dumps({"v": 1, "id": cmd["id"], "ok": True}).encode())
        snap_id = new_event_id()
        snap = make_jpeg(800, 600, seed=9)
        box.send(snap_id, snap, etype="snapshot", cmd=cmd["id"], seq=2)
        assert box.wait_ack(snap_id)["ok"] is True
        snap_alert = service.photo_path("porch", snap_id, "alert")
        assert snap_alert is not None
        simg = d.image_topic(ha, "porch", "snapshot")
        states.wait(lambda: states.payload(simg) == snap_alert.read_bytes(), what="snapshot image")

        # Pickup.
        pid = new_event_id()
        box.event(pid, event_payload(pid, None, etype="pickup", seq=3, ts=time.time() + 1))
        assert box.wait_ack(pid)["ok"] is True
        states.wait(lambda: states.json(st)["waiting"] == 0, what="picked up")
        assert states.json(st)["package"] is False

        # The box drops off the network: its last will reaches Home Assistant as "offline".
        box.pub("status", json.dumps({"v": 1, "online": False}).encode(), retain=True)
        states.wait(lambda: states.payload(d.availability_topic(ha, "porch")) == b"offline", what="offline")
        assert bridge.health()["presses.sent"] == 1
    finally:
        service.stop()
        for c in (discovery, states, cmds):
            c.close()
        box.close()
    # A stopped gateway is offline for Home Assistant.
    after = Mirror(mosquitto.url, d.gateway_availability_topic(ha))
    try:
        after.wait(
            lambda: after.payload(d.gateway_availability_topic(ha)) == b"offline", what="gateway offline"
        )
    finally:
        after.close()


def test_component_runs_only_with_a_shared_broker(mosquitto, prefix, tmp_path):
    on = gateway_config(tmp_path / "a", mosquitto.url, prefix, PARCELBOX_HOMEASSISTANT_ENABLED="true")
    bridge = homeassistant_component(GatewayService(on), on)
    assert isinstance(bridge, HomeAssistantBridge)
    assert bridge.cfg.protocol_prefix == prefix and bridge.cfg.base == f"{prefix}/_ha"
    assert bridge.summary and "homeassistant/" in bridge.summary

    off = gateway_config(tmp_path / "b", mosquitto.url, prefix, PARCELBOX_HOMEASSISTANT_ENABLED="false")
    assert homeassistant_component(GatewayService(off), off) is None

    managed = gateway_config(tmp_path / "c", "", prefix, PARCELBOX_HOMEASSISTANT_ENABLED="true")
    assert homeassistant_component(GatewayService(managed), managed) is None

    bad = gateway_config(
        tmp_path / "d",
        mosquitto.url,
        prefix,
        PARCELBOX_HOMEASSISTANT_ENABLED="true",
        PARCELBOX_HOMEASSISTANT_PREFIX="a/#",
    )
    try:
        homeassistant_component(GatewayService(bad), bad)
    except ConfigError as exc:
        assert "prefix" in str(exc)
    else:
        raise AssertionError("a wildcard discovery prefix must be refused")


def test_cli_device_remove_clears_the_box_from_home_assistant(
    mosquitto, prefix, tmp_path, monkeypatch, capsys
):
    from gateway.cli import main
    from tests.support.ha_gateway import memory_port

    monkeypatch.setenv("PARCELBOX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PARCELBOX_BROKER_URL", mosquitto.url)
    monkeypatch.setenv("PARCELBOX_BROKER_PREFIX", prefix)
    monkeypatch.setenv("PARCELBOX_CONFIG", "")
    assert main(["device", "add", "shed"]) == 0
    assert main(["device", "add", "gate"]) == 0
    # What a running gateway announced (same defaults as the CLI's config).
    ha = HAConfig(protocol_prefix=prefix)
    port = memory_port(tmp_path / "photos")
    port.add_device("shed")
    port.add_device("gate")
    bridge = HomeAssistantBridge(port, mosquitto.url, ha)
    seen = Mirror(mosquitto.url, f"{ha.prefix}/#")
    bridge.start()
    try:
        seen.wait(lambda: all_configs_present(seen, ha, {"shed": False, "gate": False}), what="configs")
        assert bridge.wait_idle()
    finally:
        bridge.stop()
        seen.close()
    capsys.readouterr()
    assert main(["device", "remove", "shed"]) == 0
    out = capsys.readouterr().out
    assert "Home Assistant: 'shed' and its entities removed." in out
    fresh = Mirror(mosquitto.url, f"{ha.prefix}/#")
    try:
        fresh.wait(lambda: all_configs_present(fresh, ha, {"gate": False}), what="gate still there")
        fresh._drain(0.3)
        assert not [t for t in fresh.latest if d.box_identifier(ha, "shed") in t]
    finally:
        fresh.close()
    # Broker down: the removal still succeeds and says who will catch up.
    mosquitto.stop()
    assert main(["device", "remove", "gate"]) == 0
    assert "the gateway clears it when it next runs" in capsys.readouterr().out


def test_simulated_box_through_parcelbox_run_wiring(mosquitto, prefix, tmp_path):
    """The firmware's own code in a simulated box, the gateway as `parcelbox run` builds it."""
    from gateway.app import build_service
    from tools.simulate import SimulatedBox, run_boxes

    config = gateway_config(
        tmp_path / "data",
        mosquitto.url,
        prefix,
        PARCELBOX_WEB_ENABLED="false",
        PARCELBOX_HOMEASSISTANT_PREFIX=f"{prefix}-ha",
        PARCELBOX_HOMEASSISTANT_GATEWAY_ID="gw",
    )
    service = build_service(config)
    bridges = [c for c in service.components if isinstance(c, HomeAssistantBridge)]
    assert len(bridges) == 1
    ha = bridges[0].cfg
    discovery = Mirror(mosquitto.url, f"{ha.prefix}/#")
    states = Mirror(mosquitto.url, f"{ha.base}/#")
    box = SimulatedBox(mosquitto.url, "porch", prefix=prefix, spool_dir=tmp_path / "spool")
    closed = False
    service.start()
    try:
        box.deliver()
        assert run_boxes([box], timeout=60)
        discovery.wait(lambda: all_configs_present(discovery, ha, {"porch": False}), what="configs")
        for topic, msg in discovery.latest.items():
            check_discovery(topic, msg.payload, ha)
        st = d.state_topic(ha, "porch")
        states.wait(lambda: states.json(st)["waiting"] == 1, what="delivery counted")
        delivery_id = next(e for e, t in box.made if t == "delivery")
        alert = service.photo_path("porch", delivery_id, "alert")
        img = d.image_topic(ha, "porch", "delivery")
        states.wait(lambda: states.payload(img) == alert.read_bytes(), what="delivery photo")
        with Image.open(io.BytesIO(states.payload(img))) as im:
            im.load()
            assert im.format == "JPEG"

        ha_client = client(mosquitto.url)
        try:
            ha_client.publish(d.press_topic(ha, "porch"), "PRESS", qos=1).wait_for_publish(5)
        finally:
            ha_client.disconnect()
            ha_client.loop_stop()
        assert box.run_until(
            lambda: any(t == "snapshot" for _, t in box.made) and box.all_acked(), timeout=60
        )
        snap_id = next(e for e, t in box.made if t == "snapshot")
        assert service.get_event("porch", snap_id)["cmd"]  # taken because of the button, not by chance
        snap_alert = service.photo_path("porch", snap_id, "alert")
        simg = d.image_topic(ha, "porch", "snapshot")
        states.wait(lambda: states.payload(simg) == snap_alert.read_bytes(), what="snapshot photo")

        box.pickup()
        assert run_boxes([box], timeout=60)
        states.wait(lambda: states.json(st)["waiting"] == 0, what="picked up")
        assert states.json(st)["package"] is False
        box.close()
        closed = True
        states.wait(
            lambda: states.payload(d.availability_topic(ha, "porch")) == b"offline", what="box offline"
        )
    finally:
        if not closed:
            box.close()
        service.stop()
        discovery.close()
        states.close()


def test_a_registry_change_is_published_once_on_the_bus_and_home_assistant_follows(
    mosquitto, prefix, tmp_path
):
    """Issue 17: DEVICE_REMOVED had a subscriber (the Home Assistant bridge) and no producer, and the
    bridge polled devices.json on its own. Now the service notices a registry change (one reader) and
    publishes DEVICE_REMOVED / DEVICE_REGISTERED; the bridge follows the bus."""
    from gateway.bus import DEVICE_REGISTERED, DEVICE_REMOVED
    from gateway.devices import DeviceRegistry

    data = tmp_path / "data"
    registry = DeviceRegistry(data)
    registry.add("porch")
    registry.add("shed")
    config = gateway_config(data, mosquitto.url, prefix)
    ha = HAConfig(prefix=f"{prefix}-ha", protocol_prefix=prefix, gateway_id="gw")
    service = GatewayService(config)
    changes: list[tuple[str, dict]] = []
    service.bus.subscribe(lambda t, d_: changes.append((t, d_)), DEVICE_REMOVED)
    service.bus.subscribe(lambda t, d_: changes.append((t, d_)), DEVICE_REGISTERED)
    bridge = HomeAssistantBridge.for_service(service, ha)
    service.add_component(bridge)
    discovery = Mirror(mosquitto.url, f"{ha.prefix}/#")
    boxes = [Box(mosquitto.url, prefix, name) for name in ("porch", "shed")]
    service.start()
    try:
        for box in boxes:
            box.pub("status", _status(), retain=True)
        discovery.wait(
            lambda: all_configs_present(discovery, ha, {"porch": False, "shed": False}), what="configs"
        )
        button = d.config_topic(ha, "button", d.box_identifier(ha, "shed"), "snapshot")
        assert changes == []  # the registry as found at start is no change
        assert registry.remove("shed")  # `parcelbox device remove shed` from another process
        wait_for(lambda: changes, what="DEVICE_REMOVED")
        assert changes == [(DEVICE_REMOVED, {"device": "shed", "registered": ["porch"]})]
        discovery.wait(lambda: discovery.payload(button) == b"", what="shed cleared from Home Assistant")
        registry.add("shed")
        wait_for(lambda: len(changes) == 2, what="DEVICE_REGISTERED")
        assert changes[1] == (DEVICE_REGISTERED, {"device": "shed", "registered": ["porch", "shed"]})
        discovery.wait(lambda: discovery.payload(button) not in (None, b""), what="shed announced again")
    finally:
        service.stop()
        discovery.close()
        for box in boxes:
            box.close()
