"""Work reaches agents, end to end under ``chorus up``: the agents' side.

The seeds' flow (``POST /execute-workflow`` with type ``full``, then poll
``/workflow-status/{id}`` until ``completed``) runs with agents of every kind: SDK workers,
``chorus agent -- <script>``, a plain nats-py subscriber, and the demo fleet of
``chorus up --demo``. An SDK agent SIGKILLed mid-phase loses its lease (it goes offline),
another agent completes the phase, and exactly one result counts. Operators use only the
HTTP API with the admin key from the banner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from chorus.agent_demo import FLEET
from chorus.agent_sdk import AgentClient
from chorus.agent_worker import TaskContext
from chorus.contracts.tasks import PhaseTask, SessionTask
from nats.aio.msg import Msg

from .conftest import (
    ChorusUp,
    async_wait_until,
    clean_env,
    cli,
    free_port,
    read_store,
    running_chorus,
    sqlite_url,
)

WAIT = 120  # seconds: a bound on waiting for the system, never a timing check
FULL = ["requirements", "design", "implement", "test", "review"]
#: Offline after 3 s of silence: a SIGKILLed agent's lease is lost quickly, yet an agent
#: on a loaded machine (a busy CI runner) that misses a beat or two is not taken for dead.
QUICK_LIVENESS = {"CHORUS_HEARTBEAT_INTERVAL": "0.5", "CHORUS_MISSED_HEARTBEATS": "6"}


@contextlib.asynccontextmanager
async def operator(up: ChorusUp) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {up.admin_key}"}
    async with httpx.AsyncClient(base_url=up.base_url, headers=headers, timeout=30,
                                 trust_env=False) as http:  # fmt: skip
        yield http


async def execute(http: httpx.AsyncClient, workflow_type: str, requirements: str) -> str:
    response = await http.post("/execute-workflow", json={
        "requirements": requirements, "workflow_type": workflow_type})  # fmt: skip
    assert response.status_code == 202, response.text
    return str(response.json()["workflow_id"])


async def until_finished(http: httpx.AsyncClient, workflow_id: str) -> dict[str, Any]:
    """Poll ``/workflow-status/{id}`` as the seeds do, until the workflow is finished."""

    async def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = (await http.get(f"/workflow-status/{workflow_id}")).json()
        return body if body.get("status") in ("completed", "failed", "cancelled") else None

    return await async_wait_until(finished, WAIT, f"workflow {workflow_id} to finish", 0.1)


async def echo(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
    """A phase's result names the phase, the agent and the inputs it was given."""
    await ctx.progress(50)
    return {"phase": task.phase, "by": ctx.agent_id, "inputs": sorted(task.inputs)}


async def admitted_key(up: ChorusUp, actor: str) -> str:
    """A new agent key, once the reloaded nats-server admits it as the actor's bus user."""
    key = up.key(actor)
    await (await up.bus(actor, key)).close()
    return key


@contextlib.asynccontextmanager
async def sdk_agents(
    up: ChorusUp, names: list[str], handler: Callable[..., Awaitable[dict[str, Any]]] = echo
) -> AsyncIterator[list[AgentClient]]:
    """SDK agents, each with its own API key: the bus admits an actor by its key only."""
    assert up.nats_url
    agents = [AgentClient.connect(up.nats_url, name, key=await admitted_key(up, name),
                                  heartbeat_interval=0.2) for name in names]  # fmt: skip
    serving = [asyncio.create_task(a.serve(handler, capabilities=["python"])) for a in agents]
    try:
        yield agents
    finally:
        for agent in agents:
            agent.shutdown()
        await asyncio.wait_for(asyncio.gather(*serving), WAIT)


def phase_results(up: ChorusUp, workflow_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every ``PhaseCompleted`` of the workflow, from the event store: (phase, result)."""
    records = read_store(sqlite_url(up.data_dir / "events.db"))
    return [(r.data["phase"], r.data["result"]) for r in records
            if r.aggregate_id == workflow_id and r.type == "PhaseCompleted"]  # fmt: skip


def workflow_events(up: ChorusUp, workflow_id: str) -> list[Any]:
    records = read_store(sqlite_url(up.data_dir / "events.db"))
    return [r for r in records if r.aggregate_id == workflow_id]


def assert_full_flow(status: dict[str, Any], up: ChorusUp, agents: set[str]) -> None:
    assert status["status"] == "completed", status
    assert status["session_id"] == status["workflow_id"]
    results = phase_results(up, status["workflow_id"])
    assert [phase for phase, _ in results] == FULL  # each phase once, in order
    for index, (phase, result) in enumerate(results):  # each saw the results before it
        assert result["phase"] == phase
        assert result["inputs"] == sorted(FULL[:index])
        assert result["by"] in agents
    assert status["final_result"] == results[-1][1]


# The seed flow with each kind of agent ------------------------------------------------------


@pytest.mark.e2e
async def test_the_seed_flow_completes_with_sdk_agents(tmp_path: Path) -> None:
    data_dir, workdir = tmp_path / "data", tmp_path / "work"
    workdir.mkdir()
    with running_chorus(data_dir, free_port(), workdir) as up:
        assert up.nats_url
        async with operator(up) as http, sdk_agents(up, ["sdk-1", "sdk-2"]):
            workflow_id = await execute(http, "full", "Add retries to the uploader")
            status = await until_finished(http, workflow_id)
        assert_full_flow(status, up, {"sdk-1", "sdk-2"})


AGENT_SCRIPT = """\
import json, os, sys
task = json.load(sys.stdin)
print(json.dumps({"progress": 50}), flush=True)
print("working on", task["task_id"], flush=True)  # a plain line, passed through
print(json.dumps({"partial": {"seen": len(task["requirements"])}}), flush=True)
print(json.dumps({"result": {"phase": task["phase"], "by": os.environ["CHORUS_AGENT_ID"],
                             "inputs": sorted(task["inputs"])}}))
"""


async def start_command_agent(
    up: ChorusUp, workdir: Path, name: str, script: Path
) -> asyncio.subprocess.Process:
    """``chorus agent`` finding chorus up's NATS from the data dir, as a user beside it
    would, with the agent's own key (CHORUS_API_KEY) as its bus credential."""
    with (workdir / f"{name}.log").open("ab") as log:
        return await asyncio.create_subprocess_exec(
            *cli("agent", "--data-dir", str(up.data_dir), "--name", name,
                 "--capabilities", "python", "--", sys.executable, str(script)),
            cwd=workdir,
            env=clean_env(CHORUS_HEARTBEAT_INTERVAL="0.2",
                          CHORUS_API_KEY=await admitted_key(up, name)),
            stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip


@pytest.mark.e2e
async def test_the_seed_flow_completes_with_chorus_agent_script_agents(tmp_path: Path) -> None:
    data_dir, workdir = tmp_path / "data", tmp_path / "work"
    workdir.mkdir()
    script = workdir / "agent.py"
    script.write_text(AGENT_SCRIPT)
    with running_chorus(data_dir, free_port(), workdir) as up:
        agents = [await start_command_agent(up, workdir, name, script)
                  for name in ("sh-1", "sh-2")]  # fmt: skip
        try:
            async with operator(up) as http:
                workflow_id = await execute(http, "full", "Add retries to the uploader")
                status = await until_finished(http, workflow_id)
                partials = status["partial_results"]
        finally:
            for agent in agents:
                with contextlib.suppress(ProcessLookupError):
                    agent.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(a.wait(), WAIT) for a in agents]
        assert_full_flow(status, up, {"sh-1", "sh-2"})
        assert codes == [0, 0]
        assert partials["implement"] == [{"seen": len("Add retries to the uploader")}]


@pytest.mark.e2e
async def test_the_seed_flow_completes_with_a_plain_nats_subscriber(tmp_path: Path) -> None:
    """No SDK: a nats-py subscription on the inbox, and commands as JSON requests."""
    data_dir, workdir = tmp_path / "data", tmp_path / "work"
    workdir.mkdir()
    with running_chorus(data_dir, free_port(), workdir) as up:
        name = "raw-1"
        # The agent's key is its bus credential; replies come on its own inbox prefix.
        nc = await up.bus(name)

        async def command(aggregate: str, verb: str, payload: dict[str, Any]) -> dict[str, Any]:
            body = json.dumps({"command_id": str(uuid.uuid4()), "payload": payload}).encode()
            subject = f"chorus.cmd.{name}.{aggregate}.{verb}"
            for _ in range(100):  # re-sent with the same id until an engine answers
                with contextlib.suppress(nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    return dict(json.loads((await nc.request(subject, body, timeout=5)).data))
                await asyncio.sleep(0.1)
            raise AssertionError(f"no answer to {subject}")

        done: set[tuple[str, int]] = set()

        async def on_task(msg: Msg) -> None:
            task = json.loads(msg.data)
            key = (task["task_id"], task.get("attempt", 0))
            if task["kind"] != "phase" or key in done:
                return  # delivered at least once: a repeat is the same task
            done.add(key)
            assert (await command("task", "accept", {"task_id": task["task_id"]}))["status"] in (
                "accepted", "duplicate")  # fmt: skip
            result = {"phase": task["phase"], "by": name, "inputs": sorted(task["inputs"])}
            reply = await command("workflow", "complete_phase", {
                "workflow_id": task["workflow_id"], "phase": task["phase"], "result": result})  # fmt: skip
            assert reply["status"] == "accepted", reply

        try:
            await nc.subscribe(f"chorus.task.{name}", cb=on_task)
            reply = await command("agent", "register", {"name": name, "capabilities": ["python"]})
            assert reply["status"] == "accepted", reply
            async with operator(up) as http:
                workflow_id = await execute(http, "full", "Add retries to the uploader")
                status = await until_finished(http, workflow_id)
        finally:
            await nc.close()
        assert_full_flow(status, up, {name})


@pytest.mark.e2e
async def test_chorus_up_demo_runs_a_full_workflow_to_a_reviewed_module(tmp_path: Path) -> None:
    data_dir, workdir = tmp_path / "data", tmp_path / "work"
    workdir.mkdir()
    with running_chorus(data_dir, free_port(), workdir, ("--demo",)) as up:
        assert "demo       agents demo-1, demo-2, demo-3" in up.output, up.output
        async with operator(up) as http:
            workflow_id = await execute(
                http, "full", "Add retries to the uploader. Give up after 5 attempts"
            )
            status = await until_finished(http, workflow_id)
            found = {a["agent_id"]: a for a in
                     (await http.get("/api/v1/agents", params={"limit": 100})).json()["items"]}  # fmt: skip
        assert status["status"] == "completed", (status, up.log_tail("demo"))
        final = status["final_result"]
        assert final["verdict"] == "approved", final
        assert final["tests"] == {"passed": 3, "failed": 0, "output": "3 passed"}
        assert "def missing(text: str) -> list[str]:" in final["source"]
        assert {found[n]["type"] for n in FLEET} == {"demo"}
        assert {r["by"] for _, r in phase_results(up, workflow_id) if "by" in r} <= set(FLEET)


# An agent killed mid-phase --------------------------------------------------------------------

KILLABLE_AGENT = """\
import asyncio, sys
from pathlib import Path
from chorus.agent_sdk import AgentClient

url, name, marker, key = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]

async def handle(task, ctx):
    await ctx.progress(10)
    marker.write_text(task.task_id)
    await asyncio.Event().wait()  # never finishes: it is killed here

asyncio.run(AgentClient.connect(url, name, key=key, heartbeat_interval=0.2).serve(
    handle, capabilities=["python"]))
"""


@pytest.mark.e2e
@pytest.mark.kill
async def test_an_agent_killed_mid_phase_loses_its_lease_and_another_completes_it(
    tmp_path: Path,
) -> None:
    data_dir, workdir = tmp_path / "data", tmp_path / "work"
    workdir.mkdir()
    script, marker = workdir / "killable.py", workdir / "started"
    script.write_text(KILLABLE_AGENT)

    async def started() -> bool:
        return marker.exists()

    with running_chorus(data_dir, free_port(), workdir, **QUICK_LIVENESS) as up:
        assert up.nats_url
        doomed = await asyncio.create_subprocess_exec(
            sys.executable, str(script), up.nats_url, "doomed", str(marker),
            await admitted_key(up, "doomed"),
            cwd=workdir, env=clean_env(),
        )  # fmt: skip
        try:
            async with operator(up) as http:
                workflow_id = await execute(http, "quick", "Add retries to the uploader")
                await async_wait_until(started, WAIT, "the doomed agent to start the phase")
                doomed.send_signal(signal.SIGKILL)
                await doomed.wait()
                async with sdk_agents(up, ["rescuer"]):
                    status = await until_finished(http, workflow_id)
        finally:
            if doomed.returncode is None:
                doomed.kill()
                await doomed.wait()
        assert status["status"] == "completed", status
        events = workflow_events(up, workflow_id)
        expired = [e.data for e in events if e.type == "PhaseLeaseExpired"]
        assert [(e["phase"], e["agent_id"], e["attempt"]) for e in expired] == [
            ("implement", "doomed", 1)
        ]
        assigned = [(e.data["phase"], e.data["agent_id"]) for e in events
                    if e.type == "PhaseAssigned"]  # fmt: skip
        assert assigned == [("implement", "doomed"), ("implement", "rescuer"), ("test", "rescuer")]
        completed = Counter(phase for phase, _ in phase_results(up, workflow_id))
        assert completed == {"implement": 1, "test": 1}  # one result counts per phase
        assert dict(phase_results(up, workflow_id))["implement"]["by"] == "rescuer"
        assert marker.read_text() == f"{workflow_id}/implement"
