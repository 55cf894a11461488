"""Logging a repeated error at most once per interval, with how many were held back.

A flood of bad messages (or a fault that fails every half second) must leave a readable
log, not gigabytes of the same line, and must not slow the process down with log I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """``warning(fmt, *args)``: the first of each format string is logged, then at most one
    per ``interval`` seconds, saying how many were suppressed since the last."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, fmt: str, *args: object) -> bool:
        """Log (True) or count the message as suppressed (False)."""
        now = self.clock()
        last = self._last.get(fmt)
        if last is not None and now - last < self.interval:
            self._held[fmt] = self._held.get(fmt, 0) + 1
            return False
        held = self._held.pop(fmt, 0)
        self._last[fmt] = now
        suffix = f" ({held} more like this in the last {self.interval:.0f}s)" if held else ""
        self.logger.warning(fmt + suffix, *args)
        return True
