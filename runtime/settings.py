"""Settings from ``CHORUS_*`` environment variables, overridable by command-line flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from chorus.gateway.edge import EdgeConfig

#: The HTTP edge's settings, handed to child processes as they are (JSON for lists/dicts).
EDGE_FIELDS = (
    "jwt_secret", "jwt_secret_path", "jwt_jwks", "jwt_issuer", "jwt_audience",
    "jwt_ttl_seconds", "jwt_leeway_seconds", "rate_limits", "rate_limit_storage",
    "session_quota", "cors_origins", "allowed_hosts",
)  # fmt: skip


class Settings(BaseSettings):
    """Everything configurable. Unset URLs are derived from ``data_dir`` (embedded mode)."""

    model_config = SettingsConfigDict(env_prefix="CHORUS_", extra="ignore")

    data_dir: Path = Path(".chorus")
    nats_url: str | None = Field(
        default=None, description="Use this NATS instead of starting an embedded nats-server"
    )
    nats_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of the embedded nats-server (default 4222 if free, then the last one)",
    )
    database_url: str | None = Field(
        default=None, description="Event store: sqlite:/// or postgresql://"
    )
    read_store_url: str | None = Field(
        default=None,
        description="Read models: sqlite:/// (default: <data_dir>/read.db) or "
        "postgresql://user:pw@host:port/db[?schema=name], which several gateways can share",
        pattern=r"^(sqlite:///|postgres(ql)?://)",
    )
    keys_path: Path | None = None
    audit_key_path: Path | None = Field(
        default=None,
        description="Ed25519 key that signs audit bundles (created by chorus audit keygen or chorus up)",
    )
    seal_anchor_path: Path | None = Field(
        default=None,
        description="One-line file outside the event store where the engine keeps the newest "
        "head seal "
        "(default <data_dir>/audit/seal-anchor); chorus audit verify checks the store against it",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    batch_max: int = Field(default=256, ge=1, le=10_000)
    batch_window_ms: float = Field(default=2.0, ge=0, le=1000)
    cache_size: int = Field(default=10_000, ge=0)
    engine_relay: bool = Field(
        default=True,
        description="The engine runs the relay and the sealer itself; chorus up sets it "
        "false and runs them as chorus relay, a process of their own",
    )
    background_nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description="chorus relay and chorus project lower their CPU priority by this "
        "much (os.nice): on a busy machine the engine's replies go first",
    )
    stream_replicas: int = Field(default=1, ge=1, le=5)
    partitions: int = Field(
        default=32,
        ge=0,
        le=1024,
        description="Command partitions shared out among the engine workers (the same on "
        "every engine of a deployment); 0: none, every engine decides what it takes",
    )
    partition_lease: float = Field(
        default=5.0,
        gt=0.5,
        le=300,
        description="Seconds after an engine's last heartbeat before the others take over "
        "its partitions",
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    request_read_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds an HTTP request (head and body) may take to arrive",
    )
    max_connections: int = Field(
        default=1000, ge=1, description="HTTP connections served at once; more get 503"
    )
    log_level: str = "WARNING"
    log_format: str = Field(
        default="json",
        pattern="^(json|text)$",
        description="json: one JSON object per line, with request and command ids; or text",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Split engine/projector: serve Prometheus metrics on this port",
    )
    heartbeat_interval: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds between an agent's heartbeats"
    )
    missed_heartbeats: int = Field(
        default=3, ge=1, le=1000, description="Missed heartbeats before an agent is offline"
    )
    workflow_types: Path | None = Field(
        default=None, description="TOML file of extra workflow types ([[workflow_types]])"
    )
    # The HTTP edge (gateway/edge.py says what each does).
    jwt_secret: str | None = Field(default=None, description="HS256 secret for JWTs")
    jwt_secret_path: Path | None = Field(
        default=None, description="File holding the HS256 secret (default <keys dir>/jwt.secret)"
    )
    jwt_jwks: str | None = Field(
        default=None, description="JWKS file or URL of an identity provider (RS256/ES256/EdDSA)"
    )
    jwt_issuer: str = "chorus"
    jwt_audience: str = "chorus"
    jwt_ttl_seconds: int = Field(default=900, ge=10, le=86_400)
    jwt_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    rate_limits: dict[str, str] = Field(
        default_factory=dict, description='Route class -> limit, e.g. {"workflows": "10/minute"}'
    )
    rate_limit_storage: str = "async+memory://"
    session_quota: int = Field(
        default=20, ge=0, description="Open sessions naming others one agent may hold (0: no bound)"
    )
    cors_origins: list[str] = Field(default_factory=list, description="CORS allow-list (off)")
    allowed_hosts: list[str] = Field(default_factory=lambda: ["*"])

    def resolved(self) -> Settings:
        """A copy with every derived default filled in, paths made absolute."""
        data_dir = self.data_dir.expanduser().resolve()
        return self.model_copy(
            update={
                "data_dir": data_dir,
                "database_url": self.database_url or f"sqlite:///{data_dir}/events.db",
                "read_store_url": self.read_store_url or f"sqlite:///{data_dir}/read.db",
                "keys_path": (self.keys_path or data_dir / "keys.db").expanduser().resolve(),
                "audit_key_path": (self.audit_key_path or data_dir / "audit" / "signing.key")
                .expanduser()
                .resolve(),
                "seal_anchor_path": (self.seal_anchor_path or data_dir / "audit" / "seal-anchor")
                .expanduser()
                .resolve(),
            }
        )

    def edge(self) -> EdgeConfig:
        """The gateway's edge configuration from these settings."""
        from chorus.gateway.edge import EdgeConfig

        s = self.resolved()
        return EdgeConfig(
            jwt_secret=s.jwt_secret,
            jwt_secret_path=str(s.jwt_secret_path) if s.jwt_secret_path else None,
            jwt_jwks=s.jwt_jwks,
            jwt_issuer=s.jwt_issuer,
            jwt_audience=s.jwt_audience,
            jwt_ttl_seconds=s.jwt_ttl_seconds,
            jwt_leeway_seconds=s.jwt_leeway_seconds,
            rate_limits=dict(s.rate_limits),
            rate_limit_storage=s.rate_limit_storage,
            session_quota=s.session_quota,
            cors_origins=tuple(s.cors_origins),
            allowed_hosts=tuple(s.allowed_hosts),
        )

    def child_env(self) -> dict[str, str]:
        """Environment that hands these settings to a child process."""
        s = self.resolved()
        env = {
            "CHORUS_DATA_DIR": str(s.data_dir),
            "CHORUS_DATABASE_URL": str(s.database_url),
            "CHORUS_READ_STORE_URL": str(s.read_store_url),
            "CHORUS_KEYS_PATH": str(s.keys_path),
            "CHORUS_AUDIT_KEY_PATH": str(s.audit_key_path),
            "CHORUS_SEAL_ANCHOR_PATH": str(s.seal_anchor_path),
            "CHORUS_HOST": s.host,
            "CHORUS_PORT": str(s.port),
            "CHORUS_BATCH_MAX": str(s.batch_max),
            "CHORUS_BATCH_WINDOW_MS": str(s.batch_window_ms),
            "CHORUS_CACHE_SIZE": str(s.cache_size),
            "CHORUS_STREAM_REPLICAS": str(s.stream_replicas),
            "CHORUS_BACKGROUND_NICE": str(s.background_nice),
            "CHORUS_PARTITIONS": str(s.partitions),
            "CHORUS_PARTITION_LEASE": str(s.partition_lease),
            "CHORUS_MAX_BODY_BYTES": str(s.max_body_bytes),
            "CHORUS_REQUEST_READ_TIMEOUT": str(s.request_read_timeout),
            "CHORUS_MAX_CONNECTIONS": str(s.max_connections),
            "CHORUS_LOG_LEVEL": s.log_level,
            "CHORUS_LOG_FORMAT": s.log_format,
            "CHORUS_HEARTBEAT_INTERVAL": str(s.heartbeat_interval),
            "CHORUS_MISSED_HEARTBEATS": str(s.missed_heartbeats),
        }
        if s.nats_url:
            env["CHORUS_NATS_URL"] = s.nats_url
        for name in EDGE_FIELDS:
            value = getattr(s, name)
            if value is not None:
                text = json.dumps(value) if isinstance(value, list | dict) else str(value)
                env[f"CHORUS_{name.upper()}"] = text
        if s.workflow_types:
            env["CHORUS_WORKFLOW_TYPES"] = str(s.workflow_types.expanduser().resolve())
        return env
