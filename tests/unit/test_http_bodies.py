"""HTTP request bodies are the bus contracts' own fields, not copies that can drift.

Each body a command route takes is the contract's request struct (or extends it), and the
bus command adds only the aggregate's id: a field added to, or tightened in, a contract
reaches the HTTP edge and its OpenAPI document without anyone re-declaring it.
"""

from __future__ import annotations

import msgspec
import pytest
from chorus.contracts.agents import CapabilitiesChange, RetireAgent, Retirement, UpdateCapabilities
from chorus.contracts.sessions import (
    Cancellation,
    CancelSession,
    OpenSession,
    ResultRequest,
    SessionRequest,
    SubmitResult,
)
from chorus.contracts.workflows import CancelWorkflow, StartWorkflow, WorkflowRequest
from chorus.gateway.sessions import OpenSessionBody


def fields(struct: type[msgspec.Struct]) -> dict[str, object]:
    return {f.name: f.type for f in msgspec.inspect.type_info(struct).fields}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("request_struct", "command", "added"),
    [
        (SessionRequest, OpenSession, {"session_id"}),
        (ResultRequest, SubmitResult, {"session_id"}),
        (Cancellation, CancelSession, {"session_id"}),
        (WorkflowRequest, StartWorkflow, {"workflow_id"}),
        (Cancellation, CancelWorkflow, {"workflow_id"}),
        (CapabilitiesChange, UpdateCapabilities, {"agent_id"}),
        (Retirement, RetireAgent, {"agent_id"}),
    ],
)
def test_a_bus_command_is_its_request_plus_the_aggregate_id(
    request_struct: type[msgspec.Struct], command: type[msgspec.Struct], added: set[str]
) -> None:
    assert issubclass(command, request_struct)
    request_fields, command_fields = fields(request_struct), fields(command)
    assert set(command_fields) - set(request_fields) == added
    for name, declared in request_fields.items():
        assert command_fields[name] == declared, name


def test_the_open_session_body_only_makes_the_id_optional() -> None:
    assert issubclass(OpenSessionBody, SessionRequest)
    body, command = fields(OpenSessionBody), fields(OpenSession)
    assert set(body) == set(command)
    assert {n for n in body if body[n] != command[n]} == {"session_id"}


def test_a_body_keeps_the_contracts_rules() -> None:
    with pytest.raises(msgspec.ValidationError, match="not both"):
        msgspec.convert({"task": {"description": "d"}, "participants": ["a"], "size": 2},
                        OpenSessionBody)  # fmt: skip
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value"):
        msgspec.convert({"requirements": "r", "workflow_type": "t", "priority": "asap"},
                        WorkflowRequest)  # fmt: skip
