"""The dashboard in a real headless Chromium (Debian's, driven by Playwright; nothing downloaded).

Against a running WebServer fed by an in-memory gateway whose changes go through the real bus:
a delivery appears live with its thumbnail, opens with its alert photo, a snapshot is requested
and shown, the WhatsApp pairing QR renders and rotates, a failed alert is retried. A screenshot
of each page, at desktop and phone size, goes to test-artifacts/.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.web import WebServer, WebSettings
from gateway.web.auth import set_password
from tests.browser.helpers import DESKTOP, PHONE, WAIT_MS, close_viewer, img_loaded, in_thread, shoot
from tests.support.web import MemoryPort


@pytest.fixture
def port(tmp_path: Path) -> MemoryPort:
    p = MemoryPort(tmp_path / "photos", answer_delay=0.3)
    base = time.time() - 5 * 3600
    p.add_device("gate", "Front gate", rssi=-61, battery_mv=3920)
    p.add_device("back-door", "Back door", online=False, rssi=-78, battery_mv=None, spooled=3, fw="1.0.1")
    for i, (dev, kind) in enumerate(
        [
            ("gate", "delivery"),
            ("back-door", "delivery"),
            ("gate", "pickup"),
            ("gate", "lid_left_open"),
            ("gate", "delivery"),
        ]
    ):
        p.add_event(dev, kind, ts=base + i * 3000, photo=kind != "lid_left_open")
    p.add_alert("gate", "sent")
    p.add_alert("gate", "failed", last_error="WhatsApp not connected: phone offline (will retry)")
    p.add_alert("back-door", "dead", last_error="recipient 6281234567890 is not on WhatsApp")
    p.add_alert("gate", "pending")
    return p


def open_page(browser, server, path: str, viewport=DESKTOP):
    ctx = browser.new_context(viewport=viewport, device_scale_factor=1)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + path)
    page.wait_for_selector("#live.on", timeout=WAIT_MS)  # live stream connected
    return ctx, page, errors


def test_delivery_appears_live_and_opens(browser, server, port: MemoryPort) -> None:
    ctx, page, errors = open_page(browser, server, "/")
    page.wait_for_selector("li.event", timeout=WAIT_MS)
    # Deliveries and pickups by default; the fixture's "lid left open" is behind the type filter.
    assert page.locator("li.event").count() == 4
    img_loaded(page, "li.event img.thumb")
    in_thread(port.add_event, "gate", "delivery", event_id="newparcel0001")
    sel = 'li.event[data-id="newparcel0001"]'
    page.wait_for_selector(sel, timeout=WAIT_MS)
    assert page.locator("li.event").first.get_attribute("data-id") == "newparcel0001"  # newest first
    img_loaded(page, sel + " img.thumb")
    shoot(page, "deliveries-desktop")
    page.click(sel)
    page.wait_for_selector("dialog#viewer[open]", timeout=WAIT_MS)
    img_loaded(page, "#viewer-img")
    assert page.get_attribute("#viewer-img", "src") == "/api/photos/gate/newparcel0001/alert"
    assert page.get_attribute("#viewer-orig", "href") == "/api/photos/gate/newparcel0001/original"
    shoot(page, "delivery-photo-desktop")
    close_viewer(page)
    # Filters: only the back door's events.
    page.select_option("#filters select[name=device]", "back-door")
    page.wait_for_function("() => document.querySelectorAll('li.event').length === 1", timeout=WAIT_MS)
    in_thread(port.add_event, "gate", "delivery", event_id="filtered00001")
    in_thread(port.add_event, "back-door", "pickup", event_id="backdoor00001")
    page.wait_for_selector('li.event[data-id="backdoor00001"]', timeout=WAIT_MS)
    assert page.locator('li.event[data-id="filtered00001"]').count() == 0
    assert errors == []
    ctx.close()


def test_keyset_pages_load_older(browser, server, port: MemoryPort) -> None:
    for i in range(40):
        port.add_event("gate", "delivery", ts=1_700_000_000.0 + i, photo=False, publish=False)
    ctx, page, errors = open_page(browser, server, "/")
    page.wait_for_selector("li.event", timeout=WAIT_MS)
    assert page.locator("li.event").count() == 30
    page.click("#more")
    # 40 + the fixture's 4 deliveries and pickups (its "lid left open" is behind the type filter)
    page.wait_for_function("() => document.querySelectorAll('li.event').length === 44", timeout=WAIT_MS)
    assert page.is_hidden("#more")
    assert errors == []
    ctx.close()


def test_snapshot_from_boxes_page(browser, server, port: MemoryPort) -> None:
    ctx, page, errors = open_page(browser, server, "/boxes")
    page.wait_for_selector('.box[data-device="gate"]', timeout=WAIT_MS)
    assert "1 package waiting" in page.inner_text('.box[data-device="gate"] .waiting')
    assert "offline" in page.inner_text('.box[data-device="back-door"] .badge')
    page.click('.box[data-device="gate"] button[data-cmd="snapshot"]')
    page.wait_for_selector('.box[data-device="gate"] .result.ok', timeout=WAIT_MS)
    assert "Snapshot taken" in page.inner_text('.box[data-device="gate"] .result')
    assert port.commands[-1][1:3] == ("gate", "snapshot")
    shoot(page, "boxes-desktop")
    page.click('.box[data-device="gate"] a.view-snap')
    page.wait_for_selector("dialog#viewer[open]", timeout=WAIT_MS)
    img_loaded(page, "#viewer-img")
    assert "Snapshot" in page.inner_text("#viewer-title")
    close_viewer(page)
    # A box going offline shows without reloading.
    gate = dict(port.devices["gate"], online=False)
    in_thread(port.add_device, **{k: v for k, v in gate.items()})
    page.wait_for_selector('.box.off[data-device="gate"]', timeout=WAIT_MS)
    # Reboot asks first; dismissing sends nothing.
    page.once("dialog", lambda d: d.dismiss())
    n = len(port.commands)
    page.click('.box[data-device="back-door"] button[data-cmd="reboot"]')
    page.wait_for_timeout(200)
    assert len(port.commands) == n
    assert errors == []
    ctx.close()


def test_whatsapp_pairing_panel(browser, server, port: MemoryPort) -> None:
    port.set_whatsapp(
        state="pairing",
        detail="Scan the code with WhatsApp on the phone that sends alerts.",
        qr="2@first,qr,payload",
    )
    ctx, page, errors = open_page(browser, server, "/whatsapp")
    page.wait_for_selector("#wa-qr:not([hidden])", timeout=WAIT_MS)
    img_loaded(page, "#wa-qr")
    first = page.get_attribute("#wa-qr", "src")
    assert "Waiting for pairing" in page.inner_text("#wa-badge")
    shoot(page, "whatsapp-pairing-desktop")
    in_thread(port.set_whatsapp, state="pairing", detail="Scan the code", qr="2@second,rotated,payload")
    page.wait_for_function(
        "old => document.querySelector('#wa-qr').getAttribute('src') !== old", arg=first, timeout=WAIT_MS
    )
    img_loaded(page, "#wa-qr")
    page.fill("#wa-phone", "+62 812 3456 7890")
    page.click("#wa-code-form button")
    page.wait_for_selector("#wa-code:not([hidden])", timeout=WAIT_MS)
    assert "ABCD-EFGH" in page.inner_text("#wa-code")
    in_thread(port.set_whatsapp, state="connected", detail="Linked and online.", paired_as="6281234567890")
    page.wait_for_selector("#wa-linked:not([hidden])", timeout=WAIT_MS)
    assert page.is_hidden("#wa-pair")
    assert "+6281234567890" in page.inner_text("#wa-as")
    page.click("#wa-test-form button")
    page.wait_for_selector("#wa-result.ok", timeout=WAIT_MS)
    assert ("test", None) in port.wa_calls
    shoot(page, "whatsapp-connected-desktop")
    assert errors == []
    ctx.close()


def test_alerts_retry(browser, server, port: MemoryPort) -> None:
    ctx, page, errors = open_page(browser, server, "/alerts")
    page.wait_for_selector(".alert.s-failed", timeout=WAIT_MS)
    assert "phone offline" in page.inner_text(".alert.s-failed .err")
    shoot(page, "alerts-desktop")
    page.click(".alert.s-failed button.retry")
    page.wait_for_function("() => !document.querySelector('.alert.s-failed')", timeout=WAIT_MS)
    assert [a["state"] for a in port.outbox.values()].count("failed") == 0
    page.click('#alert-states button[data-state="dead"]')
    page.wait_for_function("() => document.querySelectorAll('.alert').length === 1", timeout=WAIT_MS)
    assert errors == []
    ctx.close()


def test_phone_layout_screenshots(browser, server, port: MemoryPort) -> None:
    port.set_whatsapp(
        state="pairing", detail="Scan the code with WhatsApp on the phone that sends alerts.", qr="2@phone,qr"
    )
    ctx, page, errors = open_page(browser, server, "/", PHONE)
    for path, name, ready in [
        ("/", "deliveries", "li.event img.thumb"),
        ("/boxes", "boxes", ".box"),
        ("/whatsapp", "whatsapp", "#wa-qr:not([hidden])"),
        ("/alerts", "alerts", ".alert"),
    ]:
        page.click(f'nav a[href="{path}"]')
        page.wait_for_selector(ready, timeout=WAIT_MS)
        # Nothing wider than the phone: no sideways scrolling.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"], name
        shoot(page, f"{name}-phone")
    page.click('nav a[href="/"]')
    page.wait_for_selector("li.event", timeout=WAIT_MS)
    page.click("li.event >> nth=0")
    page.wait_for_selector("dialog#viewer[open]", timeout=WAIT_MS)
    img_loaded(page, "#viewer-img")
    shoot(page, "delivery-photo-phone")
    assert errors == []
    ctx.close()


def test_dark_mode_screenshots(browser, server, port: MemoryPort) -> None:
    port.set_whatsapp(
        state="pairing", detail="Scan the code with WhatsApp on the phone that sends alerts.", qr="2@dark"
    )
    ctx = browser.new_context(viewport=PHONE, color_scheme="dark")
    page = ctx.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("li.event img.thumb", timeout=WAIT_MS)
    shoot(page, "deliveries-phone-dark")
    page.click('nav a[href="/whatsapp"]')
    page.wait_for_selector("#wa-qr:not([hidden])", timeout=WAIT_MS)
    img_loaded(page, "#wa-qr")
    shoot(page, "whatsapp-phone-dark")
    ctx.close()


def test_installable_shell(browser, server) -> None:
    ctx, page, errors = open_page(browser, server, "/")
    assert page.get_attribute('link[rel="manifest"]', "href") == "/manifest.webmanifest"
    scope = page.evaluate("async () => (await navigator.serviceWorker.ready).scope")
    assert scope == server.url + "/"
    cached = page.evaluate(
        "async () => { const out = []; for (const k of await caches.keys()) {"
        " for (const r of await (await caches.open(k)).keys()) out.push(new URL(r.url).pathname); } return out; }"
    )
    assert "/static/app.js" in cached
    assert not any(p.startswith("/api/") for p in cached)
    assert errors == []
    ctx.close()


def test_login_when_exposed(browser, port: MemoryPort, tmp_path: Path) -> None:
    # Bound to loopback for the test machine's safety, but configured as if exposed.
    settings = WebSettings.from_config(
        {"host": "127.0.0.1", "port": 0, "require_login": True}, tmp_path / "data"
    )
    set_password(settings.password_file, "browser test password")
    srv = WebServer(port, settings)
    srv.start()
    try:
        ctx = browser.new_context(viewport=PHONE)
        page = ctx.new_page()
        page.goto(srv.url + "/boxes")
        page.wait_for_selector("input[type=password]", timeout=WAIT_MS)
        assert "/login" in page.url
        shoot(page, "login-phone")
        page.fill("input[type=password]", "wrong")
        page.click("button[type=submit]")
        page.wait_for_selector("text=Wrong password", timeout=WAIT_MS)
        page.fill("input[type=password]", "browser test password")
        page.click("button[type=submit]")
        page.wait_for_selector(".box", timeout=WAIT_MS)
        assert page.evaluate("location.pathname") == "/boxes"  # read in the page, not Playwright's copy
        page.wait_for_selector("#live.on", timeout=WAIT_MS)
        page.click('.box[data-device="gate"] button[data-cmd="snapshot"]')  # CSRF header from the page
        page.wait_for_selector('.box[data-device="gate"] .result.ok', timeout=WAIT_MS)
        page.click("#logout")
        page.wait_for_selector("input[type=password]", timeout=WAIT_MS)
        r = page.request.get(srv.url + "/api/events")
        assert r.status == 401
        ctx.close()
    finally:
        srv.stop()


def test_storage_problem_shows_on_the_boxes_page(browser, server, port: MemoryPort) -> None:
    """Issue 14: the disk filling up is said where the owner looks, not only in the log."""
    port.counters["storage"] = {
        "ok": False,
        "problems": [
            "disk almost full: 80 MB free of 7500 MB (warning below 500 MB); set store.retention_days"
        ],
        "disk": {"free_bytes": 80 * 1048576, "total_bytes": 7500 * 1048576},
    }
    ctx, page, errors = open_page(browser, server, "/boxes")
    page.wait_for_selector("#gw-health.bad", timeout=WAIT_MS)
    text = page.inner_text("#gw-health")
    assert "80 MB free" in text and "storage: disk almost full" in text
    assert errors == []
    ctx.close()


def test_alerts_page_lists_apprise_urls_by_id_with_a_send_test_button(
    browser, server, port: MemoryPort
) -> None:
    """Issue 19: per-URL state and "Send test" per URL; the page only ever gets ids, never URLs."""
    tested: list[tuple[str, str]] = []
    port.channels = lambda: [  # type: ignore[attr-defined]
        {
            "id": "tgram-3f9a0c21d4",
            "scheme": "tgram",
            "sink": "apprise",
            "default": True,
            "boxes": [],
            "last": {},
            "recent": {"pending": 0, "failed": 0, "dead": 1, "sent": 4},
            "last_alert": {"state": "dead", "last_error": "apprise: HTTP 401 (permanent)", "sent_at": None},
        }
    ]

    def test_channel(sink: str, rid: str) -> dict:
        tested.append((sink, rid))
        return {"id": "msg0", "alerts": ["msg0_apprise_x"], "sinks": [sink]}

    port.test_channel = test_channel  # type: ignore[attr-defined]
    ctx, page, errors = open_page(browser, server, "/alerts")
    page.wait_for_selector('[data-channel="tgram-3f9a0c21d4"]', timeout=WAIT_MS)
    assert "HTTP 401" in page.inner_text('[data-channel="tgram-3f9a0c21d4"] .err')
    page.click('[data-channel="tgram-3f9a0c21d4"] button.channel-test')
    page.wait_for_function("() => document.body.innerText.includes('Test message queued')", timeout=WAIT_MS)
    assert tested == [("apprise", "tgram-3f9a0c21d4")]
    page.click('#alert-states button[data-state="dead"]')  # the filter counts alerts, not channels
    page.wait_for_function("() => document.querySelectorAll('.alert').length === 1", timeout=WAIT_MS)
    assert errors == []
    ctx.close()


def test_an_ultrasonic_reading_from_the_box_shows_under_its_event(browser, server, port: MemoryPort) -> None:
    """Issue 17: the page read `sensors.distance_mm` while the box sends `range_mm`, so a distance never
    showed. The reading here is the one firmware/sensors.py's Ultrasonic (and HX711 load cell) produce."""
    import sensors as fw_sensors  # firmware/sensors.py (tests/conftest.py puts firmware/ on sys.path)

    from tools.sim.board import SimPin

    sonar = fw_sensors.Ultrasonic(SimPin(0), SimPin(0), lambda pin, level, timeout: 1066, lambda us: None)
    sonar.read_level()

    class Hx:
        def read_average(self, n: int) -> int:
            return 420 * 1250

    scale = fw_sensors.LoadCell(Hx(), scale=420.0, offset=0)
    scale.read_level()
    port.add_event("gate", "delivery", event_id="sonar0000001", sensors={"lid": "closed", **sonar.info})
    port.add_event("gate", "delivery", event_id="scale0000001", sensors={"lid": "closed", **scale.info})
    ctx, page, errors = open_page(browser, server, "/")
    page.wait_for_selector('li.event[data-id="sonar0000001"]', timeout=WAIT_MS)
    assert sonar.info == {"range_mm": 182}
    assert "182 mm" in page.inner_text('li.event[data-id="sonar0000001"]')
    assert "1250 g" in page.inner_text('li.event[data-id="scale0000001"]')
    # The type filter's choices come from the same table.
    options = page.eval_on_selector_all("#filters select[name=type] option", "os => os.map(o => o.value)")
    # The default (deliveries and pickups), all types, then every type from the vocabulary, in its order.
    assert options == ["", "all", "delivery", "pickup", "lid_closed", "lid_left_open", "snapshot"]
    assert errors == []
    ctx.close()
