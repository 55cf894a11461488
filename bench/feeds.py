"""Live feed fan-out: N WebSocket clients on one session's feed while events are recorded.

    python -m bench.feeds [--clients 200] [--events 500] [--rate 50] [--procs 2]

Starts a nats-server from the wheel, the engine, the projector and the gateway as separate
processes (as ``chorus up`` does). Opens a session with ``--events`` participants and
connects ``--clients`` WebSockets to its feed (spread over ``--procs`` client processes,
so the clients do not starve the driver), then the participants submit one result each
at ``--rate`` commands/s, open loop (each send at its scheduled time, whatever the replies
do). Every client must receive every event exactly once, in position order.

Prints deliveries/s (events x clients over the time from the first send to the last
receipt), the latency from each command's send to each client's receipt of its event
(p50/p95/p99/max), events missed or duplicated (both must be 0), and the gateway's CPU
time and memory. In the same run it measures raw JetStream async publishing (the bus's
own limit on this machine), so figures from noisy shared machines can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import tempfile
import time
import uuid
from array import array
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import websockets
from chorus.natsd import start_nats_server

from bench.e2e import (
    cpu_seconds,
    jetstream_baseline,
    request,
    spawn,
    spawn_engine,
    teardown,
    wait_for_engine,
)

SETTLE = 1.0  # seconds between the last client joining and the first event


class _Event(msgspec.Struct):
    position: int
    type: str


_decode = msgspec.json.Decoder(_Event).decode


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Client processes -------------------------------------------------------------------------


async def _connect(url: str) -> Any:
    ws = await websockets.connect(url, max_size=None, compression=None)
    await ws.send("ping")
    while await ws.recv() != "pong":
        pass
    return ws


async def _clients(
    url: str, count: int, agents_url: str, agents_count: int, ready: Any, go: Any,
    timeout: float,
) -> list[Any]:  # fmt: skip
    """Connect ``count`` sockets (and ``agents_count`` on the agents feed, which only
    add load), say so, then record (position, receipt time) of every event until each
    socket has seen the session finalised (or ``timeout`` passes)."""
    received: list[tuple[array[int], array[float]]] = []
    sockets = [await _connect(url) for _ in range(count)]
    watchers = [await _connect(agents_url) for _ in range(agents_count)]
    ready.put(count)

    async def read(ws: Any) -> None:
        positions: array[int] = array("q")
        times: array[float] = array("d")
        received.append((positions, times))
        async for text in ws:
            event = _decode(text)
            positions.append(event.position)
            times.append(time.time())
            if event.type == "SessionFinalised":
                return

    async def drain(ws: Any) -> None:
        async for _ in ws:
            pass

    readers = [asyncio.create_task(read(ws)) for ws in sockets]
    draining = [asyncio.create_task(drain(ws)) for ws in watchers]
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    await asyncio.wait(readers, timeout=timeout)
    for task in draining:
        task.cancel()
    for ws in sockets + watchers:
        await ws.close()
    return [(p.tobytes(), t.tobytes()) for p, t in received]


def client_process(*args: Any) -> None:
    *arguments, out = args
    out.put(asyncio.run(_clients(*arguments)))


# Gateway process figures ------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# The run ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    from chorus.gateway.keys import KeyStore

    work = Path(tempfile.mkdtemp(prefix="chorus-bench-feeds-"))
    server = start_nats_server(work / "nats", monitor=False)
    port = free_port()
    env = {
        "CHORUS_NATS_URL": server.url,
        "CHORUS_DATA_DIR": str(work),
        "CHORUS_DATABASE_URL": f"sqlite:///{work}/events.db",
        "CHORUS_READ_STORE_URL": f"sqlite:///{work}/read.db",
        # One coordinator opens every session on an open bus (where it counts as an
        # agent): the session quota would stop it at 20.
        "CHORUS_SESSION_QUOTA": "0",
        "CHORUS_HOST": "127.0.0.1",
        "CHORUS_PORT": str(port),
        "CHORUS_LOG_LEVEL": "WARNING",
        # Every client signs in as one watcher: the per-actor bound on opening sockets
        # (120/minute by default) would refuse most of them (403 at the handshake).
        "CHORUS_RATE_LIMITS": '{"feed": "100000/minute"}',
    }
    token = KeyStore(work / "keys.db").create("bench-watcher", "operator")
    procs = [*spawn_engine(env, work), *(spawn(role, env, work / f"{role}.log")
                                         for role in ("project", "gateway"))]  # fmt: skip
    gateway_pid = procs[-1].pid
    ctx = multiprocessing.get_context("spawn")
    clients: list[Any] = []
    try:
        baseline = await jetstream_baseline(server.url, args.baseline, 400)
        nc = await nats.connect(server.url)
        await wait_for_engine(nc)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            while True:
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

        sid = str(uuid.uuid4())
        participants = [f"p{i}" for i in range(args.events)]
        opened = await request(nc, "chorus.cmd.coordinator.session.open", {
            "command_id": f"open-{sid}",
            "payload": {"session_id": sid, "participants": participants,
                        "task": {"description": "bench", "criteria": {"require": "all"}},
                        "timeout_seconds": 3600},
        })  # fmt: skip
        assert opened["status"] == "accepted", opened
        since = int(opened["position"])  # type: ignore[call-overload]
        url = f"ws://127.0.0.1:{port}/api/v1/sessions/{sid}/feed?since={since}&token={token}"
        agents_url = f"ws://127.0.0.1:{port}/api/v1/agents/feed?token={token}"

        ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()

        def share(total: int, i: int) -> int:
            return total // args.procs + (i < total % args.procs)

        timeout = args.events / args.rate + args.drain
        for i in range(args.procs):
            process = ctx.Process(
                target=client_process,
                args=(url, share(args.clients, i), agents_url, share(args.agent_clients, i),
                      ready, go, timeout, out),
                daemon=True,
            )  # fmt: skip
            process.start()
            clients.append(process)
        joined = 0
        while joined < args.clients:
            joined += await asyncio.to_thread(ready.get, True, 300)
        await asyncio.sleep(SETTLE)
        rss_before, cpu_before = rss_mb(gateway_pid), cpu_seconds(gateway_pid)

        go.set()
        sent_at: dict[int, float] = {}
        started = time.time()

        async def submit(i: int) -> None:
            delay = started + i / args.rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            at = time.time()
            reply = await request(nc, f"chorus.cmd.{participants[i]}.session.submit_result", {
                "command_id": f"r-{i}-{sid}",
                "payload": {"session_id": sid, "result": {"n": i}, "output_hash": "sha256:x"},
            })  # fmt: skip
            assert reply["status"] == "accepted", reply
            sent_at[int(reply["position"])] = at  # type: ignore[call-overload]

        await asyncio.gather(*(submit(i) for i in range(args.events)))
        results = []
        for _ in clients:
            results += await asyncio.to_thread(out.get, True, timeout + 300)
        cpu_used = cpu_seconds(gateway_pid) - cpu_before
        rss_peak = rss_mb(gateway_pid)
        await asyncio.sleep(2)
        rss_after = rss_mb(gateway_pid)
        await nc.close()

        latencies: list[float] = []
        missed = duplicated = out_of_order = deliveries = 0
        expected = set(sent_at)
        last_receipt = started
        for raw_positions, raw_times in results:
            positions: array[int] = array("q")
            positions.frombytes(raw_positions)
            times: array[float] = array("d")
            times.frombytes(raw_times)
            deliveries += len(positions)
            seen = set(positions)
            duplicated += len(positions) - len(seen)
            missed += len(expected - seen)
            out_of_order += sum(1 for a, b in itertools.pairwise(positions) if b <= a)
            for position, at in zip(positions, times, strict=True):
                last_receipt = max(last_receipt, at)
                if position in sent_at:
                    latencies.append(at - sent_at[position])
        latencies.sort()
        elapsed = last_receipt - started
        ms = [1000 * percentile(latencies, q) for q in (0.5, 0.95, 0.99, 1.0)]
        print(
            f"chorus bench.feeds  ({os.cpu_count()} cores, {args.clients} clients on one "
            f"session, {args.events} events at {args.rate:g}/s, {args.procs} client processes, "
            f"{args.agent_clients} agents-feed sockets)"
        )
        print(f"  deliveries                     {deliveries:>10,} (events x clients)")
        print(f"  delivered                      {deliveries / elapsed:>10,.0f} deliveries/s")
        print(
            f"  send -> receipt  p50 {ms[0]:,.0f} ms, p95 {ms[1]:,.0f} ms, "
            f"p99 {ms[2]:,.0f} ms, max {ms[3]:,.0f} ms"
        )
        print(f"  missed / duplicated / reordered {missed} / {duplicated} / {out_of_order}")
        print(
            f"  gateway CPU                    {1e6 * cpu_used / max(deliveries, 1):>10,.1f} us "
            f"per delivery ({cpu_used:.1f} s)"
        )
        print(
            f"  gateway memory                 {rss_before:,.0f} MB before, {rss_peak:,.0f} MB "
            f"at the end, {rss_after:,.0f} MB 2 s after the clients left"
        )
        print(f"  JetStream publish_async        {baseline:>10,.0f} msgs/s  (baseline, same run)")
        print(f"  ratio deliveries / JetStream   {deliveries / elapsed / baseline:>10.3f}")
    finally:
        for process in clients:
            process.kill()
        teardown(procs, server, work)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--events", type=int, default=500, help="results submitted")
    parser.add_argument("--rate", type=float, default=50, help="results submitted per second")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument(
        "--agent-clients", type=int, default=0, help="extra sockets on the agents feed (load)"
    )
    parser.add_argument("--drain", type=float, default=60, help="seconds to wait after sending")
    parser.add_argument("--baseline", type=int, default=20_000, help="JetStream messages")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
