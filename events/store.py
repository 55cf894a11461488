"""Opening the event store (an eventsourcing application recorder) from a database URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from eventsourcing.persistence import ApplicationRecorder, InfrastructureFactory


def recorder_env(database_url: str) -> dict[str, str]:
    """eventsourcing settings for ``sqlite:///path`` or ``postgresql://user:pw@host:port/db``."""
    url = urlparse(database_url)
    if url.scheme == "sqlite":
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db
        path = unquote(database_url.split("://", 1)[1][1:])
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": path,
            "SQLITE_LOCK_TIMEOUT": "10",
        }
    if url.scheme in ("postgres", "postgresql"):
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": url.path.lstrip("/"),
            "POSTGRES_HOST": url.hostname or "localhost",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": unquote(url.username or ""),
            "POSTGRES_PASSWORD": unquote(url.password or ""),
        }
    raise ValueError(f"unsupported database URL {database_url!r} (use sqlite:/// or postgresql://)")


def open_recorder(database_url: str) -> ApplicationRecorder:
    """The application recorder: events, the notification log and optimistic concurrency."""
    factory = InfrastructureFactory.construct(recorder_env(database_url))
    return factory.application_recorder()
