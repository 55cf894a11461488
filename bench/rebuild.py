"""Rebuild speed: every read model rebuilt from position 0, against a plain scan of the log.

    python -m bench.rebuild [--sessions 2000] [--participants 10] [--runs 3]

Writes a log with the engine's command processor (sessions opened, every participant
submitting, so each session finalises), then, ``--runs`` times each: a plain scan of
the notification log (``select_notifications``, pages of 1,000 rows, nothing decoded: the
store's own limit here), the raw read a rebuild does (``select_log``, pages of 20,000
rows, nothing decoded), and the rebuild of every read model as ``chorus project
--rebuild`` does it. Prints the median with min and max, the ratio of the rebuild to the
plain scan of the same run (and to the raw read), the same by this process's CPU time
(which other work on a shared machine moves less than the wall clock), and the load
average before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chorus.bootstrap import PROJECTIONS
from chorus.contracts.envelope import Envelope
from chorus.contracts.sessions import OpenSession, SubmitResult, Task
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command, Processor
from chorus.projections.runner import REBUILD_BATCH, rebuild_together
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder, select_log

from bench import wiring


class _Clock:
    """Advances a millisecond per reading: a log with plausible, increasing times."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def write_log(path: Path, sessions: int, participants: int) -> int:
    recorder = open_recorder(f"sqlite:///{path}")
    processor = Processor(recorder, clock=_Clock())
    members = [f"agent-{k}" for k in range(participants)]
    for start in range(0, sessions, 100):
        sids = [str(uuid.uuid4()) for _ in range(min(100, sessions - start))]
        processor.handle_batch([
            Command(actor="coordinator", handler=HANDLERS[("session", "open")],
                    envelope=Envelope(command_id=f"open-{sid}", payload=OpenSession(
                        session_id=sid, participants=members, task=Task(description="bench"),
                        timeout_seconds=3600)))
            for sid in sids
        ])  # fmt: skip
        for member in members:
            processor.handle_batch([
                Command(actor=member, handler=HANDLERS[("session", "submit_result")],
                        envelope=Envelope(command_id=f"{member}-{sid}", payload=SubmitResult(
                            session_id=sid, result={"v": 1}, success=True)))
                for sid in sids
            ])  # fmt: skip
    head = recorder.max_notification_id() or 0
    close_recorder(recorder)
    return head


class Clocks:
    """Wall and CPU seconds (this process's) from ``start`` to ``stop``."""

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def plain_scan(database_url: str) -> tuple[float, float]:
    recorder = open_recorder(database_url)
    clocks = Clocks()
    clocks.start()
    start = 1
    while batch := recorder.select_notifications(start, 1000):
        start = batch[-1].id + 1
    elapsed = clocks.stop()
    close_recorder(recorder)
    return elapsed


def raw_scan(database_url: str) -> tuple[float, float]:
    recorder = open_recorder(database_url)
    clocks = Clocks()
    clocks.start()
    head = recorder.max_notification_id() or 0
    position = 0
    while rows := select_log(recorder, gt=position, lte=head, limit=REBUILD_BATCH):
        position = rows[-1][0]
    elapsed = clocks.stop()
    close_recorder(recorder)
    return elapsed


def rebuild_all(database_url: str, work: Path, run: int) -> tuple[float, float]:
    read_url = f"sqlite:///{work}/read-{run}.db"
    runners = wiring.components(work, database_url=database_url).projection_runners(
        read_store_url=read_url
    )
    clocks = Clocks()
    clocks.start()
    rebuild_together(runners)
    elapsed = clocks.stop()
    runners[0].store.close()
    close_recorder(runners[0].recorder)
    return elapsed


def summary(rates: list[float], unit: str = "events/s") -> str:
    return (
        f"{statistics.median(rates):>10,.0f} {unit}  (min {min(rates):,.0f}, max {max(rates):,.0f})"
    )


def ratio(rates: list[float], baselines: list[float]) -> str:
    ratios = [rate / base for rate, base in zip(rates, baselines, strict=True)]
    return f"{statistics.median(ratios):>10.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-rebuild-"))
    try:
        path = work / "events.db"
        head = write_log(path, args.sessions, args.participants)
        url = f"sqlite:///{path}"
        load = os.getloadavg()[0]
        # events/s by the wall clock [0] and per CPU second of this process [1]
        scans: tuple[list[float], list[float]] = ([], [])
        raws: tuple[list[float], list[float]] = ([], [])
        rebuilds: tuple[list[float], list[float]] = ([], [])
        for run in range(args.runs):
            for rates, seconds in (
                (scans, plain_scan(url)),
                (raws, raw_scan(url)),
                (rebuilds, rebuild_all(url, work, run)),
            ):
                for clock in (0, 1):
                    rates[clock].append(head / seconds[clock])
        print(f"chorus bench.rebuild  ({head:,} events, {len(PROJECTIONS)} read models, "
              f"median of {args.runs} runs, load average {load:.1f} -> "
              f"{os.getloadavg()[0]:.1f})")  # fmt: skip
        print(f"  plain scan of the log          {summary(scans[0])}  (baseline, same runs)")
        print(f"  raw read of the log            {summary(raws[0])}  (select_log, same runs)")
        print(f"  rebuild of every read model    {summary(rebuilds[0])}")
        print(f"  ratio rebuild / scan           {ratio(rebuilds[0], scans[0])}")
        print(f"  ratio rebuild / raw read       {ratio(rebuilds[0], raws[0])}")
        print("  per CPU second (this process; less moved by others on a shared machine):")
        print(f"  plain scan of the log          {summary(scans[1], 'events/CPU s')}")
        print(f"  rebuild of every read model    {summary(rebuilds[1], 'events/CPU s')}")
        print(f"  ratio rebuild / scan           {ratio(rebuilds[1], scans[1])}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
