"""Every checkpoint an auditor gives is checked, even when the anchor file names the same
position (the last one given used to shadow the others)."""

from __future__ import annotations

from pathlib import Path

import pytest
from chorus.audit.ledger import Checkpoint
from chorus.cli import main

from tests.unit.test_tamper import sealed_store  # noqa: F401  (a fixture)


def test_a_wrong_expected_seal_fails_even_when_the_anchor_file_holds_its_position(
    sealed_store: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"sqlite:///{sealed_store}"
    data_dir = tmp_path / "data"
    verify = ["audit", "verify", "--database-url", url, "--data-dir", str(data_dir)]
    assert main(verify) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("checkpoint: "))
    right = Checkpoint.parse(line.removeprefix("checkpoint: "))
    (data_dir / "audit").mkdir(parents=True)
    (data_dir / "audit" / "seal-anchor").write_text(f"{right}\n")
    wrong = f"{right.position}:{'f' * 64}"
    assert main([*verify, "--expect-seal", wrong]) == 1
    out = capsys.readouterr().out
    assert "anchor_mismatch" in out and wrong in out
    assert main([*verify, "--expect-seal", str(right)]) == 0
