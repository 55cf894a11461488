"""The WebSocket session feed of a real gateway: catch-up, then live, with no gap or duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from chorus.contracts.subjects import event_filter
from chorus.gateway.app import create_app
from chorus.gateway.keys import KeyStore
from chorus.gateway.state import GatewayConfig
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import free_port
from tests.integration.test_gateway_support import (
    SESSIONS,
    UNKNOWN_SESSION,
    bearer,
    drain_until_pong,
    eventually,
    get_events,
    open_session,
    recv_events,
    recv_json,
    submit,
)


@pytest.fixture
async def http(engine: Any, projector: Any, gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        yield client


def feed_url(gateway: Any, session_id: str, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{gateway.ws_url}{SESSIONS}/{session_id}/feed" + (f"?{query}" if query else "")


async def test_feed_replays_then_streams_live_with_no_gap_and_no_duplicate(http, gateway):
    owner = gateway.key("owner")
    agents = {a: gateway.key(a) for a in ("p1", "p2", "p3")}
    session_id = await open_session(http, owner, list(agents))
    assert (await submit(http, agents["p1"], session_id)).status_code == 200

    async with websockets.connect(
        feed_url(gateway, session_id, since=0), additional_headers=owner
    ) as ws:
        received = await recv_events(ws, 2)  # the catch-up part
        assert [e["type"] for e in received] == ["SessionOpened", "ResultSubmitted"]
        for agent in ("p2", "p3"):  # live, while connected
            assert (await submit(http, agents[agent], session_id)).status_code == 200
        received += await recv_events(ws, 3)
        extra = await drain_until_pong(ws)

    history = await get_events(http, gateway.key("auditor-1", "auditor"), session_id)
    assert len(history) == 5
    assert extra == []
    assert [e["position"] for e in received] == [e["position"] for e in history]
    assert received == history
    assert [e["type"] for e in received][-1] == "SessionFinalised"


async def test_feed_since_a_position_skips_everything_up_to_it(http, gateway):
    owner = gateway.key("owner")
    agents = {a: gateway.key(a) for a in ("p1", "p2", "p3")}
    session_id = await open_session(http, owner, list(agents))
    for headers in agents.values():
        assert (await submit(http, headers, session_id)).status_code == 200
    history = await get_events(http, gateway.key("auditor-1", "auditor"), session_id)
    since = history[1]["position"]

    async with websockets.connect(
        feed_url(gateway, session_id, since=since), additional_headers=owner
    ) as ws:
        received = await recv_events(ws, len(history) - 2)
        extra = await drain_until_pong(ws)

    assert extra == []
    assert [e["position"] for e in received] == [e["position"] for e in history[2:]]
    assert all(e["position"] > since for e in received)


async def test_feed_since_the_newest_position_sends_only_live_events(http, gateway):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    session_id = await open_session(http, owner, ["bob", "carol"])
    (opened,) = await get_events(http, gateway.key("auditor-1", "auditor"), session_id)

    async with websockets.connect(
        feed_url(gateway, session_id, since=opened["position"]), additional_headers=owner
    ) as ws:
        assert await drain_until_pong(ws) == []  # nothing old is replayed
        assert (await submit(http, bob, session_id, {"n": 1})).status_code == 200
        (live,) = await recv_events(ws, 1)
        assert await drain_until_pong(ws) == []

    assert live["type"] == "ResultSubmitted"
    assert live["actor"] == "bob"
    assert live["position"] > opened["position"]
    assert live == (await get_events(http, gateway.key("auditor-1", "auditor"), session_id))[1]


async def test_two_feeds_on_one_session_each_get_every_event(http, gateway):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    session_id = await open_session(http, owner, ["bob"])

    async with (
        websockets.connect(feed_url(gateway, session_id), additional_headers=owner) as first,
        websockets.connect(feed_url(gateway, session_id), additional_headers=bob) as second,
    ):
        await recv_events(first, 1)
        await recv_events(second, 1)
        assert (await submit(http, bob, session_id)).status_code == 200
        from_first = await recv_events(first, 2)
        from_second = await recv_events(second, 2)

    assert from_first == from_second
    assert [e["type"] for e in from_first] == ["ResultSubmitted", "SessionFinalised"]


async def test_many_feeds_on_one_session_share_one_upstream_consumer(http, gateway, nc):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    session_id = await open_session(http, owner, ["bob"])
    subject = event_filter("session", session_id)

    before = {c.name for c in await nc.jetstream().consumers_info("EVENTS")}
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(
                websockets.connect(feed_url(gateway, session_id), additional_headers=owner)
            )
            for _ in range(5)
        ]
        for ws in sockets:
            await recv_events(ws, 1)
        after = await nc.jetstream().consumers_info("EVENTS")
        new = {c.name for c in after if c.config.filter_subject == subject} - before
        assert len(new) == 1
        assert (await submit(http, bob, session_id)).status_code == 200
        received = [await recv_events(ws, 2) for ws in sockets]
        extra = [await drain_until_pong(ws) for ws in sockets]

    assert extra == [[]] * 5
    assert all(r == received[0] for r in received)
    assert [e["type"] for e in received[0]] == ["ResultSubmitted", "SessionFinalised"]


async def test_feed_carries_only_its_own_sessions_events(http, gateway):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    watched = await open_session(http, owner, ["bob", "carol"])
    other = await open_session(http, owner, ["bob", "carol"])

    async with websockets.connect(feed_url(gateway, watched), additional_headers=owner) as ws:
        await recv_events(ws, 1)
        assert (await submit(http, bob, other)).status_code == 200
        assert (await submit(http, bob, watched)).status_code == 200
        (live,) = await recv_events(ws, 1)
        assert await drain_until_pong(ws) == []

    assert live["aggregate_id"] == watched


async def test_ping_gets_pong_and_other_text_gets_an_error_without_closing(http, gateway):
    owner = gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])

    async with websockets.connect(feed_url(gateway, session_id), additional_headers=owner) as ws:
        # Wait for the feed's first event before talking: a socket closed while the gateway
        # is still subscribing used to leave its handler stuck (see the regression test below).
        await recv_events(ws, 1)
        await ws.send("ping")
        assert await recv_json(ws) == "pong"
        for text in ("hello", '{"type": "subscribe"}', "pingping"):
            await ws.send(text)
            error = await recv_json(ws)
            assert error["type"] == "error"
            assert error["code"] == "unknown_message"
            assert error["message"]
        await ws.send("ping")
        assert await recv_json(ws) == "pong"  # the socket is still open and serving


async def test_unknown_session_gets_an_error_and_close_code_4404(http, gateway):
    async with websockets.connect(
        feed_url(gateway, UNKNOWN_SESSION), additional_headers=gateway.key("a")
    ) as ws:
        message = await recv_json(ws)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)

    assert message["type"] == "error"
    assert message["code"] == "session_not_found"
    assert ws.close_code == 4404
    assert ws.close_reason == "session_not_found"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer chk_000000000000_nope"}],
    ids=["no-key", "bad-key"],
)
async def test_feed_without_a_valid_key_is_refused(http, gateway, headers):
    session_id = await open_session(http, gateway.key("owner"), ["bob"])

    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(feed_url(gateway, session_id), additional_headers=headers):
            pass
    assert 400 <= refused.value.response.status_code < 500


async def test_bad_token_query_parameter_is_refused(http, gateway):
    session_id = await open_session(http, gateway.key("owner"), ["bob"])

    with pytest.raises(InvalidStatus):
        async with websockets.connect(feed_url(gateway, session_id, token="chk_0_nope")):
            pass


async def test_token_query_parameter_works_instead_of_the_header(http, gateway):
    owner = gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])

    async with websockets.connect(
        feed_url(gateway, session_id, since=0, token=bearer(owner))
    ) as ws:
        (opened,) = await recv_events(ws, 1)
        assert await drain_until_pong(ws) == []

    assert opened["type"] == "SessionOpened"
    assert opened["aggregate_id"] == session_id


@pytest.mark.parametrize("since", ["-1", "soon"])
async def test_invalid_since_is_refused(http, gateway, since):
    owner = gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])

    with pytest.raises((InvalidStatus, ConnectionClosed)):
        async with websockets.connect(
            feed_url(gateway, session_id, since=since), additional_headers=owner
        ) as ws:
            await asyncio.wait_for(ws.recv(), 10)


# A feed closed while the gateway subscribes ---------------------------------------------------


class ThreadGateway:
    """A gateway like the ``gateway`` fixture's, but keeping its event loop at hand, so a test
    that leaves feed handlers stuck can still shut it down."""

    def __init__(self, config: GatewayConfig) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                create_app(config), host="127.0.0.1", port=port, log_level="warning",
                lifespan="on",
            )
        )  # fmt: skip
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    async def start(self) -> None:
        self.thread.start()
        for _ in range(1500):
            if self.server.started or not self.thread.is_alive():
                break
            await asyncio.sleep(0.01)
        assert self.server.started, "gateway did not start"

    def _cancel_feed_pumps(self) -> None:
        for task in asyncio.all_tasks():
            if getattr(task.get_coro(), "__qualname__", "") == "Feed.pump":
                task.cancel()

    async def stop(self) -> None:
        # Cancel again any feed pump that lost its cancellation, then shut down as usual.
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._cancel_feed_pumps)
        self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, 15)
        assert not self.thread.is_alive(), "gateway did not shut down"


@pytest.fixture
async def own_gateway(
    engine: Any, projector: Any, nats_server: Any, database_url: str, read_store_url: str,
    tmp_path: Path,
) -> AsyncIterator[tuple[ThreadGateway, KeyStore]]:  # fmt: skip
    keys_path = tmp_path / "own-gateway-keys.db"
    gateway = ThreadGateway(
        GatewayConfig(
            nats_url=nats_server.url, database_url=database_url, read_store_url=read_store_url,
            keys_path=str(keys_path),
        )
    )  # fmt: skip
    await gateway.start()
    try:
        yield gateway, KeyStore(keys_path)
    finally:
        await gateway.stop()


async def test_feed_closed_while_subscribing_releases_its_consumer(own_gateway, nc):
    gateway, keys = own_gateway
    owner = {"Authorization": f"Bearer {keys.create('owner', 'agent')}"}
    auditor = {"Authorization": f"Bearer {keys.create('auditor-1', 'auditor')}"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        session_id = await open_session(http, owner, ["bob"])
        (opened,) = await get_events(http, auditor, session_id)
    url = f"{gateway.ws_url}{SESSIONS}/{session_id}/feed?since={opened['position']}"

    # Close each socket after a different number of ping round trips, so that some closes
    # land while the gateway is still creating that feed's JetStream consumer.
    for attempt in range(120):
        async with websockets.connect(url, additional_headers=owner) as ws:
            for _ in range(attempt % 12):
                await ws.send("ping")
                assert await recv_json(ws) == "pong"

    js = nc.jetstream()

    async def no_consumer_bound() -> bool:
        return not any(c.push_bound for c in await js.consumers_info("EVENTS"))

    # Every client has gone, so no JetStream consumer should still be bound to a feed.
    await eventually(
        no_consumer_bound, timeout=5, interval=0.1, what="every feed's consumer being released"
    )
