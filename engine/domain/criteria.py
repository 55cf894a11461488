"""Judging a session's results against its success criteria: a pure function.

The verdict depends only on the *set* of results (order never matters), which the
property tests check.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from chorus.contracts.sessions import Criteria
from chorus.events.session import ResultSubmitted, Verdict


def evaluate(criteria: Criteria, results: Iterable[ResultSubmitted]) -> Verdict:
    """Succeeded iff at least ``min_results`` results count as successful and the
    ``require`` rule (all / majority / any of the submitted results) holds.

    With ``agree_on="output_hash"`` a successful result counts only if it carries the most
    common output hash among successful results (ties: the smallest hash, so the verdict
    is deterministic).
    """
    submitted = list(results)
    total = len(submitted)
    successes = [r for r in submitted if r.success]
    agreed_hash: str | None = None
    if criteria.agree_on == "output_hash":
        counts = Counter(r.output_hash for r in successes if r.output_hash is not None)
        if counts:
            top = max(counts.values())
            agreed_hash = min(h for h, c in counts.items() if c == top)
        succeeded = counts.get(agreed_hash, 0) if agreed_hash is not None else 0
        counted = f"{succeeded} of {total} succeeded and agreed on the output hash"
    else:
        succeeded = len(successes)
        counted = f"{succeeded} of {total} succeeded"

    if criteria.require == "all":
        rule_holds = succeeded == total
    elif criteria.require == "majority":
        rule_holds = succeeded * 2 > total
    else:
        rule_holds = succeeded >= 1
    enough = succeeded >= criteria.min_results

    if rule_holds and enough:
        outcome, reason = "succeeded", f"{counted} (require {criteria.require})"
    elif not rule_holds:
        outcome, reason = "failed", f"{counted}; require {criteria.require} not met"
    else:
        outcome = "failed"
        reason = f"{counted}; fewer than min_results={criteria.min_results}"
    return Verdict(
        outcome=outcome,  # type: ignore[arg-type]
        reason=reason,
        results=total,
        succeeded=succeeded,
        agreed_hash=agreed_hash,
    )
