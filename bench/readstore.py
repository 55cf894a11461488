"""The projector's catch-up rate on each read-store backend, SQLite and PostgreSQL, in one run.

    python -m bench.readstore [--agents 50] [--sessions 400] [--participants 5] [--runs 3]
                              [--postgres-url postgresql://...]  (or CHORUS_TEST_POSTGRES_URL)

Writes one event log (SQLite; agents register, sessions open naming them, every participant
submits, so each session finalises), then lets every read model of ``chorus project`` catch
up with it from position 0 into a fresh read store (stepped together, one scan of the log,
as ``chorus project`` runs them), alternating the backends run by run so
both see the same machine. Prints events/s per run, the median with min and max, and the
SQLite / PostgreSQL ratio of each run (and their median). Each PostgreSQL run uses a schema
of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid

from chorus.bootstrap import PROJECTIONS, bootstrap
from chorus.contracts.agents import RegisterAgent
from chorus.contracts.envelope import Envelope
from chorus.contracts.sessions import OpenSession, SubmitResult, Task
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command, Processor
from chorus.projections.projector import step_together
from chorus.settings import Settings
from chorus.store.recorder import open_recorder
from eventsourcing.persistence import ApplicationRecorder


def command(actor: str, key: tuple[str, str], payload: object) -> Command:
    return Command(actor, HANDLERS[key], Envelope(command_id=uuid.uuid4().hex, payload=payload))


def write_log(recorder: ApplicationRecorder, agents: int, sessions: int, size: int) -> int:
    processor = Processor(recorder)
    names = [f"agent-{i}" for i in range(agents)]
    batches = [[command(n, ("agent", "register"), RegisterAgent(name=n)) for n in names]]
    for s in range(sessions):
        sid = str(uuid.uuid4())
        team = [names[(s + i) % agents] for i in range(size)]
        batches.append([command("coordinator", ("session", "open"), OpenSession(
            session_id=sid, participants=team, task=Task(description="bench")))])  # fmt: skip
        batches.append([
            command(a, ("session", "submit_result"),
                    SubmitResult(session_id=sid, result={"v": 1}, output_hash="sha256:ab"))
            for a in team
        ])  # fmt: skip
    for batch in batches:
        processor.handle_batch(batch)
    return int(recorder.max_notification_id() or 0)


def log_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The event log's shape (``write_log``) and how many runs, as options."""
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--participants", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    return parser


def catch_up(recorder: ApplicationRecorder, url: str, head: int) -> float:
    """Seconds for every read model to reach the head of the log from 0, stepping them
    together as ``chorus project`` does (one scan of the log, ``step_together``)."""
    # Every read model ``chorus project`` runs, wired as it wires them, on this recorder.
    runners = bootstrap(Settings(), recorder=recorder).projection_runners(read_store_url=url)
    store = runners[0].store
    started = time.perf_counter()
    positions: list[int] = []
    while min(positions or [0]) < head:
        step_together(runners)
        moved = [runner.position for runner in runners]
        if moved == positions:  # a read model fails its batches: stop, the assert says so
            break
        positions = moved
    elapsed = time.perf_counter() - started
    assert all(runner.position == head for runner in runners), "a read model fell behind"
    store.close()
    return elapsed


def drop_schema(base: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def summary(rates: list[float]) -> str:
    return (
        f"median {statistics.median(rates):>9,.0f}  min {min(rates):>9,.0f}  "
        f"max {max(rates):>9,.0f} events/s"
    )


def main() -> None:
    parser = log_arguments(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--postgres-url", default=os.environ.get("CHORUS_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    if not args.postgres_url:
        parser.error("a PostgreSQL URL is needed (--postgres-url or CHORUS_TEST_POSTGRES_URL)")
    work = tempfile.mkdtemp(prefix="chorus-bench-")
    try:
        recorder = open_recorder(f"sqlite:///{work}/events.db")
        head = write_log(recorder, args.agents, args.sessions, args.participants)
        print(
            f"chorus bench.readstore  ({head:,} notifications: {args.agents} agents, "
            f"{args.sessions} sessions of {args.participants}; {len(PROJECTIONS)} read models)"
        )
        rates: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
        for run in range(args.runs):
            sqlite_url = f"sqlite:///{work}/read-{run}.db"
            rates["sqlite"].append(head / catch_up(recorder, sqlite_url, head))
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            try:
                rates["postgresql"].append(
                    head / catch_up(recorder, f"{args.postgres_url}?schema={schema}", head)
                )
            finally:
                drop_schema(args.postgres_url, schema)
            print(
                f"  run {run + 1}: SQLite {rates['sqlite'][-1]:>9,.0f}  PostgreSQL "
                f"{rates['postgresql'][-1]:>9,.0f} events/s  ratio SQLite/PostgreSQL "
                f"{rates['sqlite'][-1] / rates['postgresql'][-1]:.2f}"
            )
        ratios = [s / p for s, p in zip(rates["sqlite"], rates["postgresql"], strict=True)]
        print(f"  SQLite      {summary(rates['sqlite'])}")
        print(f"  PostgreSQL  {summary(rates['postgresql'])}")
        print(
            f"  ratio SQLite/PostgreSQL  median {statistics.median(ratios):.2f}  "
            f"min {min(ratios):.2f}  max {max(ratios):.2f}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
