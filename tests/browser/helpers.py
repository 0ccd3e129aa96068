"""Shared pieces of the browser tests: Chromium settings, viewports, screenshots, waits."""

from __future__ import annotations

import threading
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
DESKTOP = {"width": 1280, "height": 820}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 30_000  # generous: the shared test machine is sometimes very busy


def shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(300)  # let the arrival animation settle before the picture
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def in_thread(fn, *args, **kw) -> None:
    """Publish from another thread, as the gateway's ingest worker does."""
    t = threading.Thread(target=fn, args=args, kwargs=kw)
    t.start()
    t.join(10)


def img_loaded(page, selector: str) -> None:
    page.wait_for_function(
        "sel => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector,
        timeout=WAIT_MS,
    )


def close_viewer(page) -> None:
    """Close the photo dialog with its button (Escape can be ignored by Chromium's close-watcher
    rules when the dialog opened long after the click, as on a busy machine)."""
    page.click("#viewer .viewer-head button")
    page.wait_for_selector("dialog#viewer:not([open])", state="attached", timeout=WAIT_MS)
