"""Debian's Chromium, headless, driven by Playwright; no browser download.

Playwright's sync API runs an asyncio loop in the calling thread while a browser is open, and Django's ORM
refuses to run under a running loop. So tests put every row they need in the database before the browser
starts, and look at the outcome through the page or the app's own API (``page.request``) while it runs.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.harness.services import REPO_ROOT

ARTIFACTS = REPO_ROOT / "test-artifacts"

# Without the background-networking flags Chromium dials Google's hosts, and this closed network refuses
# each connection; --no-sandbox because the suite runs as root in CI.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
    if not path:
        raise RuntimeError("No Chromium: `make test` installs Debian's chromium package (or set CHROMIUM_PATH).")
    return path


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium with a fresh profile, closed afterwards even when the test fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Any, test_name: str, step: str) -> Path:
    """Save a full-page PNG under ``test-artifacts/status-page/``; returns its path."""
    folder = ARTIFACTS / "status-page"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', test_name)}--{step}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
