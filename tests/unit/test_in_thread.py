"""Cancelling an engine loop never leaves a thread on the store (``chorus.aio.in_thread``).

A follower's read that outlived its cancelled task ran on a connection the test had just
closed and crashed the whole test process (a segfault in test_engine_kill).
"""

from __future__ import annotations

import ast
import asyncio
import threading
from pathlib import Path

import pytest
from chorus.aio import in_thread

ROOT = Path(__file__).resolve().parents[2]
#: Where the engine's loops live: its own package and the service that runs them.
ENGINE_CODE = [ROOT / "engine", ROOT / "runtime" / "bootstrap"]


async def test_a_cancelled_call_ends_only_after_its_thread() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def read() -> str:
        started.set()
        release.wait()
        finished.append("read")
        return "rows"

    task = asyncio.create_task(in_thread(read))
    await asyncio.to_thread(started.wait)
    task.cancel()
    for _ in range(5):  # plain to_thread would be done (cancelled) after the first
        await asyncio.sleep(0)
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == ["read"]


async def test_an_uncancelled_call_returns_its_result() -> None:
    assert await in_thread(lambda a, b: a + b, 2, 3) == 5


def test_the_engine_runs_blocking_calls_only_through_in_thread() -> None:
    offenders = []
    for path in sorted(p for folder in ENGINE_CODE for p in folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "to_thread":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
