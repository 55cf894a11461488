"""How the benches build what they measure: through ``chorus.bootstrap``, as a deployment.

An in-process engine here differs from a deployment's only where a bench must: no session
quota (one coordinator opens every session) and no seal anchor file; the tests' ``engine``
fixture does the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chorus.bootstrap import Components, EngineService, bootstrap
from chorus.settings import Settings

ENGINE_DEFAULTS: dict[str, Any] = {
    "session_quota": 0, "seal_anchor_path": None, "audit_key_path": None,
}  # fmt: skip


def components(work: Path, **settings: Any) -> Components:
    """The bench's deployment, its files in ``work``."""
    return bootstrap(Settings(data_dir=work, **settings))


def engine(work: Path, nats_url: str, database_url: str, **options: Any) -> EngineService:
    """An engine (not started) on ``nats_url`` and ``database_url``; ``options`` are
    ``EngineConfig`` fields."""
    wired = components(work, nats_url=nats_url, database_url=database_url)
    return wired.engine(**(ENGINE_DEFAULTS | options))
