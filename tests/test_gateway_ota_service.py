"""The running gateway's own offer path (what the dashboard's Update button and Home Assistant's
install action call): GatewayService.firmware_status / offer_update, against a real Mosquitto, real
files and a stand-in box. The offer they queue reaches the box as the retained `ota` message, the
bus says OTA_CHANGED, and a restarted gateway still knows a box's firmware before the box wakes."""

from __future__ import annotations

import json

import pytest

from gateway.bus import OTA_CHANGED
from gateway.ota import offers, pending
from gateway.ota.manifest import UpdateRefused
from gateway.service import GatewayService
from gateway.status import STATUS_FILE
from tests.support.gateway_core import Box, gateway_config, wait_for
from tests.support.mqtt import Collector
from tests.support.web import CHECKOUT, OLD_SET

STATUS = {"v": 1, "online": True, "fw": "1.0.0", "set": OLD_SET, "flash_free": 900_000, "rssi": -60}


def _service(cfg) -> GatewayService:
    return GatewayService(cfg, firmware=offers.CheckoutFirmware(cfg.data_dir, build=lambda _p: CHECKOUT))


def test_offer_from_the_dashboard_reaches_the_box_and_survives_a_restart(tmp_path, mosquitto, prefix):
    cfg = gateway_config(tmp_path / "data", mosquitto.url, prefix)
    box = Box(mosquitto.url, prefix, "box1")
    svc = _service(cfg)
    changed: list[str] = []
    svc.bus.subscribe(lambda _t, d: changed.append(d["device"]), OTA_CHANGED)
    svc.start()
    try:
        assert svc.wait_connected(10)
        box.pub("status", json.dumps(STATUS).encode())  # live, not retained
        st = wait_for(
            lambda: svc.firmware_status("box1")["fw"] and svc.firmware_status("box1"), what="status"
        )
        assert st["update_available"] is True and st["latest_version"] == "1.1.0" and st["update"] is None
        assert "box1" in changed
        with pytest.raises(LookupError):
            svc.offer_update("nobody")
        offer_topic = f"{prefix}/box1/ota"
        col = Collector(mosquitto.url, offer_topic)
        try:
            offer = svc.offer_update("box1")
            msg = col.get(timeout=15)  # the gateway's next tick publishes it
            assert json.loads(msg.payload)["id"] == offer["id"]
        finally:
            col.c.disconnect()
            col.c.loop_stop()
        # The tick publishes the offer, then writes its progress: a reader may see "queued" in between.
        wait_for(lambda: svc.firmware_status("box1")["update"]["state"] == "offered", what="offered")
        with pytest.raises(UpdateRefused, match="already on its way"):
            svc.offer_update("box1")
        wait_for(
            lambda: "box1" in (json.loads((cfg.data_dir / STATUS_FILE).read_text()).get("ota") or {}),
            what="status.json",
        )
    finally:
        svc.stop()
        box.close()
    # The offer ends (the box refused it), and the gateway restarts while the box sleeps.
    prog = pending.read_progress(pending.ota_root(cfg.data_dir), "box1")
    pending.write_progress(pending.ota_root(cfg.data_dir), "box1", {**prog, "state": "refused"})
    # A box the gateway no longer lists (removed) is not brought back from the old status.json.
    snap = json.loads((cfg.data_dir / STATUS_FILE).read_text())
    snap["ota"]["ghost"] = dict(snap["ota"]["box1"])
    (cfg.data_dir / STATUS_FILE).write_text(json.dumps(snap))
    svc = _service(cfg)
    svc.start()
    try:
        assert svc.firmware_status("ghost")["fw"] is None
        with pytest.raises(LookupError):
            svc.offer_update("ghost")
        st = svc.firmware_status("box1")
        assert st["fw"] == "1.0.0" and st["update_available"] is True  # from the last status.json
        assert svc.offer_update("box1")["from"] == "1.0.0"
    finally:
        svc.stop()
