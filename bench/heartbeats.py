"""Heartbeats: how many the engine absorbs, against a bare NATS subscriber.

    python -m bench.heartbeats [--agents 200] [--beats 50000]

Starts a nats-server from the wheel and an engine (SQLite), registers ``--agents``
agents, then publishes ``--beats`` heartbeats round-robin as fast as one client can and
waits until the liveness monitor has counted them all. The baseline, in the same run, is
a plain nats-py subscriber on the same subject counting the same messages: the ratio says
how much of the bus's own speed liveness keeps. It also prints how many events the
heartbeats added to the store (none is right: only transitions are events).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import nats
from chorus.engine.adapters.liveness import LivenessConfig
from chorus.natsd import start_nats_server
from chorus.store.recorder import open_recorder

from bench import wiring


async def _publish_all(nc: nats.NATS, agents: list[str], beats: int) -> float:
    started = time.perf_counter()
    for i in range(beats):
        await nc.publish(f"chorus.cmd.{agents[i % len(agents)]}.agent.heartbeat", b"")
    await nc.flush()
    return started


async def _bare(url: str, agents: list[str], beats: int) -> float:
    """Messages/s through a plain subscriber that only counts."""
    sub_nc, pub_nc = await nats.connect(url), await nats.connect(url)
    done = asyncio.Event()
    seen = 0

    async def count(msg: object) -> None:
        nonlocal seen
        seen += 1
        if seen == beats:
            done.set()

    await sub_nc.subscribe("chorus.cmd.*.agent.heartbeat", queue="bare",
                           cb=count, pending_msgs_limit=beats * 2)  # fmt: skip
    await sub_nc.flush()
    started = await _publish_all(pub_nc, agents, beats)
    await done.wait()
    elapsed = time.perf_counter() - started
    await sub_nc.close()
    await pub_nc.close()
    return beats / elapsed


async def run(agents_count: int, beats: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-"))
    server = start_nats_server(work / "nats", monitor=False)
    database_url = f"sqlite:///{work}/events.db"
    service = wiring.engine(work, server.url, database_url,
                            liveness_config=LivenessConfig(interval=5.0, missed=3))  # fmt: skip
    agents = [f"bench-{i}" for i in range(agents_count)]
    try:
        async with service as engine:
            nc = await nats.connect(server.url)
            for agent in agents:
                body = json.dumps({"command_id": agent, "payload": {"name": agent}}).encode()
                await nc.request(f"chorus.cmd.{agent}.agent.register", body, timeout=10)
            recorder = open_recorder(database_url)
            before = recorder.max_notification_id()
            assert engine.liveness is not None
            counted = engine.liveness.beats
            started = await _publish_all(nc, agents, beats)
            # Polls the monitor's own counter: the bench must not change what it measures.
            while engine.liveness.beats - counted < beats:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            engine_rate = beats / (time.perf_counter() - started)
            added = recorder.max_notification_id() - before
            await nc.close()
        bare_rate = await _bare(server.url, agents, beats)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"chorus bench.heartbeats  ({beats:,} heartbeats from {agents_count} agents)")
    print(f"  engine liveness (parse, check, KV)   {engine_rate:>10,.0f} heartbeats/s")
    print(f"  bare subscriber, same messages       {bare_rate:>10,.0f} msgs/s (baseline)")
    print(f"  ratio engine / bare                  {engine_rate / bare_rate:>10.3f}")
    print(f"  events the heartbeats added          {added:>10,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--beats", type=int, default=50_000)
    args = parser.parse_args()
    asyncio.run(run(args.agents, args.beats))


if __name__ == "__main__":
    main()
