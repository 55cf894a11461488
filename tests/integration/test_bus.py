"""The bus contract against a real nats-server and a real SQLite event store."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from chorus.audit.ledger import last_seal
from chorus.bootstrap import EngineService, bootstrap
from chorus.engine.adapters.relay import Relay, StreamAheadOfStore
from chorus.engine.domain.authz import StaticRoles
from chorus.events.codec import decode_record, is_domain_topic
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js.api import DeliverPolicy

from tests.conftest import ENGINE_TEST_DEFAULTS, NatsEndpoint, chorus_settings, engine_config


async def send(
    nc: NATS,
    actor: str,
    command: str,
    payload: dict[str, Any],
    command_id: str | None = None,
    aggregate: str = "session",
) -> dict[str, Any]:
    """A well-behaved client: a request, retried with the same command id while no engine
    listens yet (the server can report no responders just after an engine restarts)."""
    body = json.dumps({"command_id": command_id or uuid.uuid4().hex, "payload": payload}).encode()
    for _ in range(40):
        try:
            msg = await nc.request(f"chorus.cmd.{actor}.{aggregate}.{command}", body, timeout=5)
        except NoRespondersError:
            await asyncio.sleep(0.05)
            continue
        reply: dict[str, Any] = json.loads(msg.data)
        return reply
    raise AssertionError("no engine answered")


def open_payload(participants: list[str], timeout: int = 600, **criteria: Any) -> dict[str, Any]:
    return {
        "session_id": str(uuid.uuid4()),
        "participants": participants,
        "task": {"description": "summarise", "criteria": criteria},
        "timeout_seconds": timeout,
    }


def domain_records(database_url: str) -> list[Any]:
    recorder = open_recorder(database_url)
    return [
        decode_record(n)
        for n in recorder.select_notifications(1, 1_000_000)
        if is_domain_topic(n.topic)
    ]


async def stream_records(
    nc: NATS, expected: int, subject: str = "chorus.evt.>"
) -> list[dict[str, Any]]:
    """Everything in EVENTS (waits until ``expected`` records have arrived)."""
    js = nc.jetstream()
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    out: list[dict[str, Any]] = []
    try:
        while len(out) < expected:
            msg = await sub.next_msg(timeout=10)
            record = json.loads(msg.data)
            record["_msg_id"] = msg.headers.get("Nats-Msg-Id") if msg.headers else None
            out.append(record)
        with pytest.raises(TimeoutError):
            await sub.next_msg(timeout=0.3)  # and nothing more
    finally:
        await sub.unsubscribe()
    return out


async def test_command_is_answered_once_its_events_are_in_the_store(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    payload = open_payload(["a1", "a2"])
    reply = await send(nc, "coord", "open", payload, "open-1")
    assert reply["status"] == "accepted"
    assert reply["aggregate_id"] == payload["session_id"]
    assert reply["version"] == 1
    stored = domain_records(database_url)
    assert [(r.type, r.position) for r in stored] == [("SessionOpened", reply["position"])]
    assert stored[0].actor == "coord"
    assert stored[0].command_id == "open-1"


async def test_retry_with_same_command_id_is_duplicate_with_original_outcome(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    payload = open_payload(["a1", "a2"])
    await send(nc, "coord", "open", payload)
    first = await send(
        nc, "a1", "submit_result", {"session_id": payload["session_id"], "result": {"x": 1}}, "r-1"
    )
    again = await send(
        nc, "a1", "submit_result", {"session_id": payload["session_id"], "result": {"x": 1}}, "r-1"
    )
    assert first["status"] == "accepted"
    assert again["status"] == "duplicate"
    assert (again["aggregate_id"], again["version"]) == (first["aggregate_id"], first["version"])
    assert [r.type for r in domain_records(database_url)] == ["SessionOpened", "ResultSubmitted"]


async def test_command_id_reused_for_a_different_command_is_rejected(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    payload = open_payload(["a1", "a2"])
    await send(nc, "coord", "open", payload)
    await send(
        nc, "a1", "submit_result", {"session_id": payload["session_id"], "result": {"x": 1}}, "r-1"
    )
    reused = await send(
        nc, "a1", "submit_result", {"session_id": payload["session_id"], "result": {"x": 2}}, "r-1"
    )
    assert reused["status"] == "rejected"
    assert reused["error"]["code"] == "command_id_reused"
    assert [r.type for r in domain_records(database_url)] == ["SessionOpened", "ResultSubmitted"]


async def test_duplicate_is_recognised_after_an_engine_restart(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    payload = open_payload(["a1"])
    async with EngineService(engine_config(nats_url=nats_server.url, database_url=database_url)):
        first = await send(nc, "coord", "open", payload, "same")
    async with EngineService(engine_config(nats_url=nats_server.url, database_url=database_url)):
        again = await send(nc, "coord", "open", payload, "same")
    assert first["status"] == "accepted"
    assert again["status"] == "duplicate"
    assert len(domain_records(database_url)) == 1


async def test_malformed_message_is_rejected_dead_lettered_and_does_not_stall_the_worker(
    engine: EngineService, nc: NATS
) -> None:
    js = nc.jetstream()
    dlq = await js.subscribe(
        "chorus.dlq.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    msg = await nc.request("chorus.cmd.a1.session.submit_result", b"{not json", timeout=5)
    reply = json.loads(msg.data)
    assert reply["status"] == "rejected"
    assert reply["error"]["code"] == "malformed_message"
    dead = await dlq.next_msg(timeout=5)
    assert dead.subject == "chorus.dlq.malformed_message"
    assert dead.data == b"{not json"
    assert dead.headers is not None
    assert dead.headers["Chorus-Subject"] == "chorus.cmd.a1.session.submit_result"
    await dlq.unsubscribe()
    # The worker goes on taking commands.
    ok = await send(nc, "coord", "open", open_payload(["a1"]))
    assert ok["status"] == "accepted"


async def test_invalid_payload_names_the_field(engine: EngineService, nc: NATS) -> None:
    payload = open_payload(["a1"])
    payload["timeout_seconds"] = 0
    reply = await send(nc, "coord", "open", payload, "bad-1")
    assert reply["status"] == "rejected"
    assert reply["command_id"] == "bad-1"
    assert reply["error"]["code"] == "invalid_command"
    assert reply["error"]["details"]["field"] == "payload.timeout_seconds"


async def test_unknown_command_is_rejected_with_the_known_ones(
    engine: EngineService, nc: NATS
) -> None:
    reply = await send(nc, "coord", "explode", {"session_id": str(uuid.uuid4())})
    assert reply["error"]["code"] == "unknown_command"
    assert "session.submit_result" in reply["error"]["details"]["known"]


async def test_no_stream_captures_command_subjects(engine: EngineService, nc: NATS) -> None:
    """A captured command subject would be answered by the server's PubAck, not the engine."""
    js = nc.jetstream()
    for stream in await js.streams_info():
        for subject in stream.config.subjects or []:
            assert not subject.startswith("chorus.cmd"), stream.config.name
            assert subject not in (">", "chorus.>"), stream.config.name
    reply = await send(nc, "coord", "open", open_payload(["a1"]))
    assert set(reply) >= {"command_id", "status", "aggregate_id", "version", "error"}


async def test_plain_publish_without_reply_subject_is_still_recorded(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    payload = open_payload(["a1"])
    await nc.publish(
        "chorus.cmd.coord.session.open",
        json.dumps({"command_id": "fire-and-forget", "payload": payload}).encode(),
    )
    for _ in range(200):
        if domain_records(database_url):
            break
        await asyncio.sleep(0.02)
    assert [r.command_id for r in domain_records(database_url)] == ["fire-and-forget"]


async def test_relay_publishes_every_event_with_its_message_id(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    payload = open_payload(["a1", "a2"], require="any")
    sid = payload["session_id"]
    await send(nc, "coord", "open", payload)
    await send(nc, "a1", "submit_result", {"session_id": sid, "result": {}, "success": False})
    await send(nc, "a2", "submit_result", {"session_id": sid, "result": {}})
    stored = domain_records(database_url)
    published = await stream_records(nc, len(stored))
    assert [r["position"] for r in published] == [r.position for r in stored]
    assert [r["_msg_id"] for r in published] == [f"{sid}:{v}" for v in (1, 2, 3, 4)]
    assert published[-1]["type"] == "SessionFinalised"
    assert published[-1]["data"]["outcome"] == "succeeded"


@pytest.mark.parametrize("read_on_loop", [False, True], ids=["reads-in-a-thread", "reads-on-loop"])
async def test_restarted_relay_fills_the_stream_without_gap_or_duplicate(
    nats_server: NatsEndpoint, nc: NATS, database_url: str, read_on_loop: bool
) -> None:
    """Either way of reading the log (in a thread beside an engine's command path, on the
    loop in a process of its own)."""
    # Phase 1: engine with relay; phase 2: events written while no relay runs.
    async with EngineService(engine_config(nats_url=nats_server.url, database_url=database_url)):
        for _ in range(5):
            await send(nc, "coord", "open", open_payload(["a1"]))
        # Let the relay publish them before it stops (a busy machine may not have yet).
        js = nc.jetstream()
        for _ in range(500):
            if (await js.stream_info("EVENTS")).state.messages >= 5:
                break
            await asyncio.sleep(0.01)
    async with EngineService(
        engine_config(nats_url=nats_server.url, database_url=database_url, relay=False)
    ):
        for _ in range(7):
            await send(nc, "coord", "open", open_payload(["a1"]))
    stored = domain_records(database_url)
    assert len(stored) == 12
    relay = Relay(open_recorder(database_url), nc, read_on_loop=read_on_loop)
    await relay.resync()
    assert 1 <= relay.position < stored[-1].position  # it knows where it stopped
    while await relay.step():
        pass
    published = await stream_records(nc, len(stored))
    assert [r["position"] for r in published] == [r.position for r in stored]


async def test_a_resync_called_during_a_step_waits_for_it(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    """A resync from outside the relay's loop (a restart, a tool) while a step awaits its
    acks must not reset the position or drop the acks under it: the step ends whole and
    nothing is published twice."""
    async with EngineService(
        engine_config(nats_url=nats_server.url, database_url=database_url, relay=False)
    ):
        for _ in range(6):
            await send(nc, "coord", "open", open_payload(["a1"]))
    stored = domain_records(database_url)
    relay = Relay(open_recorder(database_url), nc, batch_size=2)
    await relay.resync()
    overlapped = 0
    for _ in range(3):
        stepping = asyncio.create_task(relay.step())
        while not relay.publisher._pending and not stepping.done():
            await asyncio.sleep(0)  # until the step's messages are out, acks owed
        overlapped += not stepping.done()
        await relay.resync()
        assert await stepping  # not abandoned by the resync
    assert overlapped
    while await relay.step():
        pass
    published = await stream_records(nc, len(stored))  # and nothing more
    assert [r["position"] for r in published] == [r.position for r in stored]


async def test_session_times_out_even_when_the_engine_was_down_at_its_deadline(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    payload = open_payload(["a1", "a2"], timeout=1)
    async with EngineService(
        engine_config(nats_url=nats_server.url, database_url=database_url, timers=False)
    ):
        await send(nc, "coord", "open", payload)
        await send(nc, "a1", "submit_result", {"session_id": payload["session_id"], "result": {}})
    await asyncio.sleep(1.2)  # the deadline passes while no engine runs
    async with EngineService(engine_config(nats_url=nats_server.url, database_url=database_url)):
        for _ in range(250):
            if domain_records(database_url)[-1].type == "SessionTimedOut":
                break
            await asyncio.sleep(0.02)
    last = domain_records(database_url)[-1]
    assert last.type == "SessionTimedOut"
    assert last.actor == "system"
    assert last.data["pending"] == ["a2"]


async def test_two_engine_workers_share_the_queue_without_double_effects(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    """Stale caches on two workers conflict on the store's version check and are retried."""
    agents = [f"a{i}" for i in range(20)]
    payload = open_payload(agents, require="all")
    sid = payload["session_id"]
    config = engine_config(nats_url=nats_server.url, database_url=database_url)
    async with EngineService(config), EngineService(config):
        assert (await send(nc, "coord", "open", payload))["status"] == "accepted"
        replies = await asyncio.gather(
            *(
                send(nc, a, "submit_result", {"session_id": sid, "result": {"n": i}}, f"c-{a}")
                for i, a in enumerate(agents)
            ),
            *(
                send(nc, a, "submit_result", {"session_id": sid, "result": {"n": i}}, f"c-{a}")
                for i, a in enumerate(agents)
            ),
        )
    statuses = sorted(r["status"] for r in replies)
    assert statuses.count("accepted") == 20
    assert statuses.count("duplicate") == 20
    records = [r for r in domain_records(database_url) if r.aggregate_id == sid]
    assert [r.version for r in records] == list(range(1, 23))
    assert sorted(r.data["agent_id"] for r in records if r.type == "ResultSubmitted") == sorted(
        agents
    )
    assert records[-1].type == "SessionFinalised"


async def test_relay_refuses_a_stream_fed_from_another_store(
    engine: EngineService, nc: NATS, tmp_path: Any
) -> None:
    """A replaced event store must not interleave its history into the old stream."""
    for _ in range(3):
        await send(nc, "coord", "open", open_payload(["a1"]))
    await stream_records(nc, 3)
    other = Relay(open_recorder(f"sqlite:///{tmp_path}/other.db"), nc)
    with pytest.raises(StreamAheadOfStore, match="another event store"):
        await other.resync()


async def test_a_foreign_message_on_the_event_subjects_does_not_stop_the_relay(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    await send(nc, "coord", "open", open_payload(["a1"]))
    await stream_records(nc, 1)
    await nc.jetstream().publish("chorus.evt.session.x.Bogus", b"{}")
    for _ in range(3):
        await send(nc, "coord", "open", open_payload(["a1"]))
    # Restart the relay too: its resync must look past the foreign tail message.
    assert engine.relay is not None
    await engine.relay.resync()
    await send(nc, "coord", "open", open_payload(["a1"]))
    stored = domain_records(database_url)
    published = [r for r in await stream_records(nc, len(stored) + 1) if "position" in r]
    assert [r["position"] for r in published] == [r.position for r in stored]


async def test_two_relays_on_one_store_keep_the_stream_complete_and_ordered(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    config = engine_config(nats_url=nats_server.url, database_url=database_url)
    async with EngineService(config), EngineService(config):
        await asyncio.gather(*(send(nc, "coord", "open", open_payload(["a1"])) for _ in range(60)))
        stored = domain_records(database_url)
        published = await stream_records(nc, len(stored))
    assert [r["position"] for r in published] == [r.position for r in stored]


async def test_the_relay_in_a_service_of_its_own_publishes_what_an_engine_without_one_records(
    nats_server: NatsEndpoint, nc: NATS, database_url: str, tmp_path: Path
) -> None:
    """``chorus up``'s layout: the engine runs without relay and sealer
    (``CHORUS_ENGINE_RELAY=false``) and ``chorus relay`` runs them, polling the store."""
    settings = chorus_settings(tmp_path, nats_url=nats_server.url, database_url=database_url,
                               engine_relay=False)  # fmt: skip
    components = bootstrap(settings, roles=StaticRoles())
    engine = components.engine(**ENGINE_TEST_DEFAULTS)
    relay = components.relay(seal_anchor_path=None, audit_key_path=None)
    assert (engine.config.relay, engine.config.sealer, engine.config.commands) == (
        False,
        False,
        True,
    )
    assert (relay.config.relay, relay.config.sealer, relay.config.commands) == (True, True, False)
    async with engine, relay:
        assert relay.worker is None and engine.relay is None
        payload = open_payload(["a1"])
        await send(nc, "coord", "open", payload)
        await send(nc, "a1", "submit_result", {"session_id": payload["session_id"], "result": {}})
        stored = domain_records(database_url)
        published = await stream_records(nc, len(stored))
        assert [r["position"] for r in published] == [r.position for r in stored]
        recorder = open_recorder(database_url)
        try:
            head = recorder.max_notification_id()
            for _ in range(500):  # the sealer catches up beside it
                seal = last_seal(recorder)
                if seal is not None and seal.position == head:
                    break
                await asyncio.sleep(0.02)
            assert seal is not None and seal.position == head
        finally:
            close_recorder(recorder)


async def test_the_relay_in_a_service_of_its_own_is_woken_by_the_engines_commits(
    nats_server: NatsEndpoint, nc: NATS, database_url: str, tmp_path: Path
) -> None:
    """With a poll interval of an hour, only the engine's commit signal
    (``chorus.engine.committed``) can make the relay publish what was just recorded."""
    settings = chorus_settings(tmp_path, nats_url=nats_server.url, database_url=database_url,
                               engine_relay=False)  # fmt: skip
    components = bootstrap(settings, roles=StaticRoles())
    engine = components.engine(**ENGINE_TEST_DEFAULTS)
    relay = components.relay(seal_anchor_path=None, audit_key_path=None, relay_idle=3600)
    async with engine, relay:
        assert relay.relay is not None
        await asyncio.wait_for(relay.relay.listening.wait(), 30)
        for k in range(3):
            payload = open_payload([f"a{k}"])
            await send(nc, "coord", "open", payload)
            stored = domain_records(database_url)
            published = await stream_records(nc, len(stored))
            assert [r["position"] for r in published] == [r.position for r in stored]
