"""The API docs render in a real browser with nothing but the gateway to load from."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import pytest

from tests.browser.conftest import SHOWS
from tests.conftest import Gateway


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        ("/schema/swagger", ".swagger-ui .info .title"),
        ("/docs", ".swagger-ui .info .title"),
        ("/schema/redoc", ".api-info h1"),
        ("/redoc", ".api-info h1"),
    ],
)
async def test_docs_render_offline(
    gateway: Gateway, browser: Any, path: str, rendered: str
) -> None:
    page = await browser.new_page()
    hosts: set[str] = set()
    page.on("request", lambda request: hosts.add(urlparse(request.url).netloc))  # data: has none
    await page.goto(gateway.url + path)
    await page.wait_for_selector(rendered, timeout=SHOWS)
    assert "Chorus" in (await page.text_content(rendered) or "")
    assert hosts - {""} == {urlparse(gateway.url).netloc}, f"{path} reached other hosts: {hosts}"
