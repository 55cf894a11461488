"""The inbox contract: task messages, the accept command, phase dispatch options."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from chorus.contracts.agents import RegisterAgent
from chorus.contracts.sessions import Criteria
from chorus.contracts.subjects import task_subject
from chorus.contracts.tasks import (
    TASK_DECODER,
    TASK_ENCODER,
    AcceptTask,
    CancelTask,
    PhaseTask,
    SessionTask,
    phase_task_id,
    split_task_id,
)
from chorus.contracts.workflow_types import Backoff, Phase

WHEN = datetime(2030, 1, 1, tzinfo=UTC)
WID = "0b0e4ad6-8c1f-4c35-9d0a-4a3c2f8d2a11"


def test_an_agents_inbox_is_one_subject_token_under_chorus_task() -> None:
    assert task_subject("agent-7") == "chorus.task.agent-7"
    with pytest.raises(ValueError, match="not a valid subject token"):
        task_subject("a.b")


def test_a_phase_task_is_json_with_kind_phase_and_every_named_field() -> None:
    task = PhaseTask(
        task_id=phase_task_id(WID, "design"),
        attempt=2,
        lease_expires_at=WHEN,
        priority="high",
        workflow_id=WID,
        workflow_type="full",
        phase="design",
        description="full/design: build it",
        requirements="build it",
        inputs={"requirements": {"text": "ok"}},
    )
    body = msgspec.json.decode(TASK_ENCODER.encode(task))
    assert body["kind"] == "phase"
    for name in ("task_id", "attempt", "lease_expires_at", "priority", "workflow_id", "phase",
                 "description", "requirements", "configuration", "inputs", "criteria",
                 "deadline", "session_id"):  # fmt: skip
        assert name in body
    assert body["task_id"] == f"{WID}/design"
    assert TASK_DECODER.decode(TASK_ENCODER.encode(task)) == task


def test_a_session_task_carries_the_description_criteria_and_deadline() -> None:
    task = SessionTask(
        task_id=WID,
        lease_expires_at=WHEN,
        session_id=WID,
        description="review",
        criteria=Criteria(min_results=2),
        deadline=WHEN,
    )
    body = msgspec.json.decode(TASK_ENCODER.encode(task))
    assert (body["kind"], body["attempt"], body["criteria"]["min_results"]) == ("session", 1, 2)
    assert TASK_DECODER.decode(TASK_ENCODER.encode(task)) == task


def test_a_cancel_names_the_task_and_the_reason_only() -> None:
    raw = b'{"kind": "cancel", "task_id": "x/y", "reason": "workflow cancelled"}'
    assert TASK_DECODER.decode(raw) == CancelTask(task_id="x/y", reason="workflow cancelled")


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        TASK_DECODER.decode(b'{"kind": "other", "task_id": "x"}')


def test_task_ids_split_into_the_workflow_and_phase_or_the_session() -> None:
    assert split_task_id(f"{WID}/test") == (WID, "test")
    assert split_task_id(WID) == (WID, None)


def test_accept_names_only_the_task() -> None:
    assert msgspec.convert({"task_id": "a/b"}, AcceptTask).task_id == "a/b"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"task_id": "a/b", "agent": "x"}, AcceptTask)


def test_a_phase_runs_on_any_agent_with_one_slot_lease_and_three_attempts_by_default() -> None:
    phase = msgspec.convert({"name": "build"}, Phase)
    assert (phase.capabilities, phase.lease_seconds, phase.max_attempts) == ([], 600, 3)
    assert phase.heartbeat_seconds is None
    assert RegisterAgent(name="a").max_concurrency == 1


def test_the_backoff_grows_by_its_multiplier_up_to_its_cap() -> None:
    backoff = Backoff(initial_seconds=1, multiplier=3, max_seconds=5)
    assert [backoff.delay(n) for n in (1, 2, 3)] == [1, 3, 5]
