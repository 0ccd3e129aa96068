"""The box card's over-the-air update, in a real headless Chromium: "update available" when the box
runs other files than this checkout's firmware, the Update button (confirm, then the offer on disk as
`parcelbox device update` writes it), and the progress the gateway records, polled until it ends.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.ota import pending
from gateway.web import i18n
from tests.browser.helpers import PHONE, WAIT_MS, shoot
from tests.support.web import CHECKOUT, OLD_SET, MemoryPort


@pytest.fixture
def port(tmp_path: Path) -> MemoryPort:
    p = MemoryPort(tmp_path / "photos", answer_delay=0.3)
    p.add_device("gate", "Front gate", fw="1.0.0", ota_set=OLD_SET)
    p.add_device("current", "Back door", fw="1.1.0", ota_set=CHECKOUT.set_sha)
    return p


@pytest.mark.parametrize("lang", ["en", "id"])
def test_update_button_sends_the_update_and_shows_progress(browser, server, port: MemoryPort, lang) -> None:
    cat = i18n.catalogue(lang)
    ctx = browser.new_context(viewport=PHONE, locale={"en": "en-US", "id": "id-ID"}[lang])
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    page.goto(server.url + "/boxes")
    gate, current = '.box[data-device="gate"]', '.box[data-device="current"]'
    page.wait_for_selector(f"{gate} .ota button.ota-update", timeout=WAIT_MS)
    assert page.inner_text(f"{gate} .ota-available") == cat["ota.available"].replace("{version}", "1.1.0")
    assert page.inner_text(f"{gate} .ota button") == cat["ota.update"]
    assert page.locator(f"{current} .ota > *").count() == 0  # runs exactly this set: nothing to offer

    page.click(f"{gate} .ota button.ota-update")
    page.wait_for_selector(f"{gate} .ota progress", timeout=WAIT_MS)
    assert dialogs == [cat["ota.confirm"].replace("{box}", "Front gate").replace("{version}", "1.1.0")]
    offer = pending.read_offer(port.ota_root, "gate")
    assert offer is not None and offer["set"] == CHECKOUT.set_sha

    # The gateway serves chunks: the card follows progress.json without a reload.
    port.ota_progress("gate", "receiving", 0.4)
    want = cat["ota.updating"].replace("{percent}", "40")
    page.wait_for_function(
        "([sel, want]) => { const e = document.querySelector(sel); return e && e.textContent === want; }",
        arg=[f"{gate} .ota-progress", want],
        timeout=WAIT_MS,
    )
    assert page.get_attribute(f"{gate} .ota progress", "value") == "40"
    shoot(page, f"ota-progress-{lang}-phone")

    # It ends: the box switched and reports the new set.
    port.ota_progress("gate", "done", 1.0)
    port.boxes["gate"].update(fw="1.1.0", set=CHECKOUT.set_sha)
    done = cat["ota.done"].replace("{version}", "1.1.0")
    page.wait_for_function(
        "([sel, want]) => { const e = document.querySelector(sel); return e && e.textContent === want; }",
        arg=[f"{gate} .ota p", done],
        timeout=WAIT_MS,
    )
    assert page.locator(f"{gate} .ota button").count() == 0
    assert errors == []
    ctx.close()


def test_a_refused_update_says_why(browser, server, port: MemoryPort) -> None:
    port.add_device("tiny", "Tiny", fw="1.0.0", ota_set=OLD_SET, flash_free=20_000)
    ctx = browser.new_context(viewport=PHONE, locale="id-ID")
    page = ctx.new_page()
    page.on("dialog", lambda d: d.accept())
    page.goto(server.url + "/boxes")
    tiny = '.box[data-device="tiny"]'
    page.wait_for_selector(f"{tiny} .ota button.ota-update", timeout=WAIT_MS)
    page.click(f"{tiny} .ota button.ota-update")
    page.wait_for_selector(f"{tiny} .result.bad", timeout=WAIT_MS)
    text = page.inner_text(f"{tiny} .result")
    assert text.startswith(i18n.catalogue("id")["ota.refused"]) and "KB of flash free" in text, text
    assert pending.read_offer(port.ota_root, "tiny") is None
    ctx.close()


def test_an_update_started_elsewhere_shows_up_live(browser, server, port: MemoryPort) -> None:
    """Home Assistant's Install or `parcelbox device update`: the open card learns it from the live
    stream (the gateway's `ota_changed`), with nothing on the page polling before."""
    from gateway.bus import OTA_CHANGED
    from tests.browser.helpers import in_thread

    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    page.goto(server.url + "/boxes")
    page.wait_for_selector("#live.on", timeout=WAIT_MS)
    gate = '.box[data-device="gate"]'
    page.wait_for_selector(f"{gate} .ota button.ota-update", timeout=WAIT_MS)
    port.offer_update("gate")
    port.ota_progress("gate", "receiving", 0.25)
    in_thread(port.bus.publish, OTA_CHANGED, {"device": "gate"})
    page.wait_for_selector(f'{gate} .ota progress[value="25"]', timeout=WAIT_MS)
    ctx.close()
