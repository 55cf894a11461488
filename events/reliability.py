"""How reliable an agent is, from its verified record: one formula for routing and reads.

The engine ranks candidates with it when it routes a session, and the agents read model
sorts by it, so "most reliable" means the same thing everywhere.

``reliability_score(verified, rejected) = (verified + 1) / (verified + rejected + 2)``

Laplace's rule of succession: the expected success rate under a uniform prior. A new
agent scores 0.5; one verified completion gives 0.67, ten give 0.92; a single rejection
weighs as much as a single verification. It never reaches 0 or 1, so one lucky task does
not outrank a long clean record (0/0 -> 0.5 < 10/0 -> 0.92).

Only earned verdicts count (``counts`` on ``CompletionVerified`` / ``CompletionRejected``):
a task counts when the engine arranged it (a delegated phase's session, or a routed
session or replacement where the engine chose among more eligible agents than it needed),
or an operator or admin did (the session's opener, the workflow's starter). A session an
agent opened naming its partner, or routed to capabilities only its partner holds, earns
the partner nothing: the verdict is recorded and shown, with ``counts: false``.
"""

from __future__ import annotations


def reliability_score(verified: int, rejected: int) -> float:
    return round((verified + 1) / (verified + rejected + 2), 6)


def success_rate(verified: int, rejected: int) -> float | None:
    """The observed share of verified completions; None before the first verdict."""
    total = verified + rejected
    return round(verified / total, 6) if total else None
