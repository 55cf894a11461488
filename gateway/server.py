"""How the gateway's HTTP server treats slow clients: read deadlines and a connection cap.

uvicorn times out idle keep-alive connections, but not a request that arrives a byte at a
time: forty sockets each sending one byte every few seconds stay open for ever and hold
their slots. Here each request must arrive whole (head and body) within
``read_timeout`` seconds of its first byte; past that the connection is closed. A cap on
connections (uvicorn's ``limit_concurrency``: 503 beyond it) bounds what is left.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

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
    }
