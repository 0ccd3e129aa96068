"""Browser fixture: Debian's Chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import os

import pytest

from gateway.web import WebSettings
from gateway.web.server import WebServer
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        _save_failure_pages(item)


def _save_failure_pages(item) -> None:
    """On failure, keep what each open page showed (test-artifacts/FAILED-*.png) to see why."""
    from tests.browser.helpers import ARTIFACTS

    b = item.funcargs.get("browser")
    if b is None:
        return
    ARTIFACTS.mkdir(exist_ok=True)
    for i, ctx in enumerate(b.contexts):
        for j, page in enumerate(ctx.pages):
            try:
                page.screenshot(path=str(ARTIFACTS / f"FAILED-{item.name}-{i}-{j}.png"), full_page=True)
                (ARTIFACTS / f"FAILED-{item.name}-{i}-{j}.html").write_text(page.content())
            except Exception:
                pass


@pytest.fixture
def server(port):
    """The dashboard on a free loopback port, over the test module's own `port` fixture (its data)."""
    srv = WebServer(port, WebSettings(host="127.0.0.1", port=0))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
