"""The ``chorus`` command: ``up`` (embedded), split processes, keys, schema export."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType


def _stop_while_starting(signum: int, frame: FrameType | None) -> None:
    """SIGTERM before a process has installed its own handlers is still a clean stop.

    A supervisor (or a test) may stop a child the moment it spawned it; without this the
    default action kills it mid-import with -15, which reads as a crash. Every long-running
    command replaces this handler with its own once its event loop runs.
    """
    raise SystemExit(0)


if __name__ == "__main__":  # as early as possible when run as ``python -m chorus.cli``
    signal.signal(signal.SIGTERM, _stop_while_starting)

from chorus.logs import configure_logging  # noqa: E402
from chorus.settings import Settings  # noqa: E402


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        k: v
        for k, v in {
            "data_dir": getattr(args, "data_dir", None),
            "nats_url": getattr(args, "nats_url", None),
            "database_url": getattr(args, "database_url", None),
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "workflow_types": getattr(args, "workflow_types", None),
            "nats_port": getattr(args, "nats_port", None),
        }.items()
        if v is not None
    }
    return Settings(**overrides)


def missing_store(settings: Settings, init: bool) -> str | None:
    """Commands that act on an existing deployment say which data dir they use, and refuse
    one that holds nothing (run from the wrong directory, they would otherwise create a
    fresh ``./.chorus`` and print a key the running gateway rejects)."""
    s = settings.resolved()
    print(f"chorus: data dir {s.data_dir}", file=sys.stderr)
    if init:
        return None
    stores = [Path(str(s.keys_path))]
    url = str(s.database_url)
    if url.startswith("sqlite:///"):
        stores.append(Path(url.removeprefix("sqlite:///")))
    else:
        return None  # a database server: it exists or the command says why
    if any(path.exists() for path in stores):
        return None
    return (
        f"chorus: {s.data_dir} holds no Chorus store (no {stores[-1].name}, no "
        f"{stores[0].name}); pass the --data-dir of your chorus up, or --init to start a new one"
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, help="where embedded data lives (default ./.chorus)"
    )
    parser.add_argument("--nats-url", help="NATS to use (env CHORUS_NATS_URL)")
    parser.add_argument("--database-url", help="event store URL (env CHORUS_DATABASE_URL)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chorus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run everything on this machine (embedded nats-server, SQLite)")
    _common(up)
    up.add_argument("--host", help="gateway bind address (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="gateway port (default 8000)")
    up.add_argument("--workflow-types", type=Path, help="TOML file of extra workflow types")
    up.add_argument(
        "--nats-port", type=int, help="embedded nats-server port (default 4222 if free)"
    )
    up.add_argument("--demo", action="store_true", help="also run a demo fleet of agents")

    cluster = sub.add_parser(
        "cluster", help="run the scale-out layout here: 3 NATS nodes, 2 engines, 2 gateways"
    )
    _common(cluster)
    cluster.add_argument("--host", help="gateway bind address (default 127.0.0.1)")
    cluster.add_argument("--port", type=int, help="first gateway's port (default 8000)")
    cluster.add_argument("--engines", type=int, default=2, help="engine processes (default 2)")
    cluster.add_argument("--gateways", type=int, default=2, help="gateway processes (default 2)")
    cluster.add_argument("--nodes", type=int, default=3, help="nats-server nodes (default 3)")

    for name, text in (
        ("engine", "run command workers, timers and the relay"),
        ("relay", "run the relay and the sealer alone (beside CHORUS_ENGINE_RELAY=false)"),
        ("gateway", "run the HTTP/WebSocket gateway"),
    ):
        p = sub.add_parser(name, help=text)
        _common(p)
        if name == "gateway":
            p.add_argument("--host")
            p.add_argument("--port", type=int)
            p.add_argument("--workflow-types", type=Path)

    project = sub.add_parser("project", help="run the projector, or rebuild read models")
    _common(project)
    project.add_argument("--rebuild", action="store_true", help="rebuild from position 0 and exit")
    project.add_argument("names", nargs="*", help="read models to rebuild (default: all)")
    project.add_argument("--read-store-url", help="rebuild into this read store instead")
    project.add_argument(
        "--init", action="store_true", help="rebuild even if the data dir has no event store yet"
    )

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--actor", required=True)
    create.add_argument("--role", required=True, choices=["agent", "operator", "auditor", "admin"])
    create.add_argument("--data-dir", type=Path)
    create.add_argument(
        "--init", action="store_true", help="create the data dir's key store if it has none"
    )
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id (chk_<id>_...)")
    revoke.add_argument("key_id")
    revoke.add_argument("--data-dir", type=Path)

    bus = sub.add_parser("bus", help="the NATS users of a deployment whose nodes run elsewhere")
    bus_sub = bus.add_subparsers(dest="bus_command", required=True)
    users = bus_sub.add_parser(
        "users",
        help="write users.conf (one NATS user per API key and per service) and routes.conf "
        "(the routes' secret) for a cluster's nodes to include (compose.yaml); the services' "
        "passwords from CHORUS_ENGINE_PASSWORD and CHORUS_GATEWAY_PASSWORD",
    )
    users.add_argument("--keys", type=Path, required=True, help="the key store (keys.db)")
    users.add_argument("--out", type=Path, required=True, help="the directory the nodes include")
    users.add_argument(
        "--route", action="append", default=[], metavar="HOST:PORT",
        help="a node's route address (once per node)",
    )  # fmt: skip

    from chorus import audit_commands as audit

    audit.add_parser(sub, _common)

    from chorus import agent_cli

    agent_cli.add_parsers(sub)
    mcp = sub.add_parser("mcp", help="serve MCP on stdin/stdout as the actor of CHORUS_API_KEY")
    _common(mcp)
    mcp.add_argument("--key", help="your API key, also your bus credential (env CHORUS_API_KEY)")

    schema = sub.add_parser("schema", help="write JSON Schema and AsyncAPI of the bus contracts")
    schema.add_argument("--out", type=Path, default=Path("schema"))
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the ``chorus`` command itself, not a caller in-process
        signal.signal(signal.SIGTERM, _stop_while_starting)
    from chorus.permissions import private_umask

    private_umask()  # before anything is created: data files 0600, directories 0700
    args = build_parser().parse_args(argv)
    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    match args.command:
        case "up":
            from chorus.supervisor import run_up

            return run_up(settings, demo=args.demo)
        case "cluster":
            from chorus.cluster import ClusterLayout, run_cluster

            return run_cluster(
                settings, ClusterLayout(nodes=args.nodes, engines=args.engines,
                                        gateways=args.gateways),
            )  # fmt: skip
        case "engine":
            from chorus.processes import run_engine

            run_engine(settings)
        case "relay":
            from chorus.processes import run_engine

            run_engine(settings, relay_only=True)
        case "gateway":
            from chorus.processes import run_gateway

            run_gateway(settings)
        case "project":
            from chorus.processes import run_projector

            if args.rebuild:
                if problem := missing_store(settings, args.init):
                    print(problem, file=sys.stderr)
                    return 2
                from chorus.bootstrap import bootstrap
                from chorus.progress import replay_progress
                from chorus.projections.runner import rebuild_together

                with replay_progress() as track:
                    components = bootstrap(settings)
                    runners = components.projection_runners(args.names, args.read_store_url)
                    started = time.monotonic()
                    count = rebuild_together(runners, [track(r.projection.name) for r in runners])
                    elapsed = time.monotonic() - started
                    for runner in runners:
                        print(
                            f"rebuilt {runner.projection.name}: {count} notifications in "
                            f"{elapsed:.2f}s (one scan for all), position {runner.position}"
                        )
            else:
                run_projector(settings)
        case "keys":
            from chorus import busauth
            from chorus.gateway.keys import KeyStore

            if problem := missing_store(settings, getattr(args, "init", False)):
                print(problem, file=sys.stderr)
                return 2
            resolved = settings.resolved()
            keys_path = Path(str(resolved.keys_path))
            nats_dir = resolved.data_dir / "nats"
            store = KeyStore(keys_path)
            if args.keys_command == "create":
                try:
                    key = store.create(args.actor, args.role)
                except ValueError as error:
                    print(f"chorus: {error}", file=sys.stderr)
                    return 2
                busauth.sync(nats_dir, keys_path)  # the embedded bus lets it in now
                print(key)  # stdout: the key alone, so KEY=$(chorus keys create ...) works
                if args.role in busauth.BUS_ROLES:
                    print(busauth.credentials_text(key, args.actor, nats_dir), file=sys.stderr)
            else:
                if not store.revoke(args.key_id):
                    print(f"chorus: no active key {args.key_id}", file=sys.stderr)
                    return 1
                # Reloading the embedded server closes the key's bus connections at once.
                busauth.sync(nats_dir, keys_path)
                print(f"revoked {args.key_id}")
        case "bus":
            from chorus import busauth

            missing = [env for env in busauth.PASSWORD_ENV.values() if not os.environ.get(env)]
            if missing:
                print(f"chorus: set {' and '.join(missing)} (no default)", file=sys.stderr)
                return 2
            passwords = {name: os.environ[env] for name, env in busauth.PASSWORD_ENV.items()}
            for path in busauth.write_deployment(args.out, args.keys, passwords, args.route):
                print(path)
        case "audit":
            from chorus import audit_commands as audit

            return audit.run(args, settings)
        case "agent":
            from chorus import agent_cli

            return agent_cli.run_agent(args, settings)
        case "demo":
            from chorus import agent_cli

            return agent_cli.run_demo(settings)
        case "mcp":
            from chorus.mcp import run_mcp

            return run_mcp(settings, args.key)
        case "schema":
            from chorus.schema import write_schema

            for path in write_schema(args.out):
                print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
