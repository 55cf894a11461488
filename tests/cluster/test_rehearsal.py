"""The scale-out rehearsal: the cluster layout loses a NATS node, an engine and a gateway
under load, and afterwards nothing is lost, nothing is applied twice, every read model
equals its rebuild from the log and the record verifies.

The layout is ``chorus cluster``'s (runtime/cluster.py): three nats-server nodes on
loopback with the streams at R3 and one NATS user per API key and per service, the event
store and the read models on PostgreSQL (a schema of its own each, per run), two engines
in one command queue group, one projector writing the read models, two gateways reading
them. Clients drive session commands through both gateways (HTTP, retried by
``Idempotency-Key``, moving to the other gateway when one does not answer) and straight
over the bus, each actor with its own key (retried by command id). Each fault waits for
the load to make progress, and the member stays dead until the load has made more
progress without it; no other member may die with it.

PostgreSQL runs when ``CHORUS_TEST_POSTGRES_URL`` names a server (``.ci/run`` starts one).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
import nats.errors
import pytest
from chorus.bootstrap import PROJECTIONS
from chorus.cluster import Cluster, ClusterLayout
from chorus.gateway.keys import KeyStore
from chorus.projections.readstore import ReadStore
from chorus.settings import Settings
from nats.aio.client import Client as NATS
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.cluster.conftest import (
    agent_bus,
    bus_client,
    create_key,
    store_records,
    wait_admitted,
)
from tests.e2e.conftest import (
    SendStats,
    StreamEvent,
    assert_stream_mirrors_store,
    async_wait_until,
    clean_env,
    cli,
    cmd_subject,
    domain_events,
    free_port,
    open_body,
    read_stream,
    request_until_answered,
    submit_body,
    wait_for_relay,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.kill, pytest.mark.timeout(240)]

#: Sessions per client; each is two commands (open, then the participant's result).
SESSIONS_PER_CLIENT = 12
HTTP_CLIENTS = 4
BUS_CLIENTS = 4
TOTAL = (HTTP_CLIENTS + BUS_CLIENTS) * SESSIONS_PER_CLIENT * 2
#: (member, kill when this many commands are answered, revive after this many more).
FAULTS = (("nats-1", TOTAL // 8, TOTAL // 8), ("engine-1", TOTAL * 3 // 8, TOTAL // 8),
          ("gateway-1", TOTAL * 5 // 8, TOTAL // 8))  # fmt: skip
RETRYABLE_HTTP = {502, 503, 504}
T = TypeVar("T")


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, postgres_read_url: str) -> Iterator[Cluster]:
    settings = Settings(
        data_dir=tmp_path / "cluster",
        database_url=postgres_url,
        read_store_url=postgres_read_url,
        # One actor sends many commands and opens many sessions here.
        rate_limits={"write": "1000000/minute", "read": "1000000/minute"},
        session_quota=0,
    )
    layout = ClusterLayout(gateway_ports=[free_port(), free_port()])
    running = Cluster(settings, layout)
    try:
        running.start()
        for url in running.gateway_urls:
            wait_until(lambda url=url: _healthy(url), 60, f"{url}/health")
        yield running
    finally:
        running.stop()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Sent:
    """A command the load sent, and the answer it finally got."""

    command_id: str
    kind: str  # open | submit
    actor: str
    session_id: str
    via: str  # http | bus
    status: str = ""
    version: int = 0


@dataclass
class Load:
    sent: list[Sent] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)
    #: The bus clients' requests, and those unanswered (re-sent by command id).
    bus: SendStats = field(default_factory=SendStats)
    #: The EVENTS stream once the load is over and the relay caught up.
    stream: list[StreamEvent] = field(default_factory=list)
    #: What the global event feed of the gateway that stays up delivered, from position 0.
    feed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return sum(1 for s in self.sent if s.status)


async def http_command(
    load: Load, client: httpx.AsyncClient, gateways: list[str], start: int, sent: Sent,
    path: str, body: dict[str, Any], key: str,
) -> dict[str, Any]:  # fmt: skip
    """POST until a gateway answers with a definite outcome, the same Idempotency-Key each
    time; a gateway that does not answer (or answers 503) is left for the next one."""
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": sent.command_id}
    for attempt in itertools.count():
        base = gateways[(start + attempt) % len(gateways)]
        try:
            response = await client.post(f"{base}{path}", json=body, headers=headers)
        except httpx.TransportError as error:
            load.retries[f"http {type(error).__name__}"] += 1
            await asyncio.sleep(0.05)
            continue
        if response.status_code in RETRYABLE_HTTP:
            load.retries[f"http {response.status_code} {response.json().get('code')}"] += 1
            await asyncio.sleep(0.05)
            continue
        assert response.status_code in (200, 201), (response.status_code, response.text)
        reply: dict[str, Any] = response.json()
        return reply
    raise AssertionError("unreachable")


async def http_client(load: Load, index: int, gateways: list[str], keys: dict[str, str]) -> None:
    coordinator, agent = f"http-coord-{index}", f"http-agent-{index}"
    async with httpx.AsyncClient(timeout=10) as client:
        for n in range(SESSIONS_PER_CLIENT):
            opened = Sent(uuid.uuid4().hex, "open", coordinator, "", "http")
            load.sent.append(opened)
            body = {"participants": [agent], "task": {"description": f"{coordinator} #{n}"}}
            reply = await http_command(
                load, client, gateways, index + n, opened, "/api/v1/sessions", body,
                keys[coordinator],
            )  # fmt: skip
            opened.session_id, opened.version = reply["session_id"], reply["version"]
            opened.status = reply["command_status"]
            submit = Sent(uuid.uuid4().hex, "submit", agent, opened.session_id, "http")
            load.sent.append(submit)
            reply = await http_command(
                load, client, gateways, index + n + 1, submit,
                f"/api/v1/sessions/{submit.session_id}/results", {"result": {"n": n}},
                keys[agent],
            )  # fmt: skip
            submit.version, submit.status = reply["version"], reply["status"]


async def bus_load(load: Load, index: int, buses: dict[str, NATS]) -> None:
    """Sessions over the bus, each actor on its own connection with its own key."""
    coordinator, agent = f"bus-coord-{index}", f"bus-agent-{index}"
    for n in range(SESSIONS_PER_CLIENT):
        session_id = str(uuid.uuid4())
        for sent, subject, body in (
            (Sent(uuid.uuid4().hex, "open", coordinator, session_id, "bus"),
             cmd_subject(coordinator, "open"), None),
            (Sent(uuid.uuid4().hex, "submit", agent, session_id, "bus"),
             cmd_subject(agent, "submit_result"), None),
        ):  # fmt: skip
            load.sent.append(sent)
            if sent.kind == "open":
                body = open_body(sent.command_id, session_id, [agent])
            else:
                body = submit_body(sent.command_id, session_id, {"n": n})
            reply = await request_until_answered(
                buses[sent.actor], subject, body, timeout=2.0, stats=load.bus
            )
            assert reply["status"] in ("accepted", "duplicate"), reply
            sent.status, sent.version = reply["status"], reply["version"]


async def inject_faults(load: Load, cluster: Cluster, done: list[str]) -> None:
    """Kill each member once the load got that far; revive it once the load went on
    without it."""
    for name, kill_at, more in FAULTS:
        await async_wait_until(_reached(load, kill_at), 90, f"{kill_at} answers before {name}")
        cluster.kill(name)
        answered = load.answered
        await async_wait_until(
            _reached(load, min(answered + more, TOTAL)), 90, f"{more} answers with {name} dead"
        )
        # Only the member killed: every other rides over its loss (an engine or gateway
        # whose node died reconnects to another node).
        assert cluster.dead() == [name], cluster.dead()
        done.extend(await asyncio.to_thread(cluster.revive))


def _reached(load: Load, count: int) -> Any:
    async def reached() -> bool:
        return load.answered >= count

    return reached


async def until_answered(read: Callable[[], Awaitable[T]], attempts: int = 20) -> T:
    """``read`` again while JetStream's API does not answer (a node that rejoined the
    cluster may trigger a leader election that takes a few seconds)."""
    for _ in range(attempts - 1):
        try:
            return await read()
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError):
            await asyncio.sleep(0.5)
    return await read()


async def collect_feed(ws: ClientConnection, records: list[dict[str, Any]]) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            parsed = json.loads(message)
            if isinstance(parsed, dict) and "position" in parsed:
                records.append(parsed)


async def drive(cluster: Cluster, keys: dict[str, str]) -> tuple[Load, list[str]]:
    load = Load()
    faults: list[str] = []
    # The stream's reader, as the gateway's service user; each bus actor as itself.
    nc = await bus_client(cluster)
    buses = {actor: await agent_bus(cluster, actor, keys[actor]) for actor in bus_actors()}
    # The global feed of the gateway no fault touches, whole records (an auditor), from 0.
    steady = cluster.gateway_urls[-1].replace("http://", "ws://")
    ws = await connect(f"{steady}/api/v1/events/feed?since=0",
                       additional_headers={"Authorization": f"Bearer {keys['auditor']}"},
                       proxy=None)  # fmt: skip
    feed = asyncio.create_task(collect_feed(ws, load.feed))
    try:
        tasks = [
            *(http_client(load, i, cluster.gateway_urls, keys) for i in range(HTTP_CLIENTS)),
            *(bus_load(load, i, buses) for i in range(BUS_CLIENTS)),
            inject_faults(load, cluster, faults),
        ]
        await asyncio.gather(*tasks)
        # Every event reached the EVENTS stream (R3, one node of it killed and back).
        last = max(
            r.position for r in domain_events(store_records(str(cluster.settings.database_url)))
        )
        await wait_for_relay(nc, last)
        load.stream = await until_answered(lambda: read_stream(nc))

        async def feed_has_all() -> bool:
            return len(load.feed) >= len(load.stream)

        await async_wait_until(feed_has_all, 60, "the feed to deliver every event")
        await asyncio.sleep(0.5)  # time for a duplicate to show, if there were one
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
        await ws.close()
        for connection in (nc, *buses.values()):
            await connection.close()
    return load, faults


def bus_actors() -> list[str]:
    return [actor for i in range(BUS_CLIENTS) for actor in (f"bus-coord-{i}", f"bus-agent-{i}")]


def test_the_cluster_survives_a_node_an_engine_and_a_gateway_killed_under_load(
    cluster: Cluster, postgres_read_url: str, rebuilt_url: str
) -> None:
    store = KeyStore(Path(str(cluster.settings.keys_path)))
    keys = {
        actor: store.create(actor, "agent")
        for i in range(HTTP_CLIENTS)
        for actor in (f"http-coord-{i}", f"http-agent-{i}")
    }
    keys["auditor"] = store.create("auditor", "auditor")
    # Bus users: the last made as an operator makes one (``chorus keys create``), which
    # rewrites the users from the key store, all of them, and reloads every node.
    *others, last = bus_actors()
    keys |= {actor: store.create(actor, "agent") for actor in others}
    keys[last] = create_key(cluster, last)
    for actor in others:
        wait_admitted(cluster, actor, keys[actor])
    started = time.monotonic()
    load, faults = asyncio.run(drive(cluster, keys))
    # What the README quotes (``pytest -s`` shows it).
    print(f"rehearsal: {len(load.sent)} commands, {len(load.stream)} events, faults {faults}, "
          f"load and recovery {time.monotonic() - started:.1f}s, retries {dict(load.retries)}, "
          f"bus {load.bus}")  # fmt: skip
    # Every planned fault happened, and nothing else died.
    assert faults == [name for name, _, _ in FAULTS], faults
    assert not cluster.dead(), cluster.dead()
    killed = {name for name, _, _ in FAULTS}
    assert {m.name: m.starts for m in cluster.members} == {
        m.name: 2 if m.name in killed else 1 for m in cluster.members
    }
    assert len(load.sent) == TOTAL
    assert all(s.status in ("accepted", "duplicate") for s in load.sent)

    # 1. Every answered command is in the store exactly once -------------------------------
    database_url = str(cluster.settings.database_url)
    records = store_records(database_url)
    domain = domain_events(records)
    by_command: dict[str, list[Any]] = defaultdict(list)
    for record in domain:
        by_command[record.command_id].append(record)
    sent = {s.command_id: s for s in load.sent}
    assert set(sent) <= set(by_command), "answered commands missing from the store"
    dedup = Counter(r.command_id for r in records if r.aggregate == "command")
    assert all(dedup[c] == 1 for c in sent), "a command recorded twice"
    for command_id, item in sent.items():
        types = [e.type for e in by_command[command_id]]
        if item.kind == "open":
            assert types == ["SessionOpened"], (command_id, types)
        else:
            assert types == ["ResultSubmitted", "SessionFinalised"], (command_id, types)
        events = by_command[command_id]
        assert {e.aggregate_id for e in events} == {item.session_id}
        assert {e.actor for e in events} == {item.actor}
        assert item.version == events[-1].version, (item, types)
    # ... and the EVENTS stream mirrors the store: every event once, in position order.
    assert_stream_mirrors_store(load.stream, records)
    # ... and the feed of the gateway that stayed up delivered each event once, in order.
    positions = [e["position"] for e in load.feed]
    assert positions == [e.position for e in load.stream], "the feed skipped, repeated or reordered"
    by_position = {r.position: r for r in domain}
    assert all(e["hash"] == by_position[e["position"]].hash for e in load.feed)

    # 2. Every read model equals its rebuild from the log ------------------------------------
    live = str(cluster.settings.read_store_url)
    assert live == postgres_read_url
    assert not (cluster.data_dir / "read.db").exists()  # nothing read or wrote SQLite
    last = max(r.position for r in records)
    wait_until(lambda: _positions_at(live, last), 60, f"the projector to reach {last}")
    cluster.stop()
    env = clean_env(CHORUS_DATA_DIR=str(cluster.data_dir), CHORUS_DATABASE_URL=database_url)
    done = subprocess.run(
        cli("project", "--rebuild", "--read-store-url", rebuilt_url),
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert _dump(rebuilt_url) == _dump(live)
    sessions = _rows(live, "SELECT count(*) FROM sessions")[0][0]
    assert sessions == (HTTP_CLIENTS + BUS_CLIENTS) * SESSIONS_PER_CLIENT

    # 3. The record verifies ------------------------------------------------------------------
    for anchor in sorted((cluster.data_dir / "audit").glob("seal-anchor-*")):
        verified = subprocess.run(
            cli("audit", "verify", "--anchor", str(anchor)),
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    store = ReadStore(url, readonly=True)
    try:
        return [tuple(row) for row in store.connection().execute(sql).fetchall()]
    finally:
        store.close()


def _positions_at(url: str, position: int) -> bool:
    rows = _rows(url, "SELECT name, position FROM tracking")
    return len(rows) == len(PROJECTIONS) and all(p >= position for _, p in rows)


def _dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every read model (and its position), in an order independent of how
    they were written."""
    tables = [table for make in PROJECTIONS.values() for table in make().tables]
    dump = {t: sorted(_rows(url, f"SELECT * FROM {t}"), key=repr) for t in tables}
    dump["tracking"] = sorted(_rows(url, "SELECT * FROM tracking"))
    return dump
