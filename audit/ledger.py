"""The seal ledger: a running hash over the whole log, by position, kept in the event store.

Each event already chains to the previous event of *its aggregate* (``codec.chain_hash``),
which catches an edited event but not a deleted last event, a renumbered row or two
aggregates' rows swapped. The ledger closes that gap: one seal row per log position,
``running_hash(p) = sha256(running_hash(previous seal) || row_hash(p))``, where
``row_hash`` covers the raw stored row (the originator id's stored text included) *and its
position*. ``chorus.audit.verify`` recomputes both chains and names the first position where
the store and its seals disagree.

Seals are written by a follower (``chorus.engine.adapters.sealer``), not in the command transaction:
the write path stays as fast as before and works the same with one engine or several,
on SQLite or PostgreSQL. The price is a short unsealed tail (events not yet sealed are
protected by their aggregate chain only); ``verify`` reports its length and fails when
the tail (or a store with no seals at all) is older than a grace period. Seals are
deterministic, so two sealers racing write identical rows and the loser's insert is a
no-op. Before sealing a row the sealer checks it (its hash, its link to the previous
version, its topic and key): it never vouches for a row that does not verify.

Anchors. The ledger lives in the same database as the events, so whoever can rewrite the
database can delete the last events *and* their seals (or the whole ledger) and leave a
consistent but shorter store. Nothing inside the store can tell; an anchor outside it
can. A checkpoint ``POS:HASH`` (a position and the running hash sealed there) is such an
anchor: the sealer writes the newest one after each sealing step to a one-line file
outside the database when configured (``seal_anchor_path``; replaced atomically, so it
stays one line however long the engine runs), ``chorus audit verify`` prints one, and
every bundle carries one (``log_seal``). Verifying against a checkpoint proves that the
store still holds exactly the log up to that position. The trade-off: an anchor only
covers what was sealed when it was taken, and an anchor file on the same host is only as
safe as that host's file permissions (copy checkpoints elsewhere, e.g. with each export,
for stronger guarantees). With the deployment's audit signing key the sealer signs each
anchor line, and ``chorus audit verify`` requires that signature whenever it knows the
public key: a store cut back to an earlier seal would match the earlier checkpoint, but
only the key holder can write that checkpoint into the file. Without an anchor, dropping or emptying the ledger is still
caught once the unsealed rows are older than the grace period, but removing the last
events together with their seals is not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import logging
import os
import re
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

import msgspec
from chorus.events.codec import GENESIS_HASH, StoredBody, hash_of_body
from chorus.store.datastore import Dialect, create_tables, insert_rows, reading, transaction
from chorus.store.recorder import RawRow, fetch_where, raw_row
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from eventsourcing.persistence import ApplicationRecorder
from msgspec import Struct

log = logging.getLogger(__name__)

TABLE = "chorus_seals"
#: The seal table's columns as ``insert_rows`` takes them (name, PostgreSQL type).
SEAL_COLUMNS = (
    ("position", "bigint"), ("aggregate_id", "text"), ("version", "bigint"),
    ("row_hash", "text"), ("running_hash", "text"),
)  # fmt: skip

_body_decoder = msgspec.json.Decoder(StoredBody)


class Seal(Struct, kw_only=True, frozen=True):
    """What the log held at ``position`` when it was sealed."""

    position: int
    aggregate_id: str
    version: int
    row_hash: str
    running_hash: str


class Checkpoint(Struct, kw_only=True, frozen=True):
    """A seal remembered outside the store: ``POS:HASH`` in text."""

    position: int
    running_hash: str

    def __str__(self) -> str:
        return f"{self.position}:{self.running_hash}"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """``POS:HASH``; raises ValueError otherwise."""
        position, sep, running = text.strip().partition(":")
        if not sep or not position.isdigit() or int(position) < 1:
            raise ValueError(f"not a checkpoint POS:HASH: {text.strip()!r}")
        if len(running) != 64 or any(c not in "0123456789abcdef" for c in running):
            raise ValueError(f"not a sha256 hex running hash: {running!r}")
        return cls(position=int(position), running_hash=running)


class UnsoundRow(Exception):
    """The sealer met a row that does not verify; it seals nothing from there on."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"position {position}: {reason}")
        self.position = position
        self.reason = reason


def row_hash(row: RawRow) -> str:
    """sha256 over the raw stored row and its position: any change to either shows."""
    digest = hashlib.sha256(f"{row.position}\n{row.key}\n{row.version}\n{row.topic}\n".encode())
    digest.update(row.state)
    return digest.hexdigest()


def next_running_hash(previous: str, row: str) -> str:
    return hashlib.sha256(f"{previous}{row}".encode()).hexdigest()


# Anchor files ---------------------------------------------------------------------------


#: Signatures of anchor lines cover this prefix and the checkpoint's text, so a signature
#: made for anything else (a bundle's manifest) is never a valid anchor signature.
ANCHOR_SIGNING_CONTEXT = b"chorus seal anchor v1\n"


class Anchor(NamedTuple):
    """An anchor file's line: the checkpoint, and the deployment's signature of it if the
    sealer had the signing key (``POS:HASH sig=<base64>``)."""

    checkpoint: Checkpoint
    signature: bytes | None

    def signed_by(self, public_key: Ed25519PublicKey) -> bool:
        if self.signature is None:
            return False
        try:
            public_key.verify(
                self.signature, ANCHOR_SIGNING_CONTEXT + str(self.checkpoint).encode()
            )
        except InvalidSignature:
            return False
        return True


def anchor_line(checkpoint: Checkpoint, key: Ed25519PrivateKey | None = None) -> str:
    """``POS:HASH``, signed with ``key`` when given. Signed, the file cannot be rewritten
    to an earlier checkpoint (the one a store cut back to its previous seal would match)
    by whoever lacks the key: the line for that position was never signed."""
    if key is None:
        return str(checkpoint)
    signature = key.sign(ANCHOR_SIGNING_CONTEXT + str(checkpoint).encode())
    return f"{checkpoint} sig={base64.b64encode(signature).decode()}"


def parse_anchor(line: str) -> Anchor:
    """One anchor line; raises ValueError if it is not ``POS:HASH [sig=BASE64]``."""
    text, _, rest = line.strip().partition(" ")
    signature = None
    if rest:
        if not rest.startswith("sig="):
            raise ValueError(f"not an anchor signature: {rest!r}")
        try:
            signature = base64.b64decode(rest.removeprefix("sig="), validate=True)
        except binascii.Error:
            raise ValueError(f"not an anchor signature: {rest!r}") from None
    return Anchor(Checkpoint.parse(text), signature)


def append_anchor(path: Path, checkpoint: Checkpoint, key: Ed25519PrivateKey | None = None) -> None:
    """Make ``checkpoint`` (signed with ``key`` when given) the anchor file's line: written
    to a temporary file, flushed, then renamed over the old one (mode 0600), so a reader
    sees the old line or the new, and the file never grows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{anchor_line(checkpoint, key)}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def read_signed_anchor(path: Path) -> Anchor | None:
    """The last complete line of an anchor file (a torn last line is skipped)."""
    lines = path.read_text().split("\n")
    for line in reversed(lines[:-1]):  # the part after the last newline is incomplete
        if line.strip():
            return parse_anchor(line)
    return None


def read_anchor(path: Path) -> Checkpoint | None:
    """The last complete checkpoint of an anchor file, its signature unchecked."""
    anchor = read_signed_anchor(path)
    return None if anchor is None else anchor.checkpoint


# The seals table ------------------------------------------------------------------------


def _table(d: Dialect) -> str:
    return d.beside(TABLE)


def ensure_ledger(recorder: ApplicationRecorder) -> None:
    """Create the seals table next to the events (idempotent)."""
    d = Dialect(recorder)
    integer = "INTEGER" if d.sqlite else "BIGINT"
    create_tables(
        recorder,
        f"CREATE TABLE IF NOT EXISTS {_table(d)} (position {integer} PRIMARY KEY, "
        f"aggregate_id TEXT NOT NULL, version {integer} NOT NULL, "
        "row_hash TEXT NOT NULL, running_hash TEXT NOT NULL)",
    )


def _seal_of(row: Any) -> Seal:
    return Seal(
        position=int(row["position"]),
        aggregate_id=str(row["aggregate_id"]),
        version=int(row["version"]),
        row_hash=str(row["row_hash"]),
        running_hash=str(row["running_hash"]),
    )


def _last_seal(cursor: Any, d: Dialect, lte: int | None = None) -> Seal | None:
    if lte is None:
        cursor.execute(f"SELECT * FROM {_table(d)} ORDER BY position DESC LIMIT 1")
    else:
        cursor.execute(
            f"SELECT * FROM {_table(d)} WHERE position<={d.mark} ORDER BY position DESC LIMIT 1",
            [lte],
        )
    row = cursor.fetchone()
    return _seal_of(row) if row else None


def _exists(cursor: Any, d: Dialect) -> bool:
    """False for a store written before seals existed (nothing sealed yet)."""
    if d.sqlite:
        cursor.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", [TABLE])
        return cursor.fetchone() is not None
    cursor.execute("SELECT to_regclass(%s) AS found", [_table(d)])
    return cursor.fetchone()["found"] is not None


def last_seal(recorder: ApplicationRecorder, lte: int | None = None) -> Seal | None:
    """The newest seal (at or before ``lte``), or None if nothing was sealed."""
    d = Dialect(recorder)
    with reading(recorder) as cursor:
        return _last_seal(cursor, d, lte) if _exists(cursor, d) else None


def select_seals(
    recorder: ApplicationRecorder, *, gt: int, limit: int, lte: int | None = None
) -> list[Seal]:
    """Seals after position ``gt`` (and at or before ``lte``), in position order."""
    d = Dialect(recorder)
    rows = fetch_where(
        recorder, f"* FROM {_table(d)}", [("position>", gt), ("position<=", lte)],
        order_by="position", limit=limit, ready=lambda cursor: _exists(cursor, d),
    )  # fmt: skip
    return [_seal_of(r) for r in rows]


class Checked(NamedTuple):
    """A row's verdict: why it must not be sealed (None if sound), its stored hash (the
    next version's expected ``prev_hash``) and its aggregate id in canonical text."""

    defect: str | None
    hash: str = ""
    aggregate_id: str = ""


_HEX32 = re.compile(r"[0-9a-f]{32}")
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_id(row: RawRow, sqlite: bool) -> str | None:
    """The row's aggregate id as canonical UUID text, or None if its stored key is not
    spelled as the recorder writes it (``uuid.hex`` on SQLite, canonical text on
    PostgreSQL: the same test as ``RawRow.key_in_recorder_form``, without building a
    UUID, which was a fifth of the sealer's time)."""
    key = row.key
    if not sqlite:
        return key if _CANONICAL.fullmatch(key) else None
    if not _HEX32.fullmatch(key):
        return None
    return f"{key[:8]}-{key[8:12]}-{key[12:16]}-{key[16:20]}-{key[20:]}"


def row_defect(row: RawRow, sqlite: bool, previous_hash: str | None) -> Checked:
    """Check a row from one decode of it. ``previous_hash`` is the stored hash of the
    aggregate's previous version (None if that row is missing)."""
    aggregate_id = canonical_id(row, sqlite)
    if aggregate_id is None:
        return Checked(f"originator_id {row.key!r} is not spelled as the recorder writes it")
    try:
        body = _body_decoder.decode(row.state)
        recomputed = hash_of_body(
            body, topic=row.topic, aggregate_id=aggregate_id, version=row.version
        )
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
        return Checked(f"the row does not decode: {error}")
    aggregate = row.topic.split(".", 1)[0]
    defect = None
    if row.topic != f"{aggregate}.{body.type}":
        defect = f"the topic {row.topic!r} does not name the event's type {body.type!r}"
    elif recomputed != body.hash:
        defect = "the row's content does not match its hash"
    elif aggregate == "command":
        if row.version != 1 or body.prev_hash != "":
            defect = "a dedup record must stand alone"
    elif previous_hash is None:
        defect = f"version {row.version - 1} of the aggregate is missing"
    elif body.prev_hash != previous_hash:
        defect = "prev_hash is not the hash of the aggregate's previous event"
    return Checked(defect, body.hash, aggregate_id)


#: Previous versions read per query (two parameters each, well under SQLite's limit).
_PREVIOUS_CHUNK = 200


#: How many aggregates' last checked hash a sealer remembers between steps.
KNOWN_MAX = 50_000


def _previous_hashes(
    cursor: Any, d: Dialect, rows: list[RawRow], known: dict[str, tuple[int, str]]
) -> dict[tuple[str, int], str]:
    """The stored hash of each row's previous version that neither this batch nor
    ``known`` holds, read in a few queries instead of one per row. A previous row that
    is missing or does not decode is left out (its successor is then unsound)."""
    in_batch = {(row.key, row.version) for row in rows}
    wanted = sorted(
        {
            (row.key, row.version - 1)
            for row in rows
            if row.version > 1
            and (row.key, row.version - 1) not in in_batch
            and known.get(row.key, (0, ""))[0] != row.version - 1
            and canonical_id(row, d.sqlite) is not None
        }
    )
    found: dict[tuple[str, int], str] = {}
    for start in range(0, len(wanted), _PREVIOUS_CHUNK):
        chunk = wanted[start : start + _PREVIOUS_CHUNK]
        pairs = " OR ".join(
            f"(originator_id={d.mark} AND originator_version={d.mark})" for _ in chunk
        )
        params: list[object] = []
        for key, version in chunk:
            params += [d.key(UUID(key)), version]
        cursor.execute(
            f"SELECT originator_id, originator_version, state FROM {d.table} WHERE {pairs}",
            params,
        )
        for r in cursor.fetchall():
            state = r["state"]
            try:
                body = _body_decoder.decode(state.encode() if isinstance(state, str) else state)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            found[(str(r["originator_id"]), int(r["originator_version"]))] = body.hash
    return found


class Sealed(Struct, kw_only=True, frozen=True):
    """What one sealing step did: how many rows it sealed, and the new head seal."""

    count: int
    head: Checkpoint


def seal_step(
    recorder: ApplicationRecorder,
    limit: int = 1000,
    known: dict[str, tuple[int, str]] | None = None,
) -> Sealed | None:
    """Seal the next ``limit`` unsealed events; returns how many and the new head, or
    None if there was nothing to seal.

    ``known`` (aggregate key -> version and hash of the last row this sealer checked) is
    kept by a caller that seals repeatedly, so the previous version of a row is rarely
    read again: that row was checked when it was sealed, and a later edit of it breaks
    its own seal, which ``verify`` reports. At most ``KNOWN_MAX`` entries are kept.

    Each row is checked first (``row_defect``); the seals before a defective row are
    committed, then ``UnsoundRow`` is raised for it, and every later call stops there.

    The rows and their previous versions are read together (``reading``) and checked
    outside any transaction; only the insert of the seals takes the write lock, so the
    command path never waits for the hashing. Seals are deterministic: if another
    sealer wrote the same positions meanwhile, the inserts are no-ops.
    """
    d = Dialect(recorder)
    m = d.mark
    with reading(recorder) as cursor:
        last = _last_seal(cursor, d)
        after = last.position if last else 0
        running = last.running_hash if last else GENESIS_HASH
        cursor.execute(
            f"SELECT {d.columns()} FROM {d.table} WHERE {d.position}>{m} "
            f"ORDER BY {d.position} LIMIT {m}",
            [after, limit],
        )
        rows = [raw_row(r) for r in cursor.fetchall()]
        known = {} if known is None else known
        previous = _previous_hashes(cursor, d, rows, known)
    unsound: UnsoundRow | None = None
    seals = []
    for row in rows:
        prev = GENESIS_HASH if row.version == 1 else previous.get((row.key, row.version - 1))
        if prev is None and (remembered := known.get(row.key)) and remembered[0] == row.version - 1:
            prev = remembered[1]
        checked = row_defect(row, d.sqlite, prev)
        if checked.defect is not None:
            unsound = UnsoundRow(row.position, checked.defect)
            break
        if not row.topic.startswith("command."):  # dedup records have no successor
            known.pop(row.key, None)
            known[row.key] = (row.version, checked.hash)
        digest = row_hash(row)
        running = next_running_hash(running, digest)
        seals.append((row.position, checked.aggregate_id, row.version, digest, running))
    for stale in list(itertools.islice(known, max(0, len(known) - KNOWN_MAX))):
        del known[stale]
    if seals:
        with transaction(recorder, commit=True) as cursor:
            insert_rows(
                cursor, d, _table(d), SEAL_COLUMNS, seals, "ON CONFLICT (position) DO NOTHING"
            )
    if unsound is not None:
        raise unsound
    if not seals:
        return None
    head = Checkpoint(position=int(seals[-1][0]), running_hash=str(seals[-1][4]))
    return Sealed(count=len(seals), head=head)


def seal_all(recorder: ApplicationRecorder, batch: int = 1000) -> int:
    """Seal up to the head; returns how many events were sealed. Raises ``UnsoundRow``
    (after sealing what comes before it) at the first row that does not verify."""
    ensure_ledger(recorder)
    total = 0
    while step := seal_step(recorder, batch):
        total += step.count
    return total
