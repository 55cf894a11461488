"""Past the codec, events are read as their classes, never as dicts.

``EventRecord.data`` is the event's body as it travels (JSON feeds, REST history); code
inside Chorus reads ``record.event``, the same body as its msgspec class, and matches on
the class. These tests keep it that way: reading a field of ``data`` by name anywhere but
``events/codec.py`` fails here, and the typed event is decoded once per record.
"""

from __future__ import annotations

import ast
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from chorus.contracts.feed import EventRecord
from chorus.events.agent import AgentRetired, AgentWentOffline, CompletionVerified
from chorus.events.agent_status import shown_status, status_after, status_set_by
from chorus.events.codec import EventMeta, UnknownEvent, decode_record, encode_event
from chorus.events.session import SessionCancelled
from chorus.projections.sessions import SessionsProjection

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contracts", "events", "audit", "store", "engine", "projections", "gateway", "runtime")
#: The one module that turns stored bodies into records and records into events.
CODEC = ROOT / "events" / "codec.py"
T0 = datetime(2030, 1, 1, tzinfo=UTC)
VERDICT = CompletionVerified(
    task_id="t",
    task_kind="session",
    completion_time=T0,
    output_hash="h",
    assigned_at=T0,
    response_time=1.0,
    quality_score=1.0,
    score_parts={},
)


def _data_reads(tree: ast.AST) -> list[int]:
    """Lines reading event data as a dict: ``x.data["key"]``, ``x.data.get(...)``, or
    ``data = record.data`` (the alias the old code read fields from)."""
    found = []
    for node in ast.walk(tree):
        match node:
            case ast.Subscript(value=ast.Attribute(attr="data"), slice=ast.Constant(value=str())):
                found.append(node.lineno)
            case ast.Call(func=ast.Attribute(attr="get", value=ast.Attribute(attr="data"))):
                found.append(node.lineno)
            case ast.Assign(value=value):
                values = value.elts if isinstance(value, ast.Tuple) else [value]
                for item in values:
                    if (
                        isinstance(item, ast.Attribute)
                        and item.attr == "data"
                        and isinstance(item.value, ast.Name)
                        and "record" in item.value.id
                    ):
                        found.append(node.lineno)
    return sorted(found)


def test_no_code_outside_the_codec_reads_event_data_as_a_dict() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == CODEC:
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            offenders += [f"{path.relative_to(ROOT)}:{line}" for line in _data_reads(tree)]
    assert offenders == [], "read record.event (the typed event) instead: " + ", ".join(offenders)


def test_the_guard_sees_the_dict_reads_it_forbids() -> None:
    source = (
        "a = record.data['agent_id']\n"
        "b = record.data.get('phase')\n"
        "data = record.data\n"
        "wid, data = record.aggregate_id, record.data\n"
        "ok = msg.data[:200]\n"  # bytes of a NATS message, not event data
    )
    assert sorted(_data_reads(ast.parse(source))) == [1, 2, 3, 4]


def _stored(event: msgspec.Struct) -> EventRecord:
    stored, _ = encode_event(
        aggregate="session", aggregate_id=uuid.uuid4(), version=1, event=event,
        meta=EventMeta(actor="boss", command_id="c1"), occurred_at=T0, prev_hash="0" * 64,
    )  # fmt: skip
    return decode_record(stored, position=3)


def test_a_decoded_record_carries_its_event_as_its_class_decoded_once() -> None:
    record = _stored(SessionCancelled(reason="why", cancelled_by="boss"))
    assert record.event == SessionCancelled(reason="why", cancelled_by="boss")
    assert record.event is record.event  # kept with the record, not decoded per reader


def test_the_typed_event_is_no_part_of_the_wire_form() -> None:
    record = _stored(SessionCancelled(reason="why", cancelled_by="boss"))
    before = msgspec.json.encode(record)
    _ = record.event
    assert msgspec.json.encode(record) == before
    assert b'"event"' not in before
    again = msgspec.json.decode(before, type=EventRecord)
    assert again == record
    assert again.event == record.event  # a record off the wire reads the same event


@pytest.mark.parametrize(
    ("event", "before", "after"),
    [
        (AgentWentOffline(last_seen=T0, missed_heartbeats=3), "online", "offline"),
        (AgentRetired(reason="old", retired_by="ops"), "offline", "retired"),
        (VERDICT, "offline", "offline"),
    ],
)
def test_the_status_rule_folds_agent_events(event: msgspec.Struct, before: str, after: str) -> None:
    assert status_after(event, before) == after
    assert (status_set_by(event) is None) == (before == after)


def test_an_online_agent_with_open_tasks_shows_busy() -> None:
    assert shown_status("online", 2) == "busy"
    assert shown_status("online", 0) == "online"
    assert shown_status("offline", 2) == "offline"


def test_an_event_type_this_code_does_not_know_reads_as_unknown_and_is_passed_over() -> None:
    record = msgspec.structs.replace(
        _stored(SessionCancelled(reason="why", cancelled_by="boss")), type="SessionRenamed"
    )
    assert record.event == UnknownEvent(
        aggregate="session", type="SessionRenamed", data={"reason": "why", "cancelled_by": "boss"}
    )
    conn = sqlite3.connect(":memory:", isolation_level=None)
    projection = SessionsProjection()
    for statement in projection.ddl:
        conn.execute(statement)
    projection.apply(conn, record)  # nothing to do, nothing raised
    assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0
