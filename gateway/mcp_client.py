"""Chorus as an MCP client of registered servers: discover tools, check health, call a tool.

Everything here runs in the gateway with a deadline, never in the engine's command path: a
server that hangs or dies costs its caller a timeout and nothing else. Secrets are read
from this process's environment by the names the transport gives, at connection time.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
from chorus.aio import raise_if_cancelling
from chorus.contracts import errors as codes
from chorus.contracts.mcp import HttpTransport, StdioTransport, ToolSpec, Transport, tool_spec
from chorus.gateway.errors import Problem
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

#: Pages of tools/list read at most (a server that pages forever cannot hang discovery).
MAX_PAGES = 100


def _secret(variable: str, environ: Mapping[str, str]) -> str:
    value = environ.get(variable)
    if value is None:
        raise Problem(
            502, codes.MCP_SERVER_UNAVAILABLE,
            f"the environment variable {variable} that the server's configuration names is not set",
            details={"variable": variable},
        )  # fmt: skip
    return value


@asynccontextmanager
async def connect(
    transport: Transport, environ: Mapping[str, str] | None = None
) -> AsyncIterator[Client]:
    """An initialized MCP client session to the server."""
    env = os.environ if environ is None else environ
    if isinstance(transport, StdioTransport):
        params = StdioServerParameters(
            command=transport.command[0],
            args=list(transport.command[1:]),
            env={name: _secret(ref, env) for name, ref in transport.env.items()} or None,
        )
        async with Client(params, mode="legacy") as client:
            yield client
        return
    assert isinstance(transport, HttpTransport)
    headers = {name: _secret(ref, env) for name, ref in transport.headers.items()}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(transport.url, http_client=http)) as client,
    ):
        yield client


def _unavailable(error: BaseException) -> Problem:
    if isinstance(error, Problem):
        return error
    reason = str(error) or type(error).__name__
    return Problem(502, codes.MCP_SERVER_UNAVAILABLE, f"the MCP server failed: {reason}")


async def discover(transport: Transport, timeout: float) -> list[ToolSpec]:
    """The server's tools, each with the digest of its input schema."""
    try:
        async with asyncio.timeout(timeout), connect(transport) as client:
            tools: list[ToolSpec] = []
            cursor: str | None = None
            for _ in range(MAX_PAGES):
                page = await client.list_tools(cursor=cursor)
                tools += [tool_spec(t.name, t.description, dict(t.input_schema))
                          for t in page.tools]  # fmt: skip
                cursor = page.next_cursor
                if not cursor:
                    break
            return tools
    except TimeoutError:
        raise Problem(
            504, codes.TOOL_TIMEOUT, f"the MCP server did not list its tools within {timeout}s"
        ) from None
    except Exception as error:
        raise_if_cancelling()
        raise _unavailable(error) from None


@dataclass(frozen=True)
class CallOutcome:
    outcome: str  # ok | error | timeout | unavailable
    result: dict[str, Any] | None
    error: str | None
    duration_ms: float


async def call(
    transport: Transport, tool: str, arguments: dict[str, Any], timeout: float
) -> CallOutcome:
    """Run one tool call with a deadline; every way it can end is an outcome, none raises."""
    started = time.monotonic()

    def took() -> float:
        return round((time.monotonic() - started) * 1000, 3)

    try:
        async with asyncio.timeout(timeout), connect(transport) as client:
            result = await client.call_tool(tool, arguments)
    except TimeoutError:
        return CallOutcome("timeout", None, f"no answer within {timeout}s", took())
    except Exception as error:
        raise_if_cancelling()
        return CallOutcome("unavailable", None, _unavailable(error).detail, took())
    body = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    return CallOutcome("error" if result.is_error else "ok", body, None, took())


async def health(transport: Transport, timeout: float) -> dict[str, Any]:
    """Connect and list the tools (ping is gone from newer protocol versions): ``healthy``
    with the latency and tool count, or ``unhealthy`` and why."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout), connect(transport) as client:
            count = len((await client.list_tools()).tools)
    except TimeoutError:
        return {"status": "unhealthy", "error": f"no answer within {timeout}s"}
    except Exception as error:
        raise_if_cancelling()
        return {"status": "unhealthy", "error": _unavailable(error).detail}
    latency = round((time.monotonic() - started) * 1000, 3)
    return {"status": "healthy", "latency_ms": latency, "tools": count}
