"""Structured logs: one JSON line per notable event with request and command ids; quiet by
default; the request id of a 500 finds its stack trace."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import chorus.gateway.metrics as metrics_module
import httpx
import pytest
from chorus.bootstrap import EngineService
from chorus.logs import configure_logging
from nats.aio.client import Client as NATS

from tests.conftest import Gateway
from tests.integration.test_bus import send


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Route the root logger through ``configure_logging`` for one test, then restore it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        yield client


async def test_a_500s_request_id_finds_its_stack_trace(
    gateway: Gateway, http: httpx.AsyncClient, log_lines: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    configure_logging("WARNING", "json", log_lines, force=True)

    def broken(services: Any) -> dict[str, Any]:
        raise RuntimeError("the read store exploded")

    monkeypatch.setattr(metrics_module, "fleet_snapshot", broken)
    response = await http.get("/api/v1/metrics", headers=gateway.key("ops-1", "operator"))
    assert response.status_code == 500
    request_id = response.json()["request_id"]
    assert response.headers["x-request-id"] == request_id
    [line] = [entry for entry in lines(log_lines) if entry.get("request_id") == request_id]
    assert line["level"] == "error"
    assert line["actor"] == "ops-1"
    assert "RuntimeError: the read store exploded" in line["exc_info"]
    assert "Traceback" in line["exc_info"]


async def test_logs_are_quiet_by_default(
    engine: EngineService, gateway: Gateway, http: httpx.AsyncClient, log_lines: io.StringIO
) -> None:
    configure_logging(stream=log_lines, force=True)  # the defaults: WARNING, JSON
    ops = gateway.key("ops-1", "operator")
    assert (await http.get("/api/v1/sessions", headers=ops)).status_code == 200
    assert (await http.get("/api/v1/sessions/nope", headers=ops)).status_code in (400, 404)
    assert lines(log_lines) == []


async def test_rejected_commands_and_dead_letters_log_their_ids_at_info(
    engine: EngineService, nc: NATS, log_lines: io.StringIO, tmp_path: Path
) -> None:
    configure_logging("INFO", "json", log_lines, force=True)
    reply = await send(nc, "agent-9", "submit_result",
                       {"session_id": "3f0c4f53-0d63-4bbd-9b8c-3a1a5a0b4c1e", "result": {}},
                       command_id="cmd-42")  # fmt: skip
    assert reply["status"] == "rejected"
    await nc.request("chorus.cmd.agent-9.session.open", b'{"command_id": "cmd-43"', timeout=5)
    entries = lines(log_lines)
    [rejected] = [e for e in entries if e.get("command_id") == "cmd-42"]
    assert rejected["actor"] == "agent-9" and rejected["level"] == "info"
    assert "rejected" in rejected["message"]
    [dead] = [e for e in entries if e.get("reason") == "malformed_message"]
    assert dead["subject"] == "chorus.cmd.agent-9.session.open"
