"""Domain errors: each carries a stable code from ``chorus.contracts.errors``."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from chorus.contracts import errors as codes


class DomainError(Exception):
    """A command broke a rule; nothing was recorded."""

    code: str = "domain_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class SessionNotFound(DomainError):
    code = codes.SESSION_NOT_FOUND


class SessionExists(DomainError):
    code = codes.SESSION_EXISTS


class NotAParticipant(DomainError):
    code = codes.NOT_A_PARTICIPANT


class AlreadySubmitted(DomainError):
    code = codes.ALREADY_SUBMITTED


class SessionClosed(DomainError):
    code = codes.SESSION_CLOSED


class NotAuthorized(DomainError):
    code = codes.NOT_AUTHORIZED


class InvalidCriteria(DomainError):
    code = codes.INVALID_CRITERIA


class InvalidCommand(DomainError):
    code = codes.INVALID_COMMAND


class NotDue(DomainError):
    code = codes.NOT_DUE


class WorkflowNotFound(DomainError):
    code = codes.WORKFLOW_NOT_FOUND


class WorkflowExists(DomainError):
    code = codes.WORKFLOW_EXISTS


class WorkflowClosed(DomainError):
    code = codes.WORKFLOW_CLOSED


class UnknownWorkflowType(DomainError):
    code = codes.UNKNOWN_WORKFLOW_TYPE


class PhaseNotCurrent(DomainError):
    code = codes.PHASE_NOT_CURRENT


class NotAssigned(DomainError):
    code = codes.NOT_ASSIGNED


class ProgressNotMonotonic(DomainError):
    code = codes.PROGRESS_NOT_MONOTONIC


class AgentNotFound(DomainError):
    code = codes.AGENT_NOT_FOUND


class AgentNameTaken(DomainError):
    code = codes.AGENT_NAME_TAKEN


class AgentRetired(DomainError):
    code = codes.AGENT_RETIRED


class NotEnoughAgents(DomainError):
    code = codes.NOT_ENOUGH_AGENTS


class NoChange(DomainError):
    code = codes.NO_CHANGE


class LeaseLost(DomainError):
    """The reporter held an attempt whose lease expired: exactly one attempt counts."""

    code = codes.LEASE_LOST


class ReservedId(DomainError):
    code = codes.RESERVED_ID


class SessionQuotaExceeded(DomainError):
    code = codes.SESSION_QUOTA_EXCEEDED


def check_client_id(aggregate_id: UUID, actor: str, field: str) -> None:
    """Ids a client creates are random (version 4) UUIDs. Every id the engine derives (an
    agent's, a delegated phase's session, the type registry) is version 5, so a client
    can never create one first and squat it."""
    if actor != "system" and aggregate_id.version != 4:
        raise ReservedId(
            f"{aggregate_id} is not a random (version 4) UUID; other ids are the engine's",
            {"field": field},
        )
