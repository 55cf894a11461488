"""asyncio helpers shared by every long-running loop (engine, projector, gateway, agents).

Not a wire contract, so not in ``chorus.contracts``; a leaf at the package root instead,
importing nothing of Chorus, so every layer may use it (an import-linter contract keeps it
a leaf)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library turned into an ordinary exception.

    Some client code catches ``CancelledError`` and raises its own error instead (nats-py's
    ``publish_async`` does), and on Python 3.11 ``asyncio.wait_for`` can swallow one. A
    loop that retries on ``Exception`` calls this first, so ``task.cancel()`` still stops it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` for ``event``; True if it was set.

    On 3.11 a ``task.cancel()`` racing the timeout can come out as ``TimeoutError``;
    the task is still marked as cancelling, so the cancellation is re-raised here.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        raise_if_cancelling()
        return False
    return True


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run a blocking call in a thread; on cancellation, let the thread finish first.

    A cancelled ``asyncio.to_thread`` returns at once but leaves its thread running: if the
    engine then closes the store (its stop does), that thread's SQLite call runs on a
    closed connection and crashes the whole process (a segfault, not an exception). The
    engine's loops run their blocking store calls through this, so stopping the engine
    returns only once no thread of it touches the store.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise
