"""The projector's loop runs its steps in one thread of its own, and stops it whole."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from chorus.projections import projector
from chorus.projections.projector import run_together
from chorus.projections.readstore import ReadStore
from chorus.projections.runner import ProjectionRunner
from eventsourcing.persistence import ApplicationRecorder

from .conftest import FakeClock
from .test_projector_together import MODELS, dump, each_on_its_own
from .test_tamper import write_history


async def test_the_loop_follows_the_log_to_its_head(
    recorder: ApplicationRecorder, clock: FakeClock, tmp_path: Path
) -> None:
    write_history(recorder, clock)
    store = ReadStore(f"sqlite:///{tmp_path}/read.db")
    runners = [ProjectionRunner(recorder, store, model(), batch_size=3) for model in MODELS]
    head = recorder.max_notification_id()
    loop = asyncio.create_task(run_together(runners, 0.001))
    try:
        for _ in range(1000):  # bounded: a loop that never steps fails here
            if all(runner.position == head for runner in runners):
                break
            await asyncio.sleep(0.01)
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
    assert [runner.position for runner in runners] == [head] * len(MODELS)
    assert dump(tmp_path / "read.db") == each_on_its_own(recorder, tmp_path / "alone.db")


async def test_cancelling_the_loop_returns_once_its_step_is_over_and_starts_no_other(
    recorder: ApplicationRecorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever cancels the loop may close the stores next: a step still running in the
    loop's thread would then use a closed connection."""
    entered, release = threading.Event(), threading.Event()
    steps: list[int] = []

    def slow_step(runners: Sequence[ProjectionRunner]) -> int:
        steps.append(1)
        entered.set()
        release.wait(30)
        return 0

    monkeypatch.setattr(projector, "step_together", slow_step)
    store = ReadStore(f"sqlite:///{tmp_path}/read.db")
    loop = asyncio.create_task(run_together([ProjectionRunner(recorder, store, MODELS[0]())]))
    assert await asyncio.to_thread(entered.wait, 30)
    loop.cancel()
    await asyncio.sleep(0.05)
    assert not loop.done()  # waiting for the step in its thread
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert steps == [1]
