"""The agents read model folded from hand-made event records: status (also offline, which
needs the engine's liveness monitor end to end), assignments, verdicts, queries."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chorus.contracts.agents import agent_uuid
from chorus.contracts.feed import EventRecord
from chorus.projections.agents import (
    AgentsProjection,
    agent_metrics,
    agent_name,
    decode_cursor,
    get_agent,
    get_verdict,
    list_agents,
    reachable_agents,
    recent_verdicts,
    stamp,
)
from chorus.projections.readstore import ReadStore

from tests.conftest import ReadStores

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Log:
    """Applies records to a fresh read store, numbering positions and versions."""

    def __init__(self, url: str) -> None:
        self.store = ReadStore(url)
        self.conn = self.store.connection()
        self.projection = AgentsProjection()
        for statement in self.projection.ddl:
            self.conn.execute(statement)
        self.positions = itertools.count(1)
        self.versions: dict[str, int] = {}

    def apply(
        self,
        aggregate: str,
        aggregate_id: str,
        type_: str,
        data: dict[str, Any],
        at: datetime,
        actor: str = "someone",
    ) -> EventRecord:
        version = self.versions.get(aggregate_id, 0) + 1
        self.versions[aggregate_id] = version
        record = EventRecord(
            position=next(self.positions), aggregate=aggregate, aggregate_id=aggregate_id,
            version=version, type=type_, schema_version=1, occurred_at=at, actor=actor,
            command_id=uuid.uuid4().hex, correlation_id=None, causation_id=None, data=data,
            prev_hash="", hash="",
        )  # fmt: skip
        self.projection.apply(self.conn, record)
        return record

    def agent(self, name: str, type_: str, data: dict[str, Any], at: datetime) -> EventRecord:
        return self.apply("agent", str(agent_uuid(name)), type_, data, at, actor=name)

    def register(self, name: str, at: datetime = T0, capabilities: list[str] | None = None) -> None:
        self.agent(name, "AgentRegistered", {
            "agent_id": name, "type": "worker", "capabilities": capabilities or ["python"],
            "metadata": {"zone": "eu"}, "owner": f"owner-of-{name}",
            "registered_at": at.isoformat(),
        }, at)  # fmt: skip

    def open_session(self, participants: list[str], at: datetime, timeout: int = 600) -> str:
        sid = str(uuid.uuid4())
        self.apply("session", sid, "SessionOpened", {
            "session_id": sid, "coordinator_id": "c", "opened_by": "c",
            "participants": participants, "task": {"description": "x"},
            "timeout_seconds": timeout, "deadline": (at + timedelta(seconds=timeout)).isoformat(),
        }, at)  # fmt: skip
        return sid

    def verdict(self, name: str, task_id: str, at: datetime, verified: bool, rt: float) -> int:
        data: dict[str, Any] = {
            "task_id": task_id, "completion_time": at.isoformat(), "output_hash": "sha256:x",
            "response_time": rt,
        }  # fmt: skip
        if verified:
            data.update(task_kind="session", assigned_at=(at - timedelta(seconds=rt)).isoformat(),
                        quality_score=0.8, score_parts={"verified": 1.0, "timeliness": 0.5,
                                                        "agreement": 1.0})  # fmt: skip
            return self.agent(name, "CompletionVerified", data, at).position
        data["reasons"] = [{"code": "hash_mismatch", "message": "differs"}]
        return self.agent(name, "CompletionRejected", data, at).position


@pytest.fixture
def log(read_stores: ReadStores) -> Iterator[Log]:
    """On each read-store backend."""
    log = Log(read_stores.url("read"))
    yield log
    log.store.close()


def status(log: Log, name: str) -> str:
    view = get_agent(log.conn, name)
    assert view is not None
    return view.status


def test_registration_makes_an_online_agent_with_a_neutral_record(log):
    log.register("a1", capabilities=["sql", "python", "sql"])

    view = get_agent(log.conn, "a1")
    assert view is not None
    assert view.status == "online"
    assert view.uuid == str(agent_uuid("a1"))
    assert view.capabilities == ["python", "sql"]
    assert view.metadata == {"zone": "eu"}
    assert view.owner == "owner-of-a1"
    assert view.registered_at == stamp(T0)
    assert view.last_activity == stamp(T0)
    assert (view.verified, view.rejected, view.total_tasks, view.open_tasks) == (0, 0, 0, 0)
    assert view.avg_success_rate is None
    assert view.reliability_score == 0.5
    assert view.version == 1
    assert agent_name(log.conn, str(agent_uuid("a1"))) == "a1"
    assert get_agent(log.conn, "nobody") is None


def test_liveness_transitions_and_retirement_set_the_status(log):
    log.register("a1")
    log.agent("a1", "AgentWentOffline",
              {"last_seen": (T0 + timedelta(seconds=5)).isoformat(), "missed_heartbeats": 3},
              T0 + timedelta(seconds=20))  # fmt: skip
    assert status(log, "a1") == "offline"
    assert get_agent(log.conn, "a1").last_seen == stamp(T0 + timedelta(seconds=5))  # type: ignore[union-attr]
    assert reachable_agents(log.conn) == []

    log.agent("a1", "AgentCameOnline", {"last_seen": (T0 + timedelta(minutes=1)).isoformat()},
              T0 + timedelta(minutes=1))  # fmt: skip
    assert status(log, "a1") == "online"
    assert reachable_agents(log.conn) == ["a1"]
    assert get_agent(log.conn, "a1").last_activity == stamp(T0 + timedelta(minutes=1))  # type: ignore[union-attr]

    log.agent("a1", "AgentRetired", {"reason": "old", "retired_by": "a1"}, T0 + timedelta(hours=1))
    view = get_agent(log.conn, "a1")
    assert view is not None
    assert view.status == "retired"
    assert view.retired_reason == "old"
    assert view.version == 4


def test_an_online_agent_with_an_open_session_is_busy_until_it_submits(log):
    log.register("a1")
    log.register("a2")
    sid = log.open_session(["a1", "a2"], T0 + timedelta(minutes=1))
    assert status(log, "a1") == "busy"
    detail = get_agent(log.conn, "a1")
    assert detail is not None
    assert [(a.task_id, a.kind, a.assigned_at) for a in detail.open_assignments] == [
        (sid, "session", stamp(T0 + timedelta(minutes=1)))
    ]

    submitted = T0 + timedelta(minutes=2)
    log.apply("session", sid, "ResultSubmitted",
              {"agent_id": "a1", "result": {}, "success": True}, submitted, actor="a1")  # fmt: skip
    assert status(log, "a1") == "online"
    assert status(log, "a2") == "busy"
    assert get_agent(log.conn, "a1").last_activity == stamp(submitted)  # type: ignore[union-attr]

    log.apply("session", sid, "SessionTimedOut",
              {"deadline": (T0 + timedelta(minutes=11)).isoformat(), "pending": ["a2"]},
              T0 + timedelta(minutes=11))  # fmt: skip
    assert status(log, "a2") == "online"
    assert get_agent(log.conn, "a2").total_tasks == 1  # type: ignore[union-attr]


def test_an_offline_agent_with_open_tasks_is_offline_not_busy(log):
    log.register("a1")
    log.open_session(["a1"], T0)
    log.agent("a1", "AgentWentOffline", {"last_seen": T0.isoformat(), "missed_heartbeats": 3},
              T0 + timedelta(seconds=30))  # fmt: skip
    assert status(log, "a1") == "offline"
    assert get_agent(log.conn, "a1").open_tasks == 1  # type: ignore[union-attr]


def test_a_replacement_takes_over_the_lost_participants_open_task(log):
    for name in ("a1", "a2", "a3"):
        log.register(name)
    sid = log.open_session(["a1", "a2"], T0)
    replaced_at = T0 + timedelta(minutes=3)
    log.apply("session", sid, "ParticipantLost",
              {"agent_id": "a2", "reason": "offline", "action": "replaced"}, replaced_at)  # fmt: skip
    log.apply("session", sid, "ParticipantReplaced", {
        "replaced": "a2", "replacement": "a3", "reason": "offline",
        "routing": {"capabilities": [], "size": 1, "candidates": [], "chosen": ["a3"],
                    "eligible": 1},
        "assigned_at": replaced_at.isoformat(),
    }, replaced_at)  # fmt: skip

    assert status(log, "a2") == "online"  # no longer expected to deliver
    assert status(log, "a3") == "busy"
    a3 = get_agent(log.conn, "a3")
    assert a3 is not None
    assert a3.open_assignments[0].assigned_at == stamp(replaced_at)
    assert get_agent(log.conn, "a2").total_tasks == 1  # type: ignore[union-attr]

    log.apply("session", sid, "SessionCancelled", {"reason": "x", "cancelled_by": "c"},
              T0 + timedelta(minutes=4))  # fmt: skip
    assert [status(log, n) for n in ("a1", "a2", "a3")] == ["online"] * 3


def test_a_running_phase_is_its_assignees_task_and_delegated_phases_are_nobodys(log):
    log.register("a1")
    wid = str(uuid.uuid4())
    log.apply("workflow", wid, "WorkflowStarted", {
        "workflow_id": wid, "workflow_type": "ci", "phases": [], "requirements": "r",
        "configuration": {}, "priority": "normal", "started_by": "c",
    }, T0)  # fmt: skip
    log.apply("workflow", wid, "PhaseStarted",
              {"phase": "build", "assignee": "a1", "started_at": T0.isoformat()}, T0, actor="a1")  # fmt: skip
    assert status(log, "a1") == "busy"
    assert get_agent(log.conn, "a1").open_assignments[0].task_id == f"{wid}/build"  # type: ignore[union-attr]

    progress_at = T0 + timedelta(minutes=5)
    log.apply("workflow", wid, "PhaseProgressReported", {"phase": "build", "progress": 50},
              progress_at, actor="a1")  # fmt: skip
    assert get_agent(log.conn, "a1").last_activity == stamp(progress_at)  # type: ignore[union-attr]
    log.apply("workflow", wid, "PhaseCompleted", {"phase": "build", "result": {}},
              T0 + timedelta(minutes=6), actor="a1")  # fmt: skip
    assert status(log, "a1") == "online"

    log.apply("workflow", wid, "PhaseStarted",
              {"phase": "review", "assignee": "system", "started_at": T0.isoformat()}, T0)  # fmt: skip
    log.apply("workflow", wid, "PhaseStarted",
              {"phase": "ship", "assignee": "a1", "started_at": T0.isoformat()}, T0)  # fmt: skip
    assert status(log, "a1") == "busy"
    log.apply("workflow", wid, "WorkflowCancelled", {"reason": "x", "cancelled_by": "c"},
              T0 + timedelta(minutes=9))  # fmt: skip
    assert status(log, "a1") == "online"
    assert get_agent(log.conn, "a1").total_tasks == 2  # type: ignore[union-attr]
    assert get_agent(log.conn, "system") is None


def test_verdicts_count_score_and_are_readable_by_position(log):
    log.register("a1")
    sid = log.open_session(["a1"], T0)
    good = log.verdict("a1", sid, T0 + timedelta(minutes=1), True, 60.0)
    bad = log.verdict("a1", sid, T0 + timedelta(minutes=2), False, 5.0)

    view = get_agent(log.conn, "a1")
    assert view is not None
    assert (view.verified, view.rejected) == (1, 1)
    assert view.avg_success_rate == 0.5
    assert view.reliability_score == 0.5  # (1 + 1) / (2 + 2)
    verified = get_verdict(log.conn, good)
    assert verified is not None
    assert (verified.verdict, verified.quality_score, verified.task_kind) == (
        "verified",
        0.8,
        "session",
    )
    assert verified.score_parts == {"verified": 1.0, "timeliness": 0.5, "agreement": 1.0}
    assert verified.assigned_at == stamp(T0)
    rejected = get_verdict(log.conn, bad)
    assert rejected is not None
    assert rejected.verdict == "rejected"
    assert rejected.reasons == [{"code": "hash_mismatch", "message": "differs"}]
    assert rejected.quality_score == 0.0
    assert get_verdict(log.conn, 999) is None


def test_recent_verdicts_are_each_agents_latest_oldest_first(log):
    """The console's sparkline query (a window function) on each backend."""
    for name in ("a1", "a2"):
        log.register(name)
    sid = log.open_session(["a1", "a2"], T0)
    for minute, ok in enumerate((True, False, True, True), start=1):
        log.verdict("a1", sid, T0 + timedelta(minutes=minute), ok, 5.0)
    assert recent_verdicts(log.conn, ["a1", "a2", "a3"], per_agent=3) == {
        "a1": [False, True, True],
        "a2": [],
        "a3": [],
    }
    assert recent_verdicts(log.conn, []) == {}


def test_metrics_come_from_the_rows_and_can_be_asked_as_of_the_past(log):
    log.register("a1")
    for minutes, ok, rt in ((10, True, 3.0), (20, True, 1.0), (30, False, 9.0), (40, True, 2.0)):
        log.open_session(["a1"], T0 + timedelta(minutes=minutes - 5))
        log.verdict("a1", "t", T0 + timedelta(minutes=minutes), ok, rt)

    now = T0 + timedelta(minutes=45)
    m = agent_metrics(log.conn, "a1", "1h", now)
    assert m is not None
    assert (m.verified, m.rejected, m.total_tasks) == (3, 1, 4)
    assert m.success_rate == 0.75
    assert (m.response_time_p50, m.response_time_p95) == (2.0, 3.0)  # of 1, 2, 3
    assert m.last_activity == stamp(T0 + timedelta(minutes=40))

    then = agent_metrics(log.conn, "a1", "all", T0 + timedelta(minutes=25))
    assert then is not None
    assert (then.verified, then.rejected, then.total_tasks) == (2, 0, 3)
    assert (then.response_time_p50, then.response_time_p95) == (1.0, 3.0)
    assert then.last_activity == stamp(T0 + timedelta(minutes=20))

    recent = agent_metrics(log.conn, "a1", "1h", T0 + timedelta(minutes=95))
    assert recent is not None
    assert (recent.verified, recent.rejected) == (1, 0)  # only the one at 40 min: window (35, 95]
    assert agent_metrics(log.conn, "nobody", "1h", now) is None


def registry(log: Log) -> None:
    """a: 3/0, b: 1/1, c: none (busy), d: 3/0 and offline, e: 0/2 and retired."""
    for name in "abcde":
        log.register(name, capabilities=["python", "sql"] if name in "ad" else ["python"])
    for name, ok, bad in (("a", 3, 0), ("b", 1, 1), ("d", 3, 0), ("e", 0, 2)):
        for i in range(ok + bad):
            log.verdict(name, f"t{i}", T0, i < ok, 1.0)
    log.open_session(["c"], T0)
    log.agent("d", "AgentWentOffline", {"last_seen": T0.isoformat(), "missed_heartbeats": 3}, T0)
    log.agent("e", "AgentRetired", {"reason": "x", "retired_by": "e"}, T0)


def names(page: Any) -> list[str]:
    return [a.agent_id for a in page.items]


def test_list_filters_by_capability_status_and_success_rate(log):
    registry(log)
    assert names(list_agents(log.conn)) == ["e", "d", "c", "b", "a"]  # newest first
    assert names(list_agents(log.conn, capabilities=["sql"])) == ["d", "a"]
    assert names(list_agents(log.conn, capabilities=["sql", "python"])) == ["d", "a"]
    assert names(list_agents(log.conn, capabilities=["go"])) == []
    assert names(list_agents(log.conn, statuses=["busy"])) == ["c"]
    assert names(list_agents(log.conn, statuses=["online"])) == ["b", "a"]
    assert names(list_agents(log.conn, statuses=["online", "busy"])) == ["c", "b", "a"]
    assert names(list_agents(log.conn, statuses=["offline", "retired"])) == ["e", "d"]
    assert names(list_agents(log.conn, min_success_rate=0.5)) == ["d", "b", "a"]
    assert names(list_agents(log.conn, min_success_rate=0.51)) == ["d", "a"]
    assert names(list_agents(log.conn, min_success_rate=0)) == ["e", "d", "b", "a"]  # not c


def test_sort_by_reliability_ranks_like_routing_and_pages_by_keyset(log):
    registry(log)
    # a and d: 4/5 = 0.8 (tie, by name); c: 0.5; b: 2/4 = 0.5 (tie, by name); e: 1/4
    ranked = list_agents(log.conn, sort="reliability")
    assert names(ranked) == ["a", "d", "b", "c", "e"]
    assert [a.reliability_score for a in ranked.items] == [0.8, 0.8, 0.5, 0.5, 0.25]

    seen: list[str] = []
    cursor = None
    while True:
        page = list_agents(log.conn, sort="reliability", limit=2, cursor=cursor)
        seen += names(page)
        cursor = page.next_cursor
        if cursor is None:
            break
        assert decode_cursor(cursor, "reliability")
    assert seen == ["a", "d", "b", "c", "e"]

    first = list_agents(log.conn, limit=3)
    assert names(first) == ["e", "d", "c"]
    assert first.next_cursor is not None
    assert names(list_agents(log.conn, limit=3, cursor=first.next_cursor)) == ["b", "a"]


def test_cursors_of_one_order_are_refused_by_the_other(log):
    registry(log)
    by_score = list_agents(log.conn, sort="reliability", limit=1).next_cursor
    by_age = list_agents(log.conn, limit=1).next_cursor
    assert by_score is not None
    assert by_age is not None
    with pytest.raises(ValueError, match="cursor"):
        decode_cursor(by_score)
    with pytest.raises(ValueError, match="cursor"):
        decode_cursor(by_age, "reliability")
    with pytest.raises(ValueError, match="cursor"):
        decode_cursor("bm9wZQ", "reliability")


def test_activity_before_registration_counts_once_registered(log):
    sid = log.open_session(["late"], T0)
    log.apply("session", sid, "ResultSubmitted",
              {"agent_id": "late", "result": {}, "success": True}, T0 + timedelta(hours=2))  # fmt: skip
    log.register("late", at=T0 + timedelta(hours=1))
    view = get_agent(log.conn, "late")
    assert view is not None
    assert view.last_activity == stamp(T0 + timedelta(hours=2))
    assert view.total_tasks == 1
    assert view.status == "online"
