"""``chorus agent -- CMD ARGS...``: any program is an agent.

The SDK worker takes the agent's tasks; each one runs CMD once, as a child process:

- stdin: the task message as JSON (the same object the inbox carries: ``kind``,
  ``task_id``, ``phase``, ``requirements``, ``inputs``, ...), then end of file;
- stdout: one JSON object per line. ``{"progress": n}`` reports the phase's progress,
  ``{"partial": {...}}`` records a partial result, ``{"result": {...}}`` is the result (the
  last one wins). Other lines are passed through to this command's stdout;
- exit status 0 completes the phase with the result (no result line: ``{"output": <the
  stdout tail>}``); any other status fails it with the tail of stderr;
- the task's lease bounds the run: at its expiry, on a ``cancel`` message, or when the agent
  stops without finishing, the child's process group is killed;
- while the child runs, its last progress is reported again as often as a phase's
  ``heartbeat_seconds`` asks, so a program need not print to keep its lease.

The child's environment is this one's plus ``CHORUS_AGENT_ID``, ``CHORUS_TASK_ID`` and
``CHORUS_TASK_ATTEMPT``. The agent connects like every Chorus client: ``--nats-url`` /
``CHORUS_NATS_URL``, else the embedded server of ``--data-dir`` (what ``chorus up`` in that
directory started, with its token).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections import deque
from typing import Any

from chorus.agent_sdk import AgentClient
from chorus.agent_worker import CommandRejected, Task, TaskContext, TaskFailed
from chorus.contracts.tasks import TASK_ENCODER
from chorus.natsd import die_with_parent
from nats.errors import NoRespondersError

log = logging.getLogger("chorus.agent")

#: How much of the child's stderr (and of its stdout, without a result line) is kept.
TAIL_CHARS = 4000
#: Longest stdout line read from the child.
LINE_LIMIT = 16 * 1024 * 1024
#: Seconds between SIGTERM and SIGKILL when the child's run is cut short.
KILL_GRACE = 2.0


class CommandAgent:
    """Runs ``argv`` once per task and turns its output into reports."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None) -> None:
        if not argv:
            raise ValueError("give the command to run after --")
        self.argv = argv
        self.env = env

    async def __call__(self, task: Task, ctx: TaskContext) -> dict[str, Any]:
        env = {**(self.env if self.env is not None else os.environ),
               "CHORUS_AGENT_ID": ctx.agent_id, "CHORUS_TASK_ID": task.task_id,
               "CHORUS_TASK_ATTEMPT": str(task.attempt)}  # fmt: skip
        child = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            limit=LINE_LIMIT,
            start_new_session=True,  # its own process group: killed whole
            preexec_fn=die_with_parent,  # and gone if this agent is killed
        )
        try:
            return await self._run(child, task, ctx)
        finally:
            if child.returncode is None:  # cancelled, lease expired, or a report failed
                await kill(child)

    async def _run(
        self, child: asyncio.subprocess.Process, task: Task, ctx: TaskContext
    ) -> dict[str, Any]:
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stderr is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            child.stdin.write(TASK_ENCODER.encode(task) + b"\n")
            await child.stdin.drain()
            child.stdin.close()
        errors: deque[str] = deque()
        stderr = asyncio.create_task(tail(child.stderr, errors))
        outputs: deque[str] = deque()
        result: dict[str, Any] | None = None
        try:
            async for raw in child.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                report = parse_line(line)
                if report is None:
                    keep(outputs, line + "\n")
                    print(line, flush=True)
                elif "result" in report:
                    result = report["result"]
                elif "progress" in report:
                    await ctx.progress(report["progress"])
                else:
                    await ctx.partial(report["partial"])
            code = await child.wait()
            await stderr
        finally:
            stderr.cancel()
        if code != 0:
            status = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
            raise TaskFailed(f"{self.argv[0]}: {status}\n{''.join(errors)}".rstrip())
        return result if result is not None else {"output": "".join(outputs)}


def parse_line(line: str) -> dict[str, Any] | None:
    """A report line (one of the keys with a value of the right type), or None."""
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        return None
    match value:
        case {"result": dict()} | {"partial": dict()}:
            return value
        case {"progress": int(n)} if not isinstance(n, bool) and 0 <= n <= 100:
            return value
    return None


def keep(buffer: deque[str], text: str) -> None:
    """Append, dropping the oldest text past ``TAIL_CHARS``."""
    buffer.append(text)
    while sum(map(len, buffer)) > TAIL_CHARS and len(buffer) > 1:
        buffer.popleft()
    if len(buffer) == 1 and len(buffer[0]) > TAIL_CHARS:
        buffer[0] = buffer[0][-TAIL_CHARS:]


async def tail(stream: asyncio.StreamReader, buffer: deque[str]) -> None:
    """Read ``stream`` to its end, keeping its tail (read always, so the child never
    blocks on a full pipe)."""
    while chunk := await stream.read(65536):
        keep(buffer, chunk.decode(errors="replace"))


async def kill(child: asyncio.subprocess.Process) -> None:
    """SIGTERM the child's process group, SIGKILL what is left after a grace (also what
    the child started and left behind when it exited)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(child.wait()), KILL_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    await child.wait()


# The command line -----------------------------------------------------------------------------


def serve_command(
    url: str,
    name: str,
    argv: list[str],
    *,
    capabilities: list[str],
    concurrency: int = 1,
    agent_type: str = "command",
    heartbeat_interval: float = 5.0,
    drain_timeout: float = 30.0,
    key: str | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM; then finish running tasks (or hand them back).

    ``key`` is the agent's API key: its credential on a bus that pins each actor."""
    handler = CommandAgent(argv)

    async def main() -> None:
        agent = AgentClient.connect(url, name, key=key, heartbeat_interval=heartbeat_interval)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.shutdown)
        await agent.serve(
            handler,
            capabilities=capabilities,
            max_concurrency=concurrency,
            type=agent_type,
            metadata={"command": argv[0]},
            drain_timeout=drain_timeout,
            keepalive=True,  # a running program is alive work, whether it prints or not
        )

    try:
        asyncio.run(main())
    except CommandRejected as error:
        print(f"chorus agent: registration refused: {error}", file=sys.stderr)
        return 1
    except (OSError, NoRespondersError, TimeoutError) as error:
        print(f"chorus agent: cannot reach Chorus at {redact(url)}: {error!r}", file=sys.stderr)
        return 1
    return 0


def redact(url: str) -> str:
    """The URL without its credentials, for messages."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url
