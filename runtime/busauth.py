"""Bus identity for the embedded nats-server: one NATS user per API key and per service.

Chosen over an auth-callout service: the key store is small and changes only when an
admin runs ``chorus keys``, so the server's own config (users with bcrypt passwords and
subject permissions) regenerated from the store and reloaded with SIGHUP is enough. It has
no extra process on the connect path (a callout service down means nobody connects), and a
reload re-checks every open connection, so a revoked key's connections are closed at once.
Its limit: one config per deployment, so a cluster whose servers do not share a data
directory has it written where they all include it: ``chorus bus users`` (compose.yaml's
``nats-users`` service, ``write_deployment``) renders the same users from the key store,
with the services' passwords the deployment chose, and the routes' secret.

Each API key (agent, operator, admin) is a NATS user named by its key id, whose password is
the API key itself (only its bcrypt hash is written). Its rights, for actor ``A``:

- publish only ``chorus.cmd.A.>`` (commands and heartbeats as itself), and reply to what
  it received (``allow_responses``: pings, tasks);
- subscribe only its task inbox ``chorus.task.A``, its ``chorus.agent.A.>`` (pings) and its
  own reply inbox ``_INBOX_A.>`` (nats-py: ``inbox_prefix="_INBOX_A"``).

So it cannot act as another actor, read anyone's commands or replies, join the engine's
queue group, answer commands, or publish events and dead letters. Auditors get no bus user
(they read over HTTP). The engine and the gateway have service users with the least their
work needs; passwords are random and kept in ``services.json`` (mode 0600).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import bcrypt
from chorus.contracts.subjects import (
    COMMITTED,
    DLQ_STREAM,
    EVENTS_STREAM,
    LIVENESS_BUCKET,
    PART_PREFIX,
    PARTITIONS_BUCKET,
    TOOL_CALLS,
    agent_inbox_prefix,
)
from chorus.gateway.keys import KeyStore

SERVICES = {"engine": "chorus-engine", "gateway": "chorus-gateway", "demo": "chorus-demo"}
#: The example agents ``chorus up --demo`` runs (runtime/agent_demo.py).
DEMO_FLEET = ("demo-1", "demo-2", "demo-3")
#: API roles that get a bus user.
BUS_ROLES = frozenset({"agent", "operator", "admin"})
#: The engine-only subjects where a partition's owner takes commands passed on to it.
PARTITION_SUBJECTS = f"{PART_PREFIX}.>"
CONFIG_NAME = "users.conf"  # not auth.conf: the token mode of runtime.natsd writes that
#: A cluster's routes (``write_deployment``): included inside each node's ``cluster`` block.
ROUTES_NAME = "routes.conf"
ROUTE_SECRET_NAME = "route.secret"  # noqa: S105 (a file name)
ROUTE_USER = "route"
#: Where ``chorus bus users`` reads the services' passwords a deployment chose (compose.yaml
#: gives the same to the engines' and the gateways' ``CHORUS_NATS_URL``).
PASSWORD_ENV = {"engine": "CHORUS_ENGINE_PASSWORD", "gateway": "CHORUS_GATEWAY_PASSWORD"}

#: The JetStream API the gateway's reads need (feeds, health, the liveness bucket).
GATEWAY_JS_READS = [
    "$JS.API.INFO", "$JS.API.STREAM.NAMES",
    *(f"$JS.API.{api}.{stream}" for api in ("STREAM.INFO", "STREAM.MSG.GET", "DIRECT.GET")
      for stream in ("EVENTS", "KV_chorus_liveness")),
    "$JS.API.DIRECT.GET.EVENTS.>", "$JS.API.DIRECT.GET.KV_chorus_liveness.>",
    "$JS.API.CONSUMER.CREATE.EVENTS", "$JS.API.CONSUMER.CREATE.EVENTS.>",
    "$JS.API.CONSUMER.DELETE.EVENTS.*", "$JS.API.CONSUMER.INFO.EVENTS.*",
    "$JS.FC.>", "$JS.ACK.EVENTS.>",
]  # fmt: skip

#: The JetStream API the engine needs, on its own streams only: create or update EVENTS,
#: DLQ and the liveness bucket at start, read their info, the relay's last-message check
#: and the bucket's reads. No delete, purge or consumer on anything, and nothing on a
#: stream it does not own.
_ENGINE_BUCKETS = (f"KV_{LIVENESS_BUCKET}", f"KV_{PARTITIONS_BUCKET}")
_ENGINE_STREAMS = (EVENTS_STREAM, DLQ_STREAM, *_ENGINE_BUCKETS)
ENGINE_JS_API = [
    "$JS.API.INFO",
    *(f"$JS.API.STREAM.{api}.{stream}" for api in ("CREATE", "UPDATE", "INFO", "MSG.GET")
      for stream in _ENGINE_STREAMS),
    *(f"$JS.API.DIRECT.GET.{stream}{tail}" for stream in (EVENTS_STREAM, *_ENGINE_BUCKETS)
      for tail in ("", ".>")),
]  # fmt: skip

SERVICE_PERMISSIONS: dict[str, dict[str, Any]] = {
    # Takes every command (queue group), replies, publishes events, dead letters and
    # tasks, keeps heartbeats in the liveness bucket, creates and updates its own streams.
    # Only engines pass commands on to a partition's owner (chorus.part.>), write the
    # partition table and signal their commits (chorus.engine.committed, which a relay
    # process listens to): no other user may publish or listen there.
    "engine": {
        "publish": {
            "allow": [
                "chorus.evt.>",
                "chorus.dlq.>",
                "chorus.task.>",
                PARTITION_SUBJECTS,
                COMMITTED,
                *ENGINE_JS_API,
                f"$KV.{LIVENESS_BUCKET}.>",
                f"$KV.{PARTITIONS_BUCKET}.>",
            ]
        },
        "subscribe": {"allow": ["chorus.cmd.>", PARTITION_SUBJECTS, COMMITTED, "_INBOX.>"]},
        "allow_responses": True,
    },
    # Publishes commands for the HTTP caller it authenticated, pings agents, reads the
    # EVENTS stream (ordered consumers deliver to its inbox) and the liveness bucket; it
    # cannot create, change or delete a stream. It answers tool calls (chorus.cmd.*.tool.call,
    # queue group chorus-tools), which the engine leaves alone.
    "gateway": {
        "publish": {"allow": ["chorus.cmd.>", "chorus.agent.*.ping", *GATEWAY_JS_READS]},
        "subscribe": {"allow": ["_INBOX.>", TOOL_CALLS]},
        "allow_responses": True,
    },
    # The demo fleet of `chorus up --demo`: its agents act only as themselves. It shares
    # one user and the plain reply inbox: a demo, not a deployment.
    "demo": {
        "publish": {"allow": [f"chorus.cmd.{a}.>" for a in DEMO_FLEET]},
        "subscribe": {"allow": ["_INBOX.>", *(f"chorus.task.{a}" for a in DEMO_FLEET),
                                *(f"chorus.task.{a}.>" for a in DEMO_FLEET),
                                *(f"chorus.agent.{a}.>" for a in DEMO_FLEET)]},
        "allow_responses": True,
    },
}  # fmt: skip


def actor_permissions(actor: str) -> dict[str, Any]:
    """What one key holder may do on the bus (see the module docstring)."""
    return {
        "publish": {"allow": [f"chorus.cmd.{actor}.>"]},
        "subscribe": {"allow": [f"chorus.task.{actor}", f"chorus.task.{actor}.>",
                                f"chorus.agent.{actor}.>", f"{agent_inbox_prefix(actor)}.>"]},
        "allow_responses": True,
    }  # fmt: skip


def service_passwords(nats_dir: Path) -> dict[str, str]:
    """The services' random passwords, created once (mode 0600)."""
    path = nats_dir / "services.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        if set(SERVICES) <= set(stored):
            return stored
    passwords = {name: secrets.token_urlsafe(24) for name in SERVICES}
    _write_private(path, json.dumps(passwords))
    return passwords


def render_config(passwords: dict[str, str], store: KeyStore) -> str:
    """The ``authorization`` block: the users of the services in ``passwords`` (a password
    may be a bcrypt hash), then one user per active key."""
    users: list[dict[str, Any]] = [
        {"user": SERVICES[name], "password": passwords[name],
         "permissions": SERVICE_PERMISSIONS[name]}
        for name in SERVICES if name in passwords
    ]  # fmt: skip
    for key_id, actor, role, bus_hash in store.bus_users():
        if role in BUS_ROLES:
            users.append(
                {"user": key_id, "password": bus_hash, "permissions": actor_permissions(actor)}
            )
    # NATS config accepts JSON values; quoted strings keep bcrypt's '$' literal.
    return "authorization: " + json.dumps({"users": users}, indent=1) + "\n"


def write_config(nats_dir: Path, keys_path: Path) -> Path:
    """(Re)write ``users.conf`` from the key store, atomically, mode 0600."""
    nats_dir.mkdir(parents=True, exist_ok=True)
    path = nats_dir / CONFIG_NAME
    _write_private(path, render_config(service_passwords(nats_dir), KeyStore(keys_path)))
    return path


def route_secret(nats_dir: Path) -> str:
    """The secret of the routes between a cluster's nodes, created once (mode 0600) and
    kept: a node restarted later presents the same and rejoins."""
    path = nats_dir / ROUTE_SECRET_NAME
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(24)
    _write_private(path, secret)
    return secret


def render_routes(secret: str, routes: list[str]) -> str:
    """The inside of a node's ``cluster`` block: the user every route must present (a
    route sees every message, so an open route port would bypass every user's
    permissions), and this node's routes to every node (``host:port``), presenting it.
    nats-server does not lend a route its ``authorization`` user: each URL carries it."""
    credentials = f"{ROUTE_USER}:{quote(secret, safe='')}@"
    urls = [f"nats-route://{credentials}{route}" for route in routes]
    authorization = {"user": ROUTE_USER, "password": secret}
    return f"authorization: {json.dumps(authorization)}\nroutes: {json.dumps(urls, indent=1)}\n"


def write_deployment(
    out_dir: Path, keys_path: Path, passwords: dict[str, str], routes: list[str]
) -> list[Path]:
    """What every node of a cluster includes (compose.yaml's ``nats.conf``), in ``out_dir``:
    ``users.conf`` from the key store, with the services' ``passwords`` (chosen by the
    deployment, written as bcrypt hashes), and ``routes.conf``, with the routes' secret
    (``route.secret``, created once). Run again after ``chorus keys create`` or ``revoke``,
    then reload the nodes (SIGHUP)."""
    hashed = {name: _service_hash(password) for name, password in passwords.items()}
    users, cluster = out_dir / CONFIG_NAME, out_dir / ROUTES_NAME
    _write_private(users, render_config(hashed, KeyStore(keys_path)))
    _write_private(cluster, render_routes(route_secret(out_dir), routes))
    return [users, cluster]


def _service_hash(password: str) -> str:
    """A service's password as nats-server checks it. Unlike a key, a deployment's own
    password may be short, so the cost is bcrypt's usual range; a service connects once
    (and again after losing its node), so each node pays it rarely."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()


def _ports_files(nats_dir: Path) -> list[Path]:
    """The ports files of this data directory's servers: the embedded one's, and each
    node's of ``chorus cluster`` (a directory of its own under ``nats_dir``)."""
    return sorted([*(nats_dir / "ports").glob("nats-server_*.ports"),
                   *nats_dir.glob("*/ports/nats-server_*.ports")])  # fmt: skip


def reload(nats_dir: Path) -> int:
    """Ask every running server of this data directory to reload its config (SIGHUP): new
    keys can connect, revoked keys' connections are closed. Returns how many it signalled."""
    signalled = 0
    for ports in _ports_files(nats_dir):
        try:
            pid = int(ports.stem.rsplit("_", 1)[1])
            os.kill(pid, signal.SIGHUP)
            signalled += 1
        except (ValueError, ProcessLookupError, PermissionError):
            continue
    return signalled


def sync(nats_dir: Path, keys_path: Path) -> int:
    """Write the config from the key store, then reload the running server(s), if any."""
    write_config(nats_dir, keys_path)
    return reload(nats_dir)


def service_url(url: str, service: str, nats_dir: Path) -> str:
    """``url`` with the service user's credentials in it (each child process gets its own)."""
    password = service_passwords(nats_dir)[service]
    parts = urlsplit(url)
    netloc = f"{SERVICES[service]}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def running_url(nats_dir: Path) -> str | None:
    """The client URL of this data directory's running server (no credentials), if any."""
    for ports in _ports_files(nats_dir):
        try:
            pid = int(ports.stem.rsplit("_", 1)[1])
            os.kill(pid, 0)
            return str(json.loads(ports.read_text())["nats"][0])
        except (ValueError, OSError, KeyError, IndexError):
            continue
    return None


def credentials_text(key: str, actor: str, nats_dir: Path) -> str:
    """What an agent needs on the bus, for ``chorus keys create`` to print."""
    url = running_url(nats_dir) or "the NATS URL of your deployment (no secret in it)"
    prefix = agent_inbox_prefix(actor)
    return "\n".join([
        "NATS credentials (this key is also the bus credential of its actor):",
        f"  url       {url}",
        f"  user      {key.split('_')[1]}",
        "  password  the key above",
        f"  inbox     {prefix}  (nats-py: nats.connect(url, user=..., password=...,"
        f' inbox_prefix="{prefix}"))',
        f"  publish   chorus.cmd.{actor}.>  subscribe  chorus.task.{actor},"
        f" chorus.agent.{actor}.>, {prefix}.>",
    ])  # fmt: skip


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
