"""The projector's loop under a steady stream of commits, without the engine beside it.

    python -m bench.projector [--rate 1000] [--seconds 10] [--sessions 2000]
                              [--participants 10] [--poll 0.01] [--runs 3]

Writes one event log with the engine's command processor as ``bench.e2e --rate`` makes
it: sessions opened first, then one result per participant, participant by participant
across all sessions (so consecutive commands name different sessions), ten commands per
committed batch. The read models catch up with the openings; then the log is shown to
the projector's own loop (``run_together``, every read model of ``chorus project``) as
if it were being written at ``--rate`` commands/s (a recorder that hides what has not
"arrived" yet), for ``--seconds``.

Prints, median of ``--runs`` with min and max: the process's CPU per command and the
delay from each command's arrival to the commit of the sessions read model's batch that
holds it (when its position gauge is set); and as the same run's baseline, the CPU per
command of catching up with the same commands in pages of 1,000 (what the read models
cost with no fixed cost per step spread thin), with the ratio of the two.

bench.e2e's figures move with the engine beside the projector on a shared machine; this
one isolates the projector, so changes to its loop and read models can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chorus.contracts.envelope import Envelope
from chorus.contracts.sessions import OpenSession, SubmitResult, Task
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command, Processor
from chorus.projections import metrics
from chorus.projections.projector import run_together, step_together
from chorus.projections.runner import ProjectionRunner
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder
from eventsourcing.persistence import Notification

from bench import wiring
from bench.rebuild import _Clock

#: Commands per committed batch of the log (the engine commits micro-batches).
COMMIT = 10


def write_log(path: Path, sessions: int, participants: int) -> tuple[int, int]:
    """The log; returns (the last position of the openings, the head)."""
    recorder = open_recorder(f"sqlite:///{path}")
    processor = Processor(recorder, clock=_Clock())
    sids = [str(uuid.uuid4()) for _ in range(sessions)]
    members = {sid: [f"agent-{(s + k) % 50}" for k in range(participants)]
               for s, sid in enumerate(sids)}  # fmt: skip
    for start in range(0, sessions, 100):
        processor.handle_batch([
            Command(actor="coordinator", handler=HANDLERS[("session", "open")],
                    envelope=Envelope(command_id=f"open-{sid}", payload=OpenSession(
                        session_id=sid, participants=members[sid], task=Task(description="b"),
                        timeout_seconds=3600)))
            for sid in sids[start : start + 100]
        ])  # fmt: skip
    opened = recorder.max_notification_id() or 0
    commands = [(members[sid][k], sid) for k in range(participants) for sid in sids]
    for start in range(0, len(commands), COMMIT):
        processor.handle_batch([
            Command(actor=member, handler=HANDLERS[("session", "submit_result")],
                    envelope=Envelope(command_id=f"{member}-{sid}", payload=SubmitResult(
                        session_id=sid, result={"v": 1}, success=True)))
            for member, sid in commands[start : start + COMMIT]
        ])  # fmt: skip
    head = recorder.max_notification_id() or 0
    close_recorder(recorder)
    return opened, head


def runners_on(work: Path, name: str) -> list[ProjectionRunner]:
    return wiring.components(work, database_url=f"sqlite:///{work}/events.db").projection_runners(
        read_store_url=f"sqlite:///{work}/{name}.db"
    )


def catch_up(runners: Sequence[ProjectionRunner], stop: int, page: int) -> None:
    """Step every read model together up to position ``stop``, ``page`` at a time."""
    while (position := min(r.position for r in runners)) < stop:
        for runner in runners:
            runner.batch_size = min(page, stop - position)
        step_together(runners)
    for runner in runners:
        runner.batch_size = 1000


class Arriving:
    """The recorder as the loop sees it: notifications up to the position that has
    "arrived" by now, at ``per_second`` positions a second from ``base``."""

    def __init__(self, recorder: Any, base: int, head: int, per_second: float) -> None:
        self.recorder, self.base, self.head, self.per_second = recorder, base, head, per_second
        self.started = time.perf_counter()

    def arrived(self) -> int:
        return min(
            self.head, self.base + int((time.perf_counter() - self.started) * self.per_second)
        )

    def arrival(self, position: int) -> float:
        return self.started + (position - self.base) / self.per_second

    def select_notifications(self, start: int, limit: int, **kwargs: Any) -> list[Notification]:
        arrived = self.arrived()
        if start > arrived:
            return []
        return list(
            self.recorder.select_notifications(start, min(limit, arrived - start + 1), **kwargs)
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.recorder, name)


def live(
    work: Path, opened: int, head: int, args: argparse.Namespace, run: int
) -> tuple[float, list[float]]:
    """CPU microseconds per command of the loop, and each sampled command's delay (s)."""
    runners = runners_on(work, f"live-{run}")
    catch_up(runners, opened, 1000)
    per_command = (head - opened) / (args.sessions * args.participants)
    arriving = Arriving(runners[0].recorder, opened, head, args.rate * per_command)
    end = min(head, opened + int(args.seconds * args.rate * per_command))
    for runner in runners:
        runner.recorder = arriving  # type: ignore[assignment]
    # When the sessions read model commits each batch: its position gauge is set then (no
    # polling of the store: it would cost this process CPU of its own).
    samples: list[tuple[float, int]] = [(time.perf_counter(), opened)]
    gauge = metrics.POSITION.labels("sessions")
    set_position = gauge.set

    def observed(position: float) -> None:
        set_position(position)
        samples.append((time.perf_counter(), int(position)))

    gauge.set = observed  # type: ignore[method-assign]

    async def follow() -> float:
        loop = asyncio.create_task(run_together(runners, args.poll))
        before = time.process_time()
        while samples[-1][1] < end:  # noqa: ASYNC110 - appended by the loop's worker thread
            await asyncio.sleep(0.05)
        spent = time.process_time() - before
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        return spent

    spent = asyncio.run(follow())
    gauge.set = set_position  # type: ignore[method-assign]
    runners[0].store.close()
    times, positions = [t for t, _ in samples], [p for _, p in samples]
    delays = [times[bisect.bisect_left(positions, p)] - arriving.arrival(p)
              for p in range(opened + 1, end + 1)]  # fmt: skip
    return 1e6 * spent / ((end - opened) / per_command), delays


def baseline(work: Path, opened: int, head: int, args: argparse.Namespace, run: int) -> float:
    """CPU microseconds per command of the same commands in pages of 1,000."""
    runners = runners_on(work, f"pages-{run}")
    catch_up(runners, opened, 1000)
    per_command = (head - opened) / (args.sessions * args.participants)
    end = min(head, opened + int(args.seconds * args.rate * per_command))
    before = time.process_time()
    catch_up(runners, end, 1000)
    spent = time.process_time() - before
    runners[0].store.close()
    return 1e6 * spent / ((end - opened) / per_command)


def at(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(label: str, values: list[float], unit: str, digits: int = 0) -> str:
    return (f"  {label:<34}{statistics.median(values):>9,.{digits}f}  (min {min(values):,.{digits}f}, "
            f"max {max(values):,.{digits}f}) {unit}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000, help="commands per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--poll", type=float, default=None,
                        help="the loop's poll interval (default: the projector's)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-projector-"))
    try:
        opened, head = write_log(work / "events.db", args.sessions, args.participants)
        cpu, pages, ratio, p50, p99, worst = [], [], [], [], [], []
        for run in range(args.runs):
            spent, delays = live(work, opened, head, args, run)
            floor = baseline(work, opened, head, args, run)
            cpu.append(spent)
            pages.append(floor)
            ratio.append(spent / floor)
            p50.append(at(delays, 0.5))
            p99.append(at(delays, 0.99))
            worst.append(at(delays, 1.0))
        print(f"chorus bench.projector  ({args.rate:,.0f} commands/s for {args.seconds:g} s, "
              f"{args.sessions} sessions x {args.participants}, median of {args.runs} runs)")  # fmt: skip
        print(line("CPU per command, live loop", cpu, "us"))
        print(line("CPU per command, pages of 1,000", pages, "us  (baseline, same runs)"))
        print(line("ratio live / pages", ratio, "", 2))
        print(line("visible in sessions, p50", p50, "ms", 1))
        print(line("visible in sessions, p99", p99, "ms", 1))
        print(line("visible in sessions, max", worst, "ms", 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
