"""The package rules of DESIGN.md: imports flow one way (import-linter) and the wheel
installs exactly one top-level package, ``chorus``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def namespace_tree() -> Path:
    """The sources laid out under their installed names (see .ci/namespace)."""
    subprocess.run([str(ROOT / ".ci" / "namespace")], cwd=ROOT, check=True, timeout=60)
    return ROOT / "build" / "namespace"


def test_imports_flow_one_way_between_packages() -> None:
    executable = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    env = {**os.environ, "PYTHONPATH": str(namespace_tree())}
    result = subprocess.run(
        [executable, str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.timeout(300)
def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, timeout=240, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("chorus-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"chorus"}
    for module in ("chorus/cli.py", "chorus/engine/domain/session.py", "chorus/audit/verify.py",
                   "chorus/store/recorder.py", "chorus/gateway/app.py"):  # fmt: skip
        assert module in names
