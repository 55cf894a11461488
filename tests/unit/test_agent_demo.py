"""The demo agents' work: real, deterministic, and correct for any requirements text."""

from __future__ import annotations

import json
import keyword
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from chorus.agent_demo import handle, implement, requirements, review, run_tests
from chorus.agent_worker import Task, TaskContext, TaskFailed
from chorus.contracts.tasks import TASK_DECODER, PhaseTask, SessionTask
from chorus.contracts.workflow_types import BUILT_IN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NOW = datetime(2030, 1, 1, tzinfo=UTC)
TEXT = "Add retries to the uploader. Give up after 5 attempts; log every retry"


class Reports(TaskContext):
    def __init__(self, task: Task) -> None:
        self.task = task
        self.reports: list[tuple[str, Any]] = []

    async def progress(self, percent: int) -> None:
        self.reports.append(("progress", percent))

    async def partial(self, result: dict[str, Any]) -> None:
        self.reports.append(("partial", result))


def phase(name: str, inputs: dict[str, Any], text: str = TEXT) -> PhaseTask:
    message = {
        "kind": "phase", "task_id": f"w/{name}", "attempt": 1, "priority": "normal",
        "lease_expires_at": (NOW + timedelta(minutes=5)).isoformat(),
        "workflow_id": "w", "workflow_type": "full", "phase": name,
        "description": text, "requirements": text, "inputs": inputs,
    }  # fmt: skip
    task = TASK_DECODER.decode(json.dumps(message))
    assert isinstance(task, PhaseTask)
    return task


async def run_workflow(type_name: str, text: str = TEXT) -> dict[str, dict[str, Any]]:
    """Every phase of a built-in type in order, each fed the earlier results, as the
    dispatcher does; results pass through JSON as they do on the bus."""
    workflow_type = next(t for t in BUILT_IN if t.name == type_name)
    results: dict[str, dict[str, Any]] = {}
    for step in workflow_type.phases:
        task = phase(step.name, results, text)
        result = await handle(task, Reports(task))
        results[step.name] = msgspec.json.decode(msgspec.json.encode(result))
    return results


def test_requirements_become_a_checklist_and_a_module_name() -> None:
    assert requirements(TEXT) == {
        "name": "add_retries_to_the_uploader",
        "title": "Add retries to the uploader",
        "items": ["Add retries to the uploader", "Give up after 5 attempts", "log every retry"],
    }


@pytest.mark.parametrize("type_name", ["full", "quick", "review"])
async def test_every_built_in_type_runs_to_a_result(type_name: str) -> None:
    results = await run_workflow(type_name)
    final = results[next(t for t in BUILT_IN if t.name == type_name).phases[-1].name]
    if type_name == "full":
        assert final["verdict"] == "approved", final
        assert final["tests"] == {"passed": 3, "failed": 0, "output": "3 passed"}
        assert "def missing(text: str) -> list[str]:" in final["source"]
    if type_name == "quick":
        assert (final["passed"], final["failed"], final["compiled"]) == (3, 0, True)
    if type_name == "review":  # the requirements text is no Python: changes requested
        assert final["verdict"] == "changes_requested"


async def test_phases_report_progress_and_the_coder_a_partial_result() -> None:
    task = phase("implement", {})
    ctx = Reports(task)
    await handle(task, ctx)
    assert ctx.reports == [
        ("progress", 10),
        ("partial", {"module": "add_retries_to_the_uploader.py", "lines": 27}),
        ("progress", 100),
    ]


async def test_reviewers_in_a_session_agree_on_the_same_work() -> None:
    results = await run_workflow("quick")
    message = {
        "kind": "session", "task_id": "s", "session_id": "s", "description": "review it",
        "lease_expires_at": NOW.isoformat(), "deadline": NOW.isoformat(),
        "criteria": {"agree_on": "output_hash"},
        "inputs": {"implement": results["implement"], "test": results["test"]},
    }  # fmt: skip
    task = TASK_DECODER.decode(json.dumps(message))
    assert isinstance(task, SessionTask)
    verdicts = [await handle(task, Reports(task)) for _ in range(3)]
    assert verdicts[0]["verdict"] == "approved"
    assert verdicts[0] == verdicts[1] == verdicts[2]


def test_a_broken_module_fails_the_test_phase_with_the_compiler_output() -> None:
    spec = requirements(TEXT)
    code = {**implement(spec), "source": "def broken(:\n"}
    with pytest.raises(TaskFailed) as failure:
        run_tests(code, spec)
    assert failure.value.code == "compile_error"
    assert "SyntaxError" in str(failure.value)


def test_review_asks_for_changes_on_undocumented_code() -> None:
    outcome = review("def f():\n    return 1\n", {"passed": 3, "failed": 0})
    assert outcome["verdict"] == "changes_requested"
    assert outcome["checks"]["module_docstring"] is False


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=1, max_size=300).filter(lambda s: s.strip(" \n-*.")))
def test_any_requirements_text_gives_a_module_that_compiles_and_passes_its_test(
    text: str,
) -> None:
    spec = requirements(text)
    code = implement(spec)
    report = run_tests(code, spec)
    assert (report["passed"], report["failed"]) == (3, 0)
    assert review(code["source"], report)["checks"]["compiles"] is True


@pytest.mark.parametrize("text", ["or", "Import.", "sys", "os tools", "class"])
def test_a_keyword_or_a_standard_module_name_is_not_the_module_name(text: str) -> None:
    """Hypothesis found ``or``: the generated test did ``import or as m``."""
    spec = requirements(text)
    assert not keyword.iskeyword(spec["name"]) and spec["name"] not in sys.stdlib_module_names
    report = run_tests(implement(spec), spec)
    assert (report["passed"], report["failed"]) == (3, 0)
