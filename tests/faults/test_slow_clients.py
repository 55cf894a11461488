"""Slow clients cannot hold the gateway's connections: a request that trickles in (a byte
now and then, the head or the body) is cut off at its read deadline; whole requests and
WebSockets are untouched."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from chorus.gateway.server import server_options
from litestar import Litestar, get, post
from litestar.params import JSONBody

from tests.conftest import free_port, serving


@get("/ping", sync_to_thread=False)
def ping() -> str:
    return "pong"


@post("/echo", sync_to_thread=False)
def echo(data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
    return data


@pytest.fixture
def server() -> Iterator[int]:
    """A Litestar app behind uvicorn with the gateway's options and a 0.5 s deadline."""
    port = free_port()
    config = uvicorn.Config(
        Litestar(route_handlers=[ping, echo]), host="127.0.0.1", port=port, log_level="warning",
        **server_options(read_timeout=0.5, max_connections=50),
    )  # fmt: skip
    with serving(uvicorn.Server(config)):
        yield port


def closed_by_server(sock: socket.socket, trickle: bytes) -> bool:
    """Send ``trickle`` a byte at a time (every 0.1 s) until the server closes the socket;
    True if it did before we ran out of bytes."""
    for byte in trickle:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return True
        sock.settimeout(0.1)
        try:
            if sock.recv(1024) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_a_request_head_sent_a_byte_at_a_time_is_cut_off(server: int) -> None:
    head = b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    with socket.create_connection(("127.0.0.1", server)) as sock:
        assert closed_by_server(sock, head)


def test_a_body_sent_a_byte_at_a_time_is_cut_off(server: int) -> None:
    body = b'{"a": "' + b"b" * 200 + b'"}'
    head = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(head)
        assert closed_by_server(sock, body)


def test_whole_requests_on_a_kept_alive_connection_are_served(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        for _ in range(3):
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(5)
            reply = b""
            while b"pong" not in reply:
                chunk = sock.recv(4096)
                assert chunk, f"closed after {reply!r}"
                reply += chunk
            assert b"200 OK" in reply
            time.sleep(0.3)  # idle between requests: no read deadline runs
