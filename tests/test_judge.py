"""The judge's pure decisions: every answer gives a verdict, never a crash or a passed nonsense value;
thresholds, no-data policy, consecutive failures, breach targets, cron spacing, the soak clock."""

import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from fakes import HEALTHY
from lbsplit.model import DEFAULT_LEVELS, DEFAULT_THRESHOLDS, Level, METRICS, NoData, OnBreach, Outcome, RATE_METRICS, Stage
from lbsplit.watch.judge import breach_target, Check, cron_checks, decide, ENDPOINT, evaluate, extract, Missing, Reading


FIELDS = {m: m for m in METRICS}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


payloads = st.one_of(
    json_values,
    st.fixed_dictionaries({m: json_values for m in METRICS}),
    st.fixed_dictionaries({"metrics": st.fixed_dictionaries({m: json_values for m in METRICS})}),
)


@settings(max_examples=400, deadline=None)
@given(payload=payloads, policy=st.sampled_from(list(NoData)))
def test_the_judge_returns_a_verdict_and_never_passes_a_value_it_cannot_use(payload, policy):
    check = evaluate(payload, None, T10, FIELDS, policy)
    assert check.outcome in set(Outcome)
    for metric, value in check.metrics.items():
        if value is not None:
            assert math.isfinite(value) and value >= 0 and (metric not in RATE_METRICS or value <= 1)
    if check.outcome == Outcome.PASS:
        assert all(check.metrics[m] is not None for m in METRICS) and not check.missing


def test_deep_nesting_and_huge_numbers_from_the_wire_are_no_data():
    deep = json.loads("[" * 500 + "]" * 500)
    assert evaluate(deep, None, T10, FIELDS, NoData.FAIL).outcome == Outcome.FAIL
    huge = {"error_rate": 10**400, "timeout_rate": 0, "dead_letter_growth": 0, "avg_response_time": 1}
    check = evaluate(huge, None, T10, FIELDS, NoData.FAIL)
    assert check.outcome == Outcome.FAIL and check.missing[0].metric == "error_rate"
    assert "too large" in check.missing[0].why


T10, T30, T100 = DEFAULT_THRESHOLDS


def judged(payload=None, error=None, thresholds=T10, no_data=NoData.FAIL):
    return evaluate(payload, error, thresholds, FIELDS, no_data)


def test_default_thresholds_are_the_plans_table():
    assert [(t.up_to_hundredths, t.error_rate, t.timeout_rate, t.dead_letter_growth, t.avg_response_time,
             t.check_every, t.alert_cooldown, t.window) for t in DEFAULT_THRESHOLDS] == [
        (1000, 0.05, 0.02, 10, 30, 60, 300, 300),
        (3000, 0.04, 0.015, 8, 25, 30, 120, 60),
        (10000, 0.03, 0.01, 5, 20, 15, 60, 30),
    ]


@pytest.mark.parametrize("metric, value, thresholds", [
    ("error_rate", 0.051, T10), ("timeout_rate", 0.021, T10), ("dead_letter_growth", 11, T10),
    ("avg_response_time", 31, T10), ("error_rate", 0.041, T30), ("avg_response_time", 20.5, T100),
])
def test_each_metric_over_its_threshold_fails_at_its_level(metric, value, thresholds):
    check = judged({**HEALTHY, metric: value}, thresholds=thresholds)
    level = DEFAULT_LEVELS[metric]  # the plan: error and timeout rates P1, dead letters and latency P2
    assert check.outcome == (Outcome.FAIL if level == Level.P1 else Outcome.ALERT)
    assert check.breaches == (Reading(metric, value, thresholds.limit(metric), ENDPOINT, ok=False, level=level),)
    suffix = "" if level == Level.P1 else f" [{level}]"
    assert check.summary() == f"{metric} {value:.4g} > {thresholds.limit(metric):.4g}{suffix}"


def test_healthy_passes_and_the_threshold_itself_is_allowed():
    check = judged(HEALTHY, thresholds=T100)
    assert check.outcome == Outcome.PASS and check.breaches == () and len(check.readings) == len(METRICS)
    assert judged({**HEALTHY, "error_rate": 0.05}).outcome == Outcome.PASS


def test_no_data_policy_decides_unreachable_and_missing():
    for payload, error in ((None, "connection refused"), ({k: v for k, v in HEALTHY.items() if k != "error_rate"}, None)):
        assert judged(payload, error).outcome == Outcome.FAIL
        ignored = judged(payload, error, no_data=NoData.IGNORE)
        assert ignored.outcome == Outcome.NO_DATA and ignored.missing and ignored.policy == NoData.IGNORE
    assert judged(None, "connection refused").missing == (Missing(ENDPOINT, "connection refused"),)


def test_a_breach_fails_even_when_no_data_is_ignored():
    assert judged({"error_rate": 0.5}, no_data=NoData.IGNORE).outcome == Outcome.FAIL


def test_extract_top_level_nested_and_dotted_paths():
    assert extract({"metrics": HEALTHY}, FIELDS) == HEALTHY
    fields = dict(FIELDS, error_rate="stats.errors.ratio")
    got = extract({**HEALTHY, "stats": {"errors": {"ratio": 0.2}}}, fields)
    assert got["error_rate"] == 0.2
    assert extract([1, 2], FIELDS) == {m: None for m in METRICS}
    check = judged({**HEALTHY, "error_rate": "high", "timeout_rate": True})
    assert check.metrics["error_rate"] is None and check.metrics["timeout_rate"] is None
    assert {m.metric for m in check.missing} == {"error_rate", "timeout_rate"}


def test_decide_counts_consecutive_failures_and_resets_on_pass():
    fail = Check(Outcome.FAIL, (Reading("error_rate", 0.5, 0.05, ENDPOINT, ok=False),), (), {}, NoData.FAIL)
    ok = Check(Outcome.PASS, (), (), {}, NoData.FAIL)
    ignored = Check(Outcome.NO_DATA, (), (Missing(ENDPOINT, "HTTP 500"),), {}, NoData.IGNORE)
    v = decide(0, fail, 3)
    assert v.consecutive == 1 and not v.revert
    assert decide(1, fail, 3).revert is False
    assert decide(2, fail, 3).revert is True
    assert decide(2, ok, 3).consecutive == 0
    assert decide(2, ignored, 3).consecutive == 2 and not decide(2, ignored, 3).revert


def test_breach_target():
    assert breach_target(Stage.at(3000), (1000, 3000, 10000), OnBreach.REVERT) == Stage.off()
    assert breach_target(Stage.at(3000), (1000, 3000, 10000), OnBreach.PREVIOUS) == Stage.at(1000)
    assert breach_target(Stage.at(1000), (1000, 3000, 10000), OnBreach.PREVIOUS) == Stage.off()
    assert breach_target(Stage.at(5000), (), OnBreach.PREVIOUS) == Stage.off()


@pytest.mark.parametrize("every, checks", [(60, 1), (30, 2), (15, 4), (20, 3), (25, 3), (90, 1)])
def test_cron_runs_fit_in_one_minute(every, checks):
    assert cron_checks(every) == checks


def test_the_soak_clock_adds_only_clean_watched_intervals():
    from lbsplit.model import Outcome
    from lbsplit.watch.judge import WATCH_GAP, watched

    t0 = 1_000_000.0
    state = watched(7, t0 - 30, Outcome.PASS, t0, 60, (None, 0.0, None))
    assert state == (7, 30.0, t0)  # a first check within an interval of the apply counts from the apply
    state = watched(7, t0 - 30, Outcome.PASS, t0 + 60, 60, state)
    assert state[1] == 90.0
    state = watched(7, t0 - 30, Outcome.NO_DATA, t0 + 120, 60, state)
    assert state[1] == 90.0  # a check that could not judge adds nothing
    state = watched(7, t0 - 30, Outcome.PASS, t0 + 120 + WATCH_GAP * 60 + 1, 60, state)
    assert state[1] == 90.0  # after a gap of more than WATCH_GAP intervals nobody was watching
    state = watched(7, t0 - 30, Outcome.PASS, t0 + 400, 60, state)
    assert state[1] > 90.0
    assert watched(7, t0 - 30, Outcome.ALERT, t0 + 460, 60, state)[1] == 0.0  # a P2 breach starts it again
    assert watched(8, t0 + 500, Outcome.PASS, t0 + 505, 60, state)[1] == 5.0  # a new generation starts afresh
