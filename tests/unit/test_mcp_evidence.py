"""Tools in the engine's rules, with the real processor and store: completion evidence may
cite tool calls on record, and a hostile agent cannot cite a call it did not make (each
cited ``ToolCalled`` must be the agent's own, for the claimed task, successful, with the
result digest the evidence states); sessions and phases that require a tool route to
agents that can use it."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from chorus.contracts.agents import (
    RegisterAgent,
    ToolCallRef,
    VerifyCompletion,
    agent_uuid,
    result_hash,
)
from chorus.contracts.mcp import RECORDER, RecordToolCall, RegisterMcpServer, StdioTransport, digest
from chorus.contracts.sessions import OpenSession, SubmitResult, Task
from chorus.contracts.workflow_types import Phase
from chorus.engine.domain.authz import StaticRoles
from chorus.engine.domain.context import EngineContext
from chorus.engine.processor import Processor
from chorus.events.codec import decode_record
from eventsourcing.persistence import ApplicationRecorder

from .conftest import FakeClock
from .test_mcp_registry import ADD
from .test_verdicts_earned import send

RESULT = {"sum": 3}


def record_call(engine: Processor, caller: str, task_id: str, outcome: str = "ok") -> int:
    """The gateway records a call ``caller`` made for ``task_id``; its ToolCalled version."""
    reply = send(engine, RECORDER, "mcp_server", "record_call", RecordToolCall(
        name="calc", tool="add", caller=caller, schema_digest=ADD.schema_digest,
        args_digest=digest({"a": 1, "b": 2}), result_digest=digest(RESULT), duration_ms=2.0,
        outcome=outcome, task_id=task_id,  # type: ignore[arg-type]
    ))  # fmt: skip
    assert reply.version is not None
    return reply.version


def session_for(engine: Processor, agent: str) -> str:
    """An operator opens a session naming ``agent``, which submits RESULT."""
    sid = str(uuid.uuid4())
    send(engine, "ops-1", "session", "open",
         OpenSession(session_id=sid, participants=[agent], task=Task(description="add")))  # fmt: skip
    send(engine, agent, "session", "submit_result", SubmitResult(session_id=sid, result=RESULT))
    return sid


def verdict(engine: Processor, recorder: ApplicationRecorder, agent: str, sid: str,
            *calls: ToolCallRef) -> tuple[str, dict[str, Any]]:  # fmt: skip
    claim = VerifyCompletion(agent_id=agent, task_id=sid, completion_time=engine.clock(),
                             output_hash=result_hash(RESULT), tool_calls=list(calls))  # fmt: skip
    send(engine, agent, "agent", "verify_completion", claim)
    last = decode_record(recorder.select_events(agent_uuid(agent), desc=True, limit=1)[0])
    return last.type, msgspec.to_builtins(last.data)


def test_evidence_holds_only_with_the_agents_own_successful_calls_for_the_task(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    engine = Processor(recorder, clock=clock,
                       context=EngineContext(roles=StaticRoles({"ops-1": {"operator"}})))  # fmt: skip
    send(engine, "ops-1", "mcp_server", "register", RegisterMcpServer(
        name="calc", transport=StdioTransport(command=["calc"]), tools=[ADD]))  # fmt: skip
    for name in ("agent-1", "agent-2"):
        send(engine, name, "agent", "register", RegisterAgent(name=name))
    mine, theirs = session_for(engine, "agent-1"), session_for(engine, "agent-2")
    call = record_call(engine, "agent-1", mine)

    # The attack: agent-2 cites agent-1's call (made for agent-1's task) as its own.
    kind, data = verdict(engine, recorder, "agent-2", theirs,
                         ToolCallRef(server="calc", version=call, result_digest=digest(RESULT)))  # fmt: skip
    assert kind == "CompletionRejected"
    assert {r["code"] for r in data["reasons"]} == {"tool_call_not_yours", "tool_call_other_task"}

    # Nor a call that is not on record, a failed call of its own, or a wrong result digest.
    failed = record_call(engine, "agent-2", theirs, outcome="timeout")
    kind, data = verdict(engine, recorder, "agent-2", theirs,
                         ToolCallRef(server="calc", version=999),
                         ToolCallRef(server="calc", version=failed),
                         ToolCallRef(server="nope", version=1))  # fmt: skip
    assert [r["code"] for r in data["reasons"]] == [
        "tool_call_not_found", "tool_call_failed", "tool_call_not_found",
    ]  # fmt: skip
    own = record_call(engine, "agent-2", theirs)
    kind, data = verdict(engine, recorder, "agent-2", theirs,
                         ToolCallRef(server="calc", version=own, result_digest=digest({"x": 1})))  # fmt: skip
    assert [r["code"] for r in data["reasons"]] == ["tool_result_mismatch"]

    # Its own call for its own task backs the claim, and the verdict names it.
    kind, data = verdict(engine, recorder, "agent-1", mine,
                         ToolCallRef(server="calc", version=call, result_digest=digest(RESULT)))  # fmt: skip
    assert kind == "CompletionVerified", data
    assert data["tool_calls"] == [
        {"server": "calc", "version": call, "result_digest": digest(RESULT)}
    ]


def test_a_session_and_a_phase_that_require_a_tool_route_to_agents_that_can_use_it(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    engine = Processor(recorder, clock=clock,
                       context=EngineContext(roles=StaticRoles({"ops-1": {"operator"}})))  # fmt: skip
    send(engine, "plain", "agent", "register", RegisterAgent(name="plain", capabilities=["py"]))
    send(engine, "tooled", "agent", "register",
         RegisterAgent(name="tooled", capabilities=["py", "tool:calc/add"]))  # fmt: skip
    sid = str(uuid.uuid4())
    reply = send(engine, "ops-1", "session", "open", OpenSession(
        session_id=sid, task=Task(description="add"), size=1, requires_tools=["calc/add"]))  # fmt: skip
    opened = decode_record(recorder.select_events(uuid.UUID(sid), limit=1)[0])
    assert reply.status == "accepted"
    assert opened.data["participants"] == ["tooled"]
    assert opened.data["capabilities"] == ["tool:calc/add"]
    phase = msgspec.json.decode(b'{"name": "sum", "requires_tools": ["calc/add"]}', type=Phase)
    assert phase.capabilities == ["tool:calc/add"]
