"""Repeated errors are logged once per interval, with a count of those held back."""

from __future__ import annotations

import logging

import pytest
from chorus.engine.adapters.ratelog import RateLimitedLog


def test_a_repeated_error_is_logged_once_per_interval_with_the_count_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    errors = RateLimitedLog(logging.getLogger("test.ratelog"), 30.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        logged = [errors.warning("bad message on %s", f"s{i}") for i in range(2000)]
        now[0] = 31.0
        errors.warning("bad message on %s", "later")
        errors.warning("another kind of failure")
    assert logged.count(True) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "bad message on s0",
        "bad message on later (1999 more like this in the last 30s)",
        "another kind of failure",
    ]
