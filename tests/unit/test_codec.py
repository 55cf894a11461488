"""The stored form of events: encoding, decoding, upcasting and the per-aggregate hash chain."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from chorus.contracts.sessions import Criteria, Task
from chorus.events import codec
from chorus.events.codec import (
    GENESIS_HASH,
    EventMeta,
    StoredBody,
    decode_record,
    encode_event,
    is_domain_topic,
    recompute_hash,
    typed_event,
)
from chorus.events.commands import command_record_id
from chorus.events.session import ResultSubmitted, SessionCancelled, SessionOpened
from eventsourcing.persistence import Notification, StoredEvent

AT = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
AID = uuid.UUID("7d3c5b8e-0c65-4b1c-a6a4-5a8f4e1d2c3b")
META = EventMeta(actor="alice", command_id="cmd-1", correlation_id="corr-1", causation_id="cause-1")

OPENED = SessionOpened(
    session_id=str(AID),
    coordinator_id="boss",
    opened_by="alice",
    participants=["a", "b"],
    task=Task(description="sum things", criteria=Criteria(min_results=2, require="majority")),
    timeout_seconds=60,
    deadline=AT + timedelta(seconds=60),
)


def encode(
    event: msgspec.Struct, version: int = 1, prev_hash: str = GENESIS_HASH
) -> tuple[StoredEvent, str]:
    return encode_event(
        aggregate="session",
        aggregate_id=AID,
        version=version,
        event=event,
        meta=META,
        occurred_at=AT,
        prev_hash=prev_hash,
    )


def recompute(stored: StoredEvent) -> str:
    """The hash a verifier computes from a stored row alone."""
    return recompute_hash(stored)


def with_body(stored: StoredEvent, **changes: Any) -> StoredEvent:
    """The same row with some fields of its stored body edited (a tampered database)."""
    body = msgspec.json.decode(stored.state, type=StoredBody)
    edited = msgspec.structs.replace(body, **changes)
    return StoredEvent(
        originator_id=stored.originator_id,
        originator_version=stored.originator_version,
        topic=stored.topic,
        state=msgspec.json.encode(edited),
    )


def test_an_encoded_event_decodes_to_the_same_record() -> None:
    stored, digest = encode(OPENED, version=1)
    assert stored.originator_id == AID
    assert stored.originator_version == 1
    assert stored.topic == "session.SessionOpened"

    record = decode_record(stored, position=42)
    assert record.position == 42
    assert record.aggregate == "session"
    assert record.aggregate_id == str(AID)
    assert record.version == 1
    assert record.type == "SessionOpened"
    assert record.schema_version == 1
    assert record.occurred_at == AT
    assert record.actor == "alice"
    assert record.command_id == "cmd-1"
    assert record.correlation_id == "corr-1"
    assert record.causation_id == "cause-1"
    assert record.prev_hash == GENESIS_HASH
    assert record.hash == digest
    assert record.data == msgspec.to_builtins(OPENED)
    assert typed_event(record) == OPENED


def test_a_notification_is_decoded_with_its_log_position() -> None:
    stored, _ = encode(OPENED)
    note = Notification(
        id=7,
        originator_id=stored.originator_id,
        originator_version=stored.originator_version,
        topic=stored.topic,
        state=stored.state,
    )
    assert decode_record(note).position == 7
    assert decode_record(stored).position == 0


def test_the_stored_hash_is_what_a_verifier_recomputes() -> None:
    stored, digest = encode(OPENED)
    assert len(digest) == 64
    assert recompute(stored) == digest


def test_tampering_with_the_stored_data_changes_the_recomputed_hash() -> None:
    stored, digest = encode(
        ResultSubmitted(agent_id="a", result={"answer": 41}, success=True), version=2
    )
    forged = msgspec.json.encode(
        {"agent_id": "a", "output_hash": None, "result": {"answer": 42}, "success": True}
    )
    tampered = with_body(stored, data=msgspec.Raw(forged))
    assert decode_record(tampered).data["result"] == {"answer": 42}
    assert decode_record(tampered).hash == digest  # the stored hash still claims the old one
    assert recompute(tampered) != digest


@pytest.mark.parametrize(
    "changes",
    [
        {"actor": "mallory"},
        {"command_id": "cmd-2"},
        {"correlation_id": None},
        {"occurred_at": AT + timedelta(seconds=1)},
        {"prev_hash": "f" * 64},
        {"schema_version": 2},
    ],
)
def test_tampering_with_the_stored_metadata_changes_the_recomputed_hash(
    changes: dict[str, Any],
) -> None:
    stored, digest = encode(OPENED)
    assert recompute(with_body(stored, **changes)) != digest


def test_the_hash_covers_the_aggregate_id_and_version_of_the_row() -> None:
    stored, digest = encode(OPENED, version=1)
    moved = StoredEvent(
        originator_id=uuid.uuid4(), originator_version=1, topic=stored.topic, state=stored.state
    )
    renumbered = StoredEvent(
        originator_id=AID, originator_version=2, topic=stored.topic, state=stored.state
    )
    assert recompute(moved) != digest
    assert recompute(renumbered) != digest


def test_each_hash_chains_to_the_previous_one() -> None:
    _, first_hash = encode(OPENED, version=1)
    second, second_hash = encode(
        SessionCancelled(reason="no", cancelled_by="boss"), version=2, prev_hash=first_hash
    )
    assert decode_record(second).prev_hash == first_hash
    assert recompute(second) == second_hash
    # The same event after a different predecessor hashes differently.
    _, other = encode(
        SessionCancelled(reason="no", cancelled_by="boss"), version=2, prev_hash=GENESIS_HASH
    )
    assert other != second_hash


def test_the_stored_data_is_canonical_with_sorted_keys() -> None:
    stored, _ = encode(ResultSubmitted(agent_id="a", result={"z": 1, "a": 2}, success=True))
    body = msgspec.json.decode(stored.state, type=StoredBody)
    assert bytes(body.data) == (
        b'{"agent_id":"a","output_hash":null,"result":{"a":2,"z":1},"result_digest":null,'
        b'"submitted_at":null,"success":true}'
    )


def test_old_schema_versions_are_upcast_when_read(monkeypatch: pytest.MonkeyPatch) -> None:
    stored, _ = encode(SessionCancelled(reason="why", cancelled_by="boss"), version=2)

    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "reason": data["reason"].upper()}

    monkeypatch.setitem(codec.SCHEMA_VERSIONS, ("session", "SessionCancelled"), 2)
    monkeypatch.setitem(codec.UPCASTERS, ("session", "SessionCancelled", 1), v1_to_v2)
    record = decode_record(stored)
    assert record.schema_version == 2
    assert record.data == {"reason": "WHY", "cancelled_by": "boss"}
    assert typed_event(record) == SessionCancelled(reason="WHY", cancelled_by="boss")


def test_events_of_the_current_schema_are_not_upcast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(codec.SCHEMA_VERSIONS, ("session", "SessionCancelled"), 2)
    stored, _ = encode(SessionCancelled(reason="why", cancelled_by="boss"))
    assert msgspec.json.decode(stored.state, type=StoredBody).schema_version == 2
    # No upcaster is registered: reading must not need one.
    assert decode_record(stored).data == {"reason": "why", "cancelled_by": "boss"}


def test_dedup_records_are_bookkeeping_not_domain_events() -> None:
    assert is_domain_topic("session.SessionOpened")
    assert not is_domain_topic("command.CommandAccepted")


def test_command_record_ids_are_stable_and_scoped_per_actor() -> None:
    assert command_record_id("alice", "c1") == command_record_id("alice", "c1")
    assert command_record_id("alice", "c1") != command_record_id("bob", "c1")
    assert command_record_id("alice", "c1") != command_record_id("alice", "c2")
    # The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert command_record_id("ab", "c") != command_record_id("a", "bc")
