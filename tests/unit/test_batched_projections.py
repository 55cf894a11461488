"""Read models applied in batches (rows changed in memory and written once per batch,
``projections.pending``) end with exactly the rows that applying one event at a time, each
with its own statements, gives: on generated event sequences covering every kind of event
the read models fold, for batch sizes from 1 to the whole sequence, on each backend."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import chorus.events.codec  # noqa: F401 (installs the typed event decoder)
import pytest
from chorus.contracts.agents import agent_uuid
from chorus.contracts.feed import EventRecord
from chorus.projections.agents import AgentsProjection
from chorus.projections.readstore import ReadStore
from chorus.projections.runner import apply_batch
from chorus.projections.sessions import SessionsProjection
from chorus.projections.tasks import AgentTasksProjection
from chorus.projections.workflows import WorkflowsProjection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ReadStores

MODELS = (SessionsProjection, WorkflowsProjection, AgentsProjection, AgentTasksProjection)
AGENTS = ("a1", "a2", "a3", "system")
PHASES = ("build", "test")
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
Rows = dict[str, list[tuple[Any, ...]]]


class History:
    """A random but plausible history: agents, sessions and workflows, each event drawn
    from what the read models fold (and a few they must pass over)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.records: list[EventRecord] = []
        self.versions: dict[str, int] = {}
        self.at = T0
        self.sessions: list[str] = []
        self.participants: dict[str, list[str]] = {}
        self.registered: set[str] = set()
        self.ids = 0
        self.workflows: list[str] = []

    def add(self, aggregate: str, aggregate_id: str, type_: str, data: dict[str, Any],
            actor: str = "someone") -> None:  # fmt: skip
        self.at += timedelta(seconds=self.rng.choice((0, 0, 1, 30, 90)))
        version = self.versions[aggregate_id] = self.versions.get(aggregate_id, 0) + 1
        self.records.append(EventRecord(
            position=len(self.records) + 1, aggregate=aggregate, aggregate_id=aggregate_id,
            version=version, type=type_, schema_version=1, occurred_at=self.at, actor=actor,
            command_id=self.new_id(), correlation_id=None, causation_id=None, data=data,
            prev_hash="", hash="",
        ))  # fmt: skip

    def new_id(self) -> str:
        self.ids += 1
        return str(uuid.UUID(int=self.ids, version=4))

    def agent(self) -> str:
        return self.rng.choice(AGENTS[:3])

    def some_agents(self) -> list[str]:
        return self.rng.sample(AGENTS[:3], self.rng.randint(1, 3))

    def when(self) -> str:
        return self.at.isoformat()

    # Agents ---------------------------------------------------------------------------

    def agent_event(self) -> None:
        name = self.agent()
        aid = str(agent_uuid(name))
        caps = self.rng.sample(["python", "sql", "go"], self.rng.randint(0, 3))
        kind = self.rng.randrange(7)
        if kind == 0 and name not in self.registered:  # a name is registered once
            self.registered.add(name)
            self.add("agent", aid, "AgentRegistered", {
                "agent_id": name, "type": "worker", "capabilities": caps, "metadata": {},
                "owner": "o", "registered_at": self.when(),
            }, actor=name)  # fmt: skip
        elif kind == 1:
            self.add("agent", aid, "AgentCapabilitiesUpdated",
                     {"capabilities": caps, "updated_by": "o"})  # fmt: skip
        elif kind == 2:
            self.add("agent", aid, self.rng.choice(("AgentCameOnline", "AgentWentOffline")),
                     {"last_seen": self.when(), "missed_heartbeats": 3})  # fmt: skip
        elif kind == 3:
            self.add("agent", aid, "AgentRetired", {"reason": "r", "retired_by": "o"})
        elif kind == 4:
            self.add("agent", aid, "TaskLeaseLost", {
                "task_id": "t", "attempt": 1, "reason": "lease_expired", "lost_at": self.when(),
            })  # fmt: skip
        else:
            task = self.rng.choice(self.sessions or ["none"])
            common = {"task_id": task, "completion_time": self.when(), "output_hash": "sha256:x",
                      "counts": self.rng.random() < 0.8, "response_time": 5.0}  # fmt: skip
            if kind == 5:
                self.add("agent", aid, "CompletionVerified", {
                    **common, "task_kind": "session", "assigned_at": T0.isoformat(),
                    "quality_score": 0.5, "score_parts": {"verified": 1.0},
                })  # fmt: skip
            else:
                self.add("agent", aid, "CompletionRejected",
                         {**common, "reasons": [{"code": "c", "message": "m"}]})  # fmt: skip

    # Sessions -------------------------------------------------------------------------

    def session_event(self) -> None:
        if not self.sessions or self.rng.random() < 0.25:
            sid = self.new_id()
            self.sessions.append(sid)
            self.participants[sid] = self.some_agents()
            self.add("session", sid, "SessionOpened", {
                "session_id": sid, "coordinator_id": "c", "opened_by": "c",
                "participants": list(self.participants[sid]), "task": {"description": "x"},
                "timeout_seconds": 600, "deadline": (self.at + timedelta(minutes=10)).isoformat(),
            })  # fmt: skip
            return
        sid = self.rng.choice(self.sessions)
        agent = self.agent()
        kind = self.rng.randrange(8)
        if kind <= 2:
            self.add("session", sid, "ResultSubmitted",
                     {"agent_id": agent, "result": {"v": kind}, "success": kind != 1}, actor=agent)  # fmt: skip
        elif kind == 3:
            self.add(
                "session", sid, "TaskAccepted", {"agent_id": agent, "accepted_at": self.when()}
            )
        elif kind == 4:
            team = self.participants[sid]
            others = [a for a in AGENTS[:3] if a not in team]
            if agent not in team or not others:
                return
            replacement = self.rng.choice(others)
            team[team.index(agent)] = replacement
            self.add("session", sid, "ParticipantLost",
                     {"agent_id": agent, "reason": "offline", "action": "replace"})  # fmt: skip
            self.add("session", sid, "ParticipantReplaced", {
                "replaced": agent, "replacement": replacement, "reason": "offline",
                "routing": {"capabilities": [], "size": 1, "candidates": [], "chosen": [],
                            "eligible": 1},
                "assigned_at": self.when(),
            })  # fmt: skip
        elif kind == 5:
            self.add("session", sid, "SessionFinalised", {
                "outcome": "succeeded", "reason": "r",
                "verdict": {"outcome": "succeeded", "reason": "r", "results": 1, "succeeded": 1},
            })  # fmt: skip
        elif kind == 6:
            self.add("session", sid, "SessionTimedOut", {"deadline": self.when(), "pending": []})
        else:
            self.add("session", sid, "SessionCancelled", {"reason": "r", "cancelled_by": "c"})

    # Workflows ------------------------------------------------------------------------

    def workflow_event(self) -> None:
        if not self.workflows or self.rng.random() < 0.2:
            wid = self.new_id()
            self.workflows.append(wid)
            self.add("workflow", wid, "WorkflowStarted", {
                "workflow_id": wid, "workflow_type": "ci", "requirements": "r",
                "phases": [{"name": p} for p in PHASES], "configuration": {},
                "priority": "normal", "started_by": "c",
            })  # fmt: skip
            return
        wid = self.rng.choice(self.workflows)
        phase = self.rng.choice(PHASES)
        agent = self.agent()
        lease = {"phase": phase, "attempt": 1, "agent_id": agent}
        events: dict[int, tuple[str, dict[str, Any]]] = {
            0: ("PhaseWaiting", {"phase": phase, "attempt": 1, "capabilities": ["python"]}),
            1: ("PhaseAssigned", {**lease, "assigned_at": self.when(), "accept_by": self.when(),
                                  "lease_expires_at": self.when()}),
            2: ("TaskAccepted", {**lease, "accepted_at": self.when()}),
            3: ("PhaseStarted", {"phase": phase, "assignee": self.rng.choice(AGENTS),
                                 "started_at": self.when()}),
            4: ("PhaseProgressReported", {"phase": phase, "progress": 40}),
            5: ("PartialResultRecorded", {"phase": phase, "result": {"p": 1}}),
            6: ("PhaseLeaseExpired", {**lease, "reason": "lease_expired",
                                      "expired_at": self.when()}),
            7: ("PhaseCompleted", {"phase": phase, "result": {"ok": 1}}),
            8: ("PhaseFailed", {"phase": phase, "error": {"code": "c", "message": "m"}}),
            9: ("WorkflowCompleted", {"final_result": {"ok": 1}}),
            10: ("WorkflowFailed", {"phase": phase, "error": {"code": "c", "message": "m"}}),
            11: ("WorkflowCancelled", {"reason": "r", "cancelled_by": "c"}),
        }  # fmt: skip
        type_, data = events[self.rng.choice((0, 1, 2, 3, 3, 4, 5, 6, 7, 7, 8, 9, 10, 11))]
        self.add("workflow", wid, type_, data, actor=agent)

    def generate(self, length: int) -> list[EventRecord]:
        steps: list[Callable[[], None]] = [self.agent_event, self.session_event,
                                           self.workflow_event]  # fmt: skip
        while len(self.records) < length:
            self.rng.choice(steps)()
        return self.records


def fresh(url: str) -> ReadStore:
    store = ReadStore(url)
    with store.transaction() as conn:
        for model in MODELS:
            for statement in model().ddl:
                conn.execute(statement)
    return store


def dump(store: ReadStore) -> Rows:
    conn = store.connection()
    return {
        table: sorted((tuple(row) for row in conn.execute(f"SELECT * FROM {table}")), key=repr)
        for model in MODELS
        for table in model().tables
    }


def one_at_a_time(url: str, records: list[EventRecord]) -> Rows:
    """Each event applied on its own (a plain connection: the read model writes it before
    returning), as time travel folds."""
    store = fresh(url)
    models = [model() for model in MODELS]
    for record in records:
        with store.transaction() as conn:
            for model in models:
                if record.aggregate in model.aggregates:
                    model.apply(conn, record)
    rows = dump(store)
    store.close()
    return rows


def batched(url: str, records: list[EventRecord], size: int) -> Rows:
    """``size`` events per transaction, as the runner applies them (``apply_batch``: the
    rows a batch needs read in bulk first, then applied in memory, written once)."""
    store = fresh(url)
    models = [model() for model in MODELS]
    for start in range(0, len(records), size):
        with store.transaction() as conn:
            for model in models:
                batch = [
                    r for r in records[start : start + size] if r.aggregate in model.aggregates
                ]
                apply_batch(model, conn, batch)
    rows = dump(store)
    store.close()
    return rows


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rng=st.randoms(use_true_random=False), length=st.integers(1, 120),
       size=st.sampled_from((2, 3, 7, 25, 1000)))  # fmt: skip
def test_batched_rows_equal_one_event_at_a_time(
    tmp_path: Path, rng: random.Random, length: int, size: int
) -> None:
    records = History(rng).generate(length)
    name = uuid.uuid4().hex
    expected = one_at_a_time(f"sqlite:///{tmp_path}/{name}-alone.db", records)
    assert batched(f"sqlite:///{tmp_path}/{name}-batched.db", records, size) == expected


@pytest.mark.parametrize("seed", range(4))
def test_batched_rows_equal_one_event_at_a_time_on_each_backend(
    read_stores: ReadStores, seed: int
) -> None:
    records = History(random.Random(seed)).generate(400)
    expected = one_at_a_time(read_stores.url("alone"), records)
    assert expected["sessions"] and expected["agents"] and expected["workflows"]
    for size in (1, 9, 100, 1000):
        assert batched(read_stores.url(f"batched{size}"), records, size) == expected, size


def test_a_submitted_result_reads_its_participant_not_the_whole_session(
    tmp_path: Path,
) -> None:
    history = History(random.Random(0))
    sid = history.new_id()
    history.add("session", sid, "SessionOpened", {
        "session_id": sid, "coordinator_id": "c", "opened_by": "c", "participants": ["a1", "a2"],
        "task": {"description": "x"}, "timeout_seconds": 600,
        "deadline": (history.at + timedelta(minutes=10)).isoformat(),
    })  # fmt: skip
    history.add("session", sid, "ResultSubmitted",
                {"agent_id": "a1", "result": {"v": 1}, "success": True}, actor="a1")  # fmt: skip
    opened, submitted = history.records
    store = fresh(f"sqlite:///{tmp_path}/read.db")
    models = [model() for model in (SessionsProjection, AgentsProjection, AgentTasksProjection)]
    with store.transaction() as conn:
        for model in models:
            apply_batch(model, conn, [opened])
    statements: list[str] = []
    conn = store.connection()
    conn.set_trace_callback(statements.append)
    with store.transaction() as conn:
        for model in models:
            apply_batch(model, conn, [submitted])
    conn.set_trace_callback(None)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert not [s for s in reads if "session_id IN" in s or "task_id IN" in s], reads
    assert not [s for s in reads if "FROM agent_tasks" in s], reads
    participants = {r[1]: r for r in dump(store)["session_participants"]}
    assert participants["a1"][4] == 1 and participants["a2"][4] is None
