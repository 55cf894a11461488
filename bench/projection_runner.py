"""Our projection runner against eventsourcing's projection primitives, on the same events.

    python -m bench.projection_runner [--agents 50] [--sessions 400] [--participants 5]
                                      [--runs 3]

Writes one event log (SQLite; as ``bench.readstore``), then brings the read models of
``chorus project`` from position 0 to its head three ways, each run in turn so all see
the same machine, and checks that all three end with the same rows:

- ``runner``: ``projections.runner`` as ``chorus project`` runs it: one scan of the log for
  all read models (``step_together``), each batch of up to 1,000 events applied and the
  position written in one read-store transaction.
- ``runner, batch 1``: the same code with one event per transaction: the granularity that
  eventsourcing's ``Projection.process_event(event, tracking)`` contract implies.
- ``eventsourcing``: eventsourcing 9.5's primitives: an ``eventsourcing.projection.Projection``
  per read model whose ``process_event`` writes the rows and its ``Tracking`` in one
  transaction of a ``SQLiteTrackingRecorder`` view (the library's materialised-view pattern),
  fed event by event from the log. Its ``ProjectionRunner`` itself cannot be used: it
  subscribes to the application (``SQLiteApplicationRecorder.subscribe`` raises
  ``NotImplementedError``) and decodes with the application's mapper, which knows nothing of
  our msgspec events; so the bench pulls the log as its subscription would
  (``select_notifications``, 500 at a time) and decodes once with ``decode_record``.

Prints events/s per run and way, the median with min and max, and each way's ratio to
``runner`` (median, min, max).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from chorus.bootstrap import PROJECTIONS, bootstrap
from chorus.events.codec import decode_record
from chorus.projections.projector import step_together
from chorus.projections.runner import Projection
from chorus.settings import Settings
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder
from eventsourcing.persistence import ApplicationRecorder, Tracking
from eventsourcing.projection import Projection as LibraryProjection
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder

from bench.readstore import log_arguments, write_log

#: How many notifications eventsourcing's subscription selects at a time.
SUBSCRIPTION_PAGE = 500


def ours(recorder: ApplicationRecorder, path: Path, head: int, batch_size: int) -> float:
    """Seconds for ``chorus project``'s runner to bring every read model to ``head``."""
    runners = bootstrap(Settings(), recorder=recorder).projection_runners(
        read_store_url=f"sqlite:///{path}", batch_size=batch_size
    )  # every read model of ``chorus project``, wired as it wires them
    store = runners[0].store
    started = time.perf_counter()
    while min(runner.position for runner in runners) < head:
        step_together(runners)
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed


class View(SQLiteTrackingRecorder):
    """eventsourcing's materialised view: the read model's tables beside a tracking table,
    rows and tracking record written in one transaction."""

    def __init__(self, datastore: SQLiteDatastore, model: Projection) -> None:
        self.model = model
        super().__init__(datastore)

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *self.model.ddl]

    def apply_with_tracking(self, record: Any, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            # sqlite3's own cursor: the read model reads rows back (its wrapper returns none).
            self.model.apply(cursor.sqlite_cursor, record)
            self._insert_tracking(cursor, tracking)


class ReadModelProjection(LibraryProjection[View]):
    """A read model as an eventsourcing ``Projection``: one event and its tracking a call."""

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.apply_with_tracking(domain_event, tracking)


def library(recorder: ApplicationRecorder, path: Path, head: int) -> float:
    """Seconds for eventsourcing-style projections to bring every read model to ``head``."""
    datastore = SQLiteDatastore(str(path))
    projections = []
    for model in PROJECTIONS.values():
        view = View(datastore, model())
        view.create_table()
        projections.append(ReadModelProjection(view))
    started = time.perf_counter()
    for projection in projections:  # one runner (one subscription) per projection
        name, aggregates = projection.view.model.name, projection.view.model.aggregates
        position = projection.view.max_tracking_id(name) or 0
        while position < head:
            page = recorder.select_notifications(position + 1, SUBSCRIPTION_PAGE, stop=head)
            for notification in page:
                if notification.topic.split(".", 1)[0] in aggregates:
                    tracking = Tracking(application_name=name, notification_id=notification.id)
                    projection.process_event(decode_record(notification), tracking)
            position = page[-1].id
    elapsed = time.perf_counter() - started
    datastore.close()
    return elapsed


def rows(path: Path, tables: Iterable[str]) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as conn:
        return {t: sorted(map(tuple, conn.execute(f"SELECT * FROM {t}"))) for t in tables}


def summary(rates: list[float]) -> str:
    return (f"median {statistics.median(rates):>8,.0f}  min {min(rates):>8,.0f}  "
            f"max {max(rates):>8,.0f} events/s")  # fmt: skip


def main() -> None:
    parser = log_arguments(argparse.ArgumentParser(description=__doc__))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-"))
    try:
        recorder = open_recorder(f"sqlite:///{work}/events.db")
        head = write_log(recorder, args.agents, args.sessions, args.participants)
        tables = [t for model in PROJECTIONS.values() for t in model().tables]
        print(f"chorus bench.projection_runner  ({head:,} notifications, "
              f"{len(PROJECTIONS)} read models, SQLite)")  # fmt: skip
        ways: dict[str, Callable[[Path], float]] = {
            "runner": lambda path: ours(recorder, path, head, 1000),
            "runner, batch 1": lambda path: ours(recorder, path, head, 1),
            "eventsourcing": lambda path: library(recorder, path, head),
        }
        rates: dict[str, list[float]] = {way: [] for way in ways}
        for run in range(args.runs):
            results = {}
            for i, (way, measure) in enumerate(ways.items()):
                path = work / f"read-{run}-{i}.db"
                rates[way].append(head / measure(path))
                results[way] = rows(path, tables)
            assert all(r == results["runner"] for r in results.values()), "read models differ"
            print(f"  run {run + 1}: " + "  ".join(
                f"{way} {rates[way][-1]:>8,.0f}" for way in ways) + " events/s")  # fmt: skip
        for way in ways:
            ratios = [a / b for a, b in zip(rates[way], rates["runner"], strict=True)]
            print(f"  {way:<16} {summary(rates[way])}  ratio to runner median "
                  f"{statistics.median(ratios):.3f} min {min(ratios):.3f} "
                  f"max {max(ratios):.3f}")  # fmt: skip
        close_recorder(recorder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
