"""The McpServer aggregate's rules: operators register, catalogues are checked, only the
gateway records calls, and only against the schema on record."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec
import pytest
from chorus.contracts.mcp import (
    RECORDER,
    ConfigureMcpServer,
    RecordToolCall,
    RecordToolsDiscovered,
    RegisterMcpServer,
    RemoveMcpServer,
    ServerConfig,
    StdioTransport,
    argument_problems,
    catalogue_problems,
    digest,
    server_uuid,
    tool_spec,
)
from chorus.engine.domain import errors, mcp
from chorus.engine.domain.authz import StaticRoles
from chorus.engine.domain.context import EngineContext
from chorus.gateway.errors import Problem
from chorus.gateway.mcp_registry import CallLimiter

from tests.unit.conftest import CLOCK_START

OPS = EngineContext(roles=StaticRoles({"ops": {"operator"}}))
ADD = tool_spec("add", "Add", {"type": "object", "properties": {"a": {"type": "integer"}},
                               "required": ["a"]})  # fmt: skip


def fold(*events: msgspec.Struct) -> mcp.McpServerState:
    state = mcp.McpServerState(id=server_uuid("calc"))
    for event in events:
        state.apply(event)
    return state


def registered(**config: bool) -> mcp.McpServerState:
    cmd = RegisterMcpServer(name="calc", transport=StdioTransport(command=["calc"]),
                            tools=[ADD], config=ServerConfig(**config))  # fmt: skip
    return fold(*mcp.decide_register(fold(), cmd, "ops", CLOCK_START, OPS))


def call(**overrides: object) -> RecordToolCall:
    fields: dict[str, object] = {
        "name": "calc", "tool": "add", "caller": "agent-1", "schema_digest": ADD.schema_digest,
        "args_digest": digest({"a": 1}), "result_digest": digest({"r": 1}), "duration_ms": 3.0,
        "outcome": "ok", "arguments": {"a": 1}, "result": {"r": 1},
    }  # fmt: skip
    fields.update(overrides)
    return RecordToolCall(**fields)  # type: ignore[arg-type]


def test_only_operators_register_and_the_catalogue_is_recorded_with_digests() -> None:
    cmd = RegisterMcpServer(name="calc", transport=StdioTransport(command=["calc"]), tools=[ADD])
    with pytest.raises(errors.NotAuthorized):
        mcp.decide_register(fold(), cmd, "agent-1", CLOCK_START, OPS)
    state = registered()
    assert state.tools == {"add": ADD.schema_digest}
    assert state.owner == "ops"
    with pytest.raises(mcp.McpServerExists):
        mcp.decide_register(state, cmd, "ops", CLOCK_START, OPS)


def test_a_bad_schema_or_a_repeated_name_is_refused_with_reasons() -> None:
    broken = tool_spec("x", None, {"type": "object", "properties": {"a": {"type": "nope"}}})
    problems = catalogue_problems([ADD, ADD, broken])
    assert [p["tool"] for p in problems] == ["add", "x"]
    assert "not unique" in problems[0]["message"]
    cmd = RecordToolsDiscovered(name="calc", tools=[broken])
    with pytest.raises(mcp.InvalidToolSchema) as caught:
        mcp.decide_record_tools(registered(), cmd, "ops", CLOCK_START, OPS)
    assert caught.value.details == {"problems": catalogue_problems([broken])}


def test_an_unchanged_catalogue_records_nothing_and_a_changed_one_is_visible() -> None:
    state = registered()
    same = RecordToolsDiscovered(name="calc", tools=[ADD])
    assert mcp.decide_record_tools(state, same, "ops", CLOCK_START, OPS) == []
    changed = tool_spec("add", "Add", {"type": "object", "properties": {}})
    [event] = mcp.decide_record_tools(
        state, RecordToolsDiscovered(name="calc", tools=[changed]), "ops", CLOCK_START, OPS
    )
    state.apply(event)
    assert state.tools["add"] == changed.schema_digest != ADD.schema_digest


def test_only_the_gateway_records_calls_against_the_schema_on_record() -> None:
    state = registered()
    with pytest.raises(errors.NotAuthorized):
        mcp.decide_record_call(state, call(), "agent-1", CLOCK_START, OPS)
    with pytest.raises(errors.InvalidCommand):
        mcp.decide_record_call(state, call(schema_digest=digest({})), RECORDER, CLOCK_START, OPS)
    with pytest.raises(mcp.ToolNotFound):
        mcp.decide_record_call(state, call(tool="nope"), RECORDER, CLOCK_START, OPS)
    [event] = mcp.decide_record_call(state, call(), RECORDER, CLOCK_START, OPS)
    assert (event.arguments, event.result) == (None, None)  # type: ignore[attr-defined]
    [kept] = mcp.decide_record_call(registered(store_arguments=True, store_results=True),
                                    call(), RECORDER, CLOCK_START, OPS)  # fmt: skip
    assert (kept.arguments, kept.result) == ({"a": 1}, {"r": 1})  # type: ignore[attr-defined]


def test_a_removed_server_takes_no_commands() -> None:
    state = registered()
    [removed] = mcp.decide_remove(state, RemoveMcpServer(name="calc"), "ops", CLOCK_START, OPS)
    state.apply(removed)
    with pytest.raises(mcp.McpServerNotFound):
        mcp.decide_configure(state, ConfigureMcpServer(name="calc", owner="x"), "ops",
                             CLOCK_START, OPS)  # fmt: skip


def test_argument_problems_name_every_bad_field() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"},
              "c": {"type": "object", "properties": {"d": {"type": "string"}}, "required": ["d"]}},
              "required": ["a", "b"], "additionalProperties": False}  # fmt: skip
    problems = argument_problems(schema, {"a": "x", "c": {}, "z": 1})
    assert [p["field"] for p in problems] == ["$", "a", "b", "c.d"]
    assert argument_problems(schema, {"a": 1, "b": 2}) == []


def test_digests_are_canonical() -> None:
    assert digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1})
    assert isinstance(uuid.UUID(str(server_uuid("calc"))), uuid.UUID)
    assert isinstance(CLOCK_START, datetime)


def test_the_call_limiter_admits_per_caller_and_server_per_minute() -> None:
    now = [100.0]
    limiter = CallLimiter(clock=lambda: now[0])
    limiter.admit("a", "calc", 2)
    limiter.admit("a", "calc", 2)
    limiter.admit("b", "calc", 2)
    limiter.admit("a", "other", None)
    with pytest.raises(Problem) as caught:
        limiter.admit("a", "calc", 2)
    assert caught.value.status_code == 429
    now[0] += 60
    limiter.admit("a", "calc", 2)


def test_only_the_gateway_records_health_and_only_a_change_of_status() -> None:
    from chorus.contracts.mcp import RecordHealth

    check = RecordHealth(name="calc", status="unhealthy", error="refused")
    with pytest.raises(errors.NotAuthorized):
        mcp.decide_record_health(registered(), check, "ops", CLOCK_START, OPS)
    changed = mcp.decide_record_health(registered(), check, RECORDER, CLOCK_START, OPS)
    assert [type(e).__name__ for e in changed] == ["McpServerHealthChanged"]
    state = fold(*[*mcp.decide_register(fold(), RegisterMcpServer(
        name="calc", transport=StdioTransport(command=["calc"]), tools=[ADD]), "ops",
        CLOCK_START, OPS), *changed])  # fmt: skip
    assert state.health == "unhealthy"
    assert mcp.decide_record_health(state, check, RECORDER, CLOCK_START, OPS) == []
    healthy = RecordHealth(name="calc", status="healthy")
    assert len(mcp.decide_record_health(state, healthy, RECORDER, CLOCK_START, OPS)) == 1
