"""The command worker outlives a reply it cannot send: NATS away for longer than the
client's reconnect buffer holds costs that reply, never the worker (whose end would take
the engine down with it)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import nats
from chorus.engine.adapters.worker import CommandWorker, Incoming, parse_message
from chorus.engine.processor import Processor
from chorus.natsd import start_nats_server
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder

from tests.e2e.conftest import async_wait_until, open_body, request_until_answered


async def test_a_reply_that_cannot_be_sent_costs_the_reply_not_the_worker(tmp_path: Path) -> None:
    server = start_nats_server(tmp_path / "nats")
    port = int(server.url.rsplit(":", 1)[1])
    processor = Processor(open_recorder(f"sqlite:///{tmp_path}/events.db"))
    # No reconnect buffer: any publish while the server is away fails at once.
    engine_nc = await nats.connect(server.url, pending_size=0, max_reconnect_attempts=-1,
                                   reconnect_time_wait=0.1)  # fmt: skip
    worker = CommandWorker(engine_nc, processor)
    running = asyncio.create_task(worker.run())
    await worker.start()
    body = open_body(uuid.uuid4().hex, str(uuid.uuid4()), ["b"])
    subject = "chorus.cmd.a.session.open"
    try:
        server.kill()

        async def away() -> bool:
            return engine_nc.is_reconnecting

        await async_wait_until(away, 30, "the worker's connection to notice")
        # A command that arrived just before the server went: recorded, its reply lost.
        command = parse_message(subject, json.dumps(body).encode())
        worker.queue.put_nowait(Incoming(command, reply_to="_INBOX.gone"))

        async def handled() -> bool:
            return worker.handled == 1 or running.done()

        await async_wait_until(handled, 30, "the worker to handle the command")
        assert not running.done(), running.exception()

        server = start_nats_server(tmp_path / "nats", port=port)  # same port, same token

        async def back() -> bool:
            return engine_nc.is_connected

        await async_wait_until(back, 30, "the worker's connection to come back")
        client = await nats.connect(server.url)
        try:
            # The client's retry (same command id) is answered once the engine is back.
            reply = await request_until_answered(client, subject, body)
            assert reply["status"] == "duplicate"
        finally:
            await client.close()
    finally:
        running.cancel()
        await worker.stop()
        worker.close()
        await engine_nc.close()
        server.stop()
        close_recorder(processor.recorder)
