"""The sealer: follows the log and extends the seal ledger (``events.ledger``).

It lives in the engine because the engine is the event store's writer; queries and the
projector keep read-only access. It runs beside the command path instead of inside its
transaction, so sealing never slows or fails a command; the cost is a short unsealed tail.

Each row is checked before it is sealed; at a row that does not verify the sealer stops
(logging an error naming it) instead of vouching for it, and ``chorus audit verify`` then
names the row and, after the grace period, the stalled tail. With ``anchor_path`` set,
every new head seal also replaces the line of that file, outside the database (see
``events.ledger`` for why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from eventsourcing.persistence import ApplicationRecorder

from contracts.aio import raise_if_cancelling
from events.ledger import UnsoundRow, append_anchor, ensure_ledger, seal_step

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
    """Extends the seal ledger as the log grows; optionally mirrors each head to a file."""

    def __init__(
        self,
        recorder: ApplicationRecorder,
        *,
        batch: int = 500,
        idle_interval: float = 0.1,
        anchor_path: Path | None = None,
        halted_interval: float = 5.0,
    ) -> None:
        self.recorder = recorder
        self.batch = batch
        self.idle_interval = idle_interval
        self.anchor_path = anchor_path
        self.halted_interval = halted_interval
        #: The row sealing stopped at (None while all is well).
        self.halted_at: int | None = None

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
                step = await _in_thread(seal_step, self.recorder, self.batch)
            except UnsoundRow as unsound:
                if self.halted_at != unsound.position:
                    log.error(
                        "sealing stopped at position %d: %s; this row and every later one stay "
                        "unsealed until it is resolved (run chorus audit verify)",
                        unsound.position, unsound.reason,
                    )  # fmt: skip
                    self.halted_at = unsound.position
                await asyncio.sleep(self.halted_interval)
                continue
            except Exception as error:
                raise_if_cancelling()
                log.warning("sealing failed, retrying: %s", error)
                await asyncio.sleep(1)
                continue
            if step is None:
                await asyncio.sleep(self.idle_interval)
                continue
            self.halted_at = None
            if self.anchor_path is not None:
                try:
                    await _in_thread(append_anchor, self.anchor_path, step.head)
                except OSError as error:
                    log.error("cannot append to the seal anchor %s: %s", self.anchor_path, error)
