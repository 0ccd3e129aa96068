"""Browser fixture: Debian's Chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import os

import pytest

from tests.browser.helpers import CHROMIUM, CHROMIUM_ARGS

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            "chromium is not installed; run `make test` (it installs it) or: sudo apt-get install chromium"
        )
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()
