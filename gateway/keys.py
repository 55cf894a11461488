"""API keys: created by ``chorus keys create``, stored hashed, each bound to an actor and role.

A key looks like ``chk_<key id>_<secret>``; only sha256(secret) is stored, so a leaked
key file does not leak usable keys. The secret has 256 bits, so a plain hash suffices.
A key is also its holder's NATS credential (user ``<key id>``, password the key): the
bcrypt hash nats-server checks is stored beside it (runtime/busauth.py writes the users).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import bcrypt
from chorus.contracts.roles import ROLES, Role, name_problem
from chorus.sqlite_wal import use_wal
from msgspec import Struct

__all__ = ["ROLES", "KeyStore", "Principal", "Role"]

DDL = """CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    bus_hash TEXT
)"""


class Principal(Struct, frozen=True):
    """Who is calling: the actor every command is issued as, and their role."""

    actor: str
    role: str
    key_id: str
    #: ``key`` (an API key) or ``jwt``; only API keys may be exchanged for tokens.
    via: str = "key"
    #: Unix time after which the credential is no longer valid (tokens only).
    expires_at: float | None = None


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute(DDL)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
            if "bus_hash" not in columns:  # a store from before keys were bus credentials
                conn.execute("ALTER TABLE api_keys ADD COLUMN bus_hash TEXT")
        # Hashes only, but still nobody else's business (the umask covers the WAL files).
        path.chmod(0o600)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30)
        use_wal(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        """This thread's connection for lookups, opened once. Lookups sit on hot paths
        (the engine's writer thread asks for an actor's roles; every request with a key
        authenticates): opening a connection and setting WAL each time cost the engine
        2% of its samples in a profile, on the thread every batch waits for. A query
        outside a transaction sees the latest committed keys, so a revocation counts
        at the next lookup as before."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30)
            self._local.conn = conn
        return conn

    def create(self, actor: str, role: str) -> str:
        """Store a new key and return it; it is shown once and never stored in the clear."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        problem = name_problem(actor)
        if problem is not None:
            raise ValueError(f"actor: {problem}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        key = f"chk_{key_id}_{secret}"
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL, ?)",
                (key_id, _hash(secret), actor, role, datetime.now(UTC).isoformat(),
                 _bus_hash(key)),
            )  # fmt: skip
        return key

    def authenticate(self, key: str) -> Principal | None:
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != "chk":
            return None
        _, key_id, secret = parts
        row = (
            self._reader()
            .execute(
                "SELECT secret_hash, actor, role FROM api_keys WHERE key_id=? AND revoked_at IS NULL",
                (key_id,),
            )
            .fetchone()
        )
        if row is None or not hmac.compare_digest(row[0], _hash(secret)):
            return None
        return Principal(actor=row[1], role=row[2], key_id=key_id)

    def has_role(self, actor: str, roles: tuple[str, ...]) -> bool:
        """Whether ``actor`` holds an active key with one of ``roles``."""
        marks = ",".join("?" * len(roles))
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT 1 FROM api_keys WHERE actor=? AND role IN ({marks}) "
                "AND revoked_at IS NULL LIMIT 1",
                (actor, *roles),
            ).fetchone()
        return row is not None

    def revoked_ids(self) -> set[str]:
        """Ids of every revoked key: what tokens and open WebSockets are checked against."""
        with self._connect() as conn:
            rows = conn.execute("SELECT key_id FROM api_keys WHERE revoked_at IS NOT NULL")
            return {row[0] for row in rows}

    def roles_of(self, actor: str) -> frozenset[str] | None:
        """The roles of ``actor``'s active keys; None if it never held a key."""
        rows = (
            self._reader()
            .execute("SELECT role, revoked_at IS NULL FROM api_keys WHERE actor=?", (actor,))
            .fetchall()
        )
        if not rows:
            return None
        return frozenset(role for role, active in rows if active)

    def bus_users(self) -> list[tuple[str, str, str, str]]:
        """``(key_id, actor, role, bus_hash)`` of every active key that is a bus credential
        (keys created before keys were bus credentials have none)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT key_id, actor, role, bus_hash FROM api_keys "
                "WHERE revoked_at IS NULL AND bus_hash IS NOT NULL ORDER BY key_id"
            ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def revoke(self, key_id: str) -> bool:
        with self._connect() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at=? WHERE key_id=? AND revoked_at IS NULL",
                (datetime.now(UTC).isoformat(), key_id),
            )
        return cur.rowcount > 0

    def count(self, role: str | None = None) -> int:
        with self._connect() as conn:
            if role is None:
                return int(conn.execute("SELECT count(*) FROM api_keys").fetchone()[0])
            return int(
                conn.execute(
                    "SELECT count(*) FROM api_keys WHERE role=? AND revoked_at IS NULL", (role,)
                ).fetchone()[0]
            )


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _bus_hash(key: str) -> str:
    """The key as a NATS password: nats-server checks bcrypt hashes. The key holds 256
    random bits, so the lowest cost is as safe as any and keeps connecting cheap."""
    return bcrypt.hashpw(key.encode(), bcrypt.gensalt(rounds=4)).decode()
