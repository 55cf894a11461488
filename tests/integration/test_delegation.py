"""Delegated phases: the process manager opens a session per phase and finishes the phase
with the session's outcome, exactly once, also when the engine was down in between."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from chorus.bootstrap import EngineConfig, EngineService
from chorus.contracts.sessions import Criteria
from chorus.contracts.workflow_types import (
    BUILT_IN,
    Delegation,
    Phase,
    WorkflowType,
    WorkflowTypeRegistry,
)
from chorus.engine.policies.delegation import delegated_session_id
from nats.aio.client import Client as NATS

from tests.conftest import NatsEndpoint, engine_config
from tests.integration.test_bus import domain_records, send

AGENTS = ["agent-1", "agent-2", "agent-3"]
REVIEWED = WorkflowType(
    name="reviewed",
    phases=[
        Phase(
            name="review",
            delegate=Delegation(
                participants=AGENTS, criteria=Criteria(require="majority"), timeout_seconds=60
            ),
        ),
        Phase(name="release"),
    ],
)


def config(
    nats_server: NatsEndpoint, database_url: str, *, delegation: bool = True
) -> EngineConfig:
    return engine_config(
        nats_url=nats_server.url,
        database_url=database_url,
        delegation=delegation,
        workflow_types=WorkflowTypeRegistry([*BUILT_IN, REVIEWED]),
    )


async def start(nc: NATS, priority: str = "normal") -> str:
    wid = str(uuid.uuid4())
    payload = {
        "workflow_id": wid,
        "requirements": "review PR 7",
        "workflow_type": "reviewed",
        "priority": priority,
    }
    assert (await send(nc, "ops", "start", payload, aggregate="workflow"))["status"] == "accepted"
    assert (
        await send(
            nc, "ops", "start_phase", {"workflow_id": wid, "phase": "review"}, aggregate="workflow"
        )
    )["status"] == "accepted"
    return wid


async def start_with_open_session(nc: NATS, database_url: str) -> tuple[str, str]:
    """A workflow whose delegated review phase has started and whose session is open."""
    wid = await start(nc)
    sid = delegated_session_id(wid, "review")
    await until(lambda: events_of(database_url, sid), "the session to open")
    return wid, sid


def events_of(database_url: str, aggregate_id: str) -> list[Any]:
    return [r for r in domain_records(database_url) if r.aggregate_id == aggregate_id]


async def until(predicate: Any, what: str) -> None:
    for _ in range(300):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def submit_all(nc: NATS, sid: str, successes: list[bool]) -> None:
    for agent, success in zip(AGENTS, successes, strict=True):
        reply = await send(
            nc,
            agent,
            "submit_result",
            {"session_id": sid, "result": {"ok": success}, "success": success},
        )
        assert reply["status"] == "accepted", reply


async def test_a_delegated_phase_completes_with_the_sessions_outcome(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    async with EngineService(config(nats_server, database_url)):
        wid, sid = await start_with_open_session(nc, database_url)
        opened = events_of(database_url, sid)[0]
        assert opened.data["participants"] == AGENTS
        assert opened.correlation_id == wid
        await submit_all(nc, sid, [True, True, False])
        await until(
            lambda: any(r.type == "PhaseCompleted" for r in events_of(database_url, wid)),
            "the phase",
        )
    completed = next(r for r in events_of(database_url, wid) if r.type == "PhaseCompleted")
    assert completed.actor == "system"
    assert completed.data["result"]["session_id"] == sid
    assert completed.data["result"]["outcome"] == "succeeded"


async def test_a_failed_session_fails_the_phase_and_the_workflow(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    async with EngineService(config(nats_server, database_url)):
        wid, sid = await start_with_open_session(nc, database_url)
        await submit_all(nc, sid, [False, False, True])
        await until(
            lambda: events_of(database_url, wid)[-1].type == "WorkflowFailed", "the failure"
        )
    failed = next(r for r in events_of(database_url, wid) if r.type == "PhaseFailed")
    assert failed.data["error"]["code"] == "session_failed"
    assert "require majority not met" in failed.data["error"]["message"]


async def test_engine_down_between_phase_start_and_session_open_opens_exactly_one_session(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    async with EngineService(config(nats_server, database_url, delegation=False)):
        wid = await start(nc)  # the phase starts; the engine "dies" before opening the session
    sid = delegated_session_id(wid, "review")
    assert events_of(database_url, sid) == []
    for _ in range(2):  # two restarts: the second must not open it again
        async with EngineService(config(nats_server, database_url)):
            await until(lambda: events_of(database_url, sid), "the session to open")
            await asyncio.sleep(0.3)
    assert [r.type for r in events_of(database_url, sid)] == ["SessionOpened"]


async def test_engine_down_between_session_finalising_and_phase_completing_completes_it_once(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    async with EngineService(config(nats_server, database_url)):
        wid, sid = await start_with_open_session(nc, database_url)
    async with EngineService(config(nats_server, database_url, delegation=False)):
        await submit_all(nc, sid, [True, True, True])  # finalised while nobody finishes phases
    assert not any(r.type == "PhaseCompleted" for r in events_of(database_url, wid))
    for _ in range(2):
        async with EngineService(config(nats_server, database_url)):
            await until(
                lambda: any(r.type == "PhaseCompleted" for r in events_of(database_url, wid)),
                "the phase",
            )
            await asyncio.sleep(0.3)
    assert [r.type for r in events_of(database_url, wid)].count("PhaseCompleted") == 1


async def test_queued_delegations_open_highest_priority_first(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    async with EngineService(config(nats_server, database_url, delegation=False)):
        by_priority = {p: await start(nc, p) for p in ("low", "normal", "critical", "high")}
    async with EngineService(config(nats_server, database_url)):
        sessions = {p: delegated_session_id(w, "review") for p, w in by_priority.items()}
        await until(
            lambda: all(events_of(database_url, s) for s in sessions.values()), "all sessions"
        )
    order = sorted(sessions, key=lambda p: events_of(database_url, sessions[p])[0].position)
    assert order == ["critical", "high", "normal", "low"]


async def test_cancelling_the_workflow_cancels_its_running_session(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    async with EngineService(config(nats_server, database_url)):
        wid, sid = await start_with_open_session(nc, database_url)
        reply = await send(
            nc, "ops", "cancel", {"workflow_id": wid, "reason": "stop"}, aggregate="workflow"
        )
        assert reply["status"] == "accepted"
        await until(
            lambda: events_of(database_url, sid)[-1].type == "SessionCancelled",
            "the session's cancel",
        )
    assert events_of(database_url, sid)[-1].actor == "system"


async def test_an_agent_cannot_finish_a_delegated_phase_by_hand(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    async with EngineService(config(nats_server, database_url)):
        wid = await start(nc)
        reply = await send(
            nc,
            "agent-1",
            "complete_phase",
            {"workflow_id": wid, "phase": "review"},
            aggregate="workflow",
        )
    assert reply["error"]["code"] == "not_assigned"


async def test_nobody_can_open_a_delegated_phases_session_before_the_engine(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    """The id is derived from the public workflow id, but it is not a random UUID, and
    clients may open only those: the squat that used to fail the phase is refused."""
    async with EngineService(config(nats_server, database_url, delegation=False)):
        wid = await start(nc)
        sid = delegated_session_id(wid, "review")
        hijack = {"session_id": sid, "participants": ["mallory"], "task": {"description": "x"}}
        squat = await send(nc, "mallory", "open", hijack)
        assert squat["error"]["code"] == "reserved_id"
    async with EngineService(config(nats_server, database_url)):
        await until(lambda: bool(events_of(database_url, sid)), "the engine to open the session")
    opened = events_of(database_url, sid)[0]
    assert (opened.type, opened.data["opened_by"]) == ("SessionOpened", "system")


async def test_a_delegation_the_engine_cannot_open_fails_the_phase_with_the_reason(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    broken = WorkflowType(
        name="reviewed",
        phases=[Phase(name="review", delegate=Delegation(participants=["a", "a"]))],
    )
    cfg = engine_config(
        nats_url=nats_server.url,
        database_url=database_url,
        workflow_types=WorkflowTypeRegistry([*BUILT_IN, broken]),
    )
    async with EngineService(cfg):
        wid = await start(nc)
        await until(
            lambda: events_of(database_url, wid)[-1].type == "WorkflowFailed", "the phase to fail"
        )
    failed = next(r for r in events_of(database_url, wid) if r.type == "PhaseFailed")
    assert failed.data["error"]["code"] == "invalid_command"


ROUTED = WorkflowType(
    name="reviewed",
    phases=[
        Phase(
            name="review",
            delegate=Delegation(
                capabilities=["review"],
                size=2,
                timeout_seconds=60,
                criteria=Criteria(min_results=2),
            ),
        ),
        Phase(name="release"),
    ],
)


async def test_a_phase_delegated_by_capabilities_goes_to_the_most_reliable_agents(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    cfg = engine_config(nats_url=nats_server.url, database_url=database_url,
                       workflow_types=WorkflowTypeRegistry([*BUILT_IN, ROUTED]))  # fmt: skip
    async with EngineService(cfg):
        for name, caps in (("rev-a", ["review"]), ("rev-b", ["review", "py"]), ("coder", ["py"])):
            reply = await send(nc, name, "register", {"name": name, "capabilities": caps},
                               aggregate="agent")  # fmt: skip
            assert reply["status"] == "accepted"
        wid = await start(nc)
        sid = delegated_session_id(wid, "review")
        await until(lambda: events_of(database_url, sid), "the session to open")
        opened = events_of(database_url, sid)[0].data
        assert sorted(opened["participants"]) == ["rev-a", "rev-b"]
        assert opened["routing"]["capabilities"] == ["review"]
        for agent in opened["participants"]:
            await send(nc, agent, "submit_result", {"session_id": sid, "result": {"ok": 1}})
        await until(
            lambda: any(r.type == "PhaseCompleted" for r in events_of(database_url, wid)),
            "the phase to complete",
        )
        # Not enough agents with a capability: the phase fails with the count found.
        await send(nc, "rev-a", "retire", {"agent_id": "rev-a"}, aggregate="agent")
        second = await start(nc)
        await until(lambda: events_of(database_url, second)[-1].type == "WorkflowFailed",
                    "the phase to fail")  # fmt: skip
    failed = next(r for r in events_of(database_url, second) if r.type == "PhaseFailed")
    assert failed.data["error"]["code"] == "not_enough_agents"
    assert "1 online agent(s)" in failed.data["error"]["message"]
