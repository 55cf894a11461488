"""Where each process manager keeps its position in the log and the state it needs.

One row per manager, in the event store's own database (SQLite or PostgreSQL), so a
restart goes on from the position instead of re-reading the log from the start. The row
holds the state *and* the position it was taken at, written together in one statement:
a restart always resumes from a pair that belonged together. What the manager did after
the row was written is seen again (the log after the position is read again) and re-sent
with the same derived command ids, which the engine answers ``duplicate``.

``version`` says which code wrote the state: a row from other code is ignored (the
manager then rebuilds from the start of the log once, and writes a fresh row).
"""

from __future__ import annotations

from dataclasses import dataclass

from chorus.store.datastore import Dialect, create_tables, reading, transaction
from eventsourcing.persistence import ApplicationRecorder

TABLE = "chorus_checkpoints"


@dataclass(frozen=True)
class Checkpoint:
    name: str
    position: int
    version: str
    state: bytes


class CheckpointStore:
    """Reads and writes checkpoint rows through the recorder's own connection pool."""

    def __init__(self, recorder: ApplicationRecorder) -> None:
        self.recorder = recorder
        d = Dialect(recorder)
        self.sqlite, self.table, self.mark = d.sqlite, d.beside(TABLE), d.mark
        blob = "BLOB" if d.sqlite else "BYTEA"
        self._create = (
            f"CREATE TABLE IF NOT EXISTS {self.table} (name TEXT PRIMARY KEY, "
            f"position BIGINT NOT NULL, version TEXT NOT NULL, state {blob} NOT NULL)"
        )
        self._created = False
        #: Rows read (tests and benches count what a start-up reads).
        self.loads = 0

    def _ensure_table(self) -> None:
        if not self._created:
            create_tables(self.recorder, self._create)
            self._created = True

    def load(self, name: str) -> Checkpoint | None:
        self._ensure_table()
        m = self.mark
        with reading(self.recorder) as cursor:
            cursor.execute(
                f"SELECT position, version, state FROM {self.table} WHERE name={m}", [name]
            )
            row = cursor.fetchone()
        self.loads += 1
        if row is None:
            return None
        return Checkpoint(name, int(row["position"]), str(row["version"]), bytes(row["state"]))

    def save(self, checkpoint: Checkpoint) -> None:
        """Upsert; never moves a row backwards (two engines may share one store: each
        writes pairs that belong together, and the further one wins)."""
        self._ensure_table()
        m = self.mark
        sql = (
            f"INSERT INTO {self.table} AS c (name, position, version, state) "
            f"VALUES ({m},{m},{m},{m}) "
            f"ON CONFLICT (name) DO UPDATE SET position=excluded.position, "
            f"version=excluded.version, state=excluded.state "
            f"WHERE excluded.position >= c.position OR excluded.version <> c.version"
        )
        c = checkpoint
        with transaction(self.recorder, commit=True) as cursor:
            cursor.execute(sql, [c.name, c.position, c.version, c.state])
