"""The gateway's server gives each WebSocket a frame writer (``chorus.gateway.server``):
frames written through it reach the client as ordinary text messages, in order with what
the app sends the ASGI way; a client that stops reading makes it stop being ready (its
buffer stays bounded); per-message deflate is declined."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
import websockets
from chorus.gateway.fanout import FrameWriter, frame_writer, text_frame
from chorus.gateway.server import server_options
from litestar import Litestar, WebSocket, websocket

from tests.conftest import free_port, serving

#: Frames the flooding socket writes at most (64 MiB in all) before it must have been told
#: to stop: far beyond the kernel's socket buffers and the transport's high-water mark.
FLOOD_LIMIT = 1024
BIG = 64 * 1024

flooded: dict[str, Any] = {}


@websocket("/frames")
async def frames(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    writer = frame_writer(socket.scope)
    if writer is None:
        await socket.send_text("no writer")
        return
    await socket.send_text("one")
    assert writer.ready()
    writer.write(text_frame(b"two") + text_frame(b"three"))
    await socket.send_text("four")
    await socket.receive_text()  # the client's "bye"


@websocket("/flood")
async def flood(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    writer: FrameWriter | None = frame_writer(socket.scope)
    assert writer is not None
    written = 0
    while writer.ready() and written < FLOOD_LIMIT:
        writer.write(text_frame(b"x" * BIG))
        written += 1
    flooded["written"] = written
    flooded["drained"] = await writer.drain()  # the client reads again (or leaves)


@pytest.fixture
def server() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        Litestar(route_handlers=[frames, flood]), host="127.0.0.1", port=port,
        log_level="warning", **server_options(),
    )  # fmt: skip
    with serving(uvicorn.Server(config)):
        yield port


async def test_frames_written_directly_arrive_in_order_with_the_asgi_ones(server: int) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{server}/frames") as ws:
        received = [await asyncio.wait_for(ws.recv(), 10) for _ in range(4)]
        await ws.send("bye")
    assert received == ["one", "two", "three", "four"]


async def test_per_message_deflate_is_declined(server: int) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{server}/frames", compression="deflate") as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert await asyncio.wait_for(ws.recv(), 10) == "one"
        await ws.send("bye")


async def test_a_client_that_stops_reading_makes_the_writer_stop_being_ready(
    server: int,
) -> None:
    flooded.clear()
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(
        b"GET /flood HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # 101, then read nothing
    while "written" not in flooded:
        await asyncio.sleep(0.05)
    assert flooded["written"] < FLOOD_LIMIT  # stopped by the buffer, not by the limit
    while "drained" not in flooded:  # reading again lets the writer go on
        await asyncio.wait_for(reader.read(1 << 20), 10)
    assert flooded["drained"] is True
    writer.close()
