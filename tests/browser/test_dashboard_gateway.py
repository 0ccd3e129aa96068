"""The dashboard in headless Chromium against the whole gateway: GatewayService on a real Mosquitto,
a box publishing real protocol messages (event + photo chunks, status, command results), and the
real WhatsApp component whose child process talks to the file-driven fake WhatsApp."""

from __future__ import annotations

import json
import threading

import pytest

from gateway.app import build_service
from gateway.web.server import WebServer
from gateway.whatsapp.component import WhatsAppComponent
from tests.browser.helpers import DESKTOP, PHONE, WAIT_MS, img_loaded, shoot
from tests.support.gateway_core import Box, gateway_config, make_jpeg, new_event_id
from tests.support.web import SnapshotResponder
from tests.support.whatsapp import FakeWhatsApp, fake_settings

PHOTO = make_jpeg(800, 600, seed=7)


@pytest.fixture
def stack(tmp_path, mosquitto, prefix):
    cfg = gateway_config(
        tmp_path / "data",
        mosquitto.url,
        prefix,
        PARCELBOX_WEB_PORT="0",
        PARCELBOX_DEVICES_NAMES="porch=Porch box",
    )
    svc = build_service(cfg)
    wa_settings = fake_settings(tmp_path, recipients=["+6281234567890"])
    FakeWhatsApp(wa_settings.fake_dir).script(qr_codes=[f"2@gw-qr-{i}" for i in range(40)], qr_interval_s=1.0)
    svc.add_component(WhatsAppComponent(svc, wa_settings))
    svc.start()
    box = Box(mosquitto.url, prefix, "porch")
    responder = SnapshotResponder(box, mosquitto.url, PHOTO)
    try:
        assert svc.wait_connected(10)
        status = {"v": 1, "online": True, "fw": "0.1.0", "rssi": -64, "battery_mv": 3880, "spooled": 0}
        box.pub("status", json.dumps(status).encode(), retain=True)
        (web,) = [c for c in svc.components if isinstance(c, WebServer)]
        yield svc, web, box
    finally:
        responder.close()
        box.close()
        svc.stop()


def test_live_delivery_snapshot_and_pairing_on_the_real_gateway(browser, stack) -> None:
    svc, web, box = stack
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(web.url + "/")
    page.wait_for_selector("#live.on", timeout=WAIT_MS)

    eid = new_event_id()
    t = threading.Thread(target=box.send, args=(eid, PHOTO))
    t.start()
    t.join(20)
    sel = f'li.event[data-id="{eid}"]'
    page.wait_for_selector(sel, timeout=WAIT_MS)
    img_loaded(page, sel + " img.thumb")
    assert "Porch box" in page.inner_text(sel)
    shoot(page, "gateway-deliveries-desktop")
    page.click(sel)
    img_loaded(page, "#viewer-img")
    assert page.get_attribute("#viewer-orig", "href") == f"/api/photos/porch/{eid}/original"
    page.keyboard.press("Escape")

    page.click('nav a[href="/boxes"]')
    page.wait_for_selector('.box[data-device="porch"]', timeout=WAIT_MS)
    page.click('.box[data-device="porch"] button[data-cmd="snapshot"]')
    page.wait_for_selector('.box[data-device="porch"] .result.ok', timeout=WAIT_MS)
    shoot(page, "gateway-boxes-desktop")
    page.click('.box[data-device="porch"] a.view-snap')
    img_loaded(page, "#viewer-img")
    page.keyboard.press("Escape")

    page.click('nav a[href="/whatsapp"]')
    page.wait_for_selector("#wa-qr:not([hidden])", timeout=WAIT_MS)
    img_loaded(page, "#wa-qr")
    shoot(page, "gateway-whatsapp-desktop")

    page.set_viewport_size(PHONE)
    page.click('nav a[href="/"]')
    page.wait_for_selector(sel, timeout=WAIT_MS)
    shoot(page, "gateway-deliveries-phone")
    assert errors == []
    ctx.close()
