"""A read model's row changes during one batch, kept in memory and written at its end.

Profiled, a rebuild spent most of its time in the read models' own statements: one or
more per event (a session of ten participants cost about 90 statements across the read
models). Through ``Pending`` a read model reads a row once per batch, changes it in memory
as events arrive, and every changed row is written once when the batch ends: one
``executemany`` per table (on PostgreSQL one round trip, psycopg pipelines it), in the
runner's transaction, before the position. A session opened and finalised within one batch
is written once, in its final state; a task opened and closed within it never is.

The outcome is the one of applying each event with its own statements, by construction:

- a row read (``get``, ``find``, ``rows``) comes from memory if this batch holds it, else
  from the store (and is then kept); a group (``Table.group``: a session's participants)
  is read whole, so a row missing from a loaded group is known to be absent;
- ``update_where`` and ``delete_where`` on a whole group change the rows in memory; on
  anything else they run in the store at once (single-table statements, reading no other
  table) and change the matching rows held in memory too, which are written over the
  store's at the end;
- ``execute`` (any other SQL) first writes everything pending and forgets what it held,
  so it sees, and may change, the store as one-event-at-a-time code would.

A read model called with a plain connection (time travel's in-memory fold, tests) gets a
``Pending`` of its own for that one event (``fold``), written when the event is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from chorus.projections.readstore import Connection, Cursor
from chorus.projections.tables import Key, RowDict, Table, condition, matches, tuple_getter

#: Values per ``IN (...)`` of a bulk read (well under SQLite's 32,766 parameters).
_IN_CHUNK = 500
#: Keys per query of ``load_keys``: one OR term each (SQLite parses a chain of ORs to a
#: tree as deep as it is long, at most 1,000).
_KEYS_CHUNK = 100
#: ``changed`` of a row written whole (inserted, or replaced by ``put``).
_WHOLE: frozenset[str] = frozenset()
#: ``_Held.rows.get``'s answer for a key this batch knows nothing of (None: known absent).
_UNKNOWN: Any = object()


class _Held:
    """What one batch holds of one table."""

    __slots__ = ("changed", "groups", "index", "members", "missing", "rows", "stored")

    def __init__(self) -> None:
        #: Rows read or written in this batch; None: known to be absent (or deleted).
        self.rows: dict[Key, RowDict | None] = {}
        #: Whether the store has the row now (True / False); a key missing: not known.
        self.stored: dict[Key, bool] = {}
        #: Keys to write at the end, with the columns changed (``_WHOLE``: every column).
        self.changed: dict[Key, frozenset[str]] = {}
        #: Groups read whole, and the keys held of each group.
        self.groups: set[Any] = set()
        self.members: dict[Any, set[Key]] = {}
        #: (column, value) pairs a ``find`` looked for in the store and did not find.
        self.missing: set[tuple[str, Any]] = set()
        #: Per column ``find`` looks rows up by: value -> key of the held rows.
        self.index: dict[str, dict[Any, Key]] = {}

    def note(self, key: Key, row: RowDict) -> None:
        """Index a held row under the columns ``find`` uses."""
        for column, keys in self.index.items():
            keys[row[column]] = key


class Pending:
    """One batch of a read model's row changes (see the module docstring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._held: dict[Table, _Held] = {}
        self._inserts: dict[Table, dict[Key, RowDict]] = {}

    # Reading --------------------------------------------------------------------------

    def _of(self, table: Table) -> _Held:
        held = self._held.get(table)
        if held is None:
            held = self._held[table] = _Held()
        return held

    def _keep(self, table: Table, held: _Held, values: Sequence[Any]) -> RowDict | None:
        """A row read from the store, unless this batch holds a newer state of it."""
        row = dict(zip(table.columns, values, strict=True))
        key = table.key_of(row)
        held.stored[key] = True  # whatever this batch did to it so far is not written yet
        if key in held.rows:
            return held.rows[key]
        held.rows[key] = row
        if table.group is not None:
            held.members.setdefault(row[table.group], set()).add(key)
        if held.index:
            held.note(key, row)
        return row

    def get(self, table: Table, *key: Any) -> RowDict | None:
        """The row with this key (as this batch left it), or None."""
        assert not table.insert_only, f"{table.name}: rows are only inserted"
        held = self._held.get(table) or self._of(table)
        row = held.rows.get(key, _UNKNOWN)
        if row is not _UNKNOWN:
            return row  # type: ignore[no-any-return]
        if table.group is not None:
            group = key[table.group_at]
            if group not in held.groups:
                self._load_group(table, held, group)
                return held.rows.get(key)
            return None
        where = " AND ".join(f"{k}=?" for k in table.key)
        found = self.conn.execute(table.select_sql + where, key).fetchone()
        if found is None:
            held.rows[key] = None
            held.stored[key] = False
            return None
        return self._keep(table, held, tuple(found))

    def _load_group(self, table: Table, held: _Held, group: Any) -> None:
        for values in self.conn.execute(f"{table.select_sql}{table.group}=?", (group,)):
            self._keep(table, held, tuple(values))
        held.groups.add(group)

    def load(self, table: Table, values: Iterable[Any], column: str | None = None) -> None:
        """Read the rows whose ``column`` (default: the table's one-column key) is one of
        ``values``, in a few queries, so that ``get`` / ``find`` need none: a batch's
        reads in bulk (on PostgreSQL each query is a round trip)."""
        held = self._of(table)
        by_key = column is None
        name = table.key[0] if column is None else column
        assert not by_key or len(table.key) == 1, f"{table.name}: a key of several columns"
        wanted = sorted(
            {v for v in values if v is not None}
            - ({k[0] for k in held.rows} if by_key else {v for c, v in held.missing if c == name})
        )
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            found = set()
            for values_ in self.conn.execute(f"{table.select_sql}{name} IN ({marks})", chunk):
                self._keep(table, held, tuple(values_))
                found.add(values_[table.columns.index(name)])
            for value in chunk:
                if value in found:
                    continue
                if by_key:
                    held.rows.setdefault((value,), None)
                    held.stored.setdefault((value,), False)
                else:
                    held.missing.add((name, value))

    def load_keys(self, table: Table, keys: Iterable[Key]) -> None:
        """Read these rows by their whole key, in a few queries: of a group table, the
        rows a batch names without its whole groups (a result submitted to a session of
        ten changes one participant's row: reading all ten cost more than the rest of
        the batch when each event of a batch named another session)."""
        held = self._of(table)
        at = None if table.group is None else table.key.index(table.group)
        wanted = sorted({
            key for key in keys
            if key not in held.rows and (at is None or key[at] not in held.groups)
        })  # fmt: skip
        width = len(table.key)
        one = "(" + " AND ".join(f"{column}=?" for column in table.key) + ")"
        for start in range(0, len(wanted), _KEYS_CHUNK):
            chunk = wanted[start : start + _KEYS_CHUNK]
            if width == 1:
                where = f"{table.key[0]} IN ({', '.join('?' * len(chunk))})"
            else:  # each key by its index (SQLite scans the table for a row-value IN list)
                where = " OR ".join([one] * len(chunk))
            parameters = [value for key in chunk for value in key]
            for values in self.conn.execute(table.select_sql + where, parameters):
                self._keep(table, held, tuple(values))
            for key in chunk:
                if key not in held.stored:
                    held.rows[key] = None
                    held.stored[key] = False

    def load_groups(self, table: Table, groups: Iterable[Any]) -> None:
        """Read these groups whole (``Table.group``), in a few queries."""
        assert table.group is not None, f"{table.name} has no group"
        held = self._of(table)
        wanted = sorted({g for g in groups if g is not None} - held.groups)
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for values in self.conn.execute(f"{table.select_sql}{table.group} IN ({marks})", chunk):
                self._keep(table, held, tuple(values))
            held.groups.update(chunk)

    def created(self, table: Table, group: Any) -> None:
        """``group`` begins now: the store has none of its rows (a session's participants
        at its opening, its first event), so none need be read."""
        assert table.group is not None, f"{table.name} has no group"
        self._of(table).groups.add(group)

    def rows(self, table: Table, group: Any) -> list[RowDict]:
        """Every row of ``group`` (``table.group``), as this batch left them."""
        assert table.group is not None, f"{table.name} has no group"
        held = self._of(table)
        if group not in held.groups:
            self._load_group(table, held, group)
        found = (held.rows[key] for key in held.members.get(group, ()))
        return [row for row in found if row is not None]

    def find(self, table: Table, column: str, value: Any) -> RowDict | None:
        """The row whose unique ``column`` is ``value`` (another key than the table's)."""
        held = self._of(table)
        index = held.index.get(column)
        if index is None:
            index = held.index[column] = {}
            for key, row in held.rows.items():
                if row is not None:
                    index[row[column]] = key
        if (found_key := index.get(value)) is not None:
            held_row = held.rows[found_key]
            if held_row is not None and held_row[column] == value:
                return held_row
        if (column, value) in held.missing:
            return None
        found = self.conn.execute(f"{table.select_sql}{column}=?", (value,)).fetchone()
        if found is None:
            held.missing.add((column, value))
            return None
        row = self._keep(table, held, tuple(found))
        # A row this batch deleted, or changed so that it no longer matches, is not it.
        return row if row is not None and row[column] == value else None

    # Changing -------------------------------------------------------------------------

    def _stored(self, table: Table, held: _Held, key: Key) -> bool | None:
        if key in held.stored:
            return held.stored[key]
        if table.group is not None and key[table.group_at] in held.groups:
            return False  # its group is held whole, without it
        return None

    def put(self, table: Table, row: RowDict) -> None:
        """Insert or replace the whole row (every column of ``table``)."""
        key = table.key_of(row)
        if table.insert_only:
            self._inserts.setdefault(table, {}).setdefault(key, row)
            return
        held = self._held.get(table) or self._of(table)
        if key not in held.stored and (stored := self._stored(table, held, key)) is not None:
            held.stored[key] = stored
        held.rows[key] = row
        held.changed[key] = _WHOLE
        if table.group is not None:
            held.members.setdefault(row[table.group], set()).add(key)
        if held.index:
            held.note(key, row)
        if held.missing:
            for column in {column for column, _ in held.missing}:
                held.missing.discard((column, row[column]))

    def add(self, table: Table, row: RowDict) -> None:
        """Insert the row unless one with its key exists (``ON CONFLICT DO NOTHING``)."""
        if table.insert_only or self.get(table, *table.key_of(row)) is None:
            self.put(table, row)

    def update(self, table: Table, row: RowDict, **changes: Any) -> None:
        """Change columns of a row this batch holds (from ``get``, ``find`` or ``rows``)."""
        row.update(changes)
        held = self._held.get(table) or self._of(table)
        key = table.key_of(row)
        before = held.changed.get(key)
        if before is None:
            held.changed[key] = frozenset(changes)
        elif before:  # _WHOLE stays whole
            held.changed[key] = before | changes.keys()
        if held.index and not changes.keys().isdisjoint(held.index):
            held.note(key, row)

    def delete(self, table: Table, *key: Any) -> None:
        held = self._held.get(table) or self._of(table)
        if held.rows.get(key, _UNKNOWN) is None:
            return  # known to be absent, or already deleted
        if key not in held.stored and (stored := self._stored(table, held, key)) is not None:
            held.stored[key] = stored
        held.rows[key] = None
        held.changed[key] = _WHOLE

    def update_where(self, table: Table, changes: dict[str, Any], **where: Any) -> None:
        """``UPDATE table SET changes WHERE where`` (None in ``where``: IS NULL)."""
        for row in self._matching(table, where, run=("UPDATE", changes)):
            self.update(table, row, **changes)

    def delete_where(self, table: Table, **where: Any) -> None:
        """``DELETE FROM table WHERE where`` (None in ``where``: IS NULL)."""
        for row in self._matching(table, where, run=("DELETE", {})):
            self.delete(table, *table.key_of(row))

    def _matching(
        self, table: Table, where: dict[str, Any], run: tuple[str, dict[str, Any]]
    ) -> list[RowDict]:
        """The held rows ``where`` selects. A whole group is all in memory; else the
        statement runs in the store now, for the rows this batch does not hold."""
        assert not table.insert_only, f"{table.name}: rows are only inserted"
        if table.group is not None and table.group in where:
            return [row for row in self.rows(table, where[table.group]) if matches(row, where)]
        sql_where, params = condition(where)
        verb, changes = run
        if verb == "UPDATE":
            sets = ", ".join(f"{column}=?" for column in changes)
            self.conn.execute(
                f"UPDATE {table.name} SET {sets} WHERE {sql_where}", [*changes.values(), *params]
            )
        else:
            self.conn.execute(f"DELETE FROM {table.name} WHERE {sql_where}", params)
        held = self._of(table)
        held.missing.clear()  # the store changed under the absent marks
        # The statement may have changed the store's copy of a row this batch changed too:
        # the held row is written whole at the end, over whatever the statement did.
        for key in held.changed:
            held.changed[key] = _WHOLE
        return [row for row in held.rows.values() if row is not None and matches(row, where)]

    # Plain SQL, and the end of the batch ----------------------------------------------------

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """Any other statement, on the store as this batch left it so far."""
        self._settle(sql)
        return self.conn.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor:
        self._settle(sql)
        return self.conn.executemany(sql, parameters)

    def _settle(self, sql: str) -> None:
        self.flush()
        if sql.lstrip()[:6].upper() != "SELECT":
            self._held.clear()  # the statement may change what we hold

    def flush(self) -> None:
        """Write every pending change (the rows stay held, now equal to the store's):
        per table, one ``executemany`` each for deletes, inserts of rows the store did not
        have, updates of the same columns, and upserts of rows not known either way."""
        for table, held in self._held.items():
            if held.changed:
                self._write(table, held)
        for table, rows in self._inserts.items():
            if rows:
                ordered = (rows[key] for key in table.in_order(rows))
                table.write_rows(self.conn, table.upsert_sql, ordered)
        self._inserts.clear()

    def _write(self, table: Table, held: _Held) -> None:
        """In key order: B-tree pages fill one after another (random keys, such as session
        ids, otherwise touch a page a row; measured 1.4-1.7x faster inserts on SQLite)."""
        deletes: list[Key] = []
        inserts: list[RowDict] = []
        upserts: list[RowDict] = []
        updates: dict[tuple[str, ...], list[RowDict]] = {}
        for key in table.in_order(held.changed):
            row = held.rows[key]
            stored = held.stored.get(key)
            if row is None:
                if stored is not False:
                    deletes.append(key)
            elif stored is None:
                upserts.append(row)
            elif not stored:
                inserts.append(row)
            elif columns := tuple(sorted(held.changed[key] or table.values)):  # none: all key
                updates.setdefault(columns, []).append(row)
            held.stored[key] = row is not None
        held.changed.clear()
        if deletes:
            self.conn.executemany(table.delete_sql, deletes)
        if inserts:
            table.write_rows(self.conn, table.insert_sql, inserts)
        for columns, rows in updates.items():
            values = tuple_getter((*columns, *table.key))
            self.conn.executemany(table.update_sql(columns), map(values, rows))
        if upserts:
            table.write_rows(self.conn, table.upsert_sql, upserts)


def continued(records: Sequence[Any], first: str) -> set[str]:
    """The aggregates ``records`` (event records) name, but those whose first event, of
    type ``first``, they hold: the rows of those are new, nothing to read."""
    return {r.aggregate_id for r in records} - {r.aggregate_id for r in records if r.type == first}


def fold(conn: Connection, apply: Callable[[Pending, Any], None], record: Any) -> None:
    """``apply(pending, record)`` on the batch ``conn`` is (the runner's), or, given a plain
    connection, on a batch of this one event, written before returning."""
    if isinstance(conn, Pending):
        apply(conn, record)
        return
    pending = Pending(conn)
    apply(pending, record)
    pending.flush()
