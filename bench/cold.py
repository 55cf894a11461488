"""Head-of-line blocking: does one cold aggregate delay the commands sent right behind it?

    python -m bench.cold [--events 20000] [--behind 20] [--runs 3]

Writes a session with ``--events`` events (a participant per result) into a fresh store,
starts a nats-server and the engine on it (so nothing is cached), then sends one command
on that session and, right behind it, ``--behind`` commands opening new sessions. Prints
the reply time of the cold command and of the others (median of ``--runs`` engine
restarts, with min and max). Before the fold moved off the writer thread, the others
waited as long as the cold one.

The baseline, measured in the same runs (each run restarts the engine twice, alternating):
the same commands after a restart with no cold command in front of them. The first batch
after a restart waits for the engine's start-up (its process managers reading the log
from their checkpoints, in the same interpreter) whatever is in front of it; what the cold
command costs the others is the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import nats
from chorus.contracts.envelope import Envelope
from chorus.contracts.sessions import OpenSession, SubmitResult, Task
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command, Processor
from chorus.natsd import start_nats_server
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder

from bench.e2e import request, spawn, teardown, wait_for_engine
from bench.rebuild import _Clock


def write_long_session(path: Path, events: int) -> tuple[str, str]:
    """A session of ``events`` participants, all but one submitted; returns its id and
    the participant still to submit."""
    recorder = open_recorder(f"sqlite:///{path}")
    processor = Processor(recorder, clock=_Clock(), cache_size=0)
    sid = str(uuid.uuid4())
    members = [f"p{k}" for k in range(events)]
    processor.handle_batch([Command(
        actor="coordinator", handler=HANDLERS[("session", "open")],
        envelope=Envelope(command_id=f"open-{sid}", payload=OpenSession(
            session_id=sid, participants=members, task=Task(description="bench"),
            timeout_seconds=360_000)))])  # fmt: skip
    processor = Processor(recorder, clock=_Clock())
    for start in range(0, events - 1, 500):
        processor.handle_batch([
            Command(actor=m, handler=HANDLERS[("session", "submit_result")],
                    envelope=Envelope(command_id=f"{m}-{sid}", payload=SubmitResult(
                        session_id=sid, result={"v": 1}, success=True)))
            for m in members[start : min(start + 500, events - 1)]
        ])  # fmt: skip
    close_recorder(recorder)
    return sid, members[-1]


async def one_run(
    work: Path, url: str, sid: str, last: str, behind: int, run: int | str, *, cold: bool = True
) -> tuple[float, float]:
    """Start the engine, time the cold command (unless not ``cold``: 0) and those behind
    it, stop the engine."""
    env = {
        "CHORUS_NATS_URL": url,
        "CHORUS_DATA_DIR": str(work),
        "CHORUS_DATABASE_URL": f"sqlite:///{work}/events.db",
        "CHORUS_READ_STORE_URL": f"sqlite:///{work}/read.db",
        # One coordinator opens every session on an open bus (where it counts as an
        # agent): the session quota would stop it at 20.
        "CHORUS_SESSION_QUOTA": "0",
    }
    engine = spawn("engine", env, work / "engine.log")
    try:
        nc = await nats.connect(url)
        await wait_for_engine(nc)

        async def timed(subject: str, body: dict[str, object]) -> float:
            started = time.perf_counter()
            reply = await request(nc, subject, body)
            assert reply["status"] in ("accepted", "rejected"), reply
            return time.perf_counter() - started

        async def nothing() -> float:
            return 0.0

        first = asyncio.create_task(timed(
            f"chorus.cmd.{last}.session.submit_result",
            {"command_id": f"cold-{run}", "payload": {"session_id": sid, "result": {"v": 1}}},
        ) if cold else nothing())  # fmt: skip
        await asyncio.sleep(0)  # the cold command goes out first
        others = await asyncio.gather(*(timed("chorus.cmd.coordinator.session.open", {
            "command_id": f"open-{run}-{k}",
            "payload": {"session_id": str(uuid.uuid4()), "participants": ["x"],
                        "task": {"description": "behind"}, "timeout_seconds": 60},
        }) for k in range(behind)))  # fmt: skip
        cold_time = await first
        await nc.close()
        return cold_time, statistics.median(others) if others else 0.0
    finally:
        engine.terminate()
        engine.wait(30)


def spread(values: list[float]) -> str:
    ms = [1000 * v for v in values]
    return f"{statistics.median(ms):>8,.0f} ms  (min {min(ms):,.0f}, max {max(ms):,.0f})"


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-cold-"))
    server = start_nats_server(work / "nats", monitor=False)
    try:
        sid, last = write_long_session(work / "events.db", args.events)
        # A first start publishes the log to the stream: not what is measured.
        await one_run(work, server.url, sid, last, 0, -1)
        colds, others, alone = [], [], []
        for run_ in range(args.runs):
            cold, behind = await one_run(work, server.url, sid, last, args.behind, run_)
            colds.append(cold)
            others.append(behind)
            _, baseline = await one_run(
                work, server.url, sid, last, args.behind, f"alone-{run_}", cold=False
            )
            alone.append(baseline)
        print(f"chorus bench.cold  (a session of {args.events:,} events, {args.behind} "
              f"commands right behind its first command after a restart, {args.runs} runs)")  # fmt: skip
        print(f"  the cold command's reply        {spread(colds)}")
        print(f"  the commands behind it (median) {spread(others)}")
        print(f"  the same, no cold command       {spread(alone)}  (baseline, same runs)")
        ratios = [o / a for o, a in zip(others, alone, strict=True)]
        print(f"  ratio behind / baseline         {statistics.median(ratios):>8.2f}  "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f})")  # fmt: skip
    finally:
        teardown([], server, work)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--behind", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
