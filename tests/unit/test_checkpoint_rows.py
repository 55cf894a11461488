"""A checkpoint row is data, never code (engine/policies/checkpoint.py).

Whoever can write the store's database could put a pickle in ``chorus_checkpoints`` that
calls any function when the engine next starts; the row's code fingerprint is no defence
(it is in the same row). The loader resolves data types only.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from chorus.contracts.workflow_types import Phase
from chorus.engine.policies.checkpoint import StateCheckpoint, load_state
from chorus.store.checkpoints import Checkpoint, CheckpointStore
from eventsourcing.persistence import ApplicationRecorder


@dataclass
class Owner:
    """A manager's state as checkpoints see it: named attributes of plain data."""

    items: dict[str, Any] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)


class Calls:
    """Pickles as a call of ``os.mkdir``: what a forged row would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def checkpoint(recorder: ApplicationRecorder, owner: Owner) -> StateCheckpoint:
    return StateCheckpoint(
        CheckpointStore(recorder), "owner", owner, ("items", "seen"), [__name__], every=0
    )


def test_a_manager_state_of_data_types_comes_back(recorder: ApplicationRecorder) -> None:
    when = datetime(2030, 1, 2, 3, 4, tzinfo=UTC)
    saved = Owner(
        items={"w": [Phase(name="one"), when, UUID(int=7), {"n": 1.5}, (1, b"x")]},
        seen={"a", "b"},
    )
    assert checkpoint(recorder, saved).save(42)
    restored = Owner()
    assert checkpoint(recorder, restored).restore() == 42
    assert restored == saved


def test_a_row_that_would_run_code_is_refused_and_the_log_reread(
    recorder: ApplicationRecorder, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    good = checkpoint(recorder, Owner(items={"x": 1}))
    assert good.save(9)
    forged = pickle.dumps({"items": Calls(marker), "seen": set()})
    store = CheckpointStore(recorder)
    store.save(Checkpoint("owner", 10, good.version, forged))

    restored = Owner()
    assert checkpoint(recorder, restored).restore() == 0  # from the start of the log
    assert not marker.exists()
    assert restored == Owner()


@pytest.mark.parametrize(
    "call",
    [(os.system, ("true",)), (eval, ("1",)), (Path, ("x",)), (StateCheckpoint, ())],
    ids=["os.system", "eval", "a standard class that is not data", "a Chorus class not data"],
)
def test_only_data_types_resolve(call: tuple[Any, ...]) -> None:
    class Forged:
        def __reduce__(self) -> tuple[Any, ...]:
            return call

    with pytest.raises(pickle.UnpicklingError):
        load_state(pickle.dumps(Forged()))


class SlowStore(CheckpointStore):
    """Each save takes 0.1 s of the fake clock."""

    def __init__(self, recorder: ApplicationRecorder, clock: list[float]) -> None:
        super().__init__(recorder)
        self.clock = clock
        self.saves = 0

    def save(self, checkpoint: Any) -> None:
        super().save(checkpoint)
        self.clock[0] += 0.1
        self.saves += 1


def test_slow_saves_stretch_the_interval_to_keep_within_the_budget(
    recorder: ApplicationRecorder,
) -> None:
    """A save that costs 0.1 s with a 2% budget means the next one waits 5 s, not 1 s:
    a manager with a large state does not spend its time pickling it."""
    clock = [100.0]
    store = SlowStore(recorder, clock)
    kept = StateCheckpoint(store, "owner", Owner(), ("items", "seen"), [__name__],
                           every=1.0, budget=0.02, monotonic=lambda: clock[0])  # fmt: skip
    assert kept.save(1)
    assert kept.interval == pytest.approx(5.0)
    clock[0] += 2.0
    assert not kept.save(2)  # past ``every``, not past the stretched interval
    clock[0] += 3.0
    assert kept.save(3)
    assert store.saves == 2


def test_due_says_beforehand_whether_a_save_would_write(recorder: ApplicationRecorder) -> None:
    """Managers on the event loop ask ``due`` first and hop to a thread only to write."""
    clock = [100.0]
    store = SlowStore(recorder, clock)
    kept = StateCheckpoint(store, "owner", Owner(), ("items", "seen"), [__name__],
                           every=1.0, budget=0.02, monotonic=lambda: clock[0])  # fmt: skip
    assert kept.due(1)
    assert kept.save(1)
    clock[0] += 10.0
    assert not kept.due(1)  # nothing new to save
    assert kept.due(2)
    assert kept.save(2)
    clock[0] += 1.0
    assert not kept.due(3)  # within the (stretched) interval
    assert not kept.save(3)
    assert store.saves == 2
