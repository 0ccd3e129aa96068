"""The dashboard in Bahasa Indonesia, in a real headless Chromium at phone width.

Every page and state a household member meets (deliveries, the photo viewer, boxes and their command
results, WhatsApp pairing and linked, alerts, the login page, the not-found page) is rendered with an
Indonesian browser (Accept-Language id-ID), and a scan of the rendered DOM (text, the attributes a
person sees or hears: placeholder, title, alt, aria-label; the page title; confirm() prompts; toasts)
finds no English word left. Each state is also checked in both languages for sideways overflow: long
Indonesian words must not push anything wider than the phone. Screenshots go to test-artifacts/.

The scan's English vocabulary is every word of the English catalogue plus common English words, less
every word the Indonesian catalogue uses itself (loanwords such as "online", "broker", "firmware"
are Indonesian there) and the proper nouns in ALLOWED. Text that is data, not wording (box names and
ids, error text the box or WhatsApp sent), is marked `data-verbatim` in the page and skipped.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from gateway.web import WebServer, WebSettings, i18n
from gateway.web.auth import set_password
from tests.browser.helpers import PHONE, WAIT_MS, close_viewer, img_loaded, in_thread, shoot
from tests.browser.test_dashboard_gateway import stack  # noqa: F401  (the whole gateway, as a fixture)
from tests.support.web import OLD_SET, MemoryPort

WORD_RE = re.compile(r"[A-Za-z][A-Za-z'’]+")
# Proper nouns and codes that are the same in every language.
ALLOWED = {
    "whatsapp", "parcelbox", "home", "assistant", "esp", "cam", "qr", "dbm", "kb", "mm", "wi", "fi",
    "english", "bahasa", "indonesia", "id", "en", "ok", "pagar", "depan", "pintu", "belakang",
    "gate", "back", "door",  # box ids in the fixture (data, but shown as ids under the names)
}  # fmt: skip
COMMON_EN = set(
    """the a an and or of to in on at for with from by is are was be been this that it its no not yes all
    none new old open close closed send sent yet here there when your you please try again now loading
    error failed unknown never ago today yesterday just more less show hide view photo photos box boxes
    package packages delivery deliveries waiting seen last can't cannot reach showing what were did done
    code scan link linked unlink phone number message test retry alert alerts pending dead sent state
    page pages settings devices device signal battery lid snapshot reboot take taken log out password
    min h d s day days hour hours minute minutes second seconds mains power good fair weak requested""".split()
)


def vocabulary(text: str) -> set[str]:
    return {w.lower().strip("'’") for w in WORD_RE.findall(text)}


ID_WORDS = set().union(*(vocabulary(v) for v in i18n.catalogue("id").values()))
EN_WORDS = (
    (set().union(*(vocabulary(v) for v in i18n.catalogue("en").values())) | COMMON_EN) - ID_WORDS - ALLOWED
)

SCAN_JS = """() => {
  const out = [];
  const skip = (el) => el.closest("script, style, [data-verbatim]");
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!skip(n.parentElement) && n.textContent.trim()) out.push(n.textContent.trim());
  }
  for (const el of document.querySelectorAll("[placeholder], [title], [alt], [aria-label]")) {
    if (skip(el)) continue;
    for (const a of ["placeholder", "title", "alt", "aria-label"]) {
      const v = el.getAttribute(a);
      if (v && v.trim()) out.push(v.trim());
    }
  }
  out.push(document.title);
  return out;
}"""

OVERFLOW_JS = """() => {
  const w = window.innerWidth;
  const wide = [];
  for (const el of document.body.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if (!r.width || getComputedStyle(el).position === "fixed" && el.hidden) continue;
    // Inside a horizontal scroller (the tab bar) an element may extend past the edge by design.
    let p = el.parentElement, scrolled = false;
    for (; p && p !== document.body; p = p.parentElement) {
      const ox = getComputedStyle(p).overflowX;
      if (ox === "auto" || ox === "scroll" || ox === "hidden") { scrolled = true; break; }
    }
    if (!scrolled && (r.right > w + 1 || r.left < -1))
      wide.push(`${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}.${el.className} ${Math.round(r.left)}..${Math.round(r.right)}`);
  }
  return { scrollWidth: document.documentElement.scrollWidth, innerWidth: w, wide: wide.slice(0, 10) };
}"""


def english_in(texts: list[str]) -> list[tuple[str, list[str]]]:
    hits = []
    for text in texts:
        words = sorted(vocabulary(text) & EN_WORDS)
        if words:
            hits.append((text, words))
    return hits


def check_page(page, name: str, lang: str) -> None:
    """No sideways overflow at phone width; in Indonesian, no English word left."""
    m = page.evaluate(OVERFLOW_JS)
    assert m["scrollWidth"] <= m["innerWidth"], (name, lang, m)
    assert not m["wide"], (name, lang, m["wide"])
    if lang == "id":
        left = english_in(page.evaluate(SCAN_JS))
        assert not left, (name, left)
    shoot(page, f"i18n-{name}-{lang}-phone")


@pytest.fixture
def port(tmp_path: Path) -> MemoryPort:
    p = MemoryPort(tmp_path / "photos", answer_delay=0.3)
    base = time.time() - 3 * 86400
    # Both run an older firmware than this checkout's ("update available"); back-door is taking it.
    p.add_device("gate", "Pagar depan", rssi=-61, battery_mv=3920, lid_open=False, ota_set=OLD_SET)
    p.add_device(
        "back-door", "Pintu belakang", online=False, rssi=-78, battery_mv=None, spooled=3, fw="1.0.1",
        ota_set=OLD_SET,
    )  # fmt: skip
    p.offer_update("back-door")
    p.ota_progress("back-door", "receiving", 0.4)
    # An update waiting for a sleeping box, and one the box rolled back (its reason is the box's words).
    p.add_device("garasi", "Garasi", online=False, fw="1.0.1", ota_set=OLD_SET)
    p.offer_update("garasi")
    p.add_device("gudang", "Gudang", fw="1.0.1", ota_set=OLD_SET)
    p.offer_update("gudang")
    p.ota_progress("gudang", "failed", 1.0, reason="trial: no broker within 300 s")
    for i, (dev, kind) in enumerate(
        [("gate", "delivery"), ("back-door", "delivery"), ("gate", "pickup"), ("gate", "lid_left_open"),
         ("gate", "lid_closed"), ("gate", "snapshot"), ("gate", "delivery")]
    ):  # fmt: skip
        p.add_event(dev, kind, ts=base + i * 36000, photo=kind not in ("lid_left_open", "lid_closed"))
    p.add_event("gate", "delivery", ts=time.time() - 600, event_id="recentparcel1")
    p.add_alert("gate", "sent")
    p.add_alert("gate", "failed", last_error="WhatsApp not connected: phone offline (will retry)")
    p.add_alert("back-door", "dead", last_error="recipient 6281234567890 is not on WhatsApp")
    p.add_alert("gate", "pending")
    # Apprise channels as the service lists them (GatewayService.channels): ids only, never a URL.
    p.channels = lambda: [  # type: ignore[attr-defined]
        {
            "id": "tgram-3f9a0c21d4", "scheme": "tgram", "boxes": [], "sink": "apprise",
            "recent": {"sent": 2, "pending": 0, "failed": 1, "dead": 0},
            "last_alert": {"state": "sent", "sent_at": time.time() - 60, "last_error": None},
        },
        {
            "id": "ntfy-aa11bb22cc", "scheme": "ntfy", "boxes": ["gate"], "sink": "apprise",
            "recent": {"sent": 0, "pending": 0, "failed": 0, "dead": 0}, "last_alert": None,
        },
    ]  # fmt: skip
    p.test_channel = lambda sink, rid: {"id": "testmsg00000001", "alerts": [], "sinks": [sink]}  # type: ignore[attr-defined]
    return p


@pytest.fixture
def server(port: MemoryPort):
    srv = WebServer(port, WebSettings(host="127.0.0.1", port=0, timezone="Asia/Jakarta"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def new_page(browser, lang: str, accept_dialogs: bool = True):
    locale = {"id": "id-ID", "en": "en-US"}[lang]
    ctx = browser.new_context(
        viewport=PHONE, device_scale_factor=1, locale=locale, timezone_id="Europe/London"
    )
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    dialogs: list[str] = []

    def on_dialog(d) -> None:
        dialogs.append(d.message)
        d.accept()

    if accept_dialogs:
        page.on("dialog", on_dialog)
    return ctx, page, errors, dialogs


def go(page, path: str, ready: str) -> None:
    page.click(f'nav a[href="{path}"]')
    page.wait_for_selector(ready, timeout=WAIT_MS)


@pytest.mark.parametrize("lang", ["id", "en"])
def test_every_page_in_both_languages_at_phone_width(browser, server, port: MemoryPort, lang: str) -> None:
    ctx, page, errors, dialogs = new_page(browser, lang)
    page.goto(server.url + "/")
    page.wait_for_selector("#live.on", timeout=WAIT_MS)
    assert page.get_attribute("html", "lang") == lang
    page.wait_for_selector("li.event img.thumb", timeout=WAIT_MS)
    check_page(page, "deliveries", lang)
    page.select_option("#filters select[name=type]", "all")  # the default shows deliveries and pickups
    page.wait_for_selector("li.event.t-lid_left_open", timeout=WAIT_MS)
    check_page(page, "deliveries-all-types", lang)

    page.click('li.event[data-id="recentparcel1"]')
    page.wait_for_selector("dialog#viewer[open]", timeout=WAIT_MS)
    img_loaded(page, "#viewer-img")
    check_page(page, "viewer", lang)
    close_viewer(page)
    page.click("li.event.t-lid_left_open")
    page.wait_for_selector("dialog#viewer[open]", timeout=WAIT_MS)
    check_page(page, "viewer-no-photo", lang)
    close_viewer(page)

    go(page, "/boxes", ".box")
    page.wait_for_function(
        "() => document.querySelector('#gw-health').textContent.length > 0", timeout=WAIT_MS
    )
    page.click('.box[data-device="gate"] button[data-cmd="snapshot"]')
    page.wait_for_selector('.box[data-device="gate"] .result.ok a.view-snap', timeout=WAIT_MS)
    page.click('.box[data-device="back-door"] button[data-cmd="reboot"]')  # confirm() accepted
    page.wait_for_function(
        "() => document.querySelector('.box[data-device=\"back-door\"] .result').textContent.length > 0",
        timeout=WAIT_MS,
    )
    page.wait_for_selector('.box[data-device="back-door"] .ota progress', timeout=WAIT_MS)
    assert page.inner_text('.box[data-device="garasi"] .ota') == i18n.catalogue(lang)["ota.waiting_wake"]
    page.wait_for_selector('.box[data-device="gudang"] .ota button.ota-update', timeout=WAIT_MS)
    assert i18n.catalogue(lang)["ota.failed"] in page.inner_text('.box[data-device="gudang"] .ota')
    page.click('.box[data-device="gate"] button.ota-update')  # confirm() accepted
    page.wait_for_selector('.box[data-device="gate"] .ota progress', timeout=WAIT_MS)
    check_page(page, "boxes", lang)

    port.set_whatsapp(state="pairing", detail="", qr="2@i18n,qr,payload")
    go(page, "/whatsapp", "#wa-qr:not([hidden])")
    img_loaded(page, "#wa-qr")
    page.fill("#wa-phone", "+62 812 3456 7890")
    page.click("#wa-code-form button")
    page.wait_for_selector("#wa-code:not([hidden])", timeout=WAIT_MS)
    check_page(page, "whatsapp-pairing", lang)
    in_thread(port.set_whatsapp, state="connected", detail="", paired_as="6281234567890")
    page.wait_for_selector("#wa-linked:not([hidden])", timeout=WAIT_MS)
    page.click("#wa-test-form button")
    page.wait_for_selector("#wa-result.ok", timeout=WAIT_MS)
    check_page(page, "whatsapp-linked", lang)

    go(page, "/alerts", ".alert.s-failed")
    page.wait_for_selector(".channel", timeout=WAIT_MS)
    check_page(page, "alerts", lang)
    page.click('.channel[data-channel="ntfy-aa11bb22cc"] button.channel-test')
    page.wait_for_selector("#toast:not([hidden])", timeout=WAIT_MS)
    check_page(page, "alerts-channel-test", lang)
    page.click(".alert.s-failed button.retry")
    page.wait_for_selector("#toast:not([hidden])", timeout=WAIT_MS)
    check_page(page, "alerts-retried", lang)

    # Empty states and the rest of the hidden template text were scanned on every page above too.
    if lang == "id":
        left = english_in(dialogs)
        assert len(dialogs) == 2 and not left, (dialogs, left)  # the reboot and update prompts
    assert errors == []
    ctx.close()


def test_switching_language_in_the_page_is_remembered_and_changes_no_data(browser, server, port) -> None:
    ctx, page, errors, _ = new_page(browser, "en")
    page.goto(server.url + "/boxes")
    page.wait_for_selector(".box", timeout=WAIT_MS)
    before = page.request.get(server.url + "/api/devices").json()
    assert "Last seen" in page.inner_text(".box")
    page.click('button[data-lang="id"]')
    page.wait_for_function("() => document.documentElement.lang === 'id'", timeout=WAIT_MS)
    assert "Terakhir terlihat" in page.inner_text(".box")  # re-rendered at once, no reload
    assert page.title().startswith("Kotak")
    assert not english_in(page.evaluate(SCAN_JS))
    # Remembered per browser: a reload (and the server, through the cookie) keeps Indonesian although
    # this browser's Accept-Language says English.
    page.reload()
    page.wait_for_selector(".box", timeout=WAIT_MS)
    assert page.get_attribute("html", "lang") == "id"
    assert "Terakhir terlihat" in page.inner_text(".box")
    # The API and the stored records are untouched.
    assert page.request.get(server.url + "/api/devices").json() == before
    page.click('button[data-lang="en"]')
    page.wait_for_function("() => document.documentElement.lang === 'en'", timeout=WAIT_MS)
    assert "Last seen" in page.inner_text(".box")
    assert errors == []
    ctx.close()


def test_times_use_the_gateway_zone_and_the_locale(browser, server, port) -> None:
    """The browser is in London; the gateway says Asia/Jakarta (UTC+7): times are Jakarta's."""
    ts = 1_767_245_400.0  # 2026-01-01 05:30 UTC = 12:30 in Jakarta
    port.add_event("gate", "delivery", ts=ts, event_id="zonecheck0001", photo=False)
    ctx, page, errors, _ = new_page(browser, "id")
    page.goto(server.url + "/")
    page.wait_for_selector('li.event[data-id="zonecheck0001"]', timeout=WAIT_MS)
    shown = page.inner_text('li.event[data-id="zonecheck0001"] time')
    assert "12.30" in shown and "Jan" in shown, shown  # Indonesian clock style, Jakarta's hour
    # The date filter cuts days where the gateway's zone does (midnight in Jakarta, not in London)...
    assert page.evaluate("dayStart('2026-01-01')") == 1_767_200_400  # 2026-01-01T00:00+07:00
    # ...and across a daylight-saving change too (London in summer is UTC+1).
    zone_tz = "(tz) => { I18N.timezone = tz; return dayStart('2026-07-01'); }"
    assert page.evaluate(zone_tz, "Europe/London") == 1_782_860_400  # 2026-06-30T23:00Z
    page.evaluate("() => { I18N.timezone = 'Asia/Jakarta'; }")
    go(page, "/boxes", ".box")
    card = page.inner_text('.box[data-device="gate"]')
    # Relative times as Indonesian apps say them: the last delivery (the one above) and last seen (now).
    assert re.search(r"paket terakhir \d+ hari lalu", card) and "baru saja" in card, card
    assert errors == []
    ctx.close()


def test_login_and_not_found_pages_in_indonesian(browser, port: MemoryPort, tmp_path: Path) -> None:
    settings = WebSettings.from_config(
        {"host": "127.0.0.1", "port": 0, "require_login": True}, tmp_path / "d"
    )
    set_password(settings.password_file, "browser test password")
    srv = WebServer(port, settings)
    srv.start()
    try:
        for lang in ("id", "en"):
            ctx, page, errors, _ = new_page(browser, lang)
            page.goto(srv.url + "/boxes")
            page.wait_for_selector("input[type=password]", timeout=WAIT_MS)
            page.fill("input[type=password]", "wrong")
            page.click("button[type=submit]")
            page.wait_for_selector(".msg:not(:empty)", timeout=WAIT_MS)
            check_page(page, "login", lang)
            page.goto(srv.url + "/no-such-page")
            check_page(page, "not-found", lang)
            ctx.close()
    finally:
        srv.stop()


def test_service_worker_offline_page_in_the_phones_language(browser, server) -> None:
    """No saved copy of the dashboard and no gateway: the worker's own page says so, in Indonesian."""
    ctx, page, errors, _ = new_page(browser, "id")
    page.goto(server.url + "/")
    page.wait_for_selector("#live.on", timeout=WAIT_MS)
    page.evaluate("async () => { await navigator.serviceWorker.ready; }")
    page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=WAIT_MS)
    page.evaluate("async () => { for (const k of await caches.keys()) await caches.delete(k); }")
    server.stop()
    page.goto(server.url + "/boxes")
    page.wait_for_selector("main.offline h1", timeout=WAIT_MS)
    assert page.inner_text("main.offline h1") == i18n.catalogue("id")["offline.title"]
    assert page.get_attribute("html", "lang") == "id"
    check_page(page, "sw-offline", "id")
    ctx.close()


def test_empty_dashboard_in_indonesian(browser, tmp_path: Path) -> None:
    """A fresh install: the empty states, in Indonesian, fit the phone."""
    srv = WebServer(MemoryPort(tmp_path / "empty"), WebSettings(host="127.0.0.1", port=0))
    srv.start()
    try:
        ctx, page, errors, _ = new_page(browser, "id")
        page.goto(srv.url + "/")
        page.wait_for_selector("#events-empty:not([hidden])", timeout=WAIT_MS)
        check_page(page, "empty-deliveries", "id")
        go(page, "/boxes", "#boxes-empty:not([hidden])")
        check_page(page, "empty-boxes", "id")
        go(page, "/alerts", "#alerts-empty:not([hidden])")
        check_page(page, "empty-alerts", "id")
        assert errors == []
        ctx.close()
    finally:
        srv.stop()


def test_whatsapp_prompts_and_errors_in_indonesian_on_the_real_gateway(browser, stack) -> None:  # noqa: F811
    """The whole gateway (simulated box, WhatsApp child on the fake): the test-message prompt for a
    number outside the recipients (the web branch's confirm()) and its refusal are in Indonesian."""
    svc, web, runner, fake = stack
    ctx, page, errors, _ = new_page(browser, "id", accept_dialogs=False)
    answers: list[str] = []

    page.goto(web.url + "/whatsapp")
    page.wait_for_selector("#wa-qr:not([hidden])", timeout=WAIT_MS)
    fake.inject("scan")
    page.wait_for_selector("#wa-linked:not([hidden])", timeout=WAIT_MS)
    assert page.inner_text("#wa-badge") == i18n.catalogue("id")["wa.state.connected"]
    page.fill("#wa-recipient", "+62 812 5555 0000")
    page.once("dialog", lambda d: (answers.append(d.message), d.dismiss()))
    page.click("#wa-test-form button")
    page.wait_for_selector("#wa-result.bad", timeout=WAIT_MS)
    assert answers and not english_in(answers), answers
    assert "+62 812 5555 0000 bukan penerima notifikasi" in answers[0]
    assert page.inner_text("#wa-result") == i18n.catalogue("id")["error.confirm_needed"]
    check_page(page, "gateway-whatsapp", "id")
    assert not [m for m in fake.sent() if m["to"].startswith("6281255550000")]  # nothing sent
    assert errors == []
    ctx.close()


def test_offline_notice_in_indonesian(browser, port: MemoryPort) -> None:
    """Away from home (issue 15's offline mode): the notice over the saved deliveries, in Indonesian."""
    srv = WebServer(port, WebSettings(host="127.0.0.1", port=0, timezone="Asia/Jakarta"))
    srv.start()
    ctx, page, errors, _ = new_page(browser, "id")
    try:
        page.goto(srv.url + "/")
        page.wait_for_function(
            "() => !!(navigator.serviceWorker && navigator.serviceWorker.controller)", timeout=WAIT_MS
        )
        page.reload()  # every request through the service worker, which keeps what it saw
        page.wait_for_selector("#live.on", timeout=WAIT_MS)
        page.wait_for_selector("li.event img.thumb", timeout=WAIT_MS)
        srv.stop()
        page.reload()
        page.wait_for_selector("#offline:not([hidden])", timeout=WAIT_MS)
        text = page.inner_text("#offline")
        assert re.fullmatch(
            r"Gateway tidak dapat dihubungi — menampilkan data terakhir pukul \d\d\.\d\d\. Mencoba lagi…",
            text,
        ), text
        page.wait_for_selector("li.event", timeout=WAIT_MS)
        check_page(page, "offline-notice", "id")
    finally:
        ctx.close()
        srv.stop()
