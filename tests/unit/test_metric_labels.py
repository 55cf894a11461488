"""Metric labels stay bounded whatever subjects a hostile client sends."""

from __future__ import annotations

from chorus.engine.adapters.metrics import command_labels
from chorus.engine.handlers import HANDLERS


def test_known_commands_are_labelled_by_aggregate_and_command() -> None:
    assert command_labels("chorus.cmd.a-1.session.open", HANDLERS) == ("session", "open")


def test_unknown_or_malformed_subjects_share_one_label() -> None:
    known = HANDLERS
    assert command_labels("chorus.cmd.a-1.session.x" + "y" * 50, known) == ("unknown", "unknown")
    assert command_labels("chorus.cmd.a-1.whatever.open", known) == ("unknown", "unknown")
    assert command_labels("chorus.cmd.too.many.parts.here.x", known) == ("unknown", "unknown")
