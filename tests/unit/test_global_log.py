"""Paging the global log by position: filters, gaps and the scan budget."""

from __future__ import annotations

import pytest
from chorus.projections import audit
from chorus.projections.audit import AuditLog, LogFilter
from eventsourcing.persistence import ApplicationRecorder

from .conftest import FakeClock
from .test_tamper import write_history


def test_pages_follow_next_after_to_the_head_whatever_the_filter(
    recorder: ApplicationRecorder, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_history(recorder, clock)
    monkeypatch.setattr(audit, "SCAN_BUDGET", 3)  # pages that match nothing still advance
    log = AuditLog(recorder)
    head = recorder.max_notification_id()
    for where, expected in [
        (LogFilter(), 8),  # domain events only: dedup records are left out
        (LogFilter(type="ResultSubmitted"), 3),
        (LogFilter(actor="b"), 2),  # b's result and the verdict it caused
        (LogFilter(aggregate="workflow"), 0),
    ]:
        seen, after, pages = [], 0, 0
        while True:
            page = log.page(after, 2, where)
            assert page.next_after > after or not page.more
            seen.extend(page.items)
            after, pages = page.next_after, pages + 1
            if not page.more:
                break
        assert len(seen) == expected, where
        assert [r.position for r in seen] == sorted({r.position for r in seen})
        assert after == head
        assert pages <= head


def test_a_page_after_the_head_is_empty_and_stays_put(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    write_history(recorder, clock)
    page = AuditLog(recorder).page(1000, 10, LogFilter())
    assert (page.items, page.next_after, page.more) == ([], 1000, False)


def test_a_stream_holds_every_match_up_to_the_head_in_chunks(
    recorder: ApplicationRecorder, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_history(recorder, clock)
    monkeypatch.setattr(audit, "CHUNK", 3)
    chunks = list(AuditLog(recorder).stream(0, LogFilter()))
    assert [len(c) for c in chunks] == [3, 3, 2]
    limited = [r for c in AuditLog(recorder).stream(0, LogFilter(), limit=5) for r in c]
    assert len(limited) == 5
