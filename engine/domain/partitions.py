"""Partitions of the command stream: which engine worker decides which aggregates.

Pure rules, no bus and no clock of their own (``chorus.engine.adapters.ownership`` keeps
the table in a JetStream KV bucket and writes it with compare-and-set):

- ``partition_of``: a command's partition is a stable hash (BLAKE2b, never Python's
  per-process ``hash``) of its target aggregate's id modulo the partition count, so every
  engine, in every process and release, puts an aggregate in the same partition.
- ``Table``: the one record the workers share: the partition count, each live worker's
  heartbeat counter, and each partition's owner ("" while it is free).
- ``plan``: one worker's next version of the table: it renews its heartbeat, frees the
  partitions of workers it saw dead and those it has finished draining, claims free
  partitions up to its fair share (ceil(partitions / workers)) and names the ones it holds
  above that share, which it drains before a later write frees them (the handover).
- ``BeatWatch``: which workers stopped renewing, judged by the observer's own clock (a
  heartbeat counter that has not changed for a lease), so no two clocks are compared.
- ``vanished``: which workers on this machine have no process any more (a restarted
  engine takes its predecessor's partitions back without waiting for the lease).

Each worker prefers partitions by rendezvous hashing (``preference``), so workers that
claim at once mostly want different partitions and a worker keeps the same ones across
rebalances; the compare-and-set on the table decides every race that remains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from uuid import UUID

import msgspec

#: Partitions when the setting does not say (``CHORUS_PARTITIONS``); every engine of a
#: deployment must use the same count.
DEFAULT_PARTITIONS = 32


def partition_of(aggregate_id: UUID, count: int) -> int:
    """The partition of an aggregate: the same in every engine process."""
    digest = hashlib.blake2b(aggregate_id.bytes, digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def preference(worker: str, partition: int) -> int:
    """How much ``worker`` wants ``partition`` (rendezvous hashing: highest wins)."""
    digest = hashlib.blake2b(f"{worker}/{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def fair_share(count: int, workers: int) -> int:
    """The most partitions one worker holds once the table is balanced."""
    return -(-count // max(workers, 1))


class Table(msgspec.Struct, frozen=True, kw_only=True):
    """Who owns which partition, and each owner's heartbeat counter."""

    count: int
    #: Worker id -> heartbeat counter, bumped by each of the worker's writes.
    members: dict[str, int] = {}
    #: Owner of each partition, by index; "" while it is free.
    owners: list[str] = []
    #: Where each worker runs, ``<kernel boot id>/<pid namespace>/<pid>`` ("" unknown): a
    #: worker on the same machine and pid namespace can tell that one's process is gone.
    places: dict[str, str] = {}

    @classmethod
    def empty(cls, count: int) -> Table:
        return cls(count=count, owners=[""] * count)

    def held_by(self, worker: str) -> frozenset[int]:
        return frozenset(p for p, owner in enumerate(self.owners) if owner == worker)


class CountMismatch(ValueError):
    """The running engines use another partition count than this one."""


@dataclass(frozen=True)
class Plan:
    """What a worker writes next, and which of its partitions it must hand over."""

    table: Table
    #: Partitions the worker still owns in ``table`` but holds above its fair share: it
    #: stops taking their commands, lets those in flight finish, then frees them.
    release: frozenset[int]


def plan(
    table: Table | None,
    me: str,
    count: int,
    *,
    dead: Collection[str] = (),
    drained: Collection[int] = (),
    releasing: Collection[int] = (),
    place: str = "",
) -> Plan:
    """``me``'s next write of ``table`` (None: there is none yet).

    ``dead``: workers ``me`` saw stop renewing; their partitions become free.
    ``drained``: partitions ``me`` handed over and finished; they become free.
    ``releasing``: partitions ``me`` is draining now; they stay its own until drained.
    ``place``: where ``me`` runs (see ``Table.places``).
    Raises ``CountMismatch`` if live workers use another partition count.
    """
    if table is None:
        table = Table.empty(count)
    members = {m: beat for m, beat in table.members.items() if m not in dead and m != me}
    if table.count != count:
        if members:
            raise CountMismatch(
                f"this engine has {count} partitions, the running engines {table.count}: "
                "every engine of a deployment needs the same CHORUS_PARTITIONS"
            )
        table = Table.empty(count)  # nobody left who used the old count
    members[me] = table.members.get(me, 0) + 1
    owners = [
        owner if owner in members and not (owner == me and p in drained) else ""
        for p, owner in enumerate(table.owners)
    ]
    share = fair_share(count, len(members))
    mine = [p for p, owner in enumerate(owners) if owner == me]
    handing = {p for p in releasing if p in mine}
    excess = len(mine) - share - len(handing)
    if excess > 0:
        # Hand over what this worker wants least; another worker is below its share.
        keep = sorted((p for p in mine if p not in handing), key=lambda p: preference(me, p))
        handing.update(keep[:excess])
    elif len(mine) < share:
        free = sorted(
            (p for p, owner in enumerate(owners) if owner == ""),
            key=lambda p: preference(me, p),
            reverse=True,
        )
        for p in free[: share - len(mine)]:
            owners[p] = me
    places = {m: where for m, where in table.places.items() if m in members}
    places[me] = place
    table = Table(count=count, members=members, owners=owners, places=places)
    return Plan(table, frozenset(handing))


def vanished(table: Table | None, here: str, alive: Callable[[int], bool]) -> frozenset[str]:
    """Workers whose process is gone, among those running where this one does (``here``:
    ``<boot id>/<pid namespace>``): their partitions need not wait for a lease to run out
    (an engine restarted on its machine takes them back at once). Never a worker whose
    pid still runs, whatever that process now is: that one waits for its lease."""
    if table is None or not here:
        return frozenset()
    gone = set()
    for worker, where in table.places.items():
        machine, _, pid = where.rpartition("/")
        if machine == here and pid.isdigit() and not alive(int(pid)):
            gone.add(worker)
    return frozenset(gone)


def leave(table: Table, me: str) -> Table:
    """The table without ``me``: its partitions free for the others to claim."""
    return Table(
        count=table.count,
        members={m: beat for m, beat in table.members.items() if m != me},
        owners=["" if owner == me else owner for owner in table.owners],
        places={m: where for m, where in table.places.items() if m != me},
    )


class BeatWatch:
    """Which workers stopped renewing, as one observer sees it on its own clock.

    A worker is dead once its heartbeat counter has not changed for ``lease`` seconds
    since this observer first saw that value. The observer sees a value only after it was
    written, so it never declares a worker dead sooner than ``lease`` after that worker's
    last write; the worker stops taking commands well before that (its fence).
    """

    def __init__(self, lease: float) -> None:
        self.lease = lease
        self._seen: dict[str, tuple[int, float]] = {}

    def dead(self, table: Table | None, me: str, now: float) -> frozenset[str]:
        members = table.members if table is not None else {}
        for worker in list(self._seen):
            if worker not in members:
                del self._seen[worker]
        for worker, beat in members.items():
            seen = self._seen.get(worker)
            if seen is None or seen[0] != beat:
                self._seen[worker] = (beat, now)
        return frozenset(
            worker
            for worker, (_, since) in self._seen.items()
            if worker != me and now - since >= self.lease
        )
