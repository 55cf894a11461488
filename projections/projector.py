"""The projector's loop: every read model of ``chorus project`` following one log.

One scan serves them all (``step_together``): each page of the log is read once and each
event decoded once. The loop runs in one thread of its own from start to stop
(``run_together``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence

from chorus.projections.runner import Decoded, ProjectionRunner

log = logging.getLogger(__name__)


def step_together(runners: Sequence[ProjectionRunner]) -> int:
    """One step of several read models on one store of events, with one scan: the next
    page after the slowest one's position is read once and each event decoded once, and
    each read model applies what is new to it in its own transaction. A read model ahead
    of that page steps on its own (one far behind, e.g. new, never holds the others back);
    one whose batch fails is logged and retried at the next step, the others go on.
    Returns how many notifications the page held."""
    starts = [runner.known_position() for runner in runners]
    recorder = runners[0].recorder
    notifications = recorder.select_notifications(
        min(starts) + 1, max(runner.batch_size for runner in runners)
    )
    if not notifications:
        return 0
    decoded = Decoded()
    moved = len(notifications)
    for runner, start in zip(runners, starts, strict=True):
        try:
            if start >= notifications[-1].id:
                moved = max(moved, runner.step())
            else:
                runner.apply(start, [n for n in notifications if n.id > start], decoded)
        except Exception as error:
            log.warning("projection %s failed a batch, retrying: %s", runner.projection.name, error)
    return moved


async def run_together(
    runners: Sequence[ProjectionRunner], idle_interval: float | None = None
) -> None:
    """Follow the log for these read models with one scan (``step_together``) until
    cancelled: the projector's loop. Before, each read model polled and decoded the whole
    log on its own (three scans and up to three decodes of every event). After a batch
    smaller than a page it waits until ``idle_interval`` (default: the runners' least,
    ``POLL`` unless told) has passed since that step began, so that a steady stream of
    commits is applied in batches of that interval rather than commit by commit.

    The steps run in one thread for the whole loop (``follow``), not one trip to a thread
    per step: the store's calls block, and at 1,000 commands/s the loop steps 100 times a
    second, where each trip (a future, a task, the hand-over of the interpreter lock both
    ways) was a fixed cost. Cancelling stops the thread between two steps and returns once
    it has: no step outlives the loop, so whoever cancelled it may close the stores."""
    interval = idle_interval if idle_interval is not None else min(r.idle_interval for r in runners)
    stop = threading.Event()
    following = asyncio.ensure_future(asyncio.to_thread(follow, runners, interval, stop))
    try:
        await asyncio.shield(following)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(Exception):
            await following
        raise


def follow(runners: Sequence[ProjectionRunner], interval: float, stop: threading.Event) -> None:
    """``run_together``'s loop, in the calling thread, until ``stop`` is set."""
    page = max(runner.batch_size for runner in runners)
    while not stop.is_set():
        began = time.monotonic()
        try:
            moved = step_together(runners)
        except Exception as error:
            log.warning("the projector failed to read the log, retrying: %s", error)
            stop.wait(1)
            continue
        if moved < page:
            stop.wait(max(0.0, began + interval - time.monotonic()))
