"""Command intake: the engine's nats-py subscription against a FastStream subscriber.

    python -m bench.intake [--commands 6000] [--window 256] [--runs 3]

The engine takes commands with a plain nats-py queue subscription whose callback parses
the message and queues it for the group-commit batcher; the batch's writer thread answers
every request once the transaction has committed (engine/adapters/worker.py). This bench
puts a FastStream ``NatsBroker`` subscriber in that place instead (``max_workers`` set to
the client's window, so requests are handled concurrently and still batch together: the
handler queues the command and awaits its reply, which FastStream sends back), with the
same processor, store and batcher behind both, and times the same load through each.

Load: ``--commands`` agent registrations (each a new aggregate, one event and one dedup
record), ``--window`` requests in flight, from a client in this process. Each variant
runs ``--runs`` times, alternating, each on a fresh SQLite store; prints commands/s per
run, the median with min and max, and the ratio FastStream / nats-py, with JetStream's
``publish_async`` rate measured in each run as the usual baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
import nats
from chorus.contracts.subjects import CMD_PREFIX, ENGINE_QUEUE
from chorus.engine.adapters.worker import CommandWorker, InvalidMessage, parse_message
from chorus.engine.processor import Processor
from chorus.natsd import start_nats_server
from chorus.store.recorder import open_recorder
from faststream.nats import NatsBroker, NatsMessage

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


async def _load(url: str, commands: int, window: int) -> float:
    """Commands/s of ``commands`` registrations, ``window`` in flight; every one must be
    accepted (a bench that counts rejections as work measures nothing)."""
    nc = await nats.connect(url)
    gate = asyncio.Semaphore(window)
    prefix = uuid.uuid4().hex[:8]

    async def one(i: int) -> None:
        name = f"in-{prefix}-{i}"
        body = _encode({"command_id": f"r-{i}", "payload": {"name": name}})
        async with gate:
            reply = await nc.request(f"{CMD_PREFIX}.{name}.agent.register", body, timeout=60)
        status = _decode(reply.data)["status"]
        if status != "accepted":
            raise AssertionError(f"registration of {name} answered {status}")

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(commands)))
    rate = commands / (time.perf_counter() - started)
    await nc.close()
    return rate


async def _variant(
    kind: str, url: str, work: Path, commands: int, window: int
) -> tuple[float, float]:
    """Commands/s through this intake, and the mean batch size the batcher saw."""
    database = work / f"{kind}-{uuid.uuid4().hex[:6]}.db"
    recorder = open_recorder(f"sqlite:///{database}")
    nc = await nats.connect(url)
    worker = CommandWorker(nc, Processor(recorder))
    running = asyncio.create_task(worker.run())
    broker: NatsBroker | None = None
    try:
        if kind == "nats-py":
            await worker.start()
        else:
            broker = NatsBroker(url, logger=None)  # no per-message log lines

            @broker.subscriber(f"{CMD_PREFIX}.>", queue=ENGINE_QUEUE, max_workers=window)
            async def intake(message: NatsMessage) -> bytes:
                raw = message.raw_message
                try:
                    command = parse_message(raw.subject, raw.data)
                except InvalidMessage as invalid:
                    return _encode({"status": "rejected", "error": {"code": invalid.code}})
                return _encode(await worker.submit(command))

            await broker.start()
        rate = await _load(url, commands, window)
        return rate, worker.handled / max(1, worker.batches)
    finally:
        if broker is not None:
            await broker.stop()
        await worker.stop()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        worker.close()
        await nc.close()
        recorder.datastore.close()  # type: ignore[attr-defined]


async def _jetstream(url: str, messages: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BENCH_INTAKE", subjects=["bench.intake.>"])
    started = time.perf_counter()
    acks = [await js.publish_async(f"bench.intake.{i % 100}", b"x" * 200) for i in range(messages)]
    await asyncio.gather(*acks)
    rate = messages / (time.perf_counter() - started)
    await js.delete_stream("BENCH_INTAKE")
    await nc.close()
    return rate


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):>8,.0f}  ({min(values):,.0f} - {max(values):,.0f})"


async def run(commands: int, window: int, runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-intake-"))
    server = start_nats_server(work / "nats", monitor=False)
    rates: dict[str, list[float]] = {"nats-py": [], "faststream": []}
    batches: dict[str, list[float]] = {"nats-py": [], "faststream": []}
    ratios: list[float] = []
    try:
        baselines: list[float] = []
        for _ in range(runs):
            baselines.append(await _jetstream(server.url, 20_000))
            for kind in rates:
                rate, batch = await _variant(kind, server.url, work, commands, window)
                rates[kind].append(rate)
                batches[kind].append(batch)
            ratios.append(rates["faststream"][-1] / rates["nats-py"][-1])
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"chorus bench.intake  ({commands} registrations, {window} in flight, {runs} runs)")
    for kind, values in rates.items():
        each = ", ".join(f"{v:,.0f}" for v in values)
        print(f"  {kind:<11} intake   {_summary(values)} commands/s   runs: {each}   "
              f"commands per batch {statistics.median(batches[kind]):.0f}")  # fmt: skip
    print(f"  ratio faststream / nats-py  {statistics.median(ratios):.3f}"
          f"  ({min(ratios):.3f} - {max(ratios):.3f})")  # fmt: skip
    print(f"  JetStream publish_async  {_summary(baselines)} msgs/s (baseline, each run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=6000)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.commands, args.window, args.runs))


if __name__ == "__main__":
    main()
