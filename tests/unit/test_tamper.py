"""Tamper evidence: edits, deletions, insertions and reorderings made directly on the
SQLite file with sqlite3 are caught by ``verify_store`` and by ``chorus audit verify``."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from chorus.audit.ledger import (
    Checkpoint,
    UnsoundRow,
    ensure_ledger,
    last_seal,
    read_anchor,
    seal_all,
    seal_step,
)
from chorus.audit.verify import verify_store
from chorus.cli import main
from chorus.engine.processor import Processor
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder
from eventsourcing.persistence import ApplicationRecorder

from .conftest import CLOCK_START, FakeClock
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
    close_recorder(recorder)
    return path


def check(path: Path, **options: Any):  # type: ignore[no-untyped-def]
    """Verify the file as of a moment shortly after the history was written (on the test
    clock), unless the test names its own ``now``."""
    options.setdefault("now", CLOCK_START + timedelta(seconds=30))
    recorder = open_recorder(f"sqlite:///{path}")
    try:
        return verify_store(recorder, **options)
    finally:
        close_recorder(recorder)


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


def test_an_edit_in_sql_that_turns_the_row_into_text_is_reported_not_a_crash(
    sealed_store: Path,
) -> None:
    """``UPDATE ... SET state = replace(state, ...)`` stores TEXT where a BLOB was."""
    target = domain_row(sealed_store, 0)
    tamper(sealed_store, ("UPDATE stored_events SET state = replace(state, 'coord', 'coorD') "
                          "WHERE rowid=?", (target[0],)))  # fmt: skip
    first = check(sealed_store).first
    assert first is not None and (first.position, first.kind) == (target[0], "edited")


def test_an_edit_with_a_recomputed_hash_still_breaks_the_seal(sealed_store: Path) -> None:
    """The attacker re-hashes the edited event: its aggregate chain holds, the seal does not."""
    from chorus.events.codec import recompute_hash
    from eventsourcing.persistence import StoredEvent

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
    report = verify_store(recorder, now=clock.now)
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


# Truncation and removed seals ---------------------------------------------------------------


def checkpoint_of(path: Path) -> Checkpoint:
    report = check(path)
    assert report.ok and report.head_running_hash is not None
    return Checkpoint(position=report.sealed_through, running_hash=report.head_running_hash)


def test_removing_the_last_events_with_their_seals_breaks_the_anchor(sealed_store: Path) -> None:
    anchor = checkpoint_of(sealed_store)
    last_two = [r[0] for r in rows(sealed_store)[-2:]]
    tamper(sealed_store, *[(sql, (p,)) for p in last_two for sql in (
        "DELETE FROM stored_events WHERE rowid=?", "DELETE FROM chorus_seals WHERE position=?")])  # fmt: skip
    assert check(sealed_store).ok  # consistent but shorter: only the anchor can tell
    first = check(sealed_store, expected=[anchor]).first
    assert first is not None
    assert (first.position, first.kind) == (anchor.position, "anchor_mismatch")
    assert "ends at position" in first.message


def test_re_sealing_a_rewritten_log_breaks_the_anchor(sealed_store: Path) -> None:
    anchor = checkpoint_of(sealed_store)
    target = domain_row(sealed_store, 0)
    tamper(
        sealed_store,
        ("DELETE FROM chorus_seals", ()),
        ("DELETE FROM stored_events WHERE rowid=?", (rows(sealed_store)[-1][0],)),
    )
    recorder = open_recorder(f"sqlite:///{sealed_store}")
    seal_all(recorder)
    close_recorder(recorder)
    report = check(sealed_store, expected=[anchor])
    assert [p.kind for p in report.problems] == ["anchor_mismatch"]
    assert target[0] < anchor.position


@pytest.mark.parametrize("how", ["DROP TABLE chorus_seals", "DELETE FROM chorus_seals"])
def test_a_dropped_or_emptied_ledger_is_caught_after_the_grace_period(
    sealed_store: Path, clock: FakeClock, how: str
) -> None:
    tamper(sealed_store, (how, ()))
    assert check(sealed_store, now=clock.now).ok  # within the grace the engine may lag
    first = check(sealed_store, now=clock.now + timedelta(minutes=5)).first
    assert first is not None
    assert (first.position, first.kind) == (1, "seals_missing")


def test_an_unsealed_tail_older_than_the_grace_is_caught(tmp_path: Path, clock: FakeClock) -> None:
    recorder = open_recorder(f"sqlite:///{tmp_path}/e.db")
    write_history(recorder, clock)
    seal_all(recorder)
    head = recorder.max_notification_id()
    Processor(recorder, clock=clock).handle_batch([open_session(str(uuid.uuid4()))])
    later = clock.now + timedelta(seconds=61)
    assert verify_store(recorder, now=clock.now + timedelta(seconds=59)).ok
    first = verify_store(recorder, now=later).first
    assert first is not None
    assert (first.position, first.kind) == (head + 1, "unsealed_too_old")
    assert verify_store(recorder, now=later, max_unsealed_age=3600).ok


def test_chorus_audit_verify_checks_expect_seal_and_the_anchor_file(
    sealed_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{sealed_store}"
    data_dir = tmp_path / "data"
    assert main(["audit", "verify", "--database-url", url, "--data-dir", str(data_dir)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("checkpoint: "))
    anchor = Checkpoint.parse(line.removeprefix("checkpoint: "))
    (data_dir / "audit").mkdir(parents=True)
    (data_dir / "audit" / "seal-anchor").write_text(f"1:{'a' * 64}\n{anchor}\n3:tor")
    last = rows(sealed_store)[-1][0]
    tamper(sealed_store, ("DELETE FROM stored_events WHERE rowid=?", (last,)),
           ("DELETE FROM chorus_seals WHERE position=?", (last,)))  # fmt: skip
    base = ["audit", "verify", "--database-url", url]
    assert main([*base, "--data-dir", str(tmp_path / "elsewhere")]) == 0  # no anchor there
    assert main([*base, "--expect-seal", str(anchor), "--data-dir", str(tmp_path)]) == 1
    assert "anchor_mismatch" in capsys.readouterr().out
    assert main([*base, "--data-dir", str(data_dir)]) == 1  # the default anchor file
    assert f"before the anchored {anchor}" in capsys.readouterr().out
    explicit = ["--anchor", str(data_dir / "audit" / "seal-anchor")]
    assert main([*base, *explicit, "--data-dir", str(tmp_path)]) == 1


async def test_the_sealer_appends_each_new_head_to_the_anchor_file(
    tmp_path: Path, clock: FakeClock
) -> None:
    import asyncio

    from chorus.engine.adapters.sealer import Sealer

    recorder = open_recorder(f"sqlite:///{tmp_path}/e.db")
    write_history(recorder, clock)
    path = tmp_path / "audit" / "seal-anchor"
    head = recorder.max_notification_id()
    task = asyncio.create_task(Sealer(recorder, anchor_path=path, idle_interval=0.01).run())
    try:
        for _ in range(500):
            if path.exists() and (a := read_anchor(path)) and a.position == head:
                break
            await asyncio.sleep(0.01)
        seal = last_seal(recorder)
        assert seal is not None
        assert read_anchor(path) == Checkpoint(position=head, running_hash=seal.running_hash)
        assert path.stat().st_mode & 0o777 == 0o600
        assert verify_store(
            recorder, expected=[Checkpoint.parse(str(read_anchor(path)))], now=clock.now
        ).ok
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        close_recorder(recorder)


# Rows outside the log's range, re-spelled keys, topics ---------------------------------------


def test_a_row_moved_to_position_zero_is_read_and_flagged(sealed_store: Path) -> None:
    target = domain_row(sealed_store, 4)
    tamper(sealed_store, ("UPDATE stored_events SET rowid=0 WHERE rowid=?", (target[0],)))
    report = check(sealed_store)
    assert report.first is not None
    assert (report.first.position, report.first.kind) == (0, "bad_position")
    assert ("deleted", target[0]) in [(p.kind, p.position) for p in report.problems]
    assert report.events == len(rows(sealed_store))


def test_a_row_inserted_below_position_one_is_flagged(sealed_store: Path) -> None:
    final = next(r for r in rows(sealed_store) if r["topic"] == "session.SessionCancelled")
    forged = (final["originator_id"], final["originator_version"] + 1, final["topic"],
              bytes(final["state"]))  # fmt: skip
    tamper(sealed_store, ("INSERT INTO stored_events (rowid, originator_id, originator_version, "
                          "topic, state) VALUES (-1, ?, ?, ?, ?)", forged))  # fmt: skip
    report = check(sealed_store)
    assert report.first is not None
    assert (report.first.position, report.first.kind) == (-1, "bad_position")


@pytest.mark.parametrize("spell", [str.upper, lambda k: str(uuid.UUID(k))])
def test_a_re_spelled_originator_id_is_caught(sealed_store: Path, spell: Any) -> None:
    target = next(r for r in rows(sealed_store) if r["topic"] == "session.ResultSubmitted")
    key = spell(target["originator_id"])
    assert key != target["originator_id"]
    tamper(sealed_store, ("UPDATE stored_events SET originator_id=? WHERE rowid=?",
                          (key, target[0])))  # fmt: skip
    kinds = {(p.position, p.kind) for p in check(sealed_store).problems}
    assert {(target[0], "bad_key"), (target[0], "seal_mismatch")} <= kinds


def test_a_changed_event_type_in_the_topic_is_caught_before_sealing(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "e.db"
    recorder = open_recorder(f"sqlite:///{path}")
    write_history(recorder, clock)
    close_recorder(recorder)
    target = next(r for r in rows(path) if r["topic"] == "session.ResultSubmitted")
    tamper(path, ("UPDATE stored_events SET topic='session.SessionCancelled' WHERE rowid=?",
                  (target[0],)))  # fmt: skip
    first = check(path).first
    assert first is not None
    assert (first.position, first.kind) == (target[0], "edited")
    assert "does not name the event's type" in first.message


def test_verify_racing_a_writing_and_sealing_engine_reports_nothing(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chorus.audit.verify

    recorder = open_recorder(f"sqlite:///{tmp_path}/e.db")
    write_history(recorder, clock)
    seal_all(recorder)
    head = recorder.max_notification_id()
    walk_rows = chorus.audit.verify._rows

    def rows_then_more(*args: Any) -> Any:
        yield from walk_rows(*args)
        # The walk has read every row: meanwhile the engine writes and seals.
        Processor(recorder, clock=clock).handle_batch([open_session(str(uuid.uuid4()))])
        seal_all(recorder)

    monkeypatch.setattr(chorus.audit.verify, "_rows", rows_then_more)
    report = verify_store(recorder, chunk=4, now=clock.now)
    assert report.ok, report.problems
    assert report.events == report.sealed_through == head


# The sealer checks before it seals --------------------------------------------------------


def test_the_sealer_stops_at_a_row_that_does_not_verify(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "e.db"
    recorder = open_recorder(f"sqlite:///{path}")
    write_history(recorder, clock)
    target = domain_row(path, 4)
    state = bytes(target["state"]).replace(b'"success":true', b'"success":false', 1)
    tamper(path, ("UPDATE stored_events SET state=? WHERE rowid=?", (state, target[0])))
    with pytest.raises(UnsoundRow) as raised:
        seal_all(recorder)
    assert raised.value.position == target[0]
    seal = last_seal(recorder)
    assert seal is not None
    assert seal.position == target[0] - 1
    with pytest.raises(UnsoundRow):  # and stays stopped
        seal_all(recorder)
    close_recorder(recorder)


def seal_one_row_at_a_time(recorder: ApplicationRecorder, known: dict[str, Any] | None) -> None:
    ensure_ledger(recorder)
    while seal_step(recorder, 1, known):
        pass


@pytest.mark.parametrize(
    "sealing",
    [
        seal_all,  # the previous version is in the same step
        lambda r: seal_one_row_at_a_time(r, None),  # read back from the store
        lambda r: seal_one_row_at_a_time(r, {}),  # remembered from the step that sealed it
    ],
    ids=["in-one-step", "read-back", "remembered"],
)
def test_the_sealer_stops_at_a_re_hashed_row_that_breaks_its_chain(
    tmp_path: Path, clock: FakeClock, sealing: Any
) -> None:
    """The forged row's own hash holds; the next version's link to it does not, however
    the sealer learns the previous version's hash."""
    from chorus.events.codec import recompute_hash
    from eventsourcing.persistence import StoredEvent

    path = tmp_path / "e.db"
    recorder = open_recorder(f"sqlite:///{path}")
    write_history(recorder, clock)
    target = domain_row(path, 0)  # SessionOpened of the first session
    old = bytes(target["state"])
    state = old.replace(b'"description":"work"', b'"description":"play"', 1)
    assert state != old
    forged = StoredEvent(originator_id=uuid.UUID(target["originator_id"]), originator_version=1,
                         topic=target["topic"], state=state)  # fmt: skip
    old_hash = old.split(b'"hash":"')[1][:64]
    state = state.replace(b'"hash":"' + old_hash, b'"hash":"' + recompute_hash(forged).encode())
    tamper(path, ("UPDATE stored_events SET state=? WHERE rowid=?", (state, target[0])))
    next_version = next(r for r in rows(path) if r["originator_id"] == target["originator_id"]
                        and r["originator_version"] == 2)  # fmt: skip
    with pytest.raises(UnsoundRow) as raised:
        sealing(recorder)
    assert raised.value.position == next_version[0]
    assert "prev_hash" in raised.value.reason
    close_recorder(recorder)


def test_chorus_audit_seal_exits_1_at_a_row_that_does_not_verify(
    tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "e.db"
    recorder = open_recorder(f"sqlite:///{path}")
    write_history(recorder, clock)
    close_recorder(recorder)
    target = domain_row(path, 2)
    tamper(path, ("UPDATE stored_events SET originator_id=? WHERE rowid=?",
                  (target["originator_id"].upper(), target[0])))  # fmt: skip
    assert main(["audit", "seal", "--database-url", f"sqlite:///{path}"]) == 1
    assert f"position {target[0]}" in capsys.readouterr().err


def test_the_anchor_file_holds_only_the_newest_checkpoint(tmp_path: Path) -> None:
    """The engine rewrites it after every sealing step: it must not grow with the log."""
    from chorus.audit.ledger import append_anchor

    path = tmp_path / "audit" / "seal-anchor"
    for position in range(1, 50):
        append_anchor(path, Checkpoint(position=position, running_hash=f"{position:064x}"))
    assert path.read_text() == f"49:{49:064x}\n"
    assert read_anchor(path) == Checkpoint(position=49, running_hash=f"{49:064x}")
    assert (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["seal-anchor"]  # no leftovers


@pytest.mark.parametrize("sqlite", [True, False])
def test_the_sealer_reads_an_id_spelling_exactly_as_the_recorder_check_does(sqlite: bool) -> None:
    from chorus.audit.ledger import canonical_id
    from chorus.store.recorder import RawRow

    aggregate_id = uuid.uuid4()
    text = str(aggregate_id)
    for key in (aggregate_id.hex, text, text.upper(), aggregate_id.hex.upper(), f"{{{text}}}",
                f"urn:uuid:{text}", f"{aggregate_id.hex}\n", "not-a-uuid"):  # fmt: skip
        row = RawRow(position=1, key=key, version=1, topic="session.SessionOpened", state=b"")
        expected = text if row.key_in_recorder_form(sqlite) else None
        assert canonical_id(row, sqlite) == expected, key
