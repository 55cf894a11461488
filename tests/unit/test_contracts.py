"""The wire contracts: subjects, envelopes, replies, error codes and the handler table."""

from __future__ import annotations

import inspect

import msgspec
import pytest
from chorus.contracts import errors as codes
from chorus.contracts.agents import AGENT_COMMANDS
from chorus.contracts.envelope import Envelope, Reply
from chorus.contracts.errors import HTTP_STATUS, ErrorInfo
from chorus.contracts.mcp import MCP_COMMANDS
from chorus.contracts.sessions import SESSION_COMMANDS, Criteria, OpenSession, Task
from chorus.contracts.subjects import (
    command_subject,
    command_wildcard,
    event_filter,
    event_message_id,
    event_subject,
    is_token,
    parse_command_subject,
)
from chorus.contracts.tasks import TASK_COMMANDS
from chorus.contracts.workflows import WORKFLOW_COMMANDS
from chorus.engine.domain import errors
from chorus.engine.handlers import DECODERS, HANDLERS


def test_a_command_subject_round_trips_through_the_parser() -> None:
    subject = command_subject("agent-7", "session", "submit_result")
    assert subject == "chorus.cmd.agent-7.session.submit_result"
    parsed = parse_command_subject(subject)
    assert parsed is not None
    assert (parsed.actor, parsed.aggregate, parsed.command) == (
        "agent-7",
        "session",
        "submit_result",
    )


@pytest.mark.parametrize("actor", ["", "a.b", "a b", "*", ">", "x" * 129])
def test_an_actor_that_is_not_a_subject_token_cannot_build_a_subject(actor: str) -> None:
    assert not is_token(actor)
    with pytest.raises(ValueError, match="not a valid subject token"):
        command_subject(actor, "session", "open")


def test_ids_with_colons_and_at_signs_are_tokens() -> None:
    assert is_token("team:agent@host_1-2")
    assert is_token("x" * 128)


def test_event_subjects_and_message_ids_name_the_aggregate_instance() -> None:
    assert (
        event_subject("session", "abc", "SessionOpened") == "chorus.evt.session.abc.SessionOpened"
    )
    assert event_filter("session", "abc") == "chorus.evt.session.abc.*"
    assert command_wildcard("session") == "chorus.cmd.*.session.*"
    assert event_message_id("abc", 3) == "abc:3"


def test_every_domain_error_code_has_an_http_status() -> None:
    classes = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.DomainError) and cls is not errors.DomainError
    ]
    assert len(classes) >= 9
    for cls in classes:
        assert cls.code in HTTP_STATUS, cls.__name__
    assert len({cls.code for cls in classes}) == len(classes)  # one code per error


def test_edge_and_infrastructure_codes_have_an_http_status() -> None:
    for code in (
        codes.MALFORMED_MESSAGE,
        codes.INVALID_COMMAND,
        codes.UNKNOWN_COMMAND,
        codes.INVALID_SUBJECT,
        codes.STORE_UNAVAILABLE,
        codes.ENGINE_UNAVAILABLE,
    ):
        assert HTTP_STATUS[code] in (400, 503)


def test_every_session_command_has_a_handler_and_a_decoder() -> None:
    for name, payload in SESSION_COMMANDS.items():
        handler = HANDLERS[("session", name)]
        assert handler.payload is payload
        assert ("session", name) in DECODERS
    assert set(HANDLERS) == {("session", name) for name in SESSION_COMMANDS} | {
        ("workflow", name) for name in WORKFLOW_COMMANDS
    } | {("workflow_type", "define")} | {("agent", name) for name in AGENT_COMMANDS} | {
        ("task", name) for name in TASK_COMMANDS
    } | {("session", "accept_task"), ("workflow", "accept_task")} | {
        ("mcp_server", name) for name in MCP_COMMANDS
    }


def test_an_envelope_refuses_unknown_fields() -> None:
    data = b'{"command_id": "c", "payload": {"session_id": "s"}, "extra": 1}'
    with pytest.raises(msgspec.ValidationError, match="unknown field `extra`"):
        msgspec.json.decode(data, type=Envelope[dict[str, str]])


def test_criteria_default_to_one_result_all_required_and_no_agreement() -> None:
    assert Criteria() == Criteria(min_results=1, require="all", agree_on=None)
    payload = msgspec.json.decode(
        b'{"session_id": "0b7e0c3a-6f0e-4c55-8f1e-2d6a7c9a1b01", "participants": ["a"],'
        b' "task": {"description": "d"}}',
        type=OpenSession,
    )
    assert payload.timeout_seconds == 600
    assert payload.coordinator_id is None
    assert payload.task == Task(description="d")


def test_a_reply_serialises_its_error_without_empty_details() -> None:
    reply = Reply(
        command_id="c",
        status="rejected",
        aggregate_id="x",
        error=ErrorInfo(code=codes.NOT_A_PARTICIPANT, message="no"),
    )
    decoded = msgspec.json.decode(msgspec.json.encode(reply))
    assert decoded["error"] == {"code": "not_a_participant", "message": "no"}
    assert decoded["position"] == 0
    assert msgspec.json.decode(msgspec.json.encode(reply), type=Reply) == reply
