"""End-to-end command throughput: agents -> NATS -> engine -> event store -> read model.

    python -m bench.e2e [--sessions 200] [--participants 10] [--agents 50] [--window 32]

Starts a nats-server from the wheel, the engine and the projector as separate processes
(as ``chorus up`` does), opens sessions, then N agents submit one result per session they
take part in, through NATS requests. The clock stops when every command has its
``accepted`` reply *and* the read model has projected the last event. In the same run it
measures raw JetStream async publishing on this machine (the bus's own limit here) and
prints the ratio, so figures from noisy shared machines can still be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import nats

from runtime.natsd import die_with_parent, start_nats_server

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


async def jetstream_baseline(url: str, count: int, size: int) -> float:
    """Messages/s of ``publish_async`` into a file stream, acks awaited at the end."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BENCH", subjects=["bench.>"])
    payload = os.urandom(size // 2).hex().encode()
    started = time.perf_counter()
    futures = [await js.publish_async("bench.x", payload) for _ in range(count)]
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    await js.delete_stream("BENCH")
    await nc.close()
    return count / elapsed


def spawn(role: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", role],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )


def projected_position(read_db: Path) -> int:
    try:
        with sqlite3.connect(read_db, timeout=5) as conn:
            row = conn.execute("SELECT position FROM tracking WHERE name='sessions'").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0]) if row else 0


async def request(nc: nats.NATS, subject: str, body: dict[str, object]) -> dict[str, object]:
    msg = await nc.request(subject, _enc.encode(body), timeout=30)
    reply: dict[str, object] = _dec.decode(msg.data)
    return reply


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-"))
    server = start_nats_server(work / "nats", monitor=False)
    env = {
        "CHORUS_NATS_URL": server.url,
        "CHORUS_DATA_DIR": str(work),
        "CHORUS_DATABASE_URL": f"sqlite:///{work}/events.db",
        "CHORUS_READ_STORE_URL": f"sqlite:///{work}/read.db",
    }
    procs = [spawn("engine", env, work / "engine.log"), spawn("project", env, work / "project.log")]
    try:
        baseline = await jetstream_baseline(server.url, args.baseline, 400)
        conns = [await nats.connect(server.url) for _ in range(4)]
        # Wait for the engine to listen.
        while True:
            try:
                await conns[0].request("chorus.cmd.bench.session.ping", b"{}", timeout=1)
                break
            except Exception:
                await asyncio.sleep(0.1)

        agents = [f"agent-{i}" for i in range(args.agents)]
        sessions = []
        opens = []
        for s in range(args.sessions):
            sid = str(uuid.uuid4())
            members = [agents[(s + k) % len(agents)] for k in range(args.participants)]
            sessions.append((sid, members))
            opens.append(
                request(
                    conns[s % len(conns)],
                    "chorus.cmd.coordinator.session.open",
                    {
                        "command_id": f"open-{sid}",
                        "payload": {
                            "session_id": sid,
                            "participants": members,
                            "task": {"description": "bench", "criteria": {"require": "majority"}},
                            "timeout_seconds": 3600,
                        },
                    },
                )
            )
        replies = await asyncio.gather(*opens)
        assert all(r["status"] == "accepted" for r in replies), replies[:3]

        work_by_agent: dict[str, list[str]] = {a: [] for a in agents}
        for sid, members in sessions:
            for m in members:
                work_by_agent[m].append(sid)
        total = sum(len(v) for v in work_by_agent.values())
        last_position = 0
        accepted = 0

        async def agent(index: int, name: str) -> None:
            nonlocal last_position, accepted
            nc = conns[index % len(conns)]
            subject = f"chorus.cmd.{name}.session.submit_result"
            queue = list(work_by_agent[name])
            window = asyncio.Semaphore(args.window)

            async def one(sid: str) -> None:
                nonlocal last_position, accepted
                async with window:
                    reply = await request(nc, subject, {
                        "command_id": f"{name}-{sid}",
                        "payload": {"session_id": sid, "result": {"value": 42},
                                    "output_hash": "sha256:abc"},
                    })  # fmt: skip
                if reply["status"] != "accepted":
                    raise RuntimeError(f"not accepted: {reply}")
                accepted += 1
                last_position = max(last_position, int(reply["position"]))  # type: ignore[call-overload]

            await asyncio.gather(*(one(sid) for sid in queue))

        started = time.perf_counter()
        await asyncio.gather(*(agent(i, a) for i, a in enumerate(agents)))
        replied = time.perf_counter() - started
        while projected_position(work / "read.db") < last_position:  # noqa: ASYNC110 - polls a file another process writes
            await asyncio.sleep(0.005)
        visible = time.perf_counter() - started
        for nc in conns:
            await nc.close()

        e2e_rate = total / visible
        print(f"chorus bench.e2e  ({os.cpu_count()} cores, {args.sessions} sessions x "
              f"{args.participants} participants, {args.agents} agents, window {args.window})")  # fmt: skip
        print(f"  commands                       {total:>10,}")
        print(f"  accepted replies               {total / replied:>10,.0f} commands/s")
        print(f"  end to end (reply + projected) {e2e_rate:>10,.0f} commands/s")
        print(f"  JetStream publish_async        {baseline:>10,.0f} msgs/s  (baseline, same run)")
        print(f"  ratio end-to-end / JetStream   {e2e_rate / baseline:>10.3f}")
        print(f"  events in store                {last_position:>10,} (incl. dedup records)")
    finally:
        teardown(procs, server, work)


def teardown(procs: list[subprocess.Popen[bytes]], server: Any, work: Path) -> None:
    """Stop the processes, then the nats-server, and remove the run's files."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    server.stop()
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--window", type=int, default=32, help="requests in flight per agent")
    parser.add_argument("--baseline", type=int, default=20_000, help="JetStream messages")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
