"""Debian's Chromium, driven by Playwright (its own browser download is not used).

Skipped where Chromium is missing, unless this is CI (``CI`` set), where a missing browser
fails the run: ``.ci/run`` installs it with ``.ci/chromium``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
#: Bounded waits for the page to show what the bus did (Playwright polls the DOM).
SHOWS = 30_000


def chromium_path() -> str | None:
    found = os.environ.get("CHORUS_TEST_CHROMIUM") or shutil.which("chromium")
    return found if found and Path(found).exists() else None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI: .ci/run installs it with .ci/chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium, or run .ci/chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()
