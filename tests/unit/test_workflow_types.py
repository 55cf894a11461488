"""The workflow type registry: built-ins, an operator's TOML file, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from chorus.typesfile import load_workflow_types


def test_built_in_types_ship_with_their_phases_in_order() -> None:
    registry = load_workflow_types()
    assert [t.name for t in registry.all()] == ["full", "quick", "review"]
    full = registry.get("full")
    assert full is not None
    assert [p.name for p in full.phases] == [
        "requirements",
        "design",
        "implement",
        "test",
        "review",
    ]
    assert registry.get("nope") is None


def test_a_types_file_adds_types_and_replaces_built_ins_of_the_same_name(tmp_path: Path) -> None:
    path = tmp_path / "types.toml"
    path.write_text(
        """
[[workflow_types]]
name = "audit"
description = "Three agents agree on a finding"
[[workflow_types.phases]]
name = "collect"
expected_seconds = 120
[[workflow_types.phases]]
name = "agree"
[workflow_types.phases.delegate]
participants = ["agent-1", "agent-2", "agent-3"]
criteria = { require = "majority", agree_on = "output_hash" }
timeout_seconds = 300

[[workflow_types]]
name = "quick"
[[workflow_types.phases]]
name = "implement"
"""
    )
    registry = load_workflow_types(path)
    audit = registry.get("audit")
    assert audit is not None
    assert audit.phases[1].delegate is not None
    assert audit.phases[1].delegate.criteria.require == "majority"
    quick = registry.get("quick")
    assert quick is not None
    assert [p.name for p in quick.phases] == ["implement"]
    assert registry.get("full") is not None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "[[workflow_types]]\nname = 'x'\n[[workflow_types.phases]]\nname = 'a'\n"
            "[[workflow_types.phases]]\nname = 'a'\n",
            "phase names must be unique",
        ),
        (
            "[[workflow_types]]\nname = 'x'\n[[workflow_types.phases]]\nname = 'a'\n"
            "[workflow_types.phases.delegate]\ntimeout_seconds = 5\n",
            "a delegation names",
        ),
        (
            "[[workflow_types]]\nname = 'x'\ncolour = 'red'\n[[workflow_types.phases]]\nname = 'a'\n",
            "unknown field `colour`",
        ),
        ("[[workflow_types]]\nname = 'x'\nphases = []\n", "length >= 1"),
        ("not toml at all = = =", "workflow types file"),
    ],
    ids=["duplicate-phase", "empty-delegation", "unknown-field", "no-phases", "not-toml"],
)
def test_a_broken_types_file_is_refused_with_its_reason(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / "types.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=reason):
        load_workflow_types(path)
