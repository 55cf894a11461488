"""The relay and the projector step back by ``background_nice`` (in a child process, so
this test's own priority is left alone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import os, threading
from chorus.processes import _step_back
from chorus.settings import Settings
_step_back(Settings(background_nice={nice}))
seen = []
thread = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))
thread.start(); thread.join()
print(os.nice(0), seen[0])
"""


@pytest.mark.parametrize("nice", [0, 3])
def test_the_process_and_its_later_threads_step_back(nice: int) -> None:
    before = int(subprocess.check_output([sys.executable, "-c", "import os; print(os.nice(0))"]))
    out = subprocess.check_output([sys.executable, "-c", SCRIPT.format(nice=nice)], text=True)
    assert out.split() == [str(before + nice), str(before + nice)]


def test_chorus_up_hands_it_to_its_children(tmp_path: Path) -> None:
    """``chorus up`` passes its children only the settings ``child_env`` names."""
    from chorus.settings import Settings

    env = Settings(background_nice=7, data_dir=tmp_path).child_env()
    assert env["CHORUS_BACKGROUND_NICE"] == "7"
