"""The dashboard in headless Chromium against the whole gateway, fed by the simulator.

GatewayService on a real Mosquitto (built as `parcelbox run` builds it), a simulated box running the
real firmware modules (tools/simulate.py: detection, spool, chunked photo, acks, commands), and the
real WhatsApp component whose child process talks to the file-driven fake WhatsApp.
"""

from __future__ import annotations

import pytest

from gateway.app import build_service
from gateway.web.server import WebServer
from tests.browser.helpers import DESKTOP, PHONE, WAIT_MS, close_viewer, img_loaded, shoot
from tests.support.gateway_core import gateway_config, wait_for
from tests.support.web import BoxRunner
from tests.support.whatsapp import FakeWhatsApp
from tools.simulate import SimulatedBox


@pytest.fixture
def stack(tmp_path, mosquitto, prefix):
    fake_dir = tmp_path / "fakewa"
    fake = FakeWhatsApp(fake_dir)
    fake.script(qr_codes=[f"2@gw-qr-{i}" for i in range(60)], qr_interval_s=1.0)
    # Everything as `parcelbox run` builds it from config; WhatsApp's servers are the fake's folder.
    cfg = gateway_config(
        tmp_path / "data",
        mosquitto.url,
        prefix,
        PARCELBOX_WEB_PORT="0",
        PARCELBOX_DEVICES_NAMES="porch=Porch box",
        PARCELBOX_WHATSAPP_ENABLED="true",
        PARCELBOX_WHATSAPP_TRANSPORT="fake",
        PARCELBOX_WHATSAPP_FAKE_DIR=str(fake_dir),
        PARCELBOX_WHATSAPP_RECIPIENTS="+6281234567890",
    )
    svc = build_service(cfg)
    svc.start()
    runner = BoxRunner(SimulatedBox(mosquitto.url, "porch", prefix=prefix, spool_dir=tmp_path / "spool"))
    try:
        assert svc.wait_connected(10)
        (web,) = [c for c in svc.components if isinstance(c, WebServer)]
        wait_for(lambda: svc.list_devices(), what="the simulated box reported")
        yield svc, web, runner, fake
    finally:
        runner.close()
        svc.stop()


def test_live_delivery_snapshot_and_pairing_on_the_real_gateway(browser, stack) -> None:
    svc, web, runner, fake = stack
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(web.url + "/")
    page.wait_for_selector("#live.on", timeout=WAIT_MS)

    runner.call(runner.box.deliver)  # lid opens, a parcel goes in, lid closes: the firmware detects it
    eid = wait_for(
        lambda: runner.events("delivery") and runner.events("delivery")[0], timeout=60, what="delivery"
    )
    sel = f'li.event[data-id="{eid}"]'
    page.wait_for_selector(sel, timeout=WAIT_MS)
    img_loaded(page, sel + " img.thumb")
    assert "Porch box" in page.inner_text(sel)
    shoot(page, "gateway-deliveries-desktop")
    page.click(sel)
    img_loaded(page, "#viewer-img")
    assert page.get_attribute("#viewer-orig", "href") == f"/api/photos/porch/{eid}/original"
    close_viewer(page)

    page.click('nav a[href="/boxes"]')
    page.wait_for_selector('.box[data-device="porch"]', timeout=WAIT_MS)
    assert "1 package waiting" in page.inner_text('.box[data-device="porch"] .waiting')
    page.click('.box[data-device="porch"] button[data-cmd="snapshot"]')
    page.wait_for_selector('.box[data-device="porch"] .result.ok', timeout=WAIT_MS)
    snap = runner.events("snapshot")
    assert snap and svc.get_event("porch", snap[0])["cmd"]  # the link shows only once it is stored
    shoot(page, "gateway-boxes-desktop")
    page.click('.box[data-device="porch"] a.view-snap')
    img_loaded(page, "#viewer-img")
    close_viewer(page)

    page.click('nav a[href="/whatsapp"]')
    page.wait_for_selector("#wa-qr:not([hidden])", timeout=WAIT_MS)
    img_loaded(page, "#wa-qr")
    shoot(page, "gateway-whatsapp-desktop")
    fake.inject("scan")  # the phone scans the code
    page.wait_for_selector("#wa-linked:not([hidden])", timeout=WAIT_MS)
    assert "Connected" in page.inner_text("#wa-badge")
    page.click("#wa-test-form button")
    page.wait_for_selector("#wa-result.ok", timeout=WAIT_MS)
    assert any("test message" in m["text"] for m in fake.sent())
    # A number that is not an alert recipient: the page asks first, and sends only once confirmed.
    dialogs: list[str] = []

    def answer(d, accept: bool) -> None:
        dialogs.append(d.message)
        d.accept() if accept else d.dismiss()

    page.fill("#wa-recipient", "+62 812 5555 0000")
    page.once("dialog", lambda d: answer(d, False))
    page.click("#wa-test-form button")
    page.wait_for_selector("#wa-result.bad", timeout=WAIT_MS)
    page.once("dialog", lambda d: answer(d, True))
    page.click("#wa-test-form button")
    page.wait_for_selector("#wa-result.ok", timeout=WAIT_MS)
    assert len(dialogs) == 2 and "not one of your alert recipients" in dialogs[0]
    assert [m["to"] for m in fake.sent()].count("6281255550000@s.whatsapp.net") == 1
    page.fill("#wa-recipient", "")
    shoot(page, "gateway-whatsapp-connected-desktop")

    # Linked now: the delivery alert that failed while unpaired goes out (retried by hand, or by the
    # outbox's own backoff if it got there first) and the page shows it sent, live.
    page.click('nav a[href="/alerts"]')
    page.wait_for_selector(".alert", timeout=WAIT_MS)
    # Checked and clicked in one step in the page: the outbox's backoff may send the alert at any moment,
    # and a button counted here and clicked a moment later may be gone (the click then waits it out).
    page.evaluate("() => document.querySelector('.alert.s-failed button.retry')?.click()")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.alert.s-sent')].some(a => a.innerText.includes('whatsapp'))",
        timeout=WAIT_MS,
    )
    assert any(m["image_bytes"] > 0 for m in fake.sent())  # the alert went with its photo

    page.click('nav a[href="/alerts"]')
    page.wait_for_selector(".alert", timeout=WAIT_MS)
    shoot(page, "gateway-alerts-desktop")
    page.click(".alert a.view-event")  # the alert leads to its event's photo
    img_loaded(page, "#viewer-img")
    close_viewer(page)

    page.set_viewport_size(PHONE)
    page.click('nav a[href="/"]')
    page.wait_for_selector(sel, timeout=WAIT_MS)
    shoot(page, "gateway-deliveries-phone")
    assert errors == []
    ctx.close()
