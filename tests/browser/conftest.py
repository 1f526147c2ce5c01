"""A real browser for the clinician page: Debian's chromium driven by Playwright, no download.

Without /usr/bin/chromium or the npm-installed axe-core the browser tests skip with the reason,
unless `KETAPREDICT_REQUIRE_BROWSER` is set (as `.ci/run` does), where a missing piece fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import API_TOKEN, ARTIFACTS, ROOT, Server

CHROMIUM = Path(os.environ.get("KETAPREDICT_CHROMIUM", "/usr/bin/chromium"))
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ARTIFACTS / "page"
# Without the background-networking flags Chromium calls Google's hosts at start, which a
# closed clinic network (and this machine) refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _require(path: Path, what: str) -> None:
    if path.exists():
        return
    message = f"{what} not found at {path}"
    if os.environ.get("KETAPREDICT_REQUIRE_BROWSER"):
        pytest.fail(message + " (KETAPREDICT_REQUIRE_BROWSER is set)")
    pytest.skip(message + ": install Debian's chromium and run `npm ci`")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    _require(CHROMIUM, "Debian's chromium")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server: Server) -> Iterator[object]:
    """A fresh browser session (own sessionStorage) on the page; fails on any script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(30_000)
    pg.goto(server.url + "/")
    yield pg
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def sign_in(pg, token: str = API_TOKEN) -> None:
    pg.fill("#token", token)
    pg.press("#token", "Enter")
    pg.wait_for_selector("#workspace:not([hidden])")


def screenshot(pg, name: str, selector: str | None = None) -> Path:
    """Save a screenshot as a test artifact (test-artifacts/page/NAME.png)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if selector:
        pg.locator(selector).screenshot(path=str(path))
    else:
        pg.screenshot(path=str(path), full_page=True)
    return path


def run_axe(pg, selector: str) -> list[dict]:
    """axe-core's violations of impact serious or critical inside `selector`.

    axe is served to the page from the page's own origin by Playwright (a routed URL), so the
    page's Content-Security-Policy (scripts from 'self' only) stays in force during the check.
    """
    _require(AXE, "axe-core (npm)")
    origin = "/".join(pg.url.split("/")[:3])
    url = f"{origin}/__test__/axe.min.js"
    pg.route(url, lambda route: route.fulfill(path=str(AXE), content_type="text/javascript"))
    pg.add_script_tag(url=url)
    result = pg.evaluate(
        "async (sel) => await axe.run(document.querySelector(sel), {resultTypes: ['violations']})",
        selector,
    )
    return [v for v in result["violations"] if v["impact"] in {"serious", "critical"}]
