"""SIGKILL the engine mid-stream: nothing is lost, nothing is applied twice.

The engine runs as the split process ``python -m chorus.cli engine`` against a real
nats-server and an SQLite event store. Clients on nats-py keep re-sending each command
with the same ``command_id`` until it is answered; meanwhile the engine is killed with
SIGKILL (no shutdown code runs) and restarted. Afterwards the event store must hold each
command's effect exactly once, and the relay must make the EVENTS stream an exact,
ordered mirror of the store's domain events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from chorus.bootstrap import EngineService
from chorus.events.codec import GENESIS_HASH
from chorus.natsd import NatsServer
from chorus.store.datastore import close_recorder
from nats.aio.client import Client as NATS

from tests.conftest import engine_config

from .conftest import (
    EngineProcess,
    SendStats,
    assert_stream_mirrors_store,
    async_wait_until,
    cmd_subject,
    domain_events,
    open_body,
    read_store,
    read_stream,
    request_until_answered,
    sqlite_url,
    stream_message_count,
    submit_body,
    wait_for_relay,
)

pytestmark = pytest.mark.kill

SESSIONS = 20
PARTICIPANTS = [f"agent-{i}" for i in range(10)]
CLIENTS = 16
#: Kill the engine when this many commands have been answered (opens are the first 20).
KILL_AFTER = (12, 90, 160)


@pytest.fixture
def engine_proc(natsd: NatsServer, tmp_path: Path) -> Iterator[EngineProcess]:
    engine = EngineProcess(natsd.url, sqlite_url(tmp_path / "events.db"), tmp_path / "engine")
    try:
        yield engine
    finally:
        engine.terminate()


@pytest.fixture
async def client(natsd: NatsServer) -> Any:
    nc = await nats.connect(natsd.url, name="kill-test", max_reconnect_attempts=-1)
    try:
        yield nc
    finally:
        await nc.close()


@dataclass
class Cmd:
    actor: str
    kind: str  # "open" | "submit_result"
    session_id: str
    body: dict[str, Any]
    reply: dict[str, Any] | None = None

    @property
    def command_id(self) -> str:
        return str(self.body["command_id"])


@dataclass
class Killer:
    """Kills the engine when the answered count crosses a threshold; restarts it."""

    engine: EngineProcess
    thresholds: tuple[int, ...]
    answered: int = 0
    kills_at: list[int] = field(default_factory=list)
    _next: int = 0
    _due: asyncio.Event = field(default_factory=asyncio.Event)

    def on_answer(self) -> None:
        self.answered += 1
        if self._next < len(self.thresholds) and self.answered >= self.thresholds[self._next]:
            self._next += 1
            # In the middle of the stream, other requests in flight: now, or a few ms later
            # (so that sometimes a batch is cut between its commit and its replies).
            delay = random.choice((0.0, 0.001, 0.003, 0.005, 0.01))
            asyncio.get_running_loop().call_later(delay, self._kill)

    def _kill(self) -> None:
        self.engine.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        self.kills_at.append(self.answered)
        self._due.set()

    async def run(self) -> None:
        while True:
            await self._due.wait()
            self._due.clear()
            process = self.engine.process
            assert process is not None
            await asyncio.to_thread(process.wait, 15)
            self.engine.kills += 1
            # Let clients run into "no responders" and timeouts for a moment.
            await asyncio.sleep(random.uniform(0.1, 0.5))
            self.engine.start()  # on the loop's (main) thread: see EngineProcess


async def run_clients(
    nc: NATS, commands: list[Cmd], on_answer: Callable[[], None], stats: SendStats
) -> None:
    queue: asyncio.Queue[Cmd] = asyncio.Queue()
    for cmd in commands:
        queue.put_nowait(cmd)

    async def worker() -> None:
        while True:
            try:
                cmd = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            cmd.reply = await request_until_answered(
                nc, cmd_subject(cmd.actor, cmd.kind), cmd.body, timeout=2.0, stats=stats
            )
            on_answer()

    await asyncio.gather(*(worker() for _ in range(CLIENTS)))


def plan(rng: random.Random) -> tuple[list[Cmd], list[Cmd]]:
    opens, submits = [], []
    for s in range(SESSIONS):
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        opens.append(
            Cmd(
                "operator",
                "open",
                sid,
                open_body(f"open-{s}-{uuid.uuid4().hex}", sid, PARTICIPANTS),
            )
        )
        for agent in PARTICIPANTS:
            body = submit_body(
                f"submit-{s}-{agent}-{uuid.uuid4().hex}", sid, {"by": agent, "session": s}
            )
            submits.append(Cmd(agent, "submit_result", sid, body))
    rng.shuffle(submits)
    return opens, submits


async def test_engine_sigkill_mid_stream_loses_nothing_and_applies_nothing_twice(
    engine_proc: EngineProcess, client: NATS
) -> None:
    rng = random.Random(20240501)
    opens, submits = plan(rng)
    commands = opens + submits
    stats = SendStats()
    engine_proc.start()
    killer = Killer(engine_proc, KILL_AFTER)
    restarter = asyncio.create_task(killer.run())
    try:
        await run_clients(client, opens, killer.on_answer, stats)
        await run_clients(client, submits, killer.on_answer, stats)
    finally:
        restarter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await restarter
    # The restarter may have been cancelled between kill and restart: make sure one runs.
    if engine_proc.process is None or engine_proc.process.poll() is not None:
        engine_proc.start()

    assert engine_proc.kills == len(KILL_AFTER), killer.kills_at
    assert engine_proc.starts == len(KILL_AFTER) + 1

    # 1. Every command got an accepted or duplicate reply -----------------------------------
    statuses = Counter(c.reply["status"] for c in commands if c.reply)
    assert all(c.reply is not None for c in commands)
    bad = [
        c.reply for c in commands if c.reply and c.reply["status"] not in ("accepted", "duplicate")
    ]
    assert not bad, f"replies neither accepted nor duplicate: {bad[:5]}"

    # 2. The store holds each command's effect exactly once ------------------------------------
    database_url = engine_proc.database_url
    records = read_store(database_url)
    domain = domain_events(records)
    dedup = [r for r in records if r.aggregate == "command"]
    by_command: dict[str, list[Any]] = defaultdict(list)
    for record in domain:
        by_command[record.command_id].append(record)
    by_id = {c.command_id: c for c in commands}
    assert set(by_command) == set(by_id), "store and commands sent differ"
    assert sorted(r.command_id for r in dedup) == sorted(by_id), "dedup records != commands"

    for command_id, events in by_command.items():
        cmd = by_id[command_id]
        types = [e.type for e in events]
        if cmd.kind == "open":
            assert types == ["SessionOpened"], (command_id, types)
        else:
            assert types in (["ResultSubmitted"], ["ResultSubmitted", "SessionFinalised"]), types
            assert events[0].data["agent_id"] == cmd.actor
        assert {e.aggregate_id for e in events} == {cmd.session_id}
        assert {e.actor for e in events} == {cmd.actor}
        # The reply, even a duplicate one, names what the first acceptance recorded.
        assert cmd.reply is not None
        assert cmd.reply["aggregate_id"] == cmd.session_id
        assert cmd.reply["version"] == events[-1].version, (cmd.reply, types)
        if cmd.reply["status"] == "accepted":
            assert cmd.reply["position"] == events[-1].position

    submitted = Counter(
        (r.aggregate_id, r.data["agent_id"]) for r in domain if r.type == "ResultSubmitted"
    )
    assert len(submitted) == SESSIONS * len(PARTICIPANTS)
    assert set(submitted.values()) == {1}, "a result was recorded twice"

    per_session: dict[str, list[Any]] = defaultdict(list)
    for record in domain:
        per_session[record.aggregate_id].append(record)
    assert len(per_session) == SESSIONS
    for session_id, events in per_session.items():
        versions = [e.version for e in events]
        assert versions == list(range(1, len(events) + 1)), (session_id, versions)
        assert len(events) == 2 + len(PARTICIPANTS)
        assert events[0].type == "SessionOpened"
        assert events[-1].type == "SessionFinalised"
        assert [e.type for e in events].count("SessionFinalised") == 1
        assert events[-1].data["outcome"] == "succeeded"
        previous = GENESIS_HASH
        for event in events:
            assert event.prev_hash == previous, (session_id, event.version)
            previous = event.hash

    positions = [r.position for r in records]
    assert positions == list(range(1, len(records) + 1)), "the store's positions have gaps"

    # 3. The relay (in the restarted engine) makes EVENTS an exact mirror ---------------------
    await wait_for_relay(client, domain[-1].position)
    stream = await read_stream(client)
    assert len(stream) == len(domain)
    assert_stream_mirrors_store(stream, records)

    assert engine_proc.terminate() == 0, engine_proc.log()[-3000:]
    print(
        f"\nkills after {killer.kills_at} answers; replies {dict(statuses)}; requests "
        f"{stats.requests}, timeouts {stats.timeouts}, no responders {stats.no_responders}, "
        f"store unavailable {stats.store_unavailable}"
    )


async def test_commit_without_reply_then_sigkill_is_answered_duplicate_after_restart(
    engine_proc: EngineProcess, client: NATS
) -> None:
    """The window the mid-stream test can only hit by chance, made certain.

    Commands are published with a reply subject nobody listens on: the engine commits them
    and its replies are lost. Then it is SIGKILLed (its cache and queue die with it) and
    restarted; the clients' retries, with the same command ids, must be ``duplicate``
    naming the original outcome, and nothing may be recorded twice.
    """
    engine_proc.start()
    warm = opens_of(1, "warm")
    await send_all(client, warm)
    lost = opens_of(30, "lost")
    submits = [
        Cmd("agent-1", "submit_result", c.session_id,
            submit_body(f"lost-submit-{i}", c.session_id, {"i": i}))
        for i, c in enumerate(lost[:10])
    ]  # fmt: skip
    for cmd in lost:
        await client.publish(
            cmd_subject(cmd.actor, cmd.kind), json.dumps(cmd.body).encode(),
            reply=f"_INBOX.nobody.{uuid.uuid4().hex}",
        )  # fmt: skip
    await client.flush()

    def recorded() -> int:
        return len([r for r in read_store(engine_proc.database_url) if r.aggregate == "command"])

    await async_wait_until(
        lambda: asyncio.to_thread(lambda: recorded() == 31), 30, "the lost commands to commit"
    )
    # Submits go out unanswered too, and the kill follows at once: some may be committed,
    # some not; the retries must sort that out either way.
    for cmd in submits:
        await client.publish(
            cmd_subject(cmd.actor, cmd.kind), json.dumps(cmd.body).encode(),
            reply=f"_INBOX.nobody.{uuid.uuid4().hex}",
        )  # fmt: skip
    await client.flush()
    engine_proc.kill()
    engine_proc.start()

    await send_all(client, lost, expect=("duplicate",))
    for cmd in lost:
        assert cmd.reply is not None
        assert cmd.reply["aggregate_id"] == cmd.session_id
        assert cmd.reply["version"] == 1
    await send_all(client, submits, expect=("accepted", "duplicate"))
    fresh = opens_of(1, "fresh")
    await send_all(client, fresh)

    records = read_store(engine_proc.database_url)
    domain = domain_events(records)
    counts = Counter(r.command_id for r in domain)
    for cmd in warm + lost + fresh:
        assert counts[cmd.command_id] == 1, cmd.command_id
    for cmd in submits:
        assert counts[cmd.command_id] == 2, cmd.command_id  # ResultSubmitted + SessionFinalised
    assert len(domain) == 32 + 2 * len(submits)
    await wait_for_relay(client, domain[-1].position)
    assert_stream_mirrors_store(await read_stream(client), records)
    assert engine_proc.terminate() == 0, engine_proc.log()[-3000:]


# The relay, killed while it publishes a backlog ------------------------------------------------


async def send_all(
    nc: NATS, cmds: list[Cmd], concurrency: int = 200, expect: tuple[str, ...] = ("accepted",)
) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(cmd: Cmd) -> None:
        async with gate:
            cmd.reply = await request_until_answered(
                nc, cmd_subject(cmd.actor, cmd.kind), cmd.body, timeout=5.0
            )

    await asyncio.gather(*(one(c) for c in cmds))
    bad = [c.reply for c in cmds if c.reply is None or c.reply["status"] not in expect]
    assert not bad, bad[:5]


def opens_of(count: int, prefix: str) -> list[Cmd]:
    out = []
    for i in range(count):
        sid = str(uuid.uuid4())
        out.append(Cmd("operator", "open", sid, open_body(f"{prefix}-{i}", sid, ["agent-1"])))
    return out


async def test_relay_sigkill_right_after_a_burst(engine_proc: EngineProcess, client: NATS) -> None:
    """Write a burst through the engine, SIGKILL it the moment the last reply arrives."""
    engine_proc.start()
    at_kill = []
    for round_ in range(3):
        await send_all(client, opens_of(500, f"burst{round_}"))
        engine_proc.kill()
        # How far the relay had got (informational: it may or may not have finished).
        at_kill.append(await stream_message_count(client))
        engine_proc.start()
    records = read_store(engine_proc.database_url)
    domain = domain_events(records)
    assert len(domain) == 1500
    await wait_for_relay(client, domain[-1].position)
    stream = await read_stream(client)
    assert_stream_mirrors_store(stream, records)
    assert engine_proc.terminate() == 0, engine_proc.log()[-3000:]
    print(f"\nEVENTS size at each kill: {at_kill} (store: 500, 1000, 1500 domain events)")


async def test_relay_sigkill_while_publishing_a_backlog(
    natsd: NatsServer, engine_proc: EngineProcess, client: NATS
) -> None:
    """A backlog the relay has not published yet; kill the engine each time it is midway."""
    # The backlog: written by an engine whose relay is off, so none of it is in EVENTS yet.
    # Sessions are opened and completed, so domain events and dedup records interleave.
    writer = EngineService(
        engine_config(
            nats_url=natsd.url, database_url=engine_proc.database_url, relay=False, timers=False
        )
    )
    await writer.start()
    try:
        opens = opens_of(1500, "backlog")
        await send_all(client, opens)
        submits = [
            Cmd("agent-1", "submit_result", c.session_id,
                submit_body(f"backlog-submit-{i}", c.session_id, {"i": i}))
            for i, c in enumerate(opens)
        ]  # fmt: skip
        await send_all(client, submits)
    finally:
        await writer.stop()
        close_recorder(writer.recorder)
    records = read_store(engine_proc.database_url)
    domain = domain_events(records)
    total = len(domain)
    assert total == 1500 * 3  # opened, result submitted, finalised
    assert await stream_message_count(client) == 0

    midway_kills = []
    for _ in range(3):
        before = await stream_message_count(client)
        engine_proc.start()

        async def relay_moved(before: int = before) -> bool:
            return await stream_message_count(client) > before

        await async_wait_until(relay_moved, 60, "the relay to publish something", interval=0.002)
        engine_proc.kill()
        after = await stream_message_count(client)
        midway_kills.append((before, after))
        if after >= total:
            break
    assert any(0 < after < total for _, after in midway_kills), midway_kills

    engine_proc.start()
    await wait_for_relay(client, domain[-1].position)
    stream = await read_stream(client)
    assert len(stream) == total
    assert_stream_mirrors_store(stream, records)
    assert engine_proc.terminate() == 0, engine_proc.log()[-3000:]
    print(f"\nstream sizes at each kill (before, after): {midway_kills} of {total}")


# Timers across a kill ----------------------------------------------------------------------------


async def test_deadline_that_passed_while_the_engine_was_dead_fires_after_restart(
    engine_proc: EngineProcess, client: NATS
) -> None:
    engine_proc.start()
    sessions = [
        Cmd("operator", "open", sid, open_body(f"short-{i}", sid, ["agent-1", "agent-2"],
                                               timeout_seconds=2))
        for i, sid in enumerate(str(uuid.uuid4()) for _ in range(5))
    ]  # fmt: skip
    await send_all(client, sessions)
    engine_proc.kill()  # before any deadline: the timer's heap dies with the process
    opened = {c.session_id for c in sessions}

    def timed_out() -> set[str]:
        return {
            r.aggregate_id
            for r in read_store(engine_proc.database_url)
            if r.type == "SessionTimedOut"
        }

    assert timed_out() == set()
    await asyncio.sleep(2.5)  # every deadline passes while no engine runs
    engine_proc.start()
    await async_wait_until(
        lambda: asyncio.to_thread(lambda: timed_out() == opened), 30, "the overdue timeouts"
    )
    # Give a second timer round the chance to fire twice; it must not.
    await asyncio.sleep(1.0)
    records = read_store(engine_proc.database_url)
    domain = domain_events(records)
    for cmd in sessions:
        events = [r for r in domain if r.aggregate_id == cmd.session_id]
        assert [e.type for e in events] == ["SessionOpened", "SessionTimedOut"]
        assert events[1].data["pending"] == ["agent-1", "agent-2"]
        assert events[1].actor == "system"
        assert events[1].command_id == f"timeout:{cmd.session_id}"
    await wait_for_relay(client, domain[-1].position)
    assert_stream_mirrors_store(await read_stream(client), records)
    assert engine_proc.terminate() == 0, engine_proc.log()[-3000:]
