"""The scale-out layout without faults: commands/s end to end with 1, 2 and 3 engine workers.

    python -m bench.cluster --database-url postgresql://... [--sessions 1000] [--agents 20]
        [--window 8] [--runs 3]

Starts ``chorus cluster``'s layout (runtime/cluster.py: three nats-server nodes on
loopback with the streams at R3, the event store on PostgreSQL in a fresh schema per run,
the projector and the gateways) once per ``--engines`` count. Agents on the bus (spread
over the three nodes) open ``--sessions`` sessions of ``--participants`` agents each, then
each submits its result to the sessions it is in (several commands per session, arriving
together: where two engines take commands of one session, they meet on its version),
``--window`` requests in flight per agent. A command counts
when its ``accepted`` reply has arrived: the engine recorded it in PostgreSQL (the read
model follows; ``bench.e2e`` measures visibility). Prints commands/s, the reply's
p50/p99 and the engines' version conflicts (``chorus_engine_version_conflicts_total``,
summed over the engine processes through prometheus-client's multiprocess files) and the
share of commands an engine passed on to their partition's owner, each the median of
``--runs`` runs with min and max. ``--partitions 0`` runs the engines unpartitioned.

Before the measured load, a warm-up waits until every engine decides commands and, with
partitions, the engines own their fair shares (counts are taken over the measured load
only). In the same run it measures JetStream publishing into an R3 file stream of the same
cluster (``publish_async``, acks awaited at the end) and prints the ratio, so figures
from noisy shared machines can still be compared. The database URL defaults to
``CHORUS_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
import nats
from chorus.cluster import Cluster, ClusterLayout
from chorus.settings import Settings
from chorus.telemetry import MULTIPROC_ENV

from bench.e2e import jetstream_baseline, wait_for_engine

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


async def drive(urls: list[str], args: argparse.Namespace) -> tuple[float, list[float]]:
    """Open the sessions, then submit every result; commands/s and each reply's latency."""
    # One connection per node, the agents spread over them, as agents on several hosts
    # would be: NATS hands a queue-group message to a subscriber on the publisher's own node
    # first, so agents all on one node would all reach the engine(s) on that node.
    connections = [await nats.connect(url) for url in urls]
    await wait_for_engine(connections[0])
    agents = [f"agent-{i}" for i in range(args.agents)]
    bus = {agent: connections[i % len(connections)] for i, agent in enumerate(agents)}
    # Each session's participants: its opener and the next agents (``--participants`` in all).
    sessions = [
        (str(uuid.uuid4()), [agents[(i + k) % len(agents)] for k in range(args.participants)])
        for i in range(args.sessions)
    ]
    latencies: list[float] = []
    window = {agent: asyncio.Semaphore(args.window) for agent in agents}

    async def send(actor: str, command: str, payload: dict[str, object]) -> None:
        body = _enc.encode({"command_id": uuid.uuid4().hex, "payload": payload})
        async with window[actor]:
            sent = time.perf_counter()
            msg = await bus[actor].request(
                f"chorus.cmd.{actor}.session.{command}", body, timeout=60
            )
            latencies.append(time.perf_counter() - sent)
        reply = _dec.decode(msg.data)
        if reply["status"] != "accepted":
            raise SystemExit(f"bench: {command} was answered {reply}")

    started = time.perf_counter()
    await asyncio.gather(*(
        send(members[0], "open", {"session_id": sid, "participants": members,
                                  "task": {"description": "bench"}, "timeout_seconds": 3600})
        for sid, members in sessions
    ))  # fmt: skip
    await asyncio.gather(*(
        send(agent, "submit_result", {"session_id": sid, "result": {"value": 42}})
        for sid, members in sessions for agent in members
    ))  # fmt: skip
    elapsed = time.perf_counter() - started
    for nc in connections:
        await nc.close()
    return len(latencies) / elapsed, latencies


def fresh_schema(base: str) -> tuple[str, str]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema, f"{base}?schema={schema}"


def drop_schema(base: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def engine_counts(metrics_dir: Path) -> tuple[float, float]:
    """Version conflicts and commands passed on to a partition's owner, summed over every
    engine of the run (their counters outlive them in the files)."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    return (
        registry.get_sample_value("chorus_engine_version_conflicts_total") or 0.0,
        registry.get_sample_value("chorus_engine_forwarded_total") or 0.0,
    )


def engines_deciding(metrics_dir: Path, pids: list[int]) -> int:
    """How many of the engine processes ``pids`` have decided a command."""
    from prometheus_client import multiprocess

    deciding = 0
    for pid in pids:
        path = metrics_dir / f"counter_{pid}.db"
        if not path.exists():
            continue
        metrics = multiprocess.MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
        answered = sum(
            sample.value
            for metric in metrics if metric.name == "chorus_commands"
            for sample in metric.samples
        )  # fmt: skip
        deciding += answered > 0
    return deciding


async def balanced(nc: nats.NATS, engines: int) -> bool:
    """Whether the partition table names ``engines`` members, each at most its fair share."""
    try:
        entry = await (await nc.jetstream().key_value("chorus_partitions")).get("table")
    except Exception:
        return False
    table = _dec.decode(entry.value or b"{}")
    owners = table.get("owners", [])
    share = -(-len(owners) // engines)
    held = [owners.count(member) for member in table.get("members", {})]
    return len(held) == engines and "" not in owners and max(held) <= share


async def warm_up(cluster: Cluster, metrics_dir: Path, args: argparse.Namespace) -> None:
    """Until every engine has started, decided commands and (partitioned) taken its share
    of the partitions: the measured load starts with every engine at work."""
    pids = [m.process.pid for m in cluster.members if m.role == "engine" and m.process]
    nc = await nats.connect(cluster.nats_url.split(","))
    try:
        while True:
            for _ in range(20):
                sid = str(uuid.uuid4())
                body = _enc.encode({"command_id": uuid.uuid4().hex, "payload": {
                    "session_id": sid, "participants": ["warm-up"],
                    "task": {"description": "warm-up"}, "timeout_seconds": 3600}})  # fmt: skip
                with contextlib.suppress(Exception):
                    await nc.request("chorus.cmd.warm-up.session.open", body, timeout=10)
            ready = engines_deciding(metrics_dir, pids) == len(pids)
            if ready and (not args.partitions or await balanced(nc, len(pids))):
                return
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def one_run(base_url: str, engines: int, args: argparse.Namespace) -> dict[str, float]:
    schema, url = fresh_schema(base_url)
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-cluster-"))
    metrics_dir = work / "metrics"
    metrics_dir.mkdir()
    # The members inherit it (runtime/cluster.py passes the environment on).
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    settings = Settings(
        data_dir=work, database_url=url, session_quota=0, port=args.port,
        partitions=args.partitions,
    )  # fmt: skip
    # An open bus: the load acts as many agents, and the baseline makes a stream of its own.
    cluster = Cluster(settings, ClusterLayout(engines=engines, open_bus=True))
    try:
        cluster.start()
        urls = cluster.nats_url.split(",")
        asyncio.run(warm_up(cluster, metrics_dir, args))
        conflicts_before, forwarded_before = engine_counts(metrics_dir)
        rate, latencies = asyncio.run(drive(urls, args))
        conflicts, forwarded = engine_counts(metrics_dir)
        baseline = asyncio.run(jetstream_baseline(urls, args.baseline_messages, 512, len(urls)))
    finally:
        cluster.stop()
        os.environ.pop(MULTIPROC_ENV, None)
        drop_schema(base_url, schema)
    ordered = sorted(latencies)
    return {
        "rate": rate,
        "p50": 1000 * ordered[len(ordered) // 2],
        "p99": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "baseline": baseline,
        "ratio": rate / baseline,
        "conflicts": conflicts - conflicts_before,
        "forwarded": (forwarded - forwarded_before) / len(latencies),
    }


def summary(values: list[float], fmt: str) -> str:
    """Median (min-max) of the runs."""
    return (
        f"{format(statistics.median(values), fmt)} "
        f"({format(min(values), fmt)}-{format(max(values), fmt)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("CHORUS_TEST_POSTGRES_URL"))
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument(
        "--participants", type=int, default=4,
        help="agents per session: each session is one open and this many results",
    )  # fmt: skip
    parser.add_argument("--window", type=int, default=8, help="requests in flight per agent")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--partitions", type=int, default=32,
        help="CHORUS_PARTITIONS of the engines (0: none, every engine decides what it takes)",
    )  # fmt: skip
    parser.add_argument("--engines", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--baseline-messages", type=int, default=20_000)
    parser.add_argument("--port", type=int, default=18600, help="first gateway's port")
    args = parser.parse_args()
    if not args.database_url:
        sys.exit("bench: --database-url postgresql://... (or CHORUS_TEST_POSTGRES_URL)")
    print(
        f"cluster: 3 NATS nodes (R3), PostgreSQL, projector, 2 gateways; {args.sessions} "
        f"sessions x (open + {args.participants} results) by {args.agents} agents, window {args.window}, "
        f"{args.partitions or 'no'} partitions; "
        f"median of {args.runs} runs (min-max)"
    )
    for engines in args.engines:
        runs = [one_run(args.database_url, engines, args) for _ in range(args.runs)]
        print(
            f"engines {engines}: {summary([r['rate'] for r in runs], ',.0f')} commands/s  "
            f"reply p50 {summary([r['p50'] for r in runs], '.1f')} ms  "
            f"p99 {summary([r['p99'] for r in runs], '.1f')} ms  "
            f"conflicts {summary([r['conflicts'] for r in runs], ',.0f')}  "
            f"passed on {summary([100 * r['forwarded'] for r in runs], '.0f')}%  |  "
            f"R3 publish {summary([r['baseline'] for r in runs], ',.0f')} msg/s  "
            f"ratio {summary([r['ratio'] for r in runs], '.3f')}",
            flush=True,
        )


if __name__ == "__main__":
    main()
