"""``chorus audit what-if``: a finished session judged again under other criteria,
from its recorded results, with nothing written anywhere."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from typing import Any

import pytest
from chorus.cli import main
from chorus.engine.processor import Processor
from eventsourcing.persistence import ApplicationRecorder

from .conftest import FakeClock
from .test_processor import cancel, open_session, submit, timeout


def digest(url: str) -> str:
    """Every row of every table (read through SQLite, so the WAL counts too)."""
    out = hashlib.sha256()
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in sorted(tables):
            out.update(
                repr(conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()).encode()
            )
    return out.hexdigest()


@pytest.fixture
def finished(recorder: ApplicationRecorder, clock: FakeClock) -> str:
    """a succeeds, b fails: under the recorded criteria (require all) the session failed."""
    processor = Processor(recorder, clock=clock)
    sid = str(uuid.uuid4())
    processor.handle_batch([open_session(sid, ("a", "b"))])
    processor.handle_batch([submit(sid, "a"), submit(sid, "b", success=False)])
    return sid


def what_if(
    database_url: str, sid: str, criteria: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    code = main(["audit", "what-if", "--database-url", database_url, "--session", sid,
                 "--criteria", criteria])  # fmt: skip
    out = capsys.readouterr()
    return code, out.out, out.err


def test_other_criteria_change_the_verdict_and_nothing_is_written(
    finished: str, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(database_url)
    code, out, _ = what_if(database_url, finished, '{"require": "any"}', capsys)
    assert code == 0
    result = json.loads(out)
    assert result["status"] == "failed"
    assert result["recorded"]["verdict"]["outcome"] == "failed"
    assert result["recorded"]["criteria"]["require"] == "all"
    assert result["what_if"]["verdict"]["outcome"] == "succeeded"
    assert result["what_if"]["verdict"]["succeeded"] == 1
    assert result["outcome_changes"] is True
    assert digest(database_url) == before


def test_the_same_criteria_give_the_recorded_verdict(
    finished: str, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = what_if(database_url, finished, '{"require": "all"}', capsys)
    result = json.loads(out)
    assert code == 0
    assert result["what_if"]["verdict"] == result["recorded"]["verdict"]
    assert result["outcome_changes"] is False


def test_an_open_session_an_unknown_one_and_bad_criteria_are_refused(
    recorder: ApplicationRecorder,
    clock: FakeClock,
    finished: str,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    still_open = str(uuid.uuid4())
    Processor(recorder, clock=clock).handle_batch([open_session(still_open)])
    code, _, err = what_if(database_url, still_open, "{}", capsys)
    assert (code, "still open" in err) == (2, True)
    code, _, err = what_if(database_url, str(uuid.uuid4()), "{}", capsys)
    assert (code, "does not exist" in err) == (2, True)
    code, _, err = what_if(database_url, finished, '{"require": "most"}', capsys)
    assert (code, "invalid criteria" in err) == (2, True)
    code, _, err = what_if("sqlite:////nonexistent/e.db", finished, "{}", capsys)
    assert (code, "no event store" in err) == (2, True)


@pytest.mark.parametrize("close", [cancel, timeout])
def test_a_session_closed_without_a_verdict_reports_no_outcome_change(
    recorder: ApplicationRecorder,
    clock: FakeClock,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    close: Any,
) -> None:
    sid = str(uuid.uuid4())
    processor = Processor(recorder, clock=clock)
    processor.handle_batch([open_session(sid, ("a", "b"))])
    processor.handle_batch([submit(sid, "a")])
    if close is timeout:
        clock.advance(seconds=601)
    assert processor.handle_batch([close(sid)])[0].status == "accepted"
    for criteria in ('{"require": "any"}', '{"require": "all"}'):
        code, out, _ = what_if(database_url, sid, criteria, capsys)
        result = json.loads(out)
        assert code == 0
        assert result["recorded"]["verdict"] is None
        assert result["outcome_changes"] is None
