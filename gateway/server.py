"""How the gateway's HTTP server treats slow clients, and how its WebSockets send.

uvicorn times out idle keep-alive connections, but not a request that arrives a byte at a
time: forty sockets each sending one byte every few seconds stay open for ever and hold
their slots. Here each request must arrive whole (head and body) within
``read_timeout`` seconds of its first byte; past that the connection is closed. A cap on
connections (uvicorn's ``limit_concurrency``: 503 beyond it) bounds what is left.

WebSockets: uvicorn's sans-I/O ``websockets`` protocol, with two changes for the live
feeds (``chorus.gateway.fanout``), where one event goes to a thousand sockets:

- no per-message deflate: with it every frame is compressed once per socket (each
  connection has its own zlib stream), and browsers always offer it, so each delivery
  to a browser cost a compression. It is an extension the client offers and the server
  may decline; clients get the same text messages either way.
- a ``FrameWriter`` in the socket's scope (``scope["extensions"]["chorus.frames"]
  ["writer"]``) through which a feed writes whole frames it encoded once for all
  sockets, skipping the ASGI send path (middleware, per-socket framing) for each
  delivery. It writes only while the connection is open and its write buffer is under
  the high-water mark (asyncio's flow control, which uvicorn's own send waits for too),
  so a slow client's buffer stays bounded.
"""

from __future__ import annotations

import asyncio
from typing import Any

from chorus.gateway.fanout import FRAMES_EXTENSION
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

#: Seconds a request's head and body may take to arrive.
READ_TIMEOUT = 30.0
#: Connections (and requests in flight) served at once; more are answered 503.
MAX_CONNECTIONS = 1000
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE = 5


class ReadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on reading each request."""

    read_timeout = READ_TIMEOUT
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self._between_requests():
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not None and not self.cycle.more_body:
            self._disarm()  # the whole request is in: the app may take its time

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._disarm()  # the WebSocket protocol takes over the connection
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        self.transport.close()


class SocketFrameWriter:
    """``chorus.gateway.fanout.FrameWriter`` over one uvicorn WebSocket connection."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: FrameSocketProtocol) -> None:
        self.protocol = protocol

    def _open(self) -> bool:
        p = self.protocol
        return p.handshake_complete and not (
            p.close_sent or p.disconnected or p.transport.is_closing()
        )

    def ready(self) -> bool:  # once per socket and event: the cheapest test first
        return self.protocol.writable.is_set() and self._open()

    def write(self, data: bytes) -> None:
        self.protocol.transport.write(data)

    async def drain(self) -> bool:
        await self.protocol.writable.wait()  # set again once the connection is lost, too
        return self._open()


class FrameSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, handing each socket a ``SocketFrameWriter``."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:  # an app will run (it starts later)
            self.scope["extensions"][FRAMES_EXTENSION] = {"writer": SocketFrameWriter(self)}


def server_options(
    read_timeout: float = READ_TIMEOUT, max_connections: int = MAX_CONNECTIONS
) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config``."""
    protocol = type("ReadDeadlineProtocol", (ReadDeadlineProtocol,), {"read_timeout": read_timeout})
    return {
        "http": protocol,
        "limit_concurrency": max_connections,
        "timeout_keep_alive": KEEP_ALIVE,
        "h11_max_incomplete_event_size": 64 * 1024,  # request head size
        "ws": FrameSocketProtocol,
        "ws_per_message_deflate": False,
    }
