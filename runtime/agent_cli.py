"""The ``chorus agent`` and ``chorus demo`` commands: their arguments and how they connect.

Kept apart from the SDK so that every other ``chorus`` command starts without importing
it (FastStream and the worker load only when an agent runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from chorus.settings import Settings

AGENT_PROTOCOL = """\
CMD runs once per task. stdin: the task as JSON (kind, task_id, attempt, phase,
requirements, inputs, ...). stdout: one JSON object per line: {"progress": n} and
{"partial": {...}} are reported, {"result": {...}} is the result (the last one wins);
other lines are passed through. Exit status 0 completes the phase with the result (no
result line: {"output": <stdout tail>}); any other status fails it with the stderr tail.
The task's lease bounds the run (the process group is killed at its expiry or on cancel).
The child sees CHORUS_AGENT_ID, CHORUS_TASK_ID and CHORUS_TASK_ATTEMPT.
"""


def add_parsers(sub: Any) -> None:
    agent = sub.add_parser(
        "agent",
        help="run a command as an agent: once per task, with the task as JSON on stdin",
        epilog=AGENT_PROTOCOL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    agent.add_argument("--name", required=True, help="the agent's id (its actor on the bus)")
    agent.add_argument("--capabilities", default="", help="comma-separated, e.g. python,review")
    agent.add_argument("--concurrency", type=int, default=1, help="tasks at once (default 1)")
    agent.add_argument("--type", default="command", help="agent type (default command)")
    agent.add_argument(
        "--key", default=os.environ.get("CHORUS_API_KEY"),
        help="the agent's API key, also its bus credential (env CHORUS_API_KEY)",
    )  # fmt: skip
    agent.add_argument(
        "--drain-seconds", type=float, default=30.0,
        help="on SIGTERM, let running tasks finish this long, then hand them back",
    )  # fmt: skip
    demo = sub.add_parser(
        "demo", help="run the demo fleet of agents against a running Chorus (as up --demo does)"
    )
    for parser in (agent, demo):
        parser.add_argument("--nats-url", help="NATS to use (env CHORUS_NATS_URL)")
        parser.add_argument(
            "--data-dir", type=Path, help="else the NATS of chorus up here (default ./.chorus)"
        )
    agent.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")


def run_agent(args: argparse.Namespace, settings: Settings) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        return fail("chorus agent: give the command to run after --")
    if args.concurrency < 1:
        return fail("chorus agent: --concurrency must be at least 1")
    url = nats_url(settings)
    if url is None:
        return fail(NO_NATS.format(command="agent"))
    from chorus.agent_command import serve_command

    capabilities = [c.strip() for c in args.capabilities.split(",") if c.strip()]
    return serve_command(
        url, args.name, argv, capabilities=capabilities, concurrency=args.concurrency,
        agent_type=args.type, heartbeat_interval=settings.heartbeat_interval,
        drain_timeout=args.drain_seconds, key=args.key,
    )  # fmt: skip


def run_demo(settings: Settings) -> int:
    url = nats_url(settings)
    if url is None:
        return fail(NO_NATS.format(command="demo"))
    from chorus.agent_demo import run_fleet

    return run_fleet(url, heartbeat_interval=settings.heartbeat_interval)


NO_NATS = (
    "chorus {command}: no NATS to connect to: pass --nats-url (or set CHORUS_NATS_URL), or "
    "run it where chorus up runs (--data-dir)"
)


def fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def nats_url(settings: Settings) -> str | None:
    """The configured NATS, else the embedded one of the data dir."""
    return settings.nats_url or embedded_nats_url(settings.resolved().data_dir)


def embedded_nats_url(data_dir: Path) -> str | None:
    """The URL (with its token) of the nats-server that ``chorus up`` runs for ``data_dir``."""
    nats_dir = data_dir / "nats"
    ports = sorted((nats_dir / "ports").glob("*.ports"), key=lambda p: p.stat().st_mtime)
    if not ports:
        return None
    try:
        url = str(json.loads(ports[-1].read_text())["nats"][0])
    except (OSError, ValueError, KeyError, IndexError):
        return None
    token_file = nats_dir / "token"
    if token_file.exists():
        url = url.replace("nats://", f"nats://{token_file.read_text().strip()}@", 1)
    return url
