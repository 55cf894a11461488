"""``chorus agent -- CMD``: a real child process per task, its lines turned into reports.

The handler is tested on its own with real child processes (progress, partial results,
the result line, failures with the stderr tail, killing on cancellation), then the whole
``chorus agent`` command as a process against a scripted engine on a real nats-server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from chorus.agent_cli import embedded_nats_url
from chorus.agent_command import CommandAgent, parse_line
from chorus.agent_worker import Task, TaskContext, TaskFailed
from chorus.contracts.tasks import TASK_DECODER, PhaseTask
from faststream.nats import NatsBroker

from ..conftest import NatsEndpoint
from .fake_engine import AGENT, WAIT, FakeEngine, phase_task


class RecordingContext(TaskContext):
    """The reports a handler makes, without a bus."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.reports: list[tuple[str, Any]] = []

    @property
    def agent_id(self) -> str:
        return AGENT

    async def progress(self, percent: int) -> None:
        self.reports.append(("progress", percent))

    async def partial(self, result: dict[str, Any]) -> None:
        self.reports.append(("partial", result))


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "agent_script.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def a_task(**extra: Any) -> PhaseTask:
    task = TASK_DECODER.decode(json.dumps(phase_task(**extra)))
    assert isinstance(task, PhaseTask)
    return task


async def test_the_task_goes_in_on_stdin_and_each_line_is_reported(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        """
        import json, os, sys
        task = json.load(sys.stdin)
        print(json.dumps({"progress": 30}), flush=True)
        print("a plain line is passed through", flush=True)
        print(json.dumps({"partial": {"step": "parsed"}}), flush=True)
        print(json.dumps({"result": {"echo": task["requirements"], "kind": task["kind"],
                                     "inputs": task["inputs"], "by": os.environ["CHORUS_AGENT_ID"],
                                     "task": os.environ["CHORUS_TASK_ID"]}}))
        """,
    )
    task = a_task()
    ctx = RecordingContext(task)
    result = await CommandAgent(argv)(task, ctx)
    assert result == {"echo": "add two numbers", "kind": "phase",
                      "inputs": {"design": {"api": "add(a, b)"}}, "by": AGENT,
                      "task": task.task_id}  # fmt: skip
    assert ctx.reports == [("progress", 30), ("partial", {"step": "parsed"})]


async def test_a_non_zero_exit_fails_with_the_stderr_tail(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        """
        import sys
        sys.stderr.write("x" * 10000 + "\\n")
        sys.stderr.write("Traceback: the build is broken\\n")
        sys.exit(3)
        """,
    )
    with pytest.raises(TaskFailed) as failure:
        await CommandAgent(argv)(a_task(), RecordingContext(a_task()))
    message = str(failure.value)
    assert message.startswith(f"{argv[0]}: exit status 3\n")
    assert message.endswith("Traceback: the build is broken")
    assert len(message) < 4100  # the tail, not the whole of stderr


async def test_a_program_without_a_result_line_completes_with_its_output(tmp_path: Path) -> None:
    argv = script(tmp_path, 'print("all 12 tests passed")\n')
    assert await CommandAgent(argv)(a_task(), RecordingContext(a_task())) == {
        "output": "all 12 tests passed\n"
    }


async def test_cancelling_the_handler_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    argv = script(
        tmp_path,
        f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        print('{{"progress": 1}}', flush=True)
        time.sleep(600)
        """,
    )
    task = a_task()
    ctx = RecordingContext(task)
    run = asyncio.create_task(CommandAgent(argv)(task, ctx))
    while not ctx.reports:  # the script has written its pids and said so
        await asyncio.sleep(0.01)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    for pid in map(int, pids.read_text().split()):  # a SIGKILL takes effect soon, not at once
        for _ in range(1000):
            if not alive(pid):
                break
            await asyncio.sleep(0.01)
        assert not alive(pid), f"pid {pid} survived"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize(
    ("line", "report"),
    [
        ('{"progress": 50}', {"progress": 50}),
        ('{"result": {"a": 1}}', {"result": {"a": 1}}),
        ('{"partial": {}}', {"partial": {}}),
        ('{"progress": 101}', None),
        ('{"progress": true}', None),
        ('{"result": [1]}', None),
        ('{"result": {}, "progress": 1}', None),
        ("{not json", None),
        ("progress 50", None),
    ],
)
def test_only_well_formed_report_lines_count(line: str, report: dict[str, Any] | None) -> None:
    assert parse_line(line) == report


def test_the_embedded_server_is_found_from_the_data_dir(tmp_path: Path) -> None:
    assert embedded_nats_url(tmp_path) is None
    (tmp_path / "nats" / "ports").mkdir(parents=True)
    (tmp_path / "nats" / "token").write_text("s3cret\n")
    (tmp_path / "nats" / "ports" / "nats-server_1.ports").write_text(
        json.dumps({"nats": ["nats://127.0.0.1:4333"]})
    )
    assert embedded_nats_url(tmp_path) == "nats://s3cret@127.0.0.1:4333"


# The command as a process -------------------------------------------------------------------


@pytest.fixture
async def engine_on_nats(nats_server: NatsEndpoint) -> AsyncIterator[tuple[NatsBroker, FakeEngine]]:
    broker = NatsBroker(nats_server.url, log_level=logging.DEBUG)
    engine = FakeEngine()
    broker.subscriber("chorus.cmd.>")(engine.on_command)
    await broker.start()
    try:
        yield broker, engine
    finally:
        await broker.stop()


async def test_chorus_agent_runs_the_command_for_each_task_and_stops_on_sigterm(
    engine_on_nats: tuple[NatsBroker, FakeEngine], nats_server: NatsEndpoint, tmp_path: Path
) -> None:
    broker, engine = engine_on_nats
    argv = script(
        tmp_path,
        """
        import json, sys
        task = json.load(sys.stdin)
        if task["requirements"] == "fail":
            sys.exit("cannot do that")
        print(json.dumps({"progress": 50}), flush=True)
        print(json.dumps({"result": {"words": len(task["requirements"].split())}}))
        """,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chorus.cli", "agent", "--name", AGENT, "--nats-url",
        nats_server.url, "--capabilities", "python, review", "--concurrency", "2", "--",
        *argv,
        env={**env, "CHORUS_HEARTBEAT_INTERVAL": "0.2"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await engine.until(lambda: engine.named("register"))
        register = engine.named("register")[0].payload
        assert (register["capabilities"], register["max_concurrency"]) == (["python", "review"], 2)
        assert register["type"] == "command"
        good, bad = phase_task(), phase_task(requirements="fail")
        for task in (good, bad):
            await broker.publish(msgspec.json.encode(task), f"chorus.task.{AGENT}")
        await engine.until(lambda: engine.named("complete_phase") and engine.named("fail_phase"))
        assert engine.named("complete_phase")[0].payload["result"] == {"words": 3}
        assert engine.named("report_progress")[0].payload["progress"] == 50
        error = engine.named("fail_phase")[0].payload["error"]
        assert error["code"] == "agent_error"
        assert error["message"].endswith("exit status 1\ncannot do that")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), WAIT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stdout is not None
    output = (await process.stdout.read()).decode()
    assert "Traceback" not in output, output
