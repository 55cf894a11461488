"""Partitioned engines on a real nats-server: several engines share the commands of many
sessions, each aggregate decided by the one engine that owns its partition, and engines
join, leave and are killed mid-load without losing or doubling a command.

The load opens sessions and has every participant submit its result, the results of a
session sent together (so two engines taking them would meet on its version); each command
is retried with its command id while no engine answers, as the SDK and the gateway do. At
the end the store holds every command exactly once and the engines counted no version
conflict. Joins, leaves and kills wait for the load's progress, never for a time.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from chorus.bootstrap import EngineService
from chorus.contracts import errors as codes
from chorus.contracts.envelope import Envelope
from chorus.contracts.sessions import SubmitResult
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command
from nats.aio.client import Client as NATS

from tests.conftest import NatsEndpoint, engine_config
from tests.e2e.conftest import clean_env, cli, domain_events, read_store

#: Short leases: a killed engine's partitions move on within a second or two.
LEASE = 1.0
PARTICIPANTS = ("a1", "a2", "a3")
RETRYABLE = {codes.ENGINE_UNAVAILABLE, codes.STORE_UNAVAILABLE}


@dataclass
class Sent:
    command_id: str
    actor: str
    kind: str
    session_id: str
    reply: dict[str, Any] | None = None
    tries: int = 0


@dataclass
class Load:
    """Sessions opened and completed on the bus, each command retried until answered."""

    nc: NATS
    sessions: int
    sent: list[Sent] = field(default_factory=list)
    answered: int = 0
    _progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def send(self, actor: str, kind: str, session_id: str, payload: dict[str, Any]) -> None:
        item = Sent(uuid.uuid4().hex, actor, kind, session_id)
        self.sent.append(item)
        body = json.dumps({"command_id": item.command_id, "payload": payload}).encode()
        while True:
            item.tries += 1
            try:
                msg = await self.nc.request(f"chorus.cmd.{actor}.session.{kind}", body, timeout=5)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.05)
                continue
            reply = json.loads(msg.data)
            if reply["status"] == "rejected" and reply["error"]["code"] in RETRYABLE:
                await asyncio.sleep(0.05)
                continue
            item.reply = reply
            break
        async with self._progress:
            self.answered += 1
            self._progress.notify_all()

    async def session(self) -> None:
        sid = str(uuid.uuid4())
        await self.send(PARTICIPANTS[0], "open", sid, {
            "session_id": sid, "participants": list(PARTICIPANTS),
            "task": {"description": "partitions"}, "timeout_seconds": 3600,
        })  # fmt: skip
        await asyncio.gather(*(
            self.send(agent, "submit_result", sid, {"session_id": sid, "result": {"v": 1}})
            for agent in PARTICIPANTS
        ))  # fmt: skip

    async def run(self, lanes: int = 12) -> None:
        """Sessions one after another in each lane: the load goes on while engines move."""

        async def lane(sessions: int) -> None:
            for _ in range(sessions):
                await self.session()

        await asyncio.gather(*(lane(len(range(i, self.sessions, lanes))) for i in range(lanes)))

    async def reached(self, answered: int) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: self.answered >= answered)

    @property
    def total(self) -> int:
        return self.sessions * (1 + len(PARTICIPANTS))


def assert_recorded_exactly_once(load: Load, database_url: str) -> None:
    """Every command answered accepted (or duplicate, for a retry), and its effect in the
    store once: one dedup record, its events once, each result once per participant."""
    assert all(s.reply is not None for s in load.sent)
    bad = [
        s.reply for s in load.sent if s.reply and s.reply["status"] not in ("accepted", "duplicate")
    ]
    assert not bad, f"replies neither accepted nor duplicate: {bad[:3]}"
    records = read_store(database_url)
    dedup = Counter(r.command_id for r in records if r.aggregate == "command")
    assert dedup == Counter(s.command_id for s in load.sent), "dedup records != commands"
    by_command: dict[str, list[str]] = defaultdict(list)
    for record in domain_events(records):
        by_command[record.command_id or ""].append(record.type)
    for s in load.sent:
        types = by_command[s.command_id]
        if s.kind == "open":
            assert types == ["SessionOpened"], types
        else:
            assert types in (["ResultSubmitted"], ["ResultSubmitted", "SessionFinalised"]), types
    results = Counter(
        (r.aggregate_id, r.data["agent_id"])
        for r in domain_events(records)
        if r.type == "ResultSubmitted"
    )
    assert len(results) == load.sessions * len(PARTICIPANTS)
    assert set(results.values()) == {1}, "a result was recorded twice"


def conflicts(engines: list[EngineService]) -> int:
    return sum(e.worker.processor.conflicts for e in engines if e.worker is not None)


def owned(engine: EngineService) -> frozenset[int]:
    assert engine.ownership is not None
    return engine.ownership.active


@pytest.fixture
def config(nats_server: NatsEndpoint, database_url: str) -> Callable[[], Any]:
    return lambda: engine_config(
        nats_url=nats_server.url, database_url=database_url, partition_lease=LEASE
    )


async def owns_everything(engine: EngineService) -> None:
    while owned(engine) != frozenset(range(32)):
        await asyncio.sleep(0.05)


async def balanced(engines: list[EngineService]) -> None:
    """Until the engines own every partition between them, each at most its fair share."""
    share = -(-32 // len(engines))
    while True:
        held = [owned(e) for e in engines]
        if sum(map(len, held)) == 32 and max(map(len, held)) <= share:
            return
        await asyncio.sleep(0.05)


# Steady state -----------------------------------------------------------------------------


async def test_a_lone_engine_owns_every_partition_once_started(
    config: Callable[[], Any],
) -> None:
    async with EngineService(config()) as engine:
        assert owned(engine) == frozenset(range(32))


async def test_with_partitions_off_an_engine_decides_whatever_it_takes(
    nats_server: NatsEndpoint, database_url: str, nc: NATS
) -> None:
    config = engine_config(nats_url=nats_server.url, database_url=database_url, partitions=0)
    async with EngineService(config) as engine:
        assert engine.ownership is None and engine.worker is not None
        assert engine.worker.routing is None
        load = Load(nc, sessions=2)
        await load.run()
    assert_recorded_exactly_once(load, database_url)


@pytest.mark.parametrize("count", [2, 3])
async def test_engines_share_the_partitions_and_never_meet_on_a_version(
    count: int, config: Callable[[], Any], nc: NATS, database_url: str
) -> None:
    engines = [EngineService(config()) for _ in range(count)]
    for engine in engines:
        await engine.start()
    try:
        await balanced(engines)
        load = Load(nc, sessions=60)
        await load.run()
        # Every engine decided commands of its own partitions and passed others on.
        assert all(e.worker is not None and e.worker.handled > 0 for e in engines)
        assert all(e.worker is not None and e.worker.routing is not None
                   and e.worker.routing.forwarded > 0 for e in engines)  # fmt: skip
        assert conflicts(engines) == 0
        owners = [owned(e) for e in engines]
        assert frozenset().union(*owners) == frozenset(range(32))
        assert sum(map(len, owners)) == 32  # no partition owned twice
    finally:
        for engine in engines:
            await engine.stop()
    assert_recorded_exactly_once(load, database_url)


async def test_a_process_managers_command_goes_to_the_partitions_owner(
    config: Callable[[], Any], nc: NATS
) -> None:
    first, second = EngineService(config()), EngineService(config())
    await first.start()
    await second.start()
    try:
        await balanced([first, second])
        load = Load(nc, sessions=1)
        await load.run()
        sid = load.sent[0].session_id
        assert first.worker is not None and second.worker is not None
        routing = first.worker.routing
        assert routing is not None
        # A command of a partition the first engine does not own, issued inside it as a
        # process manager would (a reserved actor), is decided by the owner.
        handler = HANDLERS[("session", "submit_result")]
        payload = SubmitResult(session_id=sid, result={"v": 2})
        command = Command("system", handler, Envelope(command_id="pm-1", payload=payload))
        partition = routing.partition(command)
        assert partition is not None
        owner, other = (first, second) if routing.owns(partition) else (second, first)
        assert other.worker is not None and owner.worker is not None
        decided = owner.worker.handled
        reply = await other.worker.intake.submit(command)
        assert reply.error is not None and reply.error.code == codes.NOT_A_PARTICIPANT
        assert owner.worker.handled == decided + 1
    finally:
        await second.stop()
        await first.stop()


# Moving partitions under load ---------------------------------------------------------------


async def test_an_engine_joining_and_one_leaving_mid_load_lose_and_double_nothing(
    config: Callable[[], Any], nc: NATS, database_url: str
) -> None:
    first = EngineService(config())
    await first.start()
    second = EngineService(config())
    engines = [first, second]
    load = Load(nc, sessions=120)
    running = asyncio.create_task(load.run())
    try:
        await load.reached(load.total // 4)
        await second.start()  # joins: the first hands half of its partitions over
        await load.reached(load.total // 2)
        await first.stop()  # leaves: the second takes everything
        assert load.answered < load.total  # it left mid-load
        await running
        await owns_everything(second)
        assert conflicts(engines) == 0
    finally:
        running.cancel()
        await first.stop()
        await second.stop()
    assert_recorded_exactly_once(load, database_url)


async def test_an_engine_killed_mid_load_hands_nothing_twice_and_loses_nothing(
    nats_server: NatsEndpoint, config: Callable[[], Any], nc: NATS, database_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The second engine is a ``chorus engine`` process: SIGKILLed with commands in flight,
    its partitions go to the survivor once its lease ran out; the requests it held are
    retried by their command ids."""
    survivor = EngineService(config())
    await survivor.start()
    env = clean_env(
        CHORUS_NATS_URL=nats_server.url, CHORUS_DATABASE_URL=database_url,
        CHORUS_DATA_DIR=str(tmp_path), CHORUS_PARTITION_LEASE=str(LEASE),
        CHORUS_SESSION_QUOTA="0",
    )  # fmt: skip
    log = (tmp_path / "engine.log").open("wb")
    victim = await asyncio.create_subprocess_exec(
        *cli("engine"), env=env, stdout=log, stderr=subprocess.STDOUT
    )
    load = Load(nc, sessions=120)
    running: asyncio.Task[None] | None = None
    try:
        while len(owned(survivor)) > 16:  # the process joined and took its share
            await asyncio.sleep(0.05)
        running = asyncio.create_task(load.run())
        await load.reached(load.total // 3)
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        await running
        await owns_everything(survivor)
        assert conflicts([survivor]) == 0
    finally:
        if running is not None:
            running.cancel()
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
        log.close()
        await survivor.stop()
    assert_recorded_exactly_once(load, database_url)


async def test_an_engine_cut_off_the_bus_loses_its_partitions_once_its_lease_ran_out(
    config: Callable[[], Any], nc: NATS, database_url: str
) -> None:
    """Its process still runs (so nothing tells the others it is gone, as a kill on the
    same machine does): the survivor waits until the cut-off engine's heartbeat stood
    still for a lease, then takes its partitions; its commands are retried meanwhile."""
    survivor, cut = EngineService(config()), EngineService(config())
    await survivor.start()
    await cut.start()
    load = Load(nc, sessions=120)
    running = asyncio.create_task(load.run())
    try:
        await balanced([survivor, cut])
        await load.reached(load.total // 3)
        assert cut.nc is not None
        await cut.nc.close()  # no more heartbeats, no more commands
        await running
        await owns_everything(survivor)
        assert conflicts([survivor, cut]) == 0
    finally:
        running.cancel()
        await cut.stop()
        await survivor.stop()
    assert_recorded_exactly_once(load, database_url)


async def test_an_engine_takes_its_partitions_again_after_nats_restarts(
    tmp_path: Path, database_url: str
) -> None:
    """The table lives in memory: a restarted server has none, and the engine makes the
    bucket again and claims every partition (it stopped taking commands meanwhile)."""
    from chorus.cluster import free_port
    from chorus.natsd import start_nats_server

    port = free_port()
    server = start_nats_server(tmp_path / "nats", port=port, monitor=False)
    config = engine_config(nats_url=server.url, database_url=database_url, partition_lease=LEASE)
    engine = EngineService(config)
    await engine.start()
    try:
        assert engine.ownership is not None
        rounds = engine.ownership.rounds
        server.stop()
        while engine.ownership.active:  # its lease could not be renewed: it stops taking
            await asyncio.sleep(0.05)
        server = start_nats_server(tmp_path / "nats", port=port, monitor=False)
        await owns_everything(engine)
        assert engine.ownership.rounds > rounds
        client = await nats.connect(server.url)
        try:
            load = Load(client, sessions=2)
            await load.run()
        finally:
            await client.close()
    finally:
        await engine.stop()
        server.stop()
    assert_recorded_exactly_once(load, database_url)
