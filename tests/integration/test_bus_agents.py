"""Agents on the bus against a real nats-server and store: registry, liveness, evidence,
routing and the participant-loss policies."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chorus.bootstrap import EngineService
from chorus.contracts.agents import agent_uuid
from chorus.engine.adapters.liveness import LivenessConfig
from chorus.engine.domain.authz import StaticRoles
from nats.aio.client import Client as NATS

from tests.conftest import NatsEndpoint, engine_config
from tests.integration.test_bus import domain_records, open_payload, send

FAST = LivenessConfig(interval=0.1, missed=3)


@pytest.fixture
async def engine(nats_server: NatsEndpoint, database_url: str) -> AsyncIterator[EngineService]:
    """An engine whose agents go offline after 0.3 s of silence; ``ops`` and ``coord`` are operators."""
    config = engine_config(nats_url=nats_server.url, database_url=database_url,
                          liveness_config=FAST, roles=StaticRoles({"ops": {"operator"}, "coord": {"operator"}}))  # fmt: skip
    async with EngineService(config) as service:
        yield service


async def register(nc: NATS, name: str, capabilities: list[str] = (), actor: str | None = None,
                   **extra: Any) -> dict[str, Any]:  # fmt: skip
    payload = {"name": name, "capabilities": list(capabilities), **extra}
    return await send(nc, actor or name, "register", payload, aggregate="agent")


async def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Polls ``check`` until it returns something truthy (no timing assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def events_of(database_url: str, *types: str) -> list[Any]:
    return [r for r in domain_records(database_url) if r.type in types]


class Beater:
    """An agent heartbeating in the background until stopped."""

    def __init__(self, nc: NATS, agent_id: str, every: float = 0.03) -> None:
        self.task = asyncio.create_task(self._run(nc, agent_id, every))

    @staticmethod
    async def _run(nc: NATS, agent_id: str, every: float) -> None:
        while True:
            await nc.publish(f"chorus.cmd.{agent_id}.agent.heartbeat", b"")
            await asyncio.sleep(every)

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def canonical_hash(result: dict[str, Any]) -> str:
    body = json.dumps(result, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()


# Registry -------------------------------------------------------------------------------------


async def test_registering_is_idempotent_for_the_owner_and_refused_to_others(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    first = await register(nc, "coder-1", ["python"], type="llm", metadata={"model": "m"})
    assert first["status"] == "accepted" and first["version"] == 1
    again = await register(nc, "coder-1", ["python"])
    assert again["status"] == "accepted" and again["version"] == 1  # nothing new recorded
    taken = await register(nc, "coder-1", ["python"], actor="intruder")
    assert taken["status"] == "rejected"
    assert taken["error"]["code"] == "agent_name_taken"
    grown = await register(nc, "coder-1", ["python", "review"])
    assert grown["version"] == 2
    updated = await send(nc, "coder-1", "update_capabilities",
                         {"agent_id": "coder-1", "capabilities": ["go"]}, aggregate="agent")  # fmt: skip
    assert updated["version"] == 3
    foreign = await send(nc, "intruder", "retire", {"agent_id": "coder-1"}, aggregate="agent")
    assert foreign["error"]["code"] == "not_authorized"
    retired = await send(nc, "coder-1", "retire", {"agent_id": "coder-1"}, aggregate="agent")
    assert retired["status"] == "accepted"
    late = await register(nc, "coder-1", ["python"])
    assert late["error"]["code"] == "agent_retired"
    types = [r.type for r in domain_records(database_url) if r.aggregate == "agent"]
    assert types == ["AgentRegistered", "AgentCapabilitiesUpdated", "AgentCapabilitiesUpdated",
                     "AgentRetired"]  # fmt: skip


async def test_engine_only_agent_commands_are_refused_on_the_bus(
    engine: EngineService, nc: NATS
) -> None:
    await register(nc, "a1")
    payload = {"agent_id": "a1", "last_seen": datetime.now(UTC).isoformat(),
               "missed_heartbeats": 3}  # fmt: skip
    reply = await send(nc, "a1", "mark_offline", payload, aggregate="agent")
    assert reply["error"]["code"] == "unknown_command"


# Liveness -------------------------------------------------------------------------------------


async def test_heartbeats_keep_an_agent_online_and_silence_marks_it_offline(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    await register(nc, "beater")
    reply = json.loads((await nc.request("chorus.cmd.beater.agent.heartbeat", b"", 5)).data)
    assert reply["status"] == "accepted"
    beater = Beater(nc, "beater")
    await asyncio.sleep(1.0)  # three timeouts' worth of beating: still online
    assert events_of(database_url, "AgentWentOffline") == []
    await beater.stop()
    offline = await eventually(lambda: events_of(database_url, "AgentWentOffline"))
    assert offline[0].data["missed_heartbeats"] >= 3
    assert offline[0].actor == "system"
    beater = Beater(nc, "beater")
    await eventually(lambda: events_of(database_url, "AgentCameOnline"))
    await beater.stop()
    await eventually(lambda: len(events_of(database_url, "AgentWentOffline")) == 2)


async def test_bad_heartbeats_are_answered_and_change_nothing(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    unknown = json.loads((await nc.request("chorus.cmd.ghost.agent.heartbeat", b"", 5)).data)
    assert unknown["error"]["code"] == "agent_not_found"
    squatted = await register(nc, "owned", actor="squatter")  # only itself or an operator
    assert squatted["error"]["code"] == "not_authorized"
    reserved = await register(nc, "system", actor="system-like")
    assert reserved["error"]["code"] == "invalid_command"
    await register(nc, "owned", actor="ops")
    foreign = await nc.request("chorus.cmd.other.agent.heartbeat", b'{"agent_id": "owned"}', 5)
    assert json.loads(foreign.data)["error"]["code"] == "not_authorized"
    by_owner = await nc.request("chorus.cmd.ops.agent.heartbeat", b'{"agent_id": "owned"}', 5)
    assert json.loads(by_owner.data)["status"] == "accepted"
    garbage = json.loads((await nc.request("chorus.cmd.owned.agent.heartbeat", b"{", 5)).data)
    assert garbage["error"]["code"] == "malformed_message"
    assert [r.type for r in domain_records(database_url)] == ["AgentRegistered"]


async def test_an_agent_that_died_while_the_engine_was_down_is_marked_offline(
    nats_server: NatsEndpoint, database_url: str, nc: NATS
) -> None:
    config = engine_config(nats_url=nats_server.url, database_url=database_url,
                          liveness_config=FAST)  # fmt: skip
    async with EngineService(config):
        await register(nc, "survivor")
        await register(nc, "casualty")
        survivor = Beater(nc, "survivor")
        casualty = Beater(nc, "casualty")
        await asyncio.sleep(0.3)
    await casualty.stop()  # dies while no engine runs
    await asyncio.sleep(0.5)
    async with EngineService(config):
        offline = await eventually(lambda: events_of(database_url, "AgentWentOffline"))
        await asyncio.sleep(0.5)
        await survivor.stop()
    assert [r.data for r in offline] and len(offline) == 1
    records = [r for r in domain_records(database_url) if r.type == "AgentRegistered"]
    casualty_id = next(r.aggregate_id for r in records if r.data["agent_id"] == "casualty")
    assert offline[0].aggregate_id == casualty_id
    # Its last heartbeat came from the KV bucket: before the engine restarted.
    assert datetime.fromisoformat(str(offline[0].data["last_seen"])) < offline[0].occurred_at


# Routing --------------------------------------------------------------------------------------


async def finish(nc: NATS, session_id: str, agents: list[str], verify: bool = True,
                 wrong: set[str] = frozenset()) -> None:  # fmt: skip
    """Each agent submits; then claims completion (with a wrong hash for ``wrong``)."""
    for agent in agents:
        result = {"answer": agent}
        await send(nc, agent, "submit_result", {"session_id": session_id, "result": result})
        if verify:
            evidence = {
                "agent_id": agent, "task_id": session_id,
                "completion_time": datetime.now(UTC).isoformat(),
                "output_hash": "sha256:bad" if agent in wrong else canonical_hash(result),
            }  # fmt: skip
            reply = await send(nc, agent, "verify_completion", evidence, aggregate="agent")
            assert reply["status"] == "accepted"


async def test_routing_picks_the_most_reliable_online_agents_and_records_why(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    beaters = []
    for name, caps in (("a", ["py"]), ("b", ["py"]), ("c", ["py", "go"]), ("d", ["go"])):
        await register(nc, name, caps)
        # Live agents beat: with FAST's 0.3 s timeout a silent one goes offline while
        # the sessions below run on a loaded machine, and routing passes it over.
        beaters.append(Beater(nc, name))
    # A record: c verified twice, a once, b rejected once.
    for agents, wrong in ((["a", "b", "c"], {"b"}), (["c"], set())):
        opened = open_payload(agents)
        await send(nc, "coord", "open", opened)
        await finish(nc, opened["session_id"], agents, wrong=wrong)
    routed = {"session_id": str(uuid.uuid4()), "task": {"description": "t"},
              "capabilities": ["py"], "size": 2}  # fmt: skip
    reply = await send(nc, "coord", "open", routed)
    for beater in beaters:
        await beater.stop()
    assert reply["status"] == "accepted"
    opened_event = next(r for r in events_of(database_url, "SessionOpened")
                        if r.aggregate_id == routed["session_id"])  # fmt: skip
    assert opened_event.data["participants"] == ["c", "a"]
    routing = opened_event.data["routing"]
    assert routing["chosen"] == ["c", "a"] and routing["eligible"] == 3
    assert [(c["agent_id"], c["score"]) for c in routing["candidates"]] == [
        ("c", 0.75), ("a", 0.666667), ("b", 0.333333)]  # (v+1)/(v+r+2)  # fmt: skip
    too_many = {**routed, "session_id": str(uuid.uuid4()), "size": 4}
    refused = await send(nc, "coord", "open", too_many)
    assert refused["error"]["code"] == "not_enough_agents"
    assert refused["error"]["details"]["found"] == 3


# Evidence -------------------------------------------------------------------------------------


async def test_completion_evidence_is_checked_not_trusted(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    for name in ("honest", "other"):
        await register(nc, name)
    opened = open_payload(["honest", "other"])
    sid = opened["session_id"]
    await send(nc, "coord", "open", opened)
    await finish(nc, sid, ["honest", "other"], verify=False)
    now = datetime.now(UTC)
    good = {"agent_id": "honest", "task_id": sid, "completion_time": now.isoformat(),
            "output_hash": canonical_hash({"answer": "honest"})}  # fmt: skip
    claims = {  # the reason each claim must be rejected with
        "hash_mismatch": {**good, "output_hash": "sha256:0000"},
        "task_not_found": {**good, "task_id": str(uuid.uuid4())},
        "completion_in_future": {**good, "completion_time": (now + timedelta(hours=1)).isoformat()},
        "verified": good,
        "already_verified": good | {"response_time": 1.0},
    }
    for claim in claims.values():
        reply = await send(nc, "honest", "verify_completion", claim, aggregate="agent")
        assert reply["status"] == "accepted", reply
    # A task of another agent: "honest" claims a session it was not part of.
    solo = open_payload(["other"])
    await send(nc, "coord", "open", solo)
    await finish(nc, solo["session_id"], ["other"], verify=False)
    stolen = {
        **good,
        "task_id": solo["session_id"],
        "output_hash": canonical_hash({"answer": "other"}),
    }
    await send(nc, "honest", "verify_completion", stolen, aggregate="agent")
    verdicts = events_of(database_url, "CompletionVerified", "CompletionRejected")
    codes = [[r["code"] for r in v.data.get("reasons", [])] or ["verified"] for v in verdicts]
    assert codes == [["hash_mismatch"], ["task_not_found"], ["completion_in_future"],
                     ["verified"], ["already_verified"], ["not_assigned"]]  # fmt: skip
    verified = verdicts[3].data
    assert verified["task_kind"] == "session"
    # quality = 0.5 + 0.3 * timeliness + 0.2 * agreement (two different answers: 1/2 agree)
    parts = verified["score_parts"]
    assert parts["agreement"] == 0.5
    assert verified["quality_score"] == pytest.approx(0.5 + 0.3 * parts["timeliness"] + 0.1)
    missing = await send(nc, "honest", "verify_completion", {"agent_id": "honest", "task_id": sid},
                         aggregate="agent")  # fmt: skip
    assert missing["error"]["code"] == "invalid_command"
    assert "completion_time" in missing["error"]["message"]


async def test_a_workflow_phase_is_a_task_its_assignee_can_prove(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    await register(nc, "worker")
    wid = str(uuid.uuid4())
    start = {"workflow_id": wid, "requirements": "r", "workflow_type": "quick"}
    await send(nc, "op", "start", start, aggregate="workflow")
    first = (await asyncio.to_thread(lambda: events_of(database_url, "WorkflowStarted")))[0]
    phase = first.data["phases"][0]["name"]
    await send(nc, "op", "start_phase", {"workflow_id": wid, "phase": phase,
                                         "assignee": "worker"}, aggregate="workflow")  # fmt: skip
    result = {"diff": "+1"}
    await send(nc, "worker", "complete_phase", {"workflow_id": wid, "phase": phase,
                                                "result": result}, aggregate="workflow")  # fmt: skip
    claim = {"agent_id": "worker", "task_id": f"{wid}/{phase}",
             "completion_time": datetime.now(UTC).isoformat(),
             "output_hash": canonical_hash(result)}  # fmt: skip
    await send(nc, "worker", "verify_completion", claim, aggregate="agent")
    verdict = events_of(database_url, "CompletionVerified")[0].data
    assert verdict["task_kind"] == "phase" and verdict["score_parts"]["agreement"] == 1.0


# Participant loss -----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["wait", "fail_fast", "replace"])
async def test_a_lost_participant_is_handled_by_the_session_policy(
    engine: EngineService, nc: NATS, database_url: str, policy: str
) -> None:
    beaters = {}
    for name in ("stays", "leaves", "spare"):
        await register(nc, name, ["py"])
        beaters[name] = Beater(nc, name)
    opened = {**open_payload(["stays", "leaves"]), "capabilities": ["py"],
              "on_participant_lost": policy}  # fmt: skip
    sid = opened["session_id"]
    await send(nc, "coord", "open", opened)
    await beaters.pop("leaves").stop()
    lost = await eventually(lambda: events_of(database_url, "ParticipantLost"))
    assert lost[0].data["agent_id"] == "leaves" and lost[0].aggregate_id == sid
    session_types = lambda: [r.type for r in domain_records(database_url)  # noqa: E731
                             if r.aggregate_id == sid]  # fmt: skip
    if policy == "wait":
        assert lost[0].data["action"] == "waiting"
        assert session_types() == ["SessionOpened", "ParticipantLost"]
    elif policy == "fail_fast":
        assert lost[0].data["action"] == "failed"
        final = events_of(database_url, "SessionFinalised")[0]
        assert final.data["outcome"] == "failed" and "leaves" in final.data["reason"]
    else:
        replaced = events_of(database_url, "ParticipantReplaced")[0].data
        assert (replaced["replaced"], replaced["replacement"]) == ("leaves", "spare")
        assert replaced["routing"]["chosen"] == ["spare"]
        gone = await send(nc, "leaves", "submit_result", {"session_id": sid, "result": {}})
        assert gone["error"]["code"] == "not_a_participant"
        await finish(nc, sid, ["stays", "spare"], verify=False)
        assert events_of(database_url, "SessionFinalised")[0].data["outcome"] == "succeeded"
    for beater in beaters.values():
        await beater.stop()


async def test_heartbeats_at_200_per_second_for_a_minute_add_only_transitions(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    config = engine_config(nats_url=nats_server.url, database_url=database_url,
                          liveness_config=LivenessConfig(interval=1.0, missed=3))  # fmt: skip
    async with EngineService(config) as engine:
        await _beat_for_a_minute(engine, nc, database_url)


async def _beat_for_a_minute(engine: EngineService, nc: NATS, database_url: str) -> None:
    agents = [f"hb-{i}" for i in range(20)]
    for agent in agents:
        await register(nc, agent)
    before = len(domain_records(database_url))
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while loop.time() - start < 60:
        tick = loop.time()
        for agent in agents:  # 20 agents x 10 beats/s = 200 heartbeats/s
            await nc.publish(f"chorus.cmd.{agent}.agent.heartbeat", b"")
        sent += len(agents)
        await asyncio.sleep(max(0.0, 0.1 - (loop.time() - tick)))
    await nc.flush()
    await eventually(lambda: engine.liveness is not None and engine.liveness.beats >= sent * 0.99)
    assert sent >= 10_000
    added = domain_records(database_url)[before:]
    # Beating all along: at most a flap per agent if the machine stalled, never per beat.
    assert all(r.type in ("AgentWentOffline", "AgentCameOnline") for r in added)
    assert len(added) <= 2 * len(agents)


async def test_claims_that_would_break_a_reader_are_refused_at_the_edge(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    await register(nc, "edgy")
    claim = {"agent_id": "edgy", "task_id": str(uuid.uuid4()), "output_hash": "h"}
    for when in ("9999-12-31T23:00:00-05:00", "2030-01-01T00:00:00"):  # no UTC, no zone
        reply = await send(nc, "edgy", "verify_completion", {**claim, "completion_time": when},
                           aggregate="agent")  # fmt: skip
        assert reply["error"]["code"] == "invalid_command", reply
    for task_id in (str(agent_uuid("edgy")), f"{uuid.uuid4()}/phase"):  # not a session
        reply = await send(nc, "edgy", "verify_completion", {
            **claim, "task_id": task_id, "completion_time": datetime.now(UTC).isoformat(),
        }, aggregate="agent")  # fmt: skip
        assert reply["status"] == "accepted", reply
    verdicts = events_of(database_url, "CompletionRejected")
    assert [[r["code"] for r in v.data["reasons"]] for v in verdicts] == [["task_not_found"]] * 2


async def test_evidence_reads_what_another_engine_worker_wrote(
    engine: EngineService, nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    """Two workers in the queue group: the session may change through either; a claim
    checked by the other still sees the result (its cache is fast-forwarded)."""
    config = engine_config(nats_url=nats_server.url, database_url=database_url,
                          liveness_config=FAST, relay=False, timers=False,
                          delegation=False, liveness=False)  # fmt: skip
    async with EngineService(config):
        await register(nc, "w")
        for _ in range(6):  # each worker sees the session at some point, then it changes
            opened = open_payload(["w"])
            await send(nc, "coord", "open", opened)
            await send(nc, "w", "submit_result", {"session_id": opened["session_id"],
                                                   "result": {"n": 1}})  # fmt: skip
            claim = {"agent_id": "w", "task_id": opened["session_id"],
                     "completion_time": datetime.now(UTC).isoformat(),
                     "output_hash": canonical_hash({"n": 1})}  # fmt: skip
            await send(nc, "w", "verify_completion", claim, aggregate="agent")
    verdicts = events_of(database_url, "CompletionVerified", "CompletionRejected")
    assert [v.type for v in verdicts] == ["CompletionVerified"] * 6


async def test_a_replacement_is_found_when_an_agent_turns_up_later(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    beaters = {}
    for name in ("stays", "leaves"):
        await register(nc, name, ["py"])
        beaters[name] = Beater(nc, name)
    opened = {**open_payload(["stays", "leaves"]), "capabilities": ["py"],
              "on_participant_lost": "replace"}  # fmt: skip
    await send(nc, "coord", "open", opened)
    await beaters.pop("leaves").stop()
    lost = await eventually(lambda: events_of(database_url, "ParticipantLost"))
    assert lost[0].data["action"] == "waiting"  # nobody to take its place yet
    await register(nc, "idle", ["go"])  # not qualified: nothing happens
    beaters["idle"] = Beater(nc, "idle")
    await register(nc, "late", ["py"])  # qualified: takes the place
    beaters["late"] = Beater(nc, "late")
    replaced = await eventually(lambda: events_of(database_url, "ParticipantReplaced"))
    assert (replaced[0].data["replaced"], replaced[0].data["replacement"]) == ("leaves", "late")
    assert len(events_of(database_url, "ParticipantLost")) == 2  # waiting, then replaced
    for beater in beaters.values():
        await beater.stop()


async def test_a_participant_lost_again_after_coming_back_is_still_replaced(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    beaters = {}
    for name in ("stays", "flaky"):
        await register(nc, name, ["py"])
        beaters[name] = Beater(nc, name)
    opened = {**open_payload(["stays", "flaky"]), "capabilities": ["py"],
              "on_participant_lost": "replace"}  # fmt: skip
    await send(nc, "coord", "open", opened)
    await beaters.pop("flaky").stop()
    await eventually(lambda: events_of(database_url, "ParticipantLost"))
    beaters["flaky"] = Beater(nc, "flaky")  # back ...
    await eventually(lambda: events_of(database_url, "AgentCameOnline"))
    await beaters.pop("flaky").stop()  # ... and lost again: recorded again
    await eventually(lambda: len(events_of(database_url, "ParticipantLost")) == 2)
    await register(nc, "late", ["py"])
    beaters["late"] = Beater(nc, "late")
    replaced = await eventually(lambda: events_of(database_url, "ParticipantReplaced"))
    assert (replaced[0].data["replaced"], replaced[0].data["replacement"]) == ("flaky", "late")
    for beater in beaters.values():
        await beater.stop()
