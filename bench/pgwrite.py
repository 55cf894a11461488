"""The write path on both event stores, side by side: SQLite and PostgreSQL, open loop.

    python -m bench.pgwrite [--rate 1000] [--seconds 20] [--runs 3]
        [--database-url postgresql://chorus:chorus@127.0.0.1:5432/chorus_test]

Each run starts ``bench.e2e``'s deployment (a nats-server, the engine and the projector as
separate processes, as ``chorus up`` runs them) once with the event store on SQLite and
once on PostgreSQL (a fresh schema, dropped after), the read store on SQLite both times so
only the event store differs. Sessions are opened first; then agents submit results at
``--rate`` commands/s on a fixed schedule whatever the replies do (latency counts from each
command's scheduled send, so a store that falls behind cannot hide its queue).

Prints, per backend, the reply's and the read model's p50/p95/p99/max and the achieved
rate, each the median of ``--runs`` runs with min and max, and the same runs' JetStream
``publish_async`` baseline (the bus's own limit on this machine). The backends alternate
within each run, so a noisy neighbour hits both alike. The URL defaults to
``CHORUS_TEST_POSTGRES_URL``.

It also prints the CPU time each command cost during the open loop: in the engine, in the
projector and, on PostgreSQL, in the server processes serving this deployment (found by
their ``application_name``, set through ``PGAPPNAME``; SQLite does that work inside the
engine). CPU per command stays steady when a shared machine makes the latencies jump.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import nats

from bench.cluster import drop_schema, fresh_schema
from bench.e2e import (
    OpenLoop,
    Watcher,
    cpu_seconds,
    deployment,
    jetstream_baseline,
    measure_open_loop,
    open_sessions,
    wait_for_engine,
)

BACKENDS = ("sqlite", "postgres")
SERVER = "PostgreSQL server"


@dataclass
class Run:
    loop: OpenLoop
    baseline: float
    #: CPU microseconds per command during the open loop, by where they were spent.
    cpu: dict[str, float]


def server_cpu(base_url: str, application: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL server process serving ``application``."""
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application]
        ).fetchall()
    found = {}
    for (pid,) in rows:
        try:
            found[pid] = cpu_seconds(pid)
        except OSError:  # gone meanwhile, or a server on another machine
            continue
    return found


async def one_run(database_url: str | None, args: argparse.Namespace) -> Run:
    """One deployment on ``database_url`` (None: SQLite): the open loop, the baseline and
    the CPU each command cost."""
    application = f"chorus-bench-{uuid.uuid4().hex[:8]}"
    postgres = database_url is not None
    async with deployment(database_url, {"PGAPPNAME": application}) as deployed:
        baseline = await jetstream_baseline(deployed.url, args.baseline, 400)
        conns = [await nats.connect(deployed.url) for _ in range(4)]
        await wait_for_engine(conns[0], deployed.processes)
        args.sessions = max(1, int(args.rate * args.seconds) // args.participants)
        agents = [f"agent-{i}" for i in range(args.agents)]
        args.read_db = deployed.work / "read.db"
        sessions = await open_sessions(conns, agents, args)
        watcher = Watcher(deployed.work / "read.db")
        watching = asyncio.create_task(watcher.run())
        *engine, projector = deployed.pids  # the engine and its relay process, the projector
        before = [sum(map(cpu_seconds, engine)), cpu_seconds(projector)]
        server_before = server_cpu(args.database_url, application) if postgres else {}
        try:
            loop = await measure_open_loop(conns, sessions, watcher, args.rate, args.participants)
        finally:
            watching.cancel()
            for nc in conns:
                await nc.close()
        after = [sum(map(cpu_seconds, engine)), cpu_seconds(projector)]
        server_after = server_cpu(args.database_url, application) if postgres else {}
    server = sum(t - server_before.get(pid, 0.0) for pid, t in server_after.items())
    per = 1e6 / len(loop.replies)
    cpu = {"engine": (after[0] - before[0]) * per, "projector": (after[1] - before[1]) * per}
    if postgres:
        cpu[SERVER] = server * per
    return Run(loop, baseline, cpu)


def at(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: list[float], unit: str = "ms", digits: int = 1) -> str:
    """Median (min-max) of one figure over the runs."""
    med, low, high = statistics.median(values), min(values), max(values)
    return f"{med:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f}) {unit}"


def report(results: dict[str, list[Run]], args: argparse.Namespace) -> None:
    print(
        f"chorus bench.pgwrite  ({os.cpu_count()} cores; open loop at {args.rate:,.0f} "
        f"submit_result/s for {args.seconds:g} s; median (min-max) of {args.runs} runs)"
    )
    figures = [("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)]
    for backend in BACKENDS:
        runs = results[backend]
        print(f"  {backend}")
        achieved = [r.loop.achieved for r in runs]
        print(f"    achieved             {spread(achieved, 'commands/s', 0)}")
        for label, attr in (("reply", "replies"), ("read model", "visible")):
            for name, q in figures:
                values = [at(getattr(r.loop, attr), q) for r in runs]
                print(f"    {label:<10} {name}        {spread(values)}")
        print(f"    sends >1 ms late     {spread([float(r.loop.late) for r in runs], '', 0)}")
        for part in runs[0].cpu:
            values = [r.cpu[part] for r in runs]
            print(f"    CPU/command {part:<17} {spread(values, 'us', 0)}")
    baselines = [r.baseline for b in BACKENDS for r in results[b]]
    print(f"  JetStream publish_async  {spread(baselines, 'msgs/s', 0)}  (baseline, same runs)")

    def median(backend: str, figure: Callable[[Run], float]) -> float:
        return statistics.median(figure(r) for r in results[backend])

    ratios: list[tuple[str, Callable[[Run], float]]] = [
        ("achieved", lambda r: r.loop.achieved),
        ("reply p99", lambda r: at(r.loop.replies, 0.99)),
        ("CPU/command (all parts)", lambda r: sum(r.cpu.values())),
    ]
    for label, figure in ratios:
        ratio = median("postgres", figure) / median("sqlite", figure)
        print(f"  PostgreSQL / SQLite, {label:<24} {ratio:.2f}")


async def main_async(args: argparse.Namespace) -> None:
    results: dict[str, list[Run]] = {b: [] for b in BACKENDS}
    for run in range(args.runs):
        order = BACKENDS if run % 2 == 0 else BACKENDS[::-1]
        for backend in order:
            if backend == "sqlite":
                result = await one_run(None, args)
            else:
                schema, url = fresh_schema(args.database_url)
                try:
                    result = await one_run(url, args)
                finally:
                    drop_schema(args.database_url, schema)
            results[backend].append(result)
            print(
                f"  run {run + 1} {backend:<8} reply p99 {at(result.loop.replies, 0.99):,.1f} "
                f"ms, achieved {result.loop.achieved:,.0f}/s, "
                f"CPU {sum(result.cpu.values()):,.0f} us/command",
                file=sys.stderr,
            )
    report(results, args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000, help="commands per second")
    parser.add_argument("--seconds", type=float, default=20, help="how long each run sends")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--baseline", type=int, default=20_000, help="JetStream messages")
    parser.add_argument("--no-accept", dest="accept_tasks", action="store_false",
                        help="participants never acknowledge their session tasks")  # fmt: skip
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CHORUS_TEST_POSTGRES_URL"),
        help="a PostgreSQL server (default: CHORUS_TEST_POSTGRES_URL)",
    )
    args = parser.parse_args()
    if not args.database_url:
        parser.error("name a PostgreSQL server with --database-url or CHORUS_TEST_POSTGRES_URL")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
