"""An engine rides over the loss of a NATS node: it reconnects to another node of the
cluster and keeps serving, and one that starts while JetStream cannot answer waits for it
instead of exiting (the supervisor would only restart it into the same moment).

One engine, no gateway: what answers a command is that engine, and nothing else stands in
for it."""

from __future__ import annotations

import asyncio

import pytest
from chorus.cluster import Cluster, Member

from tests.cluster.conftest import (
    bus_client,
    nodes_serving,
    open_session,
    store_records,
)
from tests.e2e.conftest import domain_events, wait_for_relay, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.kill, pytest.mark.timeout(180)]


def engine(cluster: Cluster) -> Member:
    member = cluster.member("engine-1")
    assert isinstance(member, Member)
    return member


def log_of(member: Member) -> str:
    return member.log_path.read_text(errors="replace")


async def serves_and_relays(cluster: Cluster) -> None:
    """A command is answered (by the one engine) and its event reaches the EVENTS stream
    (the engine's relay)."""
    nc = await bus_client(cluster)
    try:
        await open_session(nc)
        records = store_records(str(cluster.settings.database_url))
        await wait_for_relay(nc, max(r.position for r in domain_events(records)))
    finally:
        await nc.close()


def test_an_engine_rides_over_the_loss_of_the_node_it_is_connected_to(one_engine: Cluster) -> None:
    cluster = one_engine
    asyncio.run(serves_and_relays(cluster))
    [node] = wait_until(lambda: nodes_serving(cluster, "chorus-engine"), 30, "the engine's node")

    cluster.kill(node.name)
    asyncio.run(serves_and_relays(cluster))
    now = wait_until(lambda: nodes_serving(cluster, "chorus-engine"), 30, "a reconnect")
    assert node not in now

    member = engine(cluster)
    assert member.alive and member.starts == 1, log_of(member)[-3000:]


def test_an_engine_that_starts_while_jetstream_has_no_quorum_waits_for_it(
    one_engine: Cluster,
) -> None:
    cluster = one_engine
    member = engine(cluster)
    for name in ("engine-1", "nats-2", "nats-3"):
        cluster.kill(name)
    # One node of three: it accepts connections, but JetStream answers nothing.
    assert cluster.revive("engine-1") == ["engine-1"]
    start = f"--- start {member.starts} ---"

    def waiting_or_gone() -> bool:
        return not member.alive or "JetStream did not answer" in log_of(member).split(start)[-1]

    wait_until(waiting_or_gone, 60, "the engine to wait for JetStream (or exit)")
    assert member.alive, log_of(member).split(start)[-1][-3000:]

    assert sorted(cluster.revive()) == ["nats-2", "nats-3"]
    asyncio.run(serves_and_relays(cluster))
    assert member.alive and member.starts == 2, log_of(member).split(start)[-1][-3000:]
