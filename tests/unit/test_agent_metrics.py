"""Reliability metrics as pure functions, against values computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from chorus.projections.agents import VerdictFact, compute_metrics, in_window, nearest_rank, stamp

AS_OF = datetime(2030, 1, 8, 12, 0, tzinfo=UTC)


def ago(**delta: float) -> datetime:
    return AS_OF - timedelta(**delta)


# Nearest rank --------------------------------------------------------------------------------


def test_nearest_rank_of_one_to_ten():
    values = [7.0, 1.0, 10.0, 3.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0]  # order does not matter
    # rank = ceil(p/100 * 10): p50 -> 5th -> 5; p95 -> ceil(9.5) = 10th -> 10; p90 -> 9th.
    assert nearest_rank(values, 50) == 5.0
    assert nearest_rank(values, 95) == 10.0
    assert nearest_rank(values, 90) == 9.0
    assert nearest_rank(values, 100) == 10.0
    assert nearest_rank(values, 0) == 1.0


def test_nearest_rank_is_always_an_observed_value_never_an_interpolation():
    values = [1.0, 2.0, 3.0, 4.0]
    assert nearest_rank(values, 50) == 2.0  # ceil(2.0) = 2nd; linear interpolation says 2.5
    assert nearest_rank(values, 51) == 3.0  # ceil(2.04) = 3rd
    assert nearest_rank([42.0], 50) == 42.0
    assert nearest_rank([42.0], 95) == 42.0


def test_nearest_rank_uses_integer_ranks_where_floats_would_round_up():
    # 0.95 * 20 is 19.000000000000004 in floats; the 95th percentile of 1..20 is the 19th.
    values = [float(v) for v in range(1, 21)]
    assert nearest_rank(values, 95) == 19.0
    assert nearest_rank(values, 50) == 10.0


def test_nearest_rank_of_nothing_is_none_and_percent_is_bounded():
    assert nearest_rank([], 50) is None
    with pytest.raises(ValueError, match="percent"):
        nearest_rank([1.0], 101)


# Windows ---------------------------------------------------------------------------------------


def test_a_window_includes_its_end_and_excludes_its_start():
    start = ago(hours=1)
    assert in_window(AS_OF, start, AS_OF)
    assert not in_window(start, start, AS_OF)
    assert in_window(start + timedelta(microseconds=1), start, AS_OF)
    assert not in_window(AS_OF + timedelta(microseconds=1), start, AS_OF)
    assert in_window(ago(days=400), None, AS_OF)


# The record used by the window tests (times relative to AS_OF):
#   verified   10 min ago, 2 s,  quality 0.9
#   rejected   30 min ago,       quality 0
#   verified    2 h  ago, 10 s,  quality 0.8
#   verified    5 h  ago,  4 s,  quality 0.7
#   rejected    3 d  ago,        quality 0
#   verified    6 d  ago, 30 s,  quality 0.6
#   verified   10 d  ago,  1 s,  quality 1.0
#   verified   1 h after AS_OF (must never count)
VERDICTS = [
    VerdictFact(at=ago(minutes=10), verified=True, response_time=2.0, quality_score=0.9),
    VerdictFact(at=ago(minutes=30), verified=False, response_time=50.0, quality_score=0.0),
    VerdictFact(at=ago(hours=2), verified=True, response_time=10.0, quality_score=0.8),
    VerdictFact(at=ago(hours=5), verified=True, response_time=4.0, quality_score=0.7),
    VerdictFact(at=ago(days=3), verified=False, quality_score=0.0),
    VerdictFact(at=ago(days=6), verified=True, response_time=30.0, quality_score=0.6),
    VerdictFact(at=ago(days=10), verified=True, response_time=1.0, quality_score=1.0),
    VerdictFact(at=AS_OF + timedelta(hours=1), verified=True, response_time=99.0),
]
ASSIGNED = [ago(minutes=20), ago(hours=3), ago(days=2), ago(days=9), AS_OF + timedelta(hours=2)]
ACTIVITY = [ago(days=10), ago(minutes=10), AS_OF + timedelta(minutes=5)]


def metrics(timeframe: str, as_of: datetime = AS_OF):  # type: ignore[no-untyped-def]
    return compute_metrics(
        "a1",
        timeframe=timeframe,
        as_of=as_of,
        verdicts=VERDICTS,
        assigned=ASSIGNED,
        activity=ACTIVITY,
    )


def test_last_hour():
    m = metrics("1h")
    assert (m.verified, m.rejected) == (1, 1)
    assert m.success_rate == 0.5
    assert m.total_tasks == 1  # assigned 20 min ago
    assert m.response_time_p50 == 2.0  # of verified only: the rejected 50 s never counts
    assert m.response_time_p95 == 2.0
    assert m.average_quality_score == 0.45  # (0.9 + 0) / 2
    assert m.reliability_score == 0.5  # (1 + 1) / (2 + 2)
    assert m.last_activity == stamp(ago(minutes=10))
    assert m.window_start == stamp(ago(hours=1))
    assert m.as_of == stamp(AS_OF)


def test_last_24_hours():
    m = metrics("24h")
    assert (m.verified, m.rejected) == (3, 1)
    assert m.success_rate == 0.75
    assert m.total_tasks == 2
    # response times 2, 4, 10: p50 = ceil(1.5) = 2nd = 4; p95 = ceil(2.85) = 3rd = 10
    assert m.response_time_p50 == 4.0
    assert m.response_time_p95 == 10.0
    assert m.average_quality_score == 0.6  # (0.9 + 0 + 0.8 + 0.7) / 4
    assert m.reliability_score == round(4 / 6, 6)


def test_last_7_days():
    m = metrics("7d")
    assert (m.verified, m.rejected) == (4, 2)
    assert m.success_rate == round(4 / 6, 6)
    assert m.total_tasks == 3
    # 2, 4, 10, 30: p50 = 2nd = 4; p95 = ceil(3.8) = 4th = 30
    assert m.response_time_p50 == 4.0
    assert m.response_time_p95 == 30.0
    assert m.reliability_score == 0.625  # (4 + 1) / (6 + 2)


def test_all_time_stops_at_as_of():
    m = metrics("all")
    assert (m.verified, m.rejected) == (5, 2)  # not the verdict an hour after AS_OF
    assert m.total_tasks == 4
    # 1, 2, 4, 10, 30: p50 = ceil(2.5) = 3rd = 4; p95 = ceil(4.75) = 5th = 30
    assert m.response_time_p50 == 4.0
    assert m.response_time_p95 == 30.0
    assert m.window_start is None
    assert m.last_activity == stamp(ago(minutes=10))  # not the one 5 min after AS_OF


def test_as_of_a_past_time_sees_only_what_was_recorded_by_then():
    then = ago(hours=4)  # before the verdicts of the last 2 h and 10/30 min
    m = metrics("24h", as_of=then)
    assert (m.verified, m.rejected) == (1, 0)  # the one 5 h ago (1 h before `then`)
    assert m.success_rate == 1.0
    assert m.response_time_p50 == 4.0
    assert m.total_tasks == 0  # 3 h ago is after `then`; 2 d ago is outside its window
    assert m.last_activity == stamp(ago(days=10))
    assert m.as_of == stamp(then)
    week = metrics("7d", as_of=then)
    assert (week.verified, week.rejected) == (2, 1)
    assert week.total_tasks == 1


def test_an_agent_without_verdicts_has_no_rates_and_the_neutral_score():
    m = compute_metrics("new", timeframe="7d", as_of=AS_OF, verdicts=[], assigned=[], activity=[])
    assert m.success_rate is None
    assert m.response_time_p50 is None
    assert m.response_time_p95 is None
    assert m.average_quality_score is None
    assert m.last_activity is None
    assert m.reliability_score == 0.5
    assert (m.verified, m.rejected, m.total_tasks) == (0, 0, 0)


def test_stamps_sort_as_times():
    early = datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC)
    later = early + timedelta(microseconds=500_000)
    assert stamp(early) == "2030-01-01T00:00:00.000000Z"
    assert stamp(early) < stamp(later)
    assert stamp("2030-01-01T01:00:00+01:00") == stamp(early)
