"""``chorus demo`` (and ``chorus up --demo``): a small fleet of agents doing real work.

Every demo agent runs the same handler, so whichever agent the dispatcher picks can do
any phase of the built-in types (``full``: requirements, design, implement, test, review;
``quick``: implement, test; ``review``). The work is deterministic, and real:

- **requirements** splits the text into a checklist and names the module;
- **design** lays out the module's API;
- **implement** writes a Python module that carries the checklist and can tell which
  requirements a text does not mention;
- **test** writes a test for it, byte-compiles both and runs the test in a fresh
  interpreter (a failing test fails the phase);
- **review** checks the module (it compiles, everything has a docstring, no long lines,
  the tests passed) and approves it or asks for changes. A review session's participants
  (a delegated phase, or any session naming them) do the same check and submit it as
  their result, so equal verdicts agree on the output hash.

Each phase's result carries what the next one needs (``inputs``), so the workflow's
``final_result`` is the review, with the module and the test report.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import keyword
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from chorus.agent_sdk import AgentClient
from chorus.agent_worker import Task, TaskContext, TaskFailed
from chorus.contracts.tasks import PhaseTask, SessionTask

#: The demo fleet: every agent can do every built-in phase and review in sessions.
FLEET = ("demo-1", "demo-2", "demo-3")
CAPABILITIES = ["python", "requirements", "design", "implement", "test", "review"]
MAX_LINE = 100


# The work, one pure function per phase --------------------------------------------------------


def requirements(text: str) -> dict[str, Any]:
    """A checklist: one item per sentence or bullet, and a module name from the first."""
    items = [
        " ".join(part.split())
        for part in re.split(r"(?:[.;!?]\s+|\n\s*[-*]\s*|\n{2,})", text.strip())
        if part.strip(" \n-*.")
    ]
    items = [item.rstrip(".") for item in items] or [text.strip()]
    words = re.findall(r"[a-z0-9]+", items[0].lower())[:6]
    name = "_".join(words) or "module"
    if not name[0].isalpha():
        name = f"m_{name}"
    if keyword.iskeyword(name) or name in sys.stdlib_module_names:
        name = f"{name}_module"  # ``import or as m`` does not parse; ``import sys`` is not ours
    return {"name": name, "title": items[0], "items": items}


def design(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "module": f"{spec['name']}.py",
        "api": [
            {"name": "requirements", "signature": "() -> list[str]",
             "doc": "Every requirement, in order."},
            {"name": "missing", "signature": "(text: str) -> list[str]",
             "doc": "The requirements whose words do not all appear in text."},
        ],
    }  # fmt: skip


def implement(spec: dict[str, Any]) -> dict[str, Any]:
    """The module's source: the checklist and a check of a text against it."""
    bullets = "\n".join(
        textwrap.fill(item, MAX_LINE - 4, initial_indent="- ", subsequent_indent="  ")
        for item in spec["items"]
    )
    items = "".join(f"    {literal(item)},\n" for item in spec["items"])
    source = (
        f'"""{docstring(spec["title"])}.\n\nWritten by the Chorus demo from these '
        f'requirements:\n\n{docstring(bullets)}\n"""\n\n'
        "from __future__ import annotations\n\n"
        f"REQUIREMENTS: tuple[str, ...] = (\n{items})\n\n\n"
        "def requirements() -> list[str]:\n"
        '    """Every requirement, in order."""\n'
        "    return list(REQUIREMENTS)\n\n\n"
        "def missing(text: str) -> list[str]:\n"
        '    """The requirements whose words do not all appear in ``text``."""\n'
        "    words = set(text.lower().split())\n"
        "    return [r for r in REQUIREMENTS if not set(r.lower().split()) <= words]\n"
    )
    return {"module": f"{spec['name']}.py", "source": source, "sha256": sha256(source)}


def literal(text: str, width: int = 80) -> str:
    """``text`` as a Python string literal, in pieces of at most ``width`` characters."""
    pieces = [text[i : i + width] for i in range(0, len(text), width)] or [""]
    if len(pieces) == 1:
        return repr(pieces[0])
    return "(" + "\n     ".join(repr(piece) for piece in pieces) + ")"


def docstring(text: str) -> str:
    """``text`` made safe inside a triple-quoted docstring (no control characters)."""
    printable = "".join(c if c == "\n" or c.isprintable() else " " for c in text)
    return printable.replace("\\", "\\\\").replace('"""', "'''")


def run_tests(code: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Byte-compile the module and a test of it, and run the test in a new interpreter."""
    module = code["module"].removesuffix(".py")
    test_source = textwrap.dedent(f"""\
        import {module} as m

        expected = {spec["items"]!r}
        assert m.requirements() == expected, m.requirements()
        assert m.missing(" ".join(expected)) == [], m.missing(" ".join(expected))
        assert m.missing("") == [r for r in expected if r.split()], m.missing("")
        print("3 passed")
    """)
    with tempfile.TemporaryDirectory(prefix="chorus-demo-") as tmp:
        root = Path(tmp)
        (root / code["module"]).write_text(code["source"])
        (root / "test_module.py").write_text(test_source)
        compiled = run([sys.executable, "-m", "py_compile", code["module"], "test_module.py"], root)
        if compiled.returncode != 0:
            raise TaskFailed(f"byte-compiling failed:\n{compiled.stderr[-2000:]}", "compile_error")
        ran = run([sys.executable, "-E", "-s", "test_module.py"], root)
    if ran.returncode != 0:
        raise TaskFailed(f"the tests failed:\n{ran.stderr[-2000:]}", "tests_failed")
    return {"module": code["module"], "compiled": True, "passed": 3, "failed": 0,
            "output": ran.stdout.strip(), "source": code["source"]}  # fmt: skip


def review(source: str | None, tests: dict[str, Any] | None) -> dict[str, Any]:
    """A verdict from checks anyone can repeat; equal work gets an equal verdict."""
    checks: dict[str, bool] = {}
    if source is None:
        return {"verdict": "changes_requested", "checks": {"has_code": False}}
    try:
        tree = ast.parse(source)
        compile(tree, "<module>", "exec")
        checks["compiles"] = True
    except SyntaxError:
        checks["compiles"] = False
        tree = None
    if tree is not None:
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        checks["module_docstring"] = ast.get_docstring(tree) is not None
        checks["function_docstrings"] = all(ast.get_docstring(f) for f in functions)
    checks["short_lines"] = all(len(line) <= MAX_LINE for line in source.splitlines())
    if tests is not None:
        checks["tests_passed"] = tests.get("failed") == 0 and bool(tests.get("passed"))
    verdict = "approved" if all(checks.values()) else "changes_requested"
    return {"verdict": verdict, "checks": checks}


# The handler ------------------------------------------------------------------------------------


async def handle(task: Task, ctx: TaskContext) -> dict[str, Any]:
    """Do the phase (or the session's review) named by the task, with its inputs."""
    inputs = task.inputs
    if isinstance(task, SessionTask):
        return await asyncio.to_thread(review_inputs, inputs, task.description)
    assert isinstance(task, PhaseTask)
    spec = inputs.get("requirements") or requirements(task.requirements)
    await ctx.progress(10)
    match task.phase:
        case "requirements":
            result = spec
        case "design":
            result = {**design(spec), "spec": spec}
        case "implement":
            code = implement(spec)
            await ctx.partial({"module": code["module"], "lines": code["source"].count("\n")})
            result = {**code, "spec": spec}
        case "test":
            code = inputs.get("implement") or implement(spec)
            await ctx.progress(50)
            result = {**await asyncio.to_thread(run_tests, code, spec), "spec": spec}
        case "review":
            result = await asyncio.to_thread(review_inputs, inputs, task.requirements)
        case other:
            raise TaskFailed(f"the demo agents do not know the phase {other!r}", "unknown_phase")
    await ctx.progress(100)
    return result


def review_inputs(inputs: dict[str, dict[str, Any]], text: str) -> dict[str, Any]:
    """Review the latest module among the inputs (else the text itself, as code)."""
    tests = inputs.get("test")
    code = inputs.get("implement") or tests
    source = code.get("source") if code else None
    if source is None and text.strip():
        source = text
    outcome = review(source, tests)
    if source is not None:
        outcome["source"] = source
    if tests is not None:
        outcome["tests"] = {k: tests[k] for k in ("passed", "failed", "output") if k in tests}
    return outcome


def sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


# The fleet --------------------------------------------------------------------------------------


def run_fleet(url: str, *, names: tuple[str, ...] = FLEET, heartbeat_interval: float = 5.0) -> int:
    """Serve every demo agent in this process until SIGINT/SIGTERM."""

    async def main() -> None:
        agents = [AgentClient.connect(url, name, heartbeat_interval=heartbeat_interval)
                  for name in names]  # fmt: skip

        def shutdown() -> None:
            for agent in agents:
                agent.shutdown()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shutdown)
        await asyncio.gather(
            *(
                agent.serve(handle, capabilities=CAPABILITIES, max_concurrency=4, type="demo",
                            metadata={"demo": True}, drain_timeout=10)
                for agent in agents
            )
        )  # fmt: skip

    asyncio.run(main())
    return 0
