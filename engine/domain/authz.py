"""Who may issue which command: the engine's one rule table, checked before every decision.

The bus pins an actor to its credential (each NATS user may publish only as itself), but
subject permissions cannot say "only the phase's assignee may report on it". So the
processor asks ``authorize`` before it lets a command's decision run: the actor's roles
(from the key store, through the ``Roles`` port) and its relation to the aggregate decide.

A ``Rule`` names the roles that may issue a command at all, the roles that may issue it on
anyone's aggregate (staff), and the relation that lets the others through (the opener of a
session, the assignee of a phase, the agent itself). ``system`` is the engine's own actor
(timers, process managers); no bus client can be it (the worker refuses reserved actors).
Every command in ``chorus.engine.handlers.HANDLERS`` needs a row here: the authorization matrix
test fails for a command without one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from chorus.contracts.mcp import RECORDER
from chorus.contracts.roles import STAFF, WRITERS
from chorus.engine.domain import errors

SYSTEM = "system"
#: What an actor that never held a credential counts as. The secured bus admits only key
#: holders, so this matters only on an open development bus; an actor whose keys were all
#: revoked holds no role at all.
DEFAULT_ROLES = frozenset({"agent"})
NOBODY: frozenset[str] = frozenset()


class Roles(Protocol):
    """The port through which the engine learns an actor's roles (from the key store)."""

    def roles_of(self, actor: str) -> frozenset[str]: ...


class StaticRoles:
    """Roles from a mapping (tests, and deployments that configure roles by hand)."""

    def __init__(
        self, roles: Mapping[str, frozenset[str] | set[str] | tuple[str, ...]] | None = None,
        default: frozenset[str] = DEFAULT_ROLES,
    ) -> None:  # fmt: skip
        self._roles = {actor: frozenset(r) for actor, r in (roles or {}).items()}
        self._default = default

    def roles_of(self, actor: str) -> frozenset[str]:
        return self._roles.get(actor, self._default)


class CachedRoles:
    """Any ``Roles`` behind a short cache: a revoked or changed key counts within ``ttl``."""

    def __init__(
        self, source: Roles, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.source = source
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    def roles_of(self, actor: str) -> frozenset[str]:
        now = self.clock()
        hit = self._cache.get(actor)
        if hit is None or now - hit[0] > self.ttl:
            if len(self._cache) > 100_000:
                self._cache.clear()
            hit = (now, self.source.roles_of(actor))
            self._cache[actor] = hit
        return hit[1]


#: The relation that lets a non-staff actor through: (aggregate state, payload, actor).
Relation = Callable[[Any, Any, str], bool]


@dataclass(frozen=True)
class Rule:
    """Who may issue one command. ``who`` is the sentence the README and errors use."""

    who: str
    #: Roles that may issue it at all; empty: only the engine itself.
    roles: frozenset[str]
    #: Roles that may issue it whatever their relation to the aggregate.
    staff: frozenset[str] = NOBODY
    #: Lets the other allowed roles through; None: the role alone suffices.
    relation: Relation | None = None
    #: What a failed relation raises (reporting on someone else's phase: ``not_assigned``).
    error: type[errors.DomainError] = errors.NotAuthorized


def authorize(
    rule: Rule, actor: str, roles: frozenset[str], state: Any, payload: Any, command: str
) -> None:
    """Raise ``NotAuthorized`` unless ``actor`` (holding ``roles``) may issue the command."""
    if actor == SYSTEM:
        return
    if not rule.roles:
        raise errors.NotAuthorized(f"{command} is issued by the engine only")
    if not roles & rule.roles:
        held = ", ".join(sorted(roles)) or "none"
        raise errors.NotAuthorized(
            f"{actor} (roles: {held}) may not issue {command}: {rule.who}",
            {"allowed_roles": sorted(rule.roles)},
        )
    if roles & rule.staff or rule.relation is None:
        return
    if not rule.relation(state, payload, actor):
        raise rule.error(f"{actor} may not issue {command} here: {rule.who}")


# Relations ----------------------------------------------------------------------------------
# Each takes (state, payload, actor). An aggregate that does not exist yet passes: its
# decision reports it missing (or creates it), and a missing one belongs to nobody.


def _session_opener(state: Any, payload: Any, actor: str) -> bool:
    return not state.exists or actor in (state.opened_by, state.coordinator_id)


def _agent_itself_or_owner(state: Any, payload: Any, actor: str) -> bool:
    return not state.exists or actor in (state.agent_id, state.owner)


def _registers_itself(state: Any, payload: Any, actor: str) -> bool:
    """A new name is registered by the agent itself; an existing one by its owner (the
    decision then answers idempotently, or ``agent_name_taken`` to anyone else)."""
    return bool(state.exists or actor == payload.name)


def _workflow_starter(state: Any, payload: Any, actor: str) -> bool:
    return not state.exists or actor == state.started_by


def _starts_phase(state: Any, payload: Any, actor: str) -> bool:
    """The workflow's starter starts a phase for anyone; an agent starts only the attempt
    the dispatcher gave it (which accepts it), never someone else's phase."""
    if not state.exists or actor == state.started_by:
        return True
    live = getattr(state, "attempt", None)
    return bool(
        live is not None
        and live.phase == payload.phase
        and live.agent_id == actor
        and payload.assignee in (None, actor)
    )


def _phase_assignee_or_starter(state: Any, payload: Any, actor: str) -> bool:
    """The phase's assignee or the workflow's starter; also the agent holding the live
    attempt (doing the work accepts it), and one that lost the phase's lease (the workflow
    answers it ``lease_lost``)."""
    if not state.exists or actor in (state.assignee, state.started_by):
        return True
    live = getattr(state, "attempt", None)
    if live is not None and live.phase == payload.phase and live.agent_id == actor:
        return True
    return actor in getattr(state, "lost", {}).get(payload.phase, ())


ENGINE_ONLY = Rule("the engine only", NOBODY)
ANY_WRITER = Rule("agents, operators and admins", WRITERS)
FOR_AGENT = Rule(
    "the agent itself, its owner, an operator or admin", WRITERS, STAFF, _agent_itself_or_owner
)
REPORTING = Rule(
    "the phase's assignee, the workflow's starter, an operator or admin",
    WRITERS,
    STAFF,
    _phase_assignee_or_starter,
    errors.NotAssigned,
)
STARTS_PHASE = Rule(
    "the workflow's starter, an operator or admin (who name the assignee), or the agent "
    "the dispatcher offered the phase to",
    WRITERS,
    STAFF,
    _starts_phase,
)
#: Only the task's assignee may accept it; the session or workflow checks who that is.
ACCEPTS = Rule("the task's assignee (the session or workflow checks it)", WRITERS)

#: (aggregate, command) -> who may issue it. Add a row with every new command.
RULES: dict[tuple[str, str], Rule] = {
    ("session", "open"): ANY_WRITER,
    ("session", "submit_result"): Rule("a participant (the session checks it)", WRITERS),
    ("session", "cancel"): Rule("its opener or coordinator", WRITERS, NOBODY, _session_opener),
    ("session", "timeout"): ENGINE_ONLY,
    ("session", "participant_lost"): ENGINE_ONLY,
    ("agent", "register"): Rule(
        "the agent itself, or an operator or admin for it", WRITERS, STAFF, _registers_itself
    ),
    ("agent", "update_capabilities"): FOR_AGENT,
    ("agent", "retire"): FOR_AGENT,
    ("agent", "verify_completion"): FOR_AGENT,
    ("agent", "verify_completions"): FOR_AGENT,
    ("agent", "mark_online"): ENGINE_ONLY,
    ("agent", "mark_offline"): ENGINE_ONLY,
    ("workflow", "start"): ANY_WRITER,
    ("workflow", "start_phase"): STARTS_PHASE,
    ("workflow", "report_progress"): REPORTING,
    ("workflow", "record_partial_result"): REPORTING,
    ("workflow", "complete_phase"): REPORTING,
    ("workflow", "fail_phase"): REPORTING,
    ("workflow", "cancel"): Rule("the workflow's starter", WRITERS, NOBODY, _workflow_starter),
    ("workflow_type", "define"): Rule("operators and admins", STAFF, STAFF),
    ("workflow", "assign_phase"): ENGINE_ONLY,
    ("workflow", "await_agent"): ENGINE_ONLY,
    ("workflow", "expire_lease"): ENGINE_ONLY,
    ("agent", "lease_lost"): ENGINE_ONLY,
    ("task", "accept"): ACCEPTS,
    ("session", "accept_task"): ACCEPTS,
    ("workflow", "accept_task"): ACCEPTS,
    **{
        ("mcp_server", name): Rule("operators and admins", STAFF, STAFF)
        for name in ("register", "configure", "remove", "record_tools")
    },
    **{
        ("mcp_server", name): Rule(
            "the gateway only (it records the tool calls it ran and the health it checked)",
            WRITERS,
            NOBODY,
            lambda state, payload, actor: actor == RECORDER,
        )
        for name in ("record_call", "record_health")
    },
}
