"""The criteria: a pure function from (criteria, results) to a Verdict."""

from __future__ import annotations

import pytest
from chorus.contracts.sessions import Criteria
from chorus.engine.domain.criteria import evaluate
from chorus.events.session import ResultSubmitted, Verdict
from hypothesis import given, settings
from hypothesis import strategies as st


def result(
    success: bool = True, output_hash: str | None = None, agent: str = "a"
) -> ResultSubmitted:
    return ResultSubmitted(agent_id=agent, result={}, success=success, output_hash=output_hash)


def outcomes(*flags: bool) -> list[ResultSubmitted]:
    return [result(success=flag, agent=f"p{i}") for i, flag in enumerate(flags)]


# require = all ---------------------------------------------------------------------------


def test_require_all_succeeds_when_every_result_succeeded() -> None:
    verdict = evaluate(Criteria(require="all"), outcomes(True, True, True))
    assert verdict == Verdict(
        outcome="succeeded",
        reason="3 of 3 succeeded (require all)",
        results=3,
        succeeded=3,
        agreed_hash=None,
    )


def test_require_all_fails_on_a_single_failure_and_says_which_rule_broke() -> None:
    verdict = evaluate(Criteria(require="all"), outcomes(True, False, True))
    assert verdict.outcome == "failed"
    assert verdict.results == 3
    assert verdict.succeeded == 2
    assert "require all not met" in verdict.reason
    assert "2 of 3 succeeded" in verdict.reason


def test_require_all_is_the_default_rule() -> None:
    assert Criteria().require == "all"
    assert evaluate(Criteria(), outcomes(True, False)).outcome == "failed"


# require = majority ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((True, True, False), "succeeded"),
        ((True, True, True, False), "succeeded"),
        ((True, True, False, False), "failed"),  # exactly half is not a majority
        ((True, False), "failed"),
        ((True,), "succeeded"),
        ((False, False, True), "failed"),
    ],
)
def test_require_majority_needs_strictly_more_than_half(
    flags: tuple[bool, ...], expected: str
) -> None:
    verdict = evaluate(Criteria(require="majority"), outcomes(*flags))
    assert verdict.outcome == expected
    if expected == "failed":
        assert "require majority not met" in verdict.reason
    else:
        assert "(require majority)" in verdict.reason


# require = any ---------------------------------------------------------------------------


def test_require_any_succeeds_with_a_single_success() -> None:
    verdict = evaluate(Criteria(require="any"), outcomes(False, False, True))
    assert verdict.outcome == "succeeded"
    assert verdict.succeeded == 1
    assert verdict.reason == "1 of 3 succeeded (require any)"


def test_require_any_fails_without_any_success() -> None:
    verdict = evaluate(Criteria(require="any"), outcomes(False, False))
    assert verdict.outcome == "failed"
    assert verdict.succeeded == 0
    assert "require any not met" in verdict.reason


# min_results -----------------------------------------------------------------------------


def test_too_few_successes_fail_even_when_the_rule_holds() -> None:
    verdict = evaluate(Criteria(require="any", min_results=3), outcomes(True, True, False))
    assert verdict.outcome == "failed"
    assert verdict.succeeded == 2
    assert "fewer than min_results=3" in verdict.reason


def test_exactly_min_results_successes_is_enough() -> None:
    verdict = evaluate(Criteria(require="any", min_results=2), outcomes(True, True, False))
    assert verdict.outcome == "succeeded"


def test_no_results_at_all_fail_on_min_results() -> None:
    verdict = evaluate(Criteria(), [])
    assert verdict.outcome == "failed"
    assert verdict.results == 0
    assert verdict.succeeded == 0
    assert "min_results=1" in verdict.reason


def test_broken_rule_is_reported_before_missing_min_results() -> None:
    verdict = evaluate(Criteria(require="all", min_results=3), outcomes(True, False))
    assert verdict.outcome == "failed"
    assert "require all not met" in verdict.reason


# agree_on = output_hash --------------------------------------------------------------------


def test_agreement_counts_only_results_with_the_most_common_hash() -> None:
    results = [result(output_hash="x"), result(output_hash="x"), result(output_hash="y")]
    majority = evaluate(Criteria(require="majority", agree_on="output_hash"), results)
    assert majority.outcome == "succeeded"
    assert majority.agreed_hash == "x"
    assert majority.succeeded == 2
    assert "agreed on the output hash" in majority.reason

    every = evaluate(Criteria(require="all", agree_on="output_hash"), results)
    assert every.outcome == "failed"
    assert every.agreed_hash == "x"
    assert "require all not met" in every.reason


def test_agreement_ties_go_to_the_smallest_hash() -> None:
    results = [result(output_hash="b"), result(output_hash="a"), result(output_hash="c")]
    verdict = evaluate(Criteria(require="any", agree_on="output_hash"), results)
    assert verdict.agreed_hash == "a"
    assert verdict.succeeded == 1


def test_agreement_ignores_the_hashes_of_failed_results() -> None:
    results = [
        result(success=False, output_hash="z"),
        result(success=False, output_hash="z"),
        result(success=True, output_hash="y"),
    ]
    verdict = evaluate(Criteria(require="any", agree_on="output_hash"), results)
    assert verdict.agreed_hash == "y"
    assert verdict.succeeded == 1
    assert verdict.outcome == "succeeded"


def test_successes_without_a_hash_do_not_count_towards_agreement() -> None:
    results = [result(output_hash=None), result(output_hash=None), result(output_hash="h")]
    verdict = evaluate(Criteria(require="any", min_results=2, agree_on="output_hash"), results)
    assert verdict.agreed_hash == "h"
    assert verdict.succeeded == 1
    assert verdict.outcome == "failed"
    assert "fewer than min_results=2" in verdict.reason


def test_agreement_without_any_hash_counts_no_success() -> None:
    verdict = evaluate(Criteria(require="any", agree_on="output_hash"), outcomes(True, True))
    assert verdict.agreed_hash is None
    assert verdict.succeeded == 0
    assert verdict.outcome == "failed"


def test_without_agree_on_hashes_are_ignored() -> None:
    results = [result(output_hash="x"), result(output_hash="y")]
    verdict = evaluate(Criteria(require="all"), results)
    assert verdict.agreed_hash is None
    assert verdict.outcome == "succeeded"
    assert "agreed" not in verdict.reason


# Properties ------------------------------------------------------------------------------

criteria_st = st.builds(
    Criteria,
    min_results=st.integers(min_value=1, max_value=6),
    require=st.sampled_from(["all", "majority", "any"]),
    agree_on=st.sampled_from(["output_hash", None]),
)
result_st = st.builds(
    ResultSubmitted,
    agent_id=st.sampled_from(["a", "b", "c", "d"]),
    result=st.just({}),
    success=st.booleans(),
    output_hash=st.sampled_from([None, "h1", "h2", "h3"]),
)


@settings(max_examples=200, deadline=None)
@given(criteria=criteria_st, results=st.lists(result_st, max_size=8), data=st.data())
def test_the_verdict_depends_only_on_the_multiset_of_results(
    criteria: Criteria, results: list[ResultSubmitted], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(results))
    assert evaluate(criteria, shuffled) == evaluate(criteria, results)
    # An iterator (consumed once) gives the same verdict as a list.
    assert evaluate(criteria, iter(shuffled)) == evaluate(criteria, results)


@settings(max_examples=200, deadline=None)
@given(criteria=criteria_st, results=st.lists(result_st, max_size=8))
def test_the_verdict_counts_are_consistent(
    criteria: Criteria, results: list[ResultSubmitted]
) -> None:
    verdict = evaluate(criteria, results)
    successes = sum(r.success for r in results)
    assert verdict.results == len(results)
    assert 0 <= verdict.succeeded <= successes
    if criteria.agree_on is None:
        assert verdict.succeeded == successes
        assert verdict.agreed_hash is None
    elif verdict.agreed_hash is not None:
        assert verdict.succeeded == sum(
            r.success and r.output_hash == verdict.agreed_hash for r in results
        )
    if verdict.outcome == "succeeded":
        assert verdict.succeeded >= criteria.min_results
        assert f"(require {criteria.require})" in verdict.reason
    else:
        assert "not met" in verdict.reason or "min_results" in verdict.reason
