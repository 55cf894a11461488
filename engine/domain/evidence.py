"""Checking an agent's completion claim against the record, and scoring it.

A task is a session the agent was a participant of (``task_id`` = the session id), or a
workflow phase assigned to it (``task_id`` = ``<workflow_id>/<phase>``). Task ids are
compared in one canonical spelling (lower-case, hyphenated UUID), so one task cannot be
claimed twice under two spellings. The claim holds when every check passes:

- ``task_not_found``: the task exists;
- ``not_assigned``: it was assigned to this agent;
- ``self_assigned``: not by the agent itself (it opened or coordinates the session, or
  started the workflow): nobody earns a record from work it handed itself;
- ``already_verified``: it was not verified before (a rejected claim may be corrected);
- ``no_result``: the agent recorded a result for it (a phase: the phase completed);
- ``result_failed``: that result was a success (a failed result proves nothing done);
- ``hash_mismatch``: ``output_hash`` equals the recorded hash: the result's own
  ``output_hash``, else ``sha256:`` + sha256 of its canonical JSON (``result_hash``);
- ``completion_before_assignment`` / ``completion_in_future``: the completion time lies
  between the assignment and now, give or take ``CLOCK_SKEW``;
- ``response_time_implausible``: a stated ``response_time`` fits between the assignment
  and the recorded result (the record, not the agent's word, bounds timing).
- each cited tool call (``tool_calls``: server and version of its ``ToolCalled``) is on
  record as a call made for a task (``tool_call_not_found``), by this agent
  (``tool_call_not_yours``: nobody can borrow another actor's call, and only the gateway
  records calls, naming the caller its credential proved), for this task
  (``tool_call_other_task``), that succeeded (``tool_call_failed``), with the result digest
  the evidence states, if it states one (``tool_result_mismatch``).

Quality of a verified completion, in [0, 1] (a rejected one scores 0):

``quality = 0.5 + 0.3 * timeliness + 0.2 * agreement``

- ``timeliness = max(0, 1 - taken / allowed)``: ``allowed`` is the session's timeout or
  the phase's expected duration; ``taken`` is the time from the assignment to the moment
  the engine recorded the result (for results recorded before that time was kept: the
  evidence's ``response_time``, else assignment to completion). Instant work scores 1,
  work that used the whole allowance 0. The verdict's ``response_time`` (for the response
  time percentiles) is the evidence's, else assignment to completion (at most to the
  recorded result).
- ``agreement``: the share of the session's results whose hash equals this agent's (1 when
  it is the only result, and for a phase, which has one worker).

So a correct but slow, lone dissenter still scores at least 0.5: being verified is worth
half, speed and consensus the rest.

Whether a verdict counts toward reliability (``counts``): only for a task the agent could
not have arranged for itself, see ``chorus.events.reliability``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from chorus.contracts.agents import VerifyCompletion, result_hash
from chorus.contracts.mcp import server_uuid
from chorus.contracts.roles import STAFF
from chorus.engine.domain.authz import SYSTEM
from chorus.engine.domain.context import EngineContext
from chorus.events.agent import CitedToolCall, CompletionRejected, CompletionVerified, Rejection

CLOCK_SKEW = timedelta(seconds=5)


@dataclass(frozen=True)
class TaskFacts:
    """What the record says about one agent's task."""

    kind: str  # session | phase
    assigned_at: datetime
    allowed_seconds: float
    recorded_hash: str | None  # None: no result recorded yet
    recorded_at: datetime | None  # when the engine recorded the result (None: not known)
    succeeded: bool
    agreement: float
    #: Whether the verdict moves reliability: see ``chorus.events.reliability``.
    counts: bool = True


class TaskProblem(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.rejection = Rejection(code=code, message=message)


def canonical_task_id(task_id: str) -> str:
    """One spelling per task: the UUID as ``str(UUID)``, then ``/<phase>`` if any."""
    head, slash, phase = task_id.partition("/")
    try:
        return f"{UUID(head)}{slash}{phase}"
    except ValueError:
        return task_id


def task_facts(task_id: str, agent_id: str, ctx: EngineContext) -> TaskFacts:
    """Find the task in the session or workflow aggregate, or raise TaskProblem."""
    head, slash, phase = task_id.partition("/")
    try:
        aggregate_id = UUID(head)
    except ValueError:
        raise TaskProblem("task_not_found", f"no task {task_id!r}") from None
    if slash and not phase:
        raise TaskProblem("task_not_found", f"no task {task_id!r}: a phase name follows '/'")
    if phase:
        return _phase_facts(task_id, aggregate_id, phase, agent_id, ctx)
    return _session_facts(task_id, aggregate_id, agent_id, ctx)


def _session_facts(task_id: str, sid: UUID, agent_id: str, ctx: EngineContext) -> TaskFacts:
    session: Any = ctx.load("session", sid)
    if not session.exists:
        raise TaskProblem("task_not_found", f"no session {task_id}")
    assigned_at = session.assigned_at.get(agent_id)
    if assigned_at is None:
        raise TaskProblem("not_assigned", f"{agent_id} is not a participant of session {task_id}")
    if agent_id in (session.opened_by, session.coordinator_id):
        raise TaskProblem("self_assigned", f"{agent_id} opened or coordinates session {task_id}")
    hashes = {
        a: r.output_hash or r.result_digest or result_hash(r.result)
        for a, r in session.results.items()
    }
    mine = session.results.get(agent_id)
    my_hash = hashes.get(agent_id)
    agreement = sum(h == my_hash for h in hashes.values()) / len(hashes) if my_hash else 0.0
    return TaskFacts(
        kind="session",
        assigned_at=assigned_at,
        allowed_seconds=session.timeout_seconds,
        recorded_hash=my_hash,
        recorded_at=mine.submitted_at if mine is not None else None,
        succeeded=mine is not None and mine.success,
        agreement=agreement,
        counts=agent_id in session.engine_chosen or _arranged_by_staff(session.opened_by, ctx),
    )


def _phase_facts(
    task_id: str, wid: UUID, phase: str, agent_id: str, ctx: EngineContext
) -> TaskFacts:
    workflow: Any = ctx.load("workflow", wid)
    if not workflow.exists or phase not in {p.name for p in workflow.phases}:
        raise TaskProblem("task_not_found", f"no workflow phase {task_id}")
    assignee, started_at = workflow.assignments.get(phase, (None, None))
    if assignee != agent_id or started_at is None:
        raise TaskProblem("not_assigned", f"phase {task_id} was not assigned to {agent_id}")
    if agent_id == workflow.started_by:
        raise TaskProblem("self_assigned", f"{agent_id} started workflow {wid}")
    result = workflow.results.get(phase)
    allowed = next(p.expected_seconds for p in workflow.phases if p.name == phase)
    return TaskFacts(
        kind="phase",
        assigned_at=started_at,
        allowed_seconds=allowed,
        recorded_hash=result_hash(result) if result is not None else None,
        recorded_at=workflow.completed_at.get(phase),
        succeeded=result is not None,
        agreement=1.0,
        counts=_arranged_by_staff(workflow.started_by, ctx),
    )


def _arranged_by_staff(actor: str, ctx: EngineContext) -> bool:
    """The engine itself, or an operator or admin (as the key store says now)."""
    return actor == SYSTEM or bool(ctx.roles.roles_of(actor) & STAFF)


def judge(
    cmd: VerifyCompletion, verified_tasks: set[str], now: datetime, ctx: EngineContext
) -> CompletionVerified | CompletionRejected:
    """The verdict on one claim: every failed check is a reason."""
    task_id = canonical_task_id(cmd.task_id)
    try:
        facts = task_facts(task_id, cmd.agent_id, ctx)
    except TaskProblem as problem:
        return _rejected(cmd, task_id, [problem.rejection])
    reasons: list[Rejection] = []
    if task_id in verified_tasks:
        reasons.append(Rejection(code="already_verified",
                                 message=f"task {task_id} was already verified"))  # fmt: skip
    if facts.recorded_hash is None:
        reasons.append(Rejection(code="no_result",
                                 message=f"no result of {cmd.agent_id} is recorded for the task"))  # fmt: skip
    else:
        if not facts.succeeded:
            reasons.append(Rejection(code="result_failed",
                                     message="the recorded result was not a success"))  # fmt: skip
        if cmd.output_hash != facts.recorded_hash:
            reasons.append(Rejection(code="hash_mismatch", message=(
                f"output_hash {cmd.output_hash} differs from the recorded "
                f"{facts.recorded_hash}")))  # fmt: skip
    reasons += _timing_problems(cmd, facts, now)
    reasons += tool_call_problems(cmd, task_id, ctx)
    response = cmd.response_time
    if response is None:  # assignment to completion, at most to the recorded result
        done = min(cmd.completion_time, facts.recorded_at or cmd.completion_time)
        response = max(0.0, (done - facts.assigned_at).total_seconds())
    if reasons:
        return _rejected(cmd, task_id, reasons, response, counts=facts.counts)
    # Timeliness from the record when it has the result's time: the agent cannot shorten it.
    taken = response
    if facts.recorded_at is not None:
        taken = max(0.0, (facts.recorded_at - facts.assigned_at).total_seconds())
    parts = quality_parts(taken, facts.allowed_seconds, facts.agreement)
    return CompletionVerified(
        task_id=task_id,
        task_kind=facts.kind,
        completion_time=cmd.completion_time,
        output_hash=cmd.output_hash,
        assigned_at=facts.assigned_at,
        response_time=round(response, 6),
        quality_score=quality_score(parts),
        score_parts=parts,
        counts=facts.counts,
        tool_calls=[CitedToolCall(server=c.server, version=c.version,
                                  result_digest=c.result_digest) for c in cmd.tool_calls],
    )  # fmt: skip


def tool_call_problems(cmd: VerifyCompletion, task_id: str, ctx: EngineContext) -> list[Rejection]:
    """Why each cited tool call does not back this claim (see the module docstring)."""
    out: list[Rejection] = []
    for ref in cmd.tool_calls:
        where = f"tool call {ref.server}@{ref.version}"
        server: Any = ctx.load("mcp_server", server_uuid(ref.server))
        call = server.task_calls.get(ref.version) if server.version > 0 else None
        if call is None:
            out.append(Rejection(code="tool_call_not_found",
                                 message=f"{where} is not on record as a call for a task"))  # fmt: skip
            continue
        if call.caller != cmd.agent_id:
            out.append(Rejection(code="tool_call_not_yours",
                                 message=f"{where} was made by {call.caller}, not {cmd.agent_id}"))  # fmt: skip
        if canonical_task_id(call.task_id) != task_id:
            out.append(Rejection(code="tool_call_other_task",
                                 message=f"{where} was made for task {call.task_id}"))  # fmt: skip
        if call.outcome != "ok":
            out.append(Rejection(code="tool_call_failed",
                                 message=f"{where} ended {call.outcome}"))  # fmt: skip
        if ref.result_digest is not None and ref.result_digest != call.result_digest:
            out.append(Rejection(code="tool_result_mismatch", message=(
                f"{where} recorded result {call.result_digest}, not {ref.result_digest}")))  # fmt: skip
    return out


def _timing_problems(cmd: VerifyCompletion, facts: TaskFacts, now: datetime) -> list[Rejection]:
    """The claim's times against the record's: assignment <= completion <= recorded, now."""
    out: list[Rejection] = []
    done = cmd.completion_time
    if done < facts.assigned_at - CLOCK_SKEW:
        out.append(Rejection(code="completion_before_assignment", message=(
            f"completion_time {done.isoformat()} is before the assignment at "
            f"{facts.assigned_at.isoformat()}")))  # fmt: skip
    if done > now + CLOCK_SKEW:
        out.append(Rejection(code="completion_in_future", message=(
            f"completion_time {done.isoformat()} is in the future (now {now.isoformat()})")))  # fmt: skip
    if cmd.response_time is not None:
        end = facts.recorded_at or now
        longest = (end - facts.assigned_at + CLOCK_SKEW).total_seconds()
        if cmd.response_time > longest:
            out.append(Rejection(code="response_time_implausible", message=(
                f"response_time {cmd.response_time}s is longer than the {longest:.3f}s "
                "between the assignment and the recorded result")))  # fmt: skip
    return out


def quality_parts(response_time: float, allowed: float, agreement: float) -> dict[str, float]:
    timeliness = max(0.0, 1.0 - response_time / allowed) if allowed > 0 else 0.0
    return {"verified": 1.0, "timeliness": round(timeliness, 6), "agreement": round(agreement, 6)}


def quality_score(parts: dict[str, float]) -> float:
    return round(0.5 * parts["verified"] + 0.3 * parts["timeliness"]
                 + 0.2 * parts["agreement"], 6)  # fmt: skip


def _rejected(
    cmd: VerifyCompletion,
    task_id: str,
    reasons: list[Rejection],
    response: float | None = None,
    *,
    counts: bool = True,
) -> CompletionRejected:
    return CompletionRejected(
        task_id=task_id,
        completion_time=cmd.completion_time,
        output_hash=cmd.output_hash,
        reasons=reasons,
        response_time=round(response, 6) if response is not None else None,
        counts=counts,
    )
