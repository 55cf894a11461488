"""Fields that every log line written while handling one request or command carries.

``request_id``, ``command_id``, ``correlation_id`` and ``actor`` live in a context
variable, so a line logged deep inside a handler (or an unexpected error's stack trace)
names the request and command it belongs to without passing them along by hand. The
gateway and the engine bind them; the JSON log formatter (``chorus.logs``) writes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

FIELDS = ("request_id", "command_id", "correlation_id", "actor")

_context: ContextVar[dict[str, str]] = ContextVar("chorus_log_context", default={})  # noqa: B039


def current() -> dict[str, str]:
    """The fields bound here, for the log formatter."""
    return _context.get()


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Add fields (``None`` values are left out) for the code inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: str | None) -> None:
    """Add fields for the rest of the current task (an ASGI request has its own)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})
