"""The sealer: follows the log and extends the seal ledger (``events.ledger``).

It lives in the engine because the engine is the event store's writer; queries and the
projector keep read-only access. It runs beside the command path instead of inside its
transaction, so sealing never slows or fails a command; the cost is a short unsealed tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

from eventsourcing.persistence import ApplicationRecorder

from contracts.aio import raise_if_cancelling
from events.ledger import ensure_ledger, seal_step

log = logging.getLogger(__name__)

T = TypeVar("T")


async def _in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn`` in a thread; on cancellation, let the thread finish before re-raising.

    A cancelled ``to_thread`` leaves its thread running: if the engine then closes the
    store, the thread's SQLite call runs on a closed connection and crashes the process.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


class Sealer:
    def __init__(
        self, recorder: ApplicationRecorder, *, batch: int = 500, idle_interval: float = 0.1
    ) -> None:
        self.recorder = recorder
        self.batch = batch
        self.idle_interval = idle_interval

    async def run(self) -> None:
        while True:
            try:
                await _in_thread(ensure_ledger, self.recorder)
                break
            except Exception as error:
                raise_if_cancelling()
                log.warning("cannot create the seal ledger yet: %s", error)
                await asyncio.sleep(1)
        while True:
            try:
                moved = await _in_thread(seal_step, self.recorder, self.batch)
            except Exception as error:
                raise_if_cancelling()
                log.warning("sealing failed, retrying: %s", error)
                await asyncio.sleep(1)
                continue
            if not moved:
                await asyncio.sleep(self.idle_interval)
