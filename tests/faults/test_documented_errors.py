"""Every error is a documented one: no 500 for bad input, and a 500's request id in the log."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from chorus.gateway.errors import EXCEPTION_HANDLERS, add_request_id_header
from litestar import Litestar, get
from litestar.testing import TestClient

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize("kind", ["sessions", "workflows", "agents"])
async def test_a_version_beyond_64_bits_is_a_400_on_every_history_endpoint(
    engine: Any, gateway: Any, kind: str
) -> None:
    target = "agent-1" if kind == "agents" else UNKNOWN
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.get(
            f"/api/v1/{kind}/{target}/events?after_version=9223372036854775808",
            headers=gateway.key("auditor-1", "auditor"),
        )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "validation_error"


async def test_a_post_without_a_body_says_a_body_is_required(engine: Any, gateway: Any) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.post("/api/v1/sessions", headers=gateway.key("owner"))
    assert response.status_code == 400
    assert response.json()["detail"] == "a JSON body is required"


def test_a_500_logs_its_request_id(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """The gateway's error handler logs the stack trace with the request id (the process
    sends it to stderr, the log file under ``chorus up``). The app is built as the
    gateway's is, without Litestar's own logging set-up: that would install a handler on
    this test's captured stderr for every later test."""

    @get("/boom", sync_to_thread=False)
    def boom() -> None:
        raise RuntimeError("a bug")

    app = Litestar(
        route_handlers=[boom],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        before_send=[add_request_id_header],
        logging_config=None,
    )
    with caplog.at_level(logging.ERROR, logger="chorus.gateway.errors"), TestClient(app) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    request_id = response.json()["request_id"]
    assert response.headers["x-request-id"] == request_id
    assert request_id in caplog.text + capfd.readouterr().err
