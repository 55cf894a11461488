"""SIGKILL the engine while its timer is timing sessions out: each times out exactly once.

The engine runs as ``python -m chorus.cli engine``; sessions with one-second deadlines are
opened in two waves, and the engine is SIGKILLed as soon as the first timeouts of each
wave are recorded (its timer mid-round, its checkpoint possibly behind what it did), then
restarted from its checkpoint. Afterwards every session has exactly one timeout and one
dedup record of the timer's command, and the timer's checkpoint row is at the log's end.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from chorus.natsd import NatsServer
from chorus.store.checkpoints import CheckpointStore
from chorus.store.recorder import open_recorder

from .conftest import (
    EngineProcess,
    async_wait_until,
    cmd_subject,
    open_body,
    read_store,
    request_until_answered,
    sqlite_url,
)

pytestmark = pytest.mark.kill

WAVE = 15


@pytest.fixture
def engine_proc(natsd: NatsServer, tmp_path: Path) -> Iterator[EngineProcess]:
    engine = EngineProcess(natsd.url, sqlite_url(tmp_path / "events.db"), tmp_path / "engine")
    try:
        yield engine
    finally:
        engine.terminate()


def timeouts(database_url: str) -> Counter[str]:
    return Counter(r.aggregate_id for r in read_store(database_url) if r.type == "SessionTimedOut")


def timer_dedup_records(database_url: str) -> Counter[str]:
    return Counter(
        r.command_id
        for r in read_store(database_url)
        if r.aggregate == "command" and r.command_id.startswith("timeout:")
    )


async def open_wave(nc: Any, sids: list[str]) -> None:
    for sid in sids:
        reply = await request_until_answered(
            nc, cmd_subject("coord", "open"),
            open_body(f"open-{sid}", sid, ["agent-1"], timeout_seconds=1),
        )  # fmt: skip
        assert reply["status"] in ("accepted", "duplicate"), reply


async def test_sigkill_while_timing_out_times_each_session_out_exactly_once(
    natsd: NatsServer, engine_proc: EngineProcess
) -> None:
    url = engine_proc.database_url
    nc = await nats.connect(natsd.url, name="manager-kill", max_reconnect_attempts=-1)
    sids: list[str] = []
    try:
        engine_proc.start()
        for _ in range(2):
            wave = [str(uuid.uuid4()) for _ in range(WAVE)]
            sids += wave
            await open_wave(nc, wave)

            async def some_of_wave_done(wave: list[str] = wave) -> bool:
                done = timeouts(url)
                return any(done[sid] for sid in wave)

            await async_wait_until(some_of_wave_done, 60, "the first timeouts")
            engine_proc.kill()
            engine_proc.start()

        async def all_done() -> bool:
            return all(timeouts(url)[sid] for sid in sids)

        await async_wait_until(all_done, 90, "every session to time out")
    finally:
        await nc.close()
    engine_proc.terminate()

    assert engine_proc.kills == 2
    done = timeouts(url)
    assert {sid: done[sid] for sid in sids} == dict.fromkeys(sids, 1)
    dedup = timer_dedup_records(url)
    assert {f"timeout:{sid}": dedup[f"timeout:{sid}"] for sid in sids} == {
        f"timeout:{sid}": 1 for sid in sids
    }
    recorder = open_recorder(url)
    saved = CheckpointStore(recorder).load("SessionTimer")
    assert saved is not None
    assert saved.position > 0
