"""Logging for every Chorus process: one JSON object per line, quiet by default.

Each line has ``time``, ``level``, ``logger``, ``message``, the request and command fields
bound in ``chorus.contracts.logcontext`` (``request_id``, ``command_id``, ``correlation_id``,
``actor``), any ``extra`` a call passed, and for an error its stack trace in ``exc_info``,
so the ``request_id`` of a 500 finds its trace with ``grep``. Stdlib logging only: every
module keeps using ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from chorus.contracts import logcontext

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **logcontext.current(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(
    level: str = "WARNING", fmt: str = "json", stream: TextIO | None = None, *, force: bool = False
) -> None:
    """Root logger: ``level`` (``WARNING`` keeps it quiet), ``json`` or plain ``text`` lines.

    Like ``logging.basicConfig``, it leaves a root logger that already has handlers alone
    (a host program's, or a test runner's) unless ``force``.
    """
    root = logging.getLogger()
    if root.handlers and not force:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
