"""The sealer: follows the log and extends the seal ledger (``chorus.audit.ledger``).

It lives in the engine because the engine is the event store's writer; queries and the
projector keep read-only access. It runs beside the command path instead of inside its
transaction, so sealing never slows or fails a command; the cost is a short unsealed tail.

Each row is checked before it is sealed; at a row that does not verify the sealer stops
(logging an error naming it) instead of vouching for it, and ``chorus audit verify`` then
names the row and, after the grace period, the stalled tail. With ``anchor_path`` set,
the newest head seal also replaces the line of that file, outside the database (see
``chorus.audit.ledger`` for why).

Cost under load. Profiled at about 1,300 commands/s, the sealer took as much engine CPU
as the command path, mostly from sealing a few rows at a time as soon as they appeared
(each step a transaction and a file fsync+rename). So it seals in bulk: after a step
that reached the head it waits ``idle_interval`` before the next, and it writes the
anchor at most once per ``anchor_interval`` while sealing goes on, and always once it
has caught up (and on stop), so the file still ends at the head seal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from chorus.aio import in_thread, raise_if_cancelling
from chorus.audit.ledger import (
    Checkpoint,
    UnsoundRow,
    append_anchor,
    ensure_ledger,
    last_seal,
    seal_step,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.persistence import ApplicationRecorder

log = logging.getLogger(__name__)


class Sealer:
    """Extends the seal ledger as the log grows; optionally mirrors each head to a file."""

    def __init__(
        self,
        recorder: ApplicationRecorder,
        *,
        batch: int = 2000,
        idle_interval: float = 0.2,
        anchor_path: Path | None = None,
        anchor_interval: float = 1.0,
        anchor_key: Ed25519PrivateKey | None = None,
        halted_interval: float = 5.0,
    ) -> None:
        self.recorder = recorder
        self.batch = batch
        self.idle_interval = idle_interval
        self.anchor_path = anchor_path
        self.anchor_interval = anchor_interval
        #: Signs each anchor line (the deployment's audit key), so the file cannot be
        #: rewritten to an earlier checkpoint without it.
        self.anchor_key = anchor_key
        #: The newest head seal not yet written to the anchor file.
        self._unanchored: Checkpoint | None = None
        self._anchored_at = float("-inf")
        #: Each aggregate's last checked hash, so previous versions are rarely re-read.
        self._known: dict[str, tuple[int, str]] = {}
        self.halted_interval = halted_interval
        #: The row sealing stopped at (None while all is well).
        self.halted_at: int | None = None

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            # Stopping: leave the anchor at the newest head (a small synchronous write).
            if self._unanchored is not None and self.anchor_path is not None:
                with contextlib.suppress(OSError):
                    append_anchor(self.anchor_path, self._unanchored, self.anchor_key)

    async def _run(self) -> None:
        while True:
            try:
                await in_thread(ensure_ledger, self.recorder)
                # Anchor the head as it is now, even if nothing new comes to seal: the
                # file may be older (or unsigned, or missing) after a restart.
                seal = await in_thread(last_seal, self.recorder)
                if seal is not None and self.anchor_path is not None:
                    self._unanchored = Checkpoint(
                        position=seal.position, running_hash=seal.running_hash
                    )
                break
            except Exception as error:
                raise_if_cancelling()
                log.warning("cannot create the seal ledger yet: %s", error)
                await asyncio.sleep(1)
        while True:
            try:
                step = await in_thread(seal_step, self.recorder, self.batch, self._known)
            except UnsoundRow as unsound:
                if self.halted_at != unsound.position:
                    log.error(
                        "sealing stopped at position %d: %s; this row and every later one stay "
                        "unsealed until it is resolved (run chorus audit verify)",
                        unsound.position, unsound.reason,
                    )  # fmt: skip
                    self.halted_at = unsound.position
                await self._anchor(due=True)
                await asyncio.sleep(self.halted_interval)
                continue
            except Exception as error:
                raise_if_cancelling()
                log.warning("sealing failed, retrying: %s", error)
                await asyncio.sleep(1)
                continue
            if step is not None:
                self.halted_at = None
                self._unanchored = step.head
            caught_up = step is None or step.count < self.batch
            await self._anchor(due=caught_up)
            if caught_up:
                await asyncio.sleep(self.idle_interval)

    async def _anchor(self, *, due: bool) -> None:
        """Write the newest head seal to the anchor file if there is one to write and it
        is ``due`` (caught up) or ``anchor_interval`` has passed since the last write."""
        if self.anchor_path is None or self._unanchored is None:
            return
        if not due and time.monotonic() - self._anchored_at < self.anchor_interval:
            return
        head, self._unanchored = self._unanchored, None
        try:
            await in_thread(append_anchor, self.anchor_path, head, self.anchor_key)
            self._anchored_at = time.monotonic()
        except OSError as error:
            log.error("cannot write the seal anchor %s: %s", self.anchor_path, error)
