"""The partition rules, pure: the partition of an aggregate, the table's plans, the watch
of heartbeats. (The bus side: tests/integration/test_partitioned_engines.py.)"""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from chorus.engine.domain.partitions import (
    BeatWatch,
    CountMismatch,
    Table,
    fair_share,
    leave,
    partition_of,
    plan,
    vanished,
)
from hypothesis import given
from hypothesis import strategies as st

P = 32


def settle(table: Table | None, workers: list[str], count: int = P) -> Table:
    """Rounds of every worker in turn, each handing over at once, until nothing moves."""
    releasing: dict[str, frozenset[int]] = {w: frozenset() for w in workers}
    for _ in range(20):
        before = table
        for worker in workers:
            step = plan(table, worker, count, drained=releasing[worker])
            table, releasing[worker] = step.table, step.release
        assert table is not None
        if before is not None and before.owners == table.owners and not any(releasing.values()):
            return table
    raise AssertionError("the table did not settle")


# The partition of an aggregate --------------------------------------------------------------


def test_an_aggregate_is_in_the_same_partition_in_every_process() -> None:
    # Fixed values: a change of the hash would move aggregates between running engines.
    aggregate = uuid.UUID("12345678-1234-4678-9234-567812345678")
    assert partition_of(aggregate, 32) == partition_of(uuid.UUID(str(aggregate)), 32)
    assert [partition_of(aggregate, n) for n in (1, 7, 32, 1024)] == [0, 3, 6, 454]


@given(st.uuids(), st.integers(min_value=1, max_value=1024))
def test_a_partition_is_within_the_count(aggregate: uuid.UUID, count: int) -> None:
    assert 0 <= partition_of(aggregate, count) < count


def test_random_aggregates_spread_over_every_partition() -> None:
    spread = Counter(partition_of(uuid.uuid4(), P) for _ in range(32_000))
    assert set(spread) == set(range(P))
    assert max(spread.values()) < 2 * min(spread.values())


# Plans -----------------------------------------------------------------------------------


def test_a_lone_worker_claims_every_partition_in_its_first_write() -> None:
    step = plan(None, "a", P)
    assert step.table.held_by("a") == frozenset(range(P))
    assert step.table.members == {"a": 1}
    assert step.release == frozenset()


def test_each_write_bumps_the_writers_heartbeat_only() -> None:
    table = plan(plan(None, "a", P).table, "b", P).table
    assert plan(table, "a", P).table.members == {"a": 2, "b": 1}


@pytest.mark.parametrize("workers", [2, 3, 5, 7, 32, 40])
def test_workers_settle_on_at_most_their_fair_share_and_every_partition_owned(
    workers: int,
) -> None:
    names = [f"w{i}" for i in range(workers)]
    table = settle(None, names)
    held = Counter(owner for owner in table.owners)
    assert "" not in held  # every partition has an owner
    assert max(held.values()) <= fair_share(P, workers)
    assert sum(held.values()) == P


def test_a_joining_worker_gets_partitions_only_after_the_owner_drained_them() -> None:
    table = plan(None, "a", P).table
    joined = plan(table, "b", P)
    assert joined.table.held_by("b") == frozenset()  # nothing free yet
    step = plan(joined.table, "a", P)
    assert len(step.release) == P - fair_share(P, 2)
    # Still a's while it drains: nobody else may take them yet.
    assert step.table.held_by("a") == frozenset(range(P))
    drained = plan(step.table, "a", P, drained=step.release, releasing=step.release)
    assert drained.table.held_by("a") == frozenset(range(P)) - step.release
    claimed = plan(drained.table, "b", P)
    assert claimed.table.held_by("b") == step.release


def test_a_partition_being_drained_is_not_named_twice() -> None:
    table = plan(plan(None, "a", P).table, "b", P).table
    first = plan(table, "a", P)
    again = plan(first.table, "a", P, releasing=first.release)
    assert again.release == first.release


def test_a_dead_workers_partitions_go_to_the_survivors() -> None:
    table = settle(None, ["a", "b", "c"])
    lost = table.held_by("c")
    step = plan(table, "a", P, dead={"c"})
    assert "c" not in step.table.members
    assert lost <= step.table.held_by("a") | {p for p, o in enumerate(step.table.owners) if not o}
    table = settle(step.table, ["a", "b"])
    assert set(table.owners) == {"a", "b"}


def test_a_worker_declared_dead_that_writes_again_rejoins_without_its_old_partitions() -> None:
    table = settle(None, ["a", "b"])
    without_b = plan(table, "a", P, dead={"b"}).table
    back = plan(without_b, "b", P)
    assert "b" in back.table.members
    assert back.table.held_by("b") == frozenset()  # a holds them all now, b waits its turn


def test_drained_partitions_of_another_owner_are_not_freed() -> None:
    table = settle(None, ["a", "b"])
    theirs = table.held_by("b")
    step = plan(table, "a", P, drained=theirs)
    assert step.table.held_by("b") == theirs


def test_a_leaving_worker_frees_its_partitions() -> None:
    table = settle(None, ["a", "b"])
    left = leave(table, "b")
    assert "b" not in left.members
    assert left.held_by("a") == table.held_by("a")
    assert plan(left, "a", P).table.held_by("a") == frozenset(range(P))


def test_a_worker_with_another_partition_count_is_refused_while_others_run() -> None:
    table = plan(None, "a", P).table
    with pytest.raises(CountMismatch, match="CHORUS_PARTITIONS"):
        plan(table, "b", 16)


def test_a_new_count_is_taken_once_no_worker_of_the_old_one_is_left() -> None:
    table = plan(None, "a", P).table
    step = plan(table, "b", 16, dead={"a"})
    assert step.table.count == 16
    assert step.table.held_by("b") == frozenset(range(16))


# Heartbeats --------------------------------------------------------------------------------


def test_a_worker_is_dead_once_its_heartbeat_stood_still_for_a_lease() -> None:
    watch = BeatWatch(lease=5.0)
    table = Table(count=P, members={"a": 1, "b": 1}, owners=[""] * P)
    assert watch.dead(table, "a", now=100.0) == frozenset()
    assert watch.dead(table, "a", now=104.9) == frozenset()
    assert watch.dead(table, "a", now=105.0) == {"b"}


def test_a_moving_heartbeat_keeps_a_worker_alive_and_the_observer_never_dies() -> None:
    watch = BeatWatch(lease=5.0)
    for second in range(0, 30, 2):
        table = Table(count=P, members={"a": 1, "b": second}, owners=[""] * P)
        assert watch.dead(table, "a", now=float(second)) == frozenset()


def test_a_worker_first_seen_late_gets_a_whole_lease() -> None:
    watch = BeatWatch(lease=5.0)
    assert watch.dead(Table(count=P, members={"a": 1}), "a", now=0.0) == frozenset()
    table = Table(count=P, members={"a": 1, "b": 7})
    assert watch.dead(table, "a", now=50.0) == frozenset()  # first seen now, not at 0
    assert watch.dead(table, "a", now=55.0) == {"b"}


def test_a_worker_whose_process_is_gone_from_this_machine_is_dead_at_once() -> None:
    here = "boot-1/pid:[4026531836]"
    table = plan(
        plan(None, "old", P, place=f"{here}/100").table, "new", P, place=f"{here}/200"
    ).table
    assert table.places == {"old": f"{here}/100", "new": f"{here}/200"}
    assert vanished(table, here, alive=lambda pid: pid != 100) == {"old"}
    # A pid that runs (whatever it is now) waits for the lease; so does anything elsewhere.
    assert vanished(table, here, alive=lambda pid: True) == frozenset()
    assert vanished(table, "boot-2/pid:[4026531836]", alive=lambda pid: False) == frozenset()
    assert vanished(table, "", alive=lambda pid: False) == frozenset()
    assert "old" not in plan(table, "new", P, dead={"old"}).table.places
