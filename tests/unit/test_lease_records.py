"""A lost lease counts against the agent: in the engine's routing record and the read model;
the agent_tasks read model lists an agent's open tasks until they close."""

from __future__ import annotations

import uuid
from datetime import timedelta

from chorus.engine.domain.agent import AgentState
from chorus.events.agent import AgentRegistered, TaskLeaseLost
from chorus.events.reliability import reliability_score
from chorus.projections.agents import get_agent
from chorus.projections.readstore import ReadStore
from chorus.projections.tasks import AgentTasksProjection, list_agent_tasks

from tests.conftest import ReadStores
from tests.unit.test_agents_projection import T0, Log


def test_a_lost_lease_lowers_the_agents_routing_score() -> None:
    state = AgentState(id=uuid.uuid4())
    state.apply(AgentRegistered(agent_id="a", type="t", capabilities=[], metadata={},
                                owner="a", registered_at=T0))  # fmt: skip
    before = state.score
    state.apply(TaskLeaseLost(task_id="w/p", attempt=1, reason="lease_expired", lost_at=T0))
    assert (state.rejected, state.score < before) == (1, True)


def test_a_lost_lease_counts_as_a_rejection_in_the_agents_read_model(
    read_stores: ReadStores,
) -> None:
    log = Log(read_stores.url())
    log.register("a1")
    log.agent("a1", "TaskLeaseLost", {"task_id": "w/p", "attempt": 1,
                                      "reason": "heartbeat_silence",
                                      "lost_at": T0.isoformat()}, T0)  # fmt: skip
    view = get_agent(log.conn, "a1")
    assert view is not None
    assert (view.rejected, view.reliability_score) == (1, reliability_score(0, 1))


class TasksLog(Log):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.projection = AgentTasksProjection()  # type: ignore[assignment]
        for statement in self.projection.ddl:
            self.conn.execute(statement)


def test_an_agents_open_tasks_follow_assignment_acceptance_and_the_end_of_the_work(
    read_stores: ReadStores,
) -> None:
    log = TasksLog(read_stores.url())
    wid = str(uuid.uuid4())
    log.apply("workflow", wid, "WorkflowStarted", {
        "workflow_id": wid, "workflow_type": "quick", "phases": [], "requirements": "r",
        "configuration": {"k": 1}, "priority": "high", "started_by": "ops"}, T0)  # fmt: skip
    later = T0 + timedelta(minutes=10)
    assigned = {"phase": "implement", "attempt": 1, "agent_id": "a1",
                "assigned_at": T0.isoformat(), "accept_by": later.isoformat(),
                "lease_expires_at": later.isoformat()}  # fmt: skip
    log.apply("workflow", wid, "PhaseAssigned", assigned, T0)
    (item,) = list_agent_tasks(log.conn, "a1").items
    assert (item.task_id, item.accepted, item.task["priority"]) == (
        f"{wid}/implement",
        False,
        "high",
    )
    log.apply("workflow", wid, "TaskAccepted", {"phase": "implement", "attempt": 1,
                                                "agent_id": "a1", "accepted_at": T0.isoformat()}, T0)  # fmt: skip
    assert list_agent_tasks(log.conn, "a1").items[0].accepted
    log.apply("workflow", wid, "PhaseCompleted", {"phase": "implement", "result": {"ok": 1}}, T0)
    assert list_agent_tasks(log.conn, "a1").items == []
    log.apply("workflow", wid, "PhaseAssigned", {**assigned, "phase": "test", "agent_id": "a2"}, T0)
    (second,) = list_agent_tasks(log.conn, "a2").items
    assert second.task["inputs"] == {"implement": {"ok": 1}}
    log.apply("workflow", wid, "WorkflowCancelled", {"reason": "x", "cancelled_by": "ops"}, T0)
    assert list_agent_tasks(log.conn, "a2").items == []


def test_an_unbuilt_read_model_lists_no_tasks(read_stores: ReadStores) -> None:
    store = ReadStore(read_stores.url("fresh"), readonly=True)
    assert list_agent_tasks(store.connection(), "a1").items == []
    store.close()
