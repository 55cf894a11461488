"""Stable error codes carried by bus replies and HTTP problem details.

Codes are part of the contract: clients branch on them, so they never change meaning.
The gateway maps each to an HTTP status with ``HTTP_STATUS``.
"""

from __future__ import annotations

from typing import Any

from msgspec import Struct


class ErrorInfo(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Why a command was rejected."""

    code: str
    message: str
    details: dict[str, Any] | None = None


# Edge validation (the message itself is wrong)
MALFORMED_MESSAGE = "malformed_message"  # not JSON, or not an object
INVALID_COMMAND = "invalid_command"  # JSON, but fields missing / wrong type / out of range
UNKNOWN_COMMAND = "unknown_command"  # no handler for this subject
INVALID_SUBJECT = "invalid_subject"
COMMAND_ID_REUSED = "command_id_reused"  # same (actor, command_id), different command
COMMAND_TOO_LARGE = "command_too_large"  # over contracts.bounds.MAX_COMMAND_BYTES
NESTING_TOO_DEEP = "nesting_too_deep"  # JSON nested beyond contracts.bounds.MAX_JSON_DEPTH
NUMBER_OUT_OF_RANGE = "number_out_of_range"  # an integer beyond 64 bits

# Domain rules
SESSION_NOT_FOUND = "session_not_found"
SESSION_EXISTS = "session_exists"
NOT_A_PARTICIPANT = "not_a_participant"
ALREADY_SUBMITTED = "already_submitted"
SESSION_CLOSED = "session_closed"
NOT_AUTHORIZED = "not_authorized"
INVALID_CRITERIA = "invalid_criteria"
NOT_DUE = "not_due"
WORKFLOW_NOT_FOUND = "workflow_not_found"
WORKFLOW_EXISTS = "workflow_exists"
WORKFLOW_CLOSED = "workflow_closed"
UNKNOWN_WORKFLOW_TYPE = "unknown_workflow_type"
PHASE_NOT_CURRENT = "phase_not_current"
NOT_ASSIGNED = "not_assigned"
PROGRESS_NOT_MONOTONIC = "progress_not_monotonic"
AGENT_NOT_FOUND = "agent_not_found"
AGENT_NAME_TAKEN = "agent_name_taken"  # registered by another key holder
AGENT_RETIRED = "agent_retired"
NOT_ENOUGH_AGENTS = "not_enough_agents"  # routing found fewer eligible agents than asked
NO_CHANGE = "no_change"  # an engine-issued transition that already happened
LEASE_LOST = "lease_lost"  # the reporter's attempt lost its lease; the work moved on
MCP_SERVER_NOT_FOUND = "mcp_server_not_found"
MCP_SERVER_EXISTS = "mcp_server_exists"
INVALID_TOOL_SCHEMA = "invalid_tool_schema"  # a discovered catalogue that cannot be recorded
TOOL_NOT_FOUND = "tool_not_found"
INVALID_ARGUMENTS = "invalid_arguments"  # a tool call's arguments break the tool's schema
MCP_SERVER_UNAVAILABLE = "mcp_server_unavailable"  # could not connect, or it failed
TOOL_TIMEOUT = "tool_timeout"
RATE_LIMITED = "rate_limited"  # too many calls: retry after details.retry_after seconds
RESERVED_ID = "reserved_id"  # a client chose an id that is not a random (version 4) UUID
SESSION_QUOTA_EXCEEDED = "session_quota_exceeded"  # too many open sessions naming others

# Infrastructure
INTERNAL_ERROR = "internal_error"  # a bug: nothing was recorded
STORE_UNAVAILABLE = "store_unavailable"  # nothing was recorded: retry with the same command_id
ENGINE_UNAVAILABLE = "engine_unavailable"  # no engine answered in time
READ_MODEL_BEHIND = "read_model_behind"  # recorded, but not readable yet: retry the read

#: HTTP status for each code (the gateway's view; the bus carries only the code).
HTTP_STATUS: dict[str, int] = {
    MALFORMED_MESSAGE: 400,
    INVALID_COMMAND: 400,
    UNKNOWN_COMMAND: 400,
    INVALID_SUBJECT: 400,
    COMMAND_ID_REUSED: 422,
    COMMAND_TOO_LARGE: 413,
    NESTING_TOO_DEEP: 400,
    NUMBER_OUT_OF_RANGE: 400,
    INVALID_CRITERIA: 400,
    SESSION_NOT_FOUND: 404,
    SESSION_EXISTS: 409,
    NOT_A_PARTICIPANT: 403,
    NOT_AUTHORIZED: 403,
    ALREADY_SUBMITTED: 409,
    SESSION_CLOSED: 409,
    NOT_DUE: 409,
    WORKFLOW_NOT_FOUND: 404,
    WORKFLOW_EXISTS: 409,
    WORKFLOW_CLOSED: 409,
    UNKNOWN_WORKFLOW_TYPE: 400,
    PHASE_NOT_CURRENT: 409,
    NOT_ASSIGNED: 403,
    PROGRESS_NOT_MONOTONIC: 409,
    AGENT_NOT_FOUND: 404,
    AGENT_NAME_TAKEN: 409,
    AGENT_RETIRED: 409,
    NOT_ENOUGH_AGENTS: 409,
    NO_CHANGE: 409,
    LEASE_LOST: 409,
    MCP_SERVER_NOT_FOUND: 404,
    MCP_SERVER_EXISTS: 409,
    INVALID_TOOL_SCHEMA: 400,
    TOOL_NOT_FOUND: 404,
    INVALID_ARGUMENTS: 400,
    MCP_SERVER_UNAVAILABLE: 502,
    TOOL_TIMEOUT: 504,
    RATE_LIMITED: 429,
    RESERVED_ID: 400,
    SESSION_QUOTA_EXCEEDED: 429,
    INTERNAL_ERROR: 500,
    STORE_UNAVAILABLE: 503,
    ENGINE_UNAVAILABLE: 503,
    READ_MODEL_BEHIND: 503,
}
