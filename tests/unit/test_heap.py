"""The collector settings every long-running process applies once it has started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from chorus import heap


@pytest.fixture
def restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_settle_freezes_what_start_up_left_and_sets_a_larger_young_generation(
    restored: None,
) -> None:
    survivor = [object() for _ in range(1000)]  # alive at "start-up"
    gc.unfreeze()
    heap.settle()
    assert gc.get_freeze_count() >= len(survivor)
    assert gc.get_threshold() == (heap.YOUNG, heap.MIDDLE, heap.OLD)
    # Frozen objects are out of every generation the collector scans.
    assert not any(o is survivor for o in gc.get_objects())


def test_garbage_made_after_settling_is_still_collected(restored: None) -> None:
    heap.settle()
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1
