"""Edge validation: ``chorus.engine.adapters.worker.parse_message`` turns raw NATS messages into Commands."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from chorus.contracts import errors as codes
from chorus.contracts.sessions import OpenSession, SubmitResult
from chorus.engine.adapters.worker import InvalidMessage, parse_message
from chorus.engine.handlers import HANDLERS

SID = "0b7e0c3a-6f0e-4c55-8f1e-2d6a7c9a1b01"
OPEN_SUBJECT = "chorus.cmd.alice.session.open"
OPEN_BODY: dict[str, Any] = {
    "command_id": "c-1",
    "payload": {"session_id": SID, "participants": ["a", "b"], "task": {"description": "do it"}},
}


def body(**payload_changes: Any) -> bytes:
    data = copy.deepcopy(OPEN_BODY)
    data["payload"].update(payload_changes)
    return json.dumps(data).encode()


def rejection(subject: str, data: bytes) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(subject, data)
    return caught.value


def test_a_valid_message_becomes_a_typed_command_with_the_actor_from_the_subject() -> None:
    command = parse_message(OPEN_SUBJECT, body(timeout_seconds=30))
    assert command.actor == "alice"
    assert command.command_id == "c-1"
    assert command.handler is HANDLERS[("session", "open")]
    payload = command.envelope.payload
    assert isinstance(payload, OpenSession)
    assert payload.participants == ["a", "b"]
    assert payload.timeout_seconds == 30
    assert payload.task.criteria.require == "all"


def test_a_submit_message_is_parsed_with_its_defaults() -> None:
    data = json.dumps(
        {"command_id": "s", "payload": {"session_id": SID, "result": {"x": 1}}}
    ).encode()
    command = parse_message("chorus.cmd.a.session.submit_result", data)
    assert command.envelope.payload == SubmitResult(session_id=SID, result={"x": 1})


@pytest.mark.parametrize("data", [b"{nope", b"", b'{"command_id": "c"', b"\xff\xfe"])
def test_malformed_json_is_rejected_as_a_malformed_message(data: bytes) -> None:
    error = rejection(OPEN_SUBJECT, data)
    assert error.code == codes.MALFORMED_MESSAGE
    assert "not valid JSON" in error.message


@pytest.mark.parametrize("data", [b"[]", b"42", b'"text"', b"null"])
def test_json_that_is_not_an_object_is_rejected_as_a_malformed_message(data: bytes) -> None:
    assert rejection(OPEN_SUBJECT, data).code == codes.MALFORMED_MESSAGE


def test_an_unknown_payload_field_is_an_invalid_command_naming_the_field() -> None:
    error = rejection(OPEN_SUBJECT, body(colour="blue"))
    assert error.code == codes.INVALID_COMMAND
    assert "unknown field `colour`" in error.message
    assert error.details == {"field": "payload.colour"}


def test_an_unknown_nested_field_is_reported_with_its_path() -> None:
    error = rejection(OPEN_SUBJECT, body(task={"description": "d", "criteria": {"quorum": 2}}))
    assert error.code == codes.INVALID_COMMAND
    assert "unknown field `quorum`" in error.message
    assert error.details == {"field": "payload.task.criteria.quorum"}


def test_an_unknown_envelope_field_is_an_invalid_command() -> None:
    data = json.dumps({**OPEN_BODY, "extra": True}).encode()
    error = rejection(OPEN_SUBJECT, data)
    assert error.code == codes.INVALID_COMMAND
    assert "unknown field `extra`" in error.message


@pytest.mark.parametrize("timeout", [0, -1, 86_401])
def test_a_timeout_out_of_range_is_an_invalid_command(timeout: int) -> None:
    error = rejection(OPEN_SUBJECT, body(timeout_seconds=timeout))
    assert error.code == codes.INVALID_COMMAND
    assert error.details == {"field": "payload.timeout_seconds"}


@pytest.mark.parametrize("timeout", [1, 86_400])
def test_timeouts_at_the_bounds_are_accepted(timeout: int) -> None:
    assert (
        parse_message(OPEN_SUBJECT, body(timeout_seconds=timeout)).envelope.payload.timeout_seconds
        == timeout
    )


def test_participant_lists_that_are_too_long_are_invalid() -> None:
    error = rejection(OPEN_SUBJECT, body(participants=[f"p{i}" for i in range(1001)]))
    assert error.code == codes.INVALID_COMMAND
    assert error.details == {"field": "payload.participants"}


def test_a_session_needs_participants_or_a_size_to_route_by() -> None:
    error = rejection(OPEN_SUBJECT, body(participants=[]))
    assert error.code == codes.INVALID_COMMAND
    assert "name participants, or give size" in error.message
    both = rejection(OPEN_SUBJECT, body(participants=["a"], size=1))
    assert "not both" in both.message
    routed = parse_message(OPEN_SUBJECT, body(participants=[], size=2, capabilities=["py"]))
    assert routed.envelope.payload.size == 2


def test_a_thousand_participants_are_accepted() -> None:
    command = parse_message(OPEN_SUBJECT, body(participants=[f"p{i}" for i in range(1000)]))
    assert len(command.envelope.payload.participants) == 1000


def test_a_participant_id_that_is_not_a_token_is_invalid() -> None:
    error = rejection(OPEN_SUBJECT, body(participants=["a.b"]))
    assert error.code == codes.INVALID_COMMAND
    assert error.details == {"field": "payload.participants[0]"}


@pytest.mark.parametrize("session_id", ["nope", "", SID + "0", SID.replace("-", "")])
def test_a_session_id_that_is_not_a_uuid_is_an_invalid_command(session_id: str) -> None:
    error = rejection(OPEN_SUBJECT, body(session_id=session_id))
    assert error.code == codes.INVALID_COMMAND
    assert error.details == {"field": "payload.session_id"}


def test_a_missing_required_field_is_an_invalid_command() -> None:
    data = json.dumps({"command_id": "c", "payload": {"session_id": SID}}).encode()
    error = rejection(OPEN_SUBJECT, data)
    assert error.code == codes.INVALID_COMMAND
    assert "missing required field `task`" in error.message


def test_an_empty_command_id_is_an_invalid_command() -> None:
    data = json.dumps({**OPEN_BODY, "command_id": ""}).encode()
    error = rejection(OPEN_SUBJECT, data)
    assert error.code == codes.INVALID_COMMAND
    assert error.details == {"field": "command_id"}


def test_an_unknown_command_is_rejected_and_the_known_ones_are_listed() -> None:
    error = rejection("chorus.cmd.alice.session.explode", body())
    assert error.code == codes.UNKNOWN_COMMAND
    assert error.details is not None
    assert {"session.cancel", "session.open", "session.submit_result"} <= set(
        error.details["known"]
    )
    assert "session.timeout" not in error.details["known"]


def test_an_unknown_aggregate_is_an_unknown_command() -> None:
    assert rejection("chorus.cmd.alice.invoice.open", body()).code == codes.UNKNOWN_COMMAND


def test_the_timeout_command_is_not_accepted_from_the_bus() -> None:
    data = json.dumps({"command_id": "t", "payload": {"session_id": SID}}).encode()
    assert rejection("chorus.cmd.alice.session.timeout", data).code == codes.UNKNOWN_COMMAND


def test_nobody_on_the_bus_can_act_as_the_system() -> None:
    """Timers and process managers act as "system" from inside the engine only."""
    data = json.dumps({"command_id": "t", "payload": {"session_id": SID}}).encode()
    for command in ("timeout", "cancel", "submit_result"):
        assert rejection(f"chorus.cmd.system.session.{command}", data).code == codes.NOT_AUTHORIZED


def test_the_subject_is_checked_before_the_body() -> None:
    assert rejection("chorus.cmd.alice.session.explode", b"{nope").code == codes.UNKNOWN_COMMAND
    assert rejection("chorus.cmd.alice.session", b"{nope").code == codes.INVALID_SUBJECT


@pytest.mark.parametrize(
    "subject",
    [
        "chorus.cmd.alice.session",
        "chorus.cmd.alice.session.open.extra",
        "chorus.evt.alice.session.open",
        "other.cmd.alice.session.open",
        "chorus.cmd..session.open",
        "chorus.cmd.a b.session.open",
        "chorus.cmd.*.session.open",
        "",
    ],
)
def test_a_subject_that_is_not_a_command_subject_is_rejected(subject: str) -> None:
    error = rejection(subject, body())
    assert error.code == codes.INVALID_SUBJECT
    assert subject in error.message
