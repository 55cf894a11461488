"""asyncio helpers shared by every long-running loop (engine, projector, gateway, agents).

Not a wire contract, so not in ``chorus.contracts``; a leaf at the package root instead,
importing nothing of Chorus, so every layer may use it (an import-linter contract keeps it
a leaf)."""

from __future__ import annotations

import asyncio


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
