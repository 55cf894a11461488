"""Agents over HTTP: register, capabilities, retire, heartbeat, completion evidence, the
registry with reliability, per-window metrics and history."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from chorus.aio import raise_if_cancelling
from chorus.contracts import errors as codes
from chorus.contracts.agents import (
    CapabilitiesChange,
    OutputHash,
    RegisterAgent,
    RetireAgent,
    Retirement,
    TaskId,
    UpdateCapabilities,
    VerifyCompletion,
    agent_uuid,
)
from chorus.contracts.bounds import MAX_POSITION
from chorus.contracts.envelope import Reply
from chorus.contracts.subjects import LIVENESS_BUCKET, command_subject, is_token, liveness_key
from chorus.gateway.auth import can_audit, can_read, can_write
from chorus.gateway.bus import issue_command, replayed
from chorus.gateway.errors import Problem, check_cursor
from chorus.gateway.history import AtVersion, EventPage, current_or_past, history_page
from chorus.gateway.keys import Principal
from chorus.gateway.state import Services, ServicesDep
from chorus.projections import agents as read_model
from chorus.projections import tasks as tasks_model
from litestar import Controller, Request, Response, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from msgspec import Meta, Struct

#: Roles that may act for any agent at the gateway (the engine has its own owner checks).
MANAGERS = frozenset({"operator", "admin"})
_encoder = msgspec.json.Encoder()


class VerifyCompletionBody(Struct, kw_only=True, forbid_unknown_fields=True):
    """Evidence of a completed task. ``task_id``, ``completion_time`` (RFC 3339 with a zone)
    and ``output_hash`` are required (checked together, so a 400 names every missing one);
    ``response_time`` (seconds) is optional."""

    task_id: TaskId | None = None
    completion_time: Annotated[datetime, Meta(tz=True)] | None = None
    output_hash: OutputHash | None = None
    response_time: Annotated[float, Meta(ge=0, le=30 * 86_400)] | None = None

    def __post_init__(self) -> None:
        if self.completion_time is not None:
            try:  # a zone offset can push a valid local time past the year 9999 in UTC
                self.completion_time.astimezone(UTC)
            except OverflowError:
                raise ValueError("completion_time is out of range in UTC") from None


class HeartbeatOutcome(Struct, kw_only=True):
    agent_id: str
    status: str


class VerdictOutcome(read_model.VerdictView, kw_only=True):
    command_status: str


REQUIRED_EVIDENCE = ("task_id", "completion_time", "output_hash")


def _not_found(agent_id: str) -> Problem:
    return Problem(404, codes.AGENT_NOT_FOUND, f"agent {agent_id} is not registered")


def _check_name(agent_id: str) -> None:
    """A name that cannot be a subject token was never registered."""
    if not is_token(agent_id):
        raise _not_found(agent_id)


async def _agent(services: Services, agent_id: str) -> read_model.AgentDetail:
    view = await services.read(read_model.get_agent, agent_id)
    if view is None:
        raise _not_found(agent_id)
    return view  # type: ignore[no-any-return]


async def _with_last_heartbeat(
    services: Services, view: read_model.AgentDetail
) -> read_model.AgentDetail:
    """``last_seen`` from the liveness bucket when it is newer than the last transition the
    read model knows (heartbeats are not events, so the read model only sees transitions)."""

    async def last_beat() -> bytes:
        kv = await services.nc.jetstream().key_value(LIVENESS_BUCKET)
        return (await kv.get(liveness_key(view.agent_id))).value or b""

    try:
        beat = read_model.stamp((await asyncio.wait_for(last_beat(), 1.0)).decode())
    except Exception:  # no bucket yet, no beat yet, or NATS slow: the read model's answer
        raise_if_cancelling()
        return view
    if view.last_seen is None or beat > view.last_seen:
        return msgspec.structs.replace(view, last_seen=beat)
    return view


async def _fresh_agent(services: Services, agent_id: str, position: int) -> read_model.AgentDetail:
    """The agent once the read model shows ``position`` (read-your-writes)."""
    caught_up = await services.wait_for_projection(read_model.NAME, position)
    view = await services.read(read_model.get_agent, agent_id)
    if view is None or not caught_up:
        raise Problem(
            503, codes.READ_MODEL_BEHIND,
            "the change is recorded but not readable yet; read again shortly",
            headers={"Retry-After": "1"},
        )  # fmt: skip
    return view  # type: ignore[no-any-return]


async def _agent_command(
    request: Request[Principal, Any, Any],
    services: Services,
    agent_id: str,
    command: str,
    payload: msgspec.Struct,
) -> Response[read_model.AgentDetail]:
    _check_name(agent_id)
    reply = await issue_command(services, request, "agent", command, payload)
    view = await _fresh_agent(services, agent_id, reply.position)
    return Response(view, headers=replayed(reply))


async def send_heartbeat(
    principal: Principal, services: Services, agent_id: str
) -> HeartbeatOutcome:
    """A heartbeat for ``agent_id`` on behalf of ``principal`` (HTTP and MCP): only the agent
    itself, its owner, an operator or an admin may beat for it."""
    _check_name(agent_id)
    view = await _agent(services, agent_id)
    if principal.actor not in (agent_id, view.owner) and principal.role not in MANAGERS:
        raise Problem(
            403, codes.NOT_AUTHORIZED,
            f"{principal.actor} may not send heartbeats for agent {agent_id}",
        )  # fmt: skip
    reply = await services.bus.exchange(
        command_subject(agent_id, "agent", "heartbeat"),
        _encoder.encode({"agent_id": agent_id}),
    )
    return HeartbeatOutcome(agent_id=agent_id, status=reply.status)


def tool_capabilities(tools: list[str] | None) -> list[str]:
    """An agent declares an MCP tool it can use as the capability ``tool:<server>/<tool>``,
    so tools route sessions and phases exactly like capabilities do."""
    return [t if t.startswith("tool:") else f"tool:{t}" for t in tools or ()]


def _choice(field: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise Problem(
            400, "invalid_parameter", f"{field} must be one of: {', '.join(allowed)}",
            details={"field": field, "allowed": list(allowed)},
        )  # fmt: skip


def _as_of(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        # An unencoded "+00:00" arrives as " 00:00": take it as meant.
        moment = read_model.parse_time(value.strip().replace(" ", "+"))
        # Windows reach 7 days back; both ends must be representable in UTC.
        (moment - timedelta(days=8)).astimezone(UTC)
        (moment + timedelta(days=1)).astimezone(UTC)
        return moment
    except (ValueError, OverflowError):
        raise Problem(
            400, "invalid_parameter", "as_of must be an RFC 3339 time, e.g. 2026-11-30T10:00:00Z",
            details={"field": "as_of"},
        ) from None  # fmt: skip


class AgentController(Controller):
    path = "/api/v1/agents"
    tags = ["agents"]
    #: Every route here is for readers at least; writes and audits narrow it further.
    guards = [can_read]

    @post("/", guards=[can_write], status_code=201,
          summary="Register an agent (the caller's key becomes its owner)")  # fmt: skip
    async def register(
        self,
        request: Request[Principal, Any, Any],
        data: JSONBody[RegisterAgent],
        services: ServicesDep,
    ) -> Response[read_model.AgentDetail]:
        """201 when this request registered the name; 200 for a repeat by the owner (new
        capabilities are recorded as an update); 409 ``agent_name_taken`` for anyone else."""
        reply = await issue_command(services, request, "agent", "register", data)
        view = await _fresh_agent(services, data.name, reply.position)
        created = reply.status == "accepted" and reply.position > 0 and reply.version == 1
        return Response(
            view,
            status_code=201 if created else 200,
            headers={"Location": f"{self.path}/{data.name}", **replayed(reply)},
        )

    @put("/{agent_id:str}/capabilities", guards=[can_write],
         summary="Replace an agent's capabilities")  # fmt: skip
    async def update_capabilities(
        self,
        request: Request[Principal, Any, Any],
        agent_id: FromPath[str],
        data: JSONBody[CapabilitiesChange],
        services: ServicesDep,
    ) -> Response[read_model.AgentDetail]:
        _check_name(agent_id)
        payload = UpdateCapabilities(agent_id=agent_id, capabilities=data.capabilities)
        return await _agent_command(request, services, agent_id, "update_capabilities", payload)

    @post("/{agent_id:str}/retire", guards=[can_write], status_code=200,
          summary="Retire an agent (it, its owner or an operator)")  # fmt: skip
    async def retire(
        self,
        request: Request[Principal, Any, Any],
        agent_id: FromPath[str],
        services: ServicesDep,
        data: JSONBody[Retirement | None] = None,
    ) -> Response[read_model.AgentDetail]:
        _check_name(agent_id)
        payload = RetireAgent(agent_id=agent_id, reason=(data or Retirement()).reason)
        return await _agent_command(request, services, agent_id, "retire", payload)

    @post("/{agent_id:str}/heartbeat", guards=[can_write], status_code=200,
          summary="A heartbeat for an agent that cannot reach NATS itself")  # fmt: skip
    async def heartbeat(
        self,
        request: Request[Principal, Any, Any],
        agent_id: FromPath[str],
        services: ServicesDep,
    ) -> HeartbeatOutcome:
        """Sent as a request on ``chorus.cmd.<agent_id>.agent.heartbeat``, exactly what the
        agent would publish; the liveness monitor answers. Only the agent itself, its owner,
        an operator or an admin may beat for it."""
        return await send_heartbeat(request.user, services, agent_id)

    @post("/{agent_id:str}/verify-completion", guards=[can_write], status_code=200,
          summary="Submit completion evidence; returns the engine's verdict")  # fmt: skip
    async def verify_completion(
        self,
        request: Request[Principal, Any, Any],
        agent_id: FromPath[str],
        services: ServicesDep,
        data: JSONBody[VerifyCompletionBody | None] = None,
    ) -> Response[VerdictOutcome]:
        """The engine checks the evidence against the record and records a verdict either
        way: 200 with ``verdict`` ``verified`` (quality score and its parts) or ``rejected``
        (every failed check in ``reasons``)."""
        evidence = data or VerifyCompletionBody()
        missing = [f for f in REQUIRED_EVIDENCE if getattr(evidence, f) is None]
        if missing:
            raise Problem(
                400, "validation_error", f"missing required field(s): {', '.join(missing)}",
                title="Invalid request",
                details={"fields": [{"field": f, "message": f"missing required field `{f}`",
                                     "source": "body"} for f in missing]},
            )  # fmt: skip
        _check_name(agent_id)
        assert evidence.task_id is not None
        assert evidence.completion_time is not None
        assert evidence.output_hash is not None
        reply = await issue_command(
            services, request, "agent", "verify_completion",
            VerifyCompletion(
                agent_id=agent_id, task_id=evidence.task_id,
                completion_time=evidence.completion_time, output_hash=evidence.output_hash,
                response_time=evidence.response_time,
            ),
        )  # fmt: skip
        verdict = await _verdict(services, agent_id, reply)
        return Response(
            VerdictOutcome(**msgspec.structs.asdict(verdict), command_status=reply.status),
            headers=replayed(reply),
        )

    @get("/", summary="List agents with their reliability")
    async def list_agents(
        self,
        services: ServicesDep,
        capability: FromQuery[list[str] | None] = None,
        tool: FromQuery[list[str] | None] = None,
        status: FromQuery[list[str] | None] = None,
        min_success_rate: Annotated[float | None, QueryParameter(ge=0, le=1)] = None,
        sort: FromQuery[str] = "registered",
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        cursor: FromQuery[str | None] = None,
    ) -> read_model.AgentPage:
        """``capability`` (repeatable: all of them), ``tool`` (repeatable: agents that
        declared ``tool:<server>/<tool>`` among their capabilities), ``status`` (repeatable: any of online,
        busy, offline, retired), ``min_success_rate`` (0..1), ``sort`` registered (newest
        first) or reliability (best first, ties by name)."""
        for value in status or []:
            _choice("status", value, read_model.STATUSES)
        _choice("sort", sort, read_model.SORTS)
        check_cursor(cursor, lambda c: read_model.decode_cursor(c, sort))
        return await services.read(  # type: ignore[no-any-return]
            read_model.list_agents, capabilities=[*(capability or ()), *tool_capabilities(tool)],
            statuses=status or (),
            min_success_rate=min_success_rate, sort=sort, limit=limit, cursor=cursor,
        )  # fmt: skip

    @get("/{agent_id:str}",
         summary="An agent, its status and record: current, or at a version or time (auditors)")  # fmt: skip
    async def get_agent(
        self,
        request: Request[Principal, Any, Any],
        agent_id: FromPath[str],
        services: ServicesDep,
        at_version: AtVersion = None,
        as_of: FromQuery[str | None] = None,
    ) -> read_model.AgentDetail:
        _check_name(agent_id)

        async def current() -> read_model.AgentDetail:
            return await _with_last_heartbeat(services, await _agent(services, agent_id))

        return await current_or_past(
            request.user, services, "agent", str(agent_uuid(agent_id)), at_version, as_of, current
        )

    @get("/{agent_id:str}/metrics",
         summary="Reliability over a window (1h, 24h, 7d, all), optionally as of a past time")  # fmt: skip
    async def metrics(
        self,
        agent_id: FromPath[str],
        services: ServicesDep,
        timeframe: FromQuery[str] = "24h",
        as_of: FromQuery[str | None] = None,
    ) -> read_model.Metrics:
        _choice("timeframe", timeframe, tuple(read_model.TIMEFRAMES))
        moment = _as_of(as_of)
        found = await services.read(read_model.agent_metrics, agent_id, timeframe, moment)
        if found is None:
            raise _not_found(agent_id)
        return found  # type: ignore[no-any-return]

    @get("/{agent_id:str}/tasks",
         summary="An agent's open tasks, as its inbox chorus.task.<id> delivers them")  # fmt: skip
    async def tasks(
        self,
        request: Request[Principal, Any, Any],
        agent_id: FromPath[str],
        services: ServicesDep,
    ) -> tasks_model.AgentTaskList:
        """The pull fallback of the inbox. An agent key reads its own tasks only: a task
        carries the work's requirements, which are not every agent's to read."""
        _check_name(agent_id)
        principal = request.user
        if principal.role == "agent" and principal.actor != agent_id:
            raise Problem(403, codes.NOT_AUTHORIZED,
                          f"{principal.actor} may read its own tasks only")  # fmt: skip
        return await services.read(tasks_model.list_agent_tasks, agent_id)  # type: ignore[no-any-return]

    @get("/{agent_id:str}/events", guards=[can_audit],
         summary="An agent's history, oldest first (auditors)")  # fmt: skip
    async def events(
        self,
        agent_id: FromPath[str],
        services: ServicesDep,
        after_version: Annotated[int, QueryParameter(ge=0, le=MAX_POSITION)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 500,
    ) -> EventPage:
        return await history_page(
            services, "agent", str(agent_uuid(agent_id)), after_version, limit
        )


async def _verdict(services: Services, agent_id: str, reply: Reply) -> read_model.VerdictView:
    """The verdict the command recorded: from the read model once it has it, else straight
    from the store (it is recorded either way)."""
    if await services.wait_for_projection(read_model.NAME, reply.position):
        found = await services.read(read_model.get_verdict, reply.position)
        if found is not None:
            return found  # type: ignore[no-any-return]
    assert reply.aggregate_id is not None
    assert reply.version is not None
    records = await services.read_history(
        "agent", reply.aggregate_id, after_version=reply.version - 1, limit=1
    )
    verdict = read_model.verdict_from_record(records[0], agent_id) if records else None
    if verdict is None:
        raise Problem(503, codes.READ_MODEL_BEHIND, "the verdict is not readable yet",
                      headers={"Retry-After": "1"})  # fmt: skip
    return verdict


@get("/api/v1/verdicts/recent", guards=[can_read], tags=["agents"],
     summary="Each named agent's latest verdicts, oldest first (true: verified)")  # fmt: skip
async def recent_verdicts(
    services: ServicesDep,
    agent: Annotated[list[str], QueryParameter(max_items=500)],
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = read_model.RECENT_VERDICTS,
) -> dict[str, list[bool]]:
    """The console's sparklines: one query for a page of agents. ``agent`` repeats."""
    for name in agent:
        if not is_token(name):
            raise Problem(400, "validation_error", f"not an agent id: {name[:80]!r}")
    return await services.read(  # type: ignore[no-any-return]
        read_model.recent_verdicts, list(dict.fromkeys(agent)), limit
    )
