"""Headless Chromium (Debian's) driven by Playwright; a screenshot per test."""

import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ARTIFACTS

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is missing: `make test` installs it (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per module. Playwright's sync API keeps an event loop running in
    this thread, which Django's async-safety check takes for async code, so the
    check is off only while a browser module runs (its tests call the ORM from
    the test itself); WebSocket tests elsewhere keep it on."""
    from playwright.sync_api import expect, sync_playwright

    # As generous as the pages' own default: on a loaded 2-core CI machine a second browser's
    # terminal can take more than expect's 5 s to render what it was sent.
    expect.set_options(timeout=15_000)
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    context.close()
