"""Cold aggregates are folded beside the writer thread, so one never delays a batch.

The first command on an aggregate that is not in the processor's cache used to fold its
whole history on the writer thread, inside the batch: 350-470 ms for an agent with 20,000
events after a restart, and every command batched with it (or queued behind it) waited
as long. Now the worker hands each batch to ``Prefetcher.admit`` first: commands on
cached aggregates (and commands that create theirs) go on at once; the commands on a
cold aggregate are held, in arrival order, while a thread of the prefetcher folds it,
then re-queued; the folded state enters the cache on the writer thread just before the
batch that carries them (``Processor.adopt``, which first reads what the log gained since
the fold). Commands on one aggregate stay in order: while it is held, every later command
on it is held behind the first.

A fold starts when the writer has no batch in hand and no command waits for it
(``start_folds``, called by the worker), not beside a batch: a thread of the same
interpreter is not beside the writer while it decodes a snapshot (one C call that holds
the interpreter for all of it, 17 ms for a session of 20,000 participants), and the
commands that came with the cold one, or right after it, waited for that. Under steady
load the queue may never be empty: a fold waits at most ``overdue``'s limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar
from uuid import UUID

from chorus.engine.handlers import AggregateState
from chorus.engine.processor import Command, Processor

#: Commands that create their aggregate: there is nothing to fold, so nothing to hold.
CREATING = frozenset({("session", "open"), ("workflow", "start"), ("agent", "register")})


class Queued(Protocol):
    """What the worker queues: anything carrying a command."""

    @property
    def command(self) -> Command: ...


T = TypeVar("T", bound=Queued)


class Prefetcher(Generic[T]):
    """Holds commands on cold aggregates while one thread folds those aggregates."""

    def __init__(self, processor: Processor, requeue: Callable[[T], None]) -> None:
        self.processor = processor
        self.requeue = requeue
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chorus-prefetch")
        self._held: dict[UUID, list[T]] = {}
        self._folded: dict[UUID, AggregateState | None] = {}
        #: Folds admitted but not started yet (``start_folds``).
        self._due: list[tuple[Command, UUID]] = []
        #: When the oldest of them was found (``time.monotonic``).
        self._due_since = 0.0

    def admit(self, batch: Sequence[T]) -> tuple[list[T], dict[UUID, AggregateState]]:
        """The items that may run now, and the folded states their batch must adopt
        first; the others are held and come back through ``requeue`` once folded (their
        folds start with ``start_folds``)."""
        now: list[T] = []
        adopt: dict[UUID, AggregateState] = {}
        passed: set[UUID] = set()
        for item in batch:
            command = item.command
            try:
                target = command.target
            except ValueError:  # the processor rejects it with the reason
                now.append(item)
                continue
            if target in self._held:
                self._held[target].append(item)
            elif target in self._folded:
                state = self._folded.pop(target)
                if state is not None:
                    adopt[target] = state
                passed.add(target)
                now.append(item)
            elif (
                target in passed
                or (command.handler.aggregate, command.handler.command) in CREATING
                or self.processor.is_cached(target)
            ):
                now.append(item)
            else:
                self._held[target] = [item]
                if not self._due:
                    self._due_since = time.monotonic()
                self._due.append((command, target))
        return now, adopt

    def overdue(self, limit: float) -> bool:
        """Whether a fold has waited ``limit`` seconds to start."""
        return bool(self._due) and time.monotonic() - self._due_since >= limit

    def start_folds(self) -> None:
        """Start the folds ``admit`` found, once the writer has no batch in hand (after it
        recorded the batch they came with, or at once if it has none)."""
        loop = asyncio.get_running_loop()
        due, self._due = self._due, []
        for command, target in due:
            future = self._pool.submit(self.processor.prefold, command.handler, target)
            future.add_done_callback(functools.partial(self._call_soon, loop, target))

    def _call_soon(
        self, loop: asyncio.AbstractEventLoop, target: UUID, future: Future[AggregateState]
    ) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the engine stopped
            loop.call_soon_threadsafe(self._done, target, future)

    def _done(self, target: UUID, future: Future[AggregateState]) -> None:
        """Back on the event loop: remember the fold (None if it failed: the writer folds
        it then, and says why if the store is down) and re-queue what was held."""
        if future.cancelled():  # stopping: what was held is not answered, like the queue
            return
        self._folded[target] = None if future.exception() is not None else future.result()
        for item in self._held.pop(target, []):
            self.requeue(item)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
