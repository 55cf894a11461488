"""Read-model modules stay small enough to read in one sitting: a module of ``projections/``
that grows past ``LIMIT`` lines is split by what its parts hold (as the agents read model
is: fold, tables, queries, verdicts, metrics)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 400


def test_no_projections_module_is_over_the_limit() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in sorted((ROOT / "projections").rglob("*.py"))
    }
    assert {name: n for name, n in sizes.items() if n > LIMIT} == {}
