"""Tamper evidence: edits, deletions, insertions and reorderings made directly on the
SQLite file with sqlite3 are caught by ``verify_store`` and by ``chorus audit verify``."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
from eventsourcing.persistence import ApplicationRecorder

from engine.processor import Processor
from events.ledger import last_seal, seal_all
from events.store import open_recorder
from events.verify import verify_store
from runtime.cli import main

from .conftest import FakeClock
from .test_processor import cancel, open_session, submit


def write_history(recorder: ApplicationRecorder, clock: FakeClock) -> list[str]:
    """Three sessions, interleaved, one finished, one cancelled, one open: 11 rows."""
    processor = Processor(recorder, clock=clock)
    sids = [str(uuid.uuid4()) for _ in range(3)]
    for sid in sids:
        processor.handle_batch([open_session(sid, ("a", "b"))])
        clock.advance(seconds=1)
    processor.handle_batch([submit(sids[0], "a"), submit(sids[1], "a")])
    processor.handle_batch([submit(sids[0], "b")])
    processor.handle_batch([cancel(sids[2])])
    return sids


@pytest.fixture
def sealed_store(tmp_path: Path, clock: FakeClock) -> Path:
    path = tmp_path / "events.db"
    recorder = open_recorder(f"sqlite:///{path}")
    write_history(recorder, clock)
    assert seal_all(recorder) == recorder.max_notification_id()
    recorder.datastore.close()  # type: ignore[attr-defined]
    return path


def check(path: Path):  # type: ignore[no-untyped-def]
    recorder = open_recorder(f"sqlite:///{path}")
    try:
        return verify_store(recorder)
    finally:
        recorder.datastore.close()  # type: ignore[attr-defined]


def tamper(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    with sqlite3.connect(path) as conn:
        for sql, params in statements:
            conn.execute(sql, params)


def rows(path: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT rowid, * FROM stored_events ORDER BY rowid").fetchall()


def domain_row(path: Path, nth: int) -> sqlite3.Row:
    return [r for r in rows(path) if not r["topic"].startswith("command.")][nth]


def test_an_untouched_store_verifies_with_every_event_sealed(sealed_store: Path) -> None:
    report = check(sealed_store)
    assert report.ok, report.problems
    assert report.events == len(rows(sealed_store)) == report.sealed_through
    assert report.unsealed == 0
    assert report.head_running_hash is not None


def test_an_edited_row_is_named_by_position_and_aggregate(sealed_store: Path) -> None:
    target = domain_row(sealed_store, 4)
    state = bytes(target["state"]).replace(b'"success":true', b'"success":false', 1)
    assert state != bytes(target["state"])
    tamper(sealed_store, ("UPDATE stored_events SET state=? WHERE rowid=?", (state, target[0])))
    first = check(sealed_store).first
    assert first is not None
    assert first.position == target[0]
    assert first.kind == "edited"
    assert first.aggregate == "session"
    assert first.aggregate_id == str(uuid.UUID(target["originator_id"]))
    assert first.version == target["originator_version"]


def test_an_edit_with_a_recomputed_hash_still_breaks_the_seal(sealed_store: Path) -> None:
    """The attacker re-hashes the edited event: its aggregate chain holds, the seal does not."""
    from eventsourcing.persistence import StoredEvent

    from events.codec import recompute_hash

    target = domain_row(sealed_store, 4)
    state = bytes(target["state"]).replace(b'"success":true', b'"success":false', 1)
    forged = StoredEvent(
        originator_id=uuid.UUID(target["originator_id"]),
        originator_version=target["originator_version"],
        topic=target["topic"],
        state=state,
    )
    old_hash = bytes(target["state"]).split(b'"hash":"')[1][:64]
    state = state.replace(b'"hash":"' + old_hash, b'"hash":"' + recompute_hash(forged).encode())
    tamper(sealed_store, ("UPDATE stored_events SET state=? WHERE rowid=?", (state, target[0])))
    report = check(sealed_store)
    assert report.first is not None
    assert report.first.position == target[0]
    assert report.first.kind == "seal_mismatch"


def test_deleting_the_last_event_of_an_aggregate_is_caught(sealed_store: Path) -> None:
    """No later event of the aggregate notices; only the seal at that position does."""
    target = next(r for r in rows(sealed_store) if r["topic"] == "session.SessionCancelled")
    tamper(sealed_store, ("DELETE FROM stored_events WHERE rowid=?", (target[0],)))
    first = check(sealed_store).first
    assert first is not None
    assert (first.position, first.kind) == (target[0], "deleted")
    assert first.aggregate_id == str(uuid.UUID(target["originator_id"]))
    assert first.version == target["originator_version"]


def test_deleting_a_middle_event_is_caught_at_its_position(sealed_store: Path) -> None:
    target = domain_row(sealed_store, 0)  # SessionOpened of the first session
    tamper(sealed_store, ("DELETE FROM stored_events WHERE rowid=?", (target[0],)))
    report = check(sealed_store)
    assert report.first is not None
    assert (report.first.position, report.first.kind) == (target[0], "deleted")
    assert any(p.kind == "broken_chain" for p in report.problems)


def test_inserting_a_row_in_the_middle_is_caught(sealed_store: Path) -> None:
    """Make room by renumbering the rows after position 3, then insert a copy there."""
    source = domain_row(sealed_store, 0)
    head = rows(sealed_store)[-1][0]
    statements = [
        ("UPDATE stored_events SET rowid=rowid+1 WHERE rowid=?", (p,)) for p in range(head, 3, -1)
    ]
    forged = (source["originator_id"], 99, source["topic"], bytes(source["state"]))
    statements.append(("INSERT INTO stored_events (rowid, originator_id, originator_version, "
                       "topic, state) VALUES (4, ?, ?, ?, ?)", forged))  # fmt: skip
    tamper(sealed_store, *statements)
    report = check(sealed_store)
    assert report.first is not None
    assert report.first.position == 4
    assert report.first.kind in ("broken_chain", "edited", "seal_mismatch")


def test_appending_a_forged_event_to_an_aggregate_is_caught(sealed_store: Path) -> None:
    """A copy of an aggregate's event appended as its next version does not chain."""
    source = domain_row(sealed_store, 0)
    head = rows(sealed_store)[-1][0]
    forged = (head + 1, source["originator_id"], 99, source["topic"], bytes(source["state"]))
    tamper(sealed_store, ("INSERT INTO stored_events (rowid, originator_id, "
                          "originator_version, topic, state) VALUES (?, ?, ?, ?, ?)", forged))  # fmt: skip
    first = check(sealed_store).first
    assert first is not None
    assert first.position == head + 1
    assert first.kind in ("edited", "broken_chain")


def test_swapping_two_rows_is_caught_at_the_first_of_them(sealed_store: Path) -> None:
    a, b = domain_row(sealed_store, 1), domain_row(sealed_store, 2)
    tamper(
        sealed_store,
        ("UPDATE stored_events SET rowid=-1 WHERE rowid=?", (a[0],)),
        ("UPDATE stored_events SET rowid=? WHERE rowid=?", (a[0], b[0])),
        ("UPDATE stored_events SET rowid=? WHERE rowid=-1", (b[0],)),
    )
    first = check(sealed_store).first
    assert first is not None
    assert first.position == min(a[0], b[0])
    assert first.kind in ("seal_mismatch", "broken_chain")


def test_rewriting_a_seal_is_caught(sealed_store: Path) -> None:
    tamper(sealed_store, ("UPDATE chorus_seals SET running_hash=? WHERE position=5", ("0" * 64,)))
    first = check(sealed_store).first
    assert first is not None
    assert (first.position, first.kind) == (5, "seal_mismatch")


def test_events_after_the_last_seal_are_counted_as_unsealed(
    tmp_path: Path, clock: FakeClock
) -> None:
    recorder = open_recorder(f"sqlite:///{tmp_path}/e.db")
    write_history(recorder, clock)
    seal_all(recorder)
    sealed = last_seal(recorder)
    Processor(recorder, clock=clock).handle_batch([open_session(str(uuid.uuid4()))])
    report = verify_store(recorder)
    assert report.ok
    assert sealed is not None
    assert report.sealed_through == sealed.position
    assert report.unsealed == 2  # the event and its dedup record


def test_chorus_audit_verify_exits_non_zero_and_names_the_break(
    sealed_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{sealed_store}"
    assert main(["audit", "verify", "--database-url", url]) == 0
    assert "OK" in capsys.readouterr().out
    target = domain_row(sealed_store, 3)
    tamper(sealed_store, ("DELETE FROM stored_events WHERE rowid=?", (target[0],)))
    assert main(["audit", "verify", "--database-url", url]) == 1
    out = capsys.readouterr().out
    assert f"position {target[0]}" in out
    assert str(uuid.UUID(target["originator_id"])) in out
