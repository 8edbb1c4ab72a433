"""The watchdog's pure decisions, and the health probe against a real endpoint on loopback."""

import pytest

from fakes import HEALTHY
from lbsplit.config import DEFAULT_THRESHOLDS, METRICS
from lbsplit.health import Sample, probe, redact
from lbsplit.model import Stage
from lbsplit.watchdog import (
    Check, WatchdogState, breach_target, cron_checks, decide, evaluate, extract, prometheus_text,
)

FIELDS = {m: m for m in METRICS}
T10, T30, T100 = DEFAULT_THRESHOLDS


def sample(payload=None, error=None):
    return Sample(0.0, payload, error)


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
def test_each_metric_over_its_threshold_fails(metric, value, thresholds):
    check = evaluate(sample({**HEALTHY, metric: value}), thresholds, FIELDS, "fail")
    assert check.outcome == "fail"
    assert check.breaches == (f"{metric} {value:g} > {getattr(thresholds, metric):g}",)


def test_healthy_passes_and_the_threshold_itself_is_allowed():
    assert evaluate(sample(HEALTHY), T100, FIELDS, "fail").outcome == "pass"
    assert evaluate(sample({**HEALTHY, "error_rate": 0.05}), T10, FIELDS, "fail").outcome == "pass"


def test_no_data_policy_decides_unreachable_and_missing():
    for s in (sample(error="connection refused"), sample({k: v for k, v in HEALTHY.items() if k != "error_rate"})):
        assert evaluate(s, T10, FIELDS, "fail").outcome == "fail"
        ignored = evaluate(s, T10, FIELDS, "ignore")
        assert ignored.outcome == "no_data" and ignored.no_data and ignored.policy == "ignore"


def test_a_breach_fails_even_when_no_data_is_ignored():
    s = sample({"error_rate": 0.5})
    assert evaluate(s, T10, FIELDS, "ignore").outcome == "fail"


def test_extract_top_level_nested_and_dotted_paths():
    assert extract({"metrics": HEALTHY}, FIELDS) == {k: float(v) for k, v in HEALTHY.items()}
    fields = dict(FIELDS, error_rate="stats.errors.ratio")
    got = extract({**HEALTHY, "stats": {"errors": {"ratio": 0.2}}}, fields)
    assert got["error_rate"] == 0.2
    assert extract({"error_rate": "high", "timeout_rate": True}, FIELDS)["error_rate"] is None
    assert extract([1, 2], FIELDS) == {m: None for m in METRICS}


def test_decide_counts_consecutive_failures_and_resets_on_pass():
    fail = Check("fail", ("x",), (), {}, "fail")
    ok = Check("pass", (), (), {}, "fail")
    ignored = Check("no_data", (), ("endpoint: HTTP 500",), {}, "ignore")
    assert decide(0, fail, 3) == (v := decide(0, fail, 3)) and v.consecutive == 1 and not v.revert
    assert decide(1, fail, 3).revert is False
    assert decide(2, fail, 3).revert is True
    assert decide(2, ok, 3).consecutive == 0
    assert decide(2, ignored, 3).consecutive == 2 and not decide(2, ignored, 3).revert


def test_breach_target():
    assert breach_target(Stage.at(3000), (1000, 3000, 10000), "revert") == Stage.off()
    assert breach_target(Stage.at(3000), (1000, 3000, 10000), "previous") == Stage.at(1000)
    assert breach_target(Stage.at(1000), (1000, 3000, 10000), "previous") == Stage.off()
    assert breach_target(Stage.at(5000), (), "previous") == Stage.off()


@pytest.mark.parametrize("every, checks", [(60, 1), (30, 2), (15, 4), (20, 3), (25, 3), (90, 1)])
def test_cron_runs_fit_in_one_minute(every, checks):
    assert cron_checks(every) == checks


def test_prometheus_text_has_every_series():
    wd = WatchdogState(consecutive_failures=2, last_check_at=1700000000.0, reverts_total=1,
                       last_metrics={"error_rate": 0.07, "timeout_rate": None})
    text = prometheus_text(30, 5, wd, T30)
    for line in ("lbsplit_percent 30", "lbsplit_generation 5", "lbsplit_watchdog_consecutive_failures 2",
                 "lbsplit_reverts_total 1", "lbsplit_last_check_timestamp_seconds 1700000000.000",
                 'lbsplit_v2_health{metric="error_rate"} 0.07', 'lbsplit_v2_threshold{metric="error_rate"} 0.04'):
        assert line in text.splitlines()
    assert "timeout_rate\"} None" not in text


@pytest.mark.parametrize("mode, error", [
    ("status:500", "HTTP 500"), ("status:404", "HTTP 404"), ("garbage", "answer is not JSON"),
    ("hang", "no answer within 1s"), ("drip", "no answer within 1s"),
])
def test_probe_reports_each_endpoint_fault(endpoint, mode, error):
    endpoint.mode = mode
    got = probe(endpoint.url, 1.0, {})
    assert got.payload is None and got.error == error


def test_probe_reads_json_and_sends_headers_and_token(endpoint):
    endpoint.mode = "nested"
    got = probe(endpoint.url, 2.0, {"Authorization": "Bearer s3cret", "X-Env": "prod"})
    assert got.error is None and got.payload["metrics"] == HEALTHY
    assert endpoint.seen_headers[-1]["Authorization"] == "Bearer s3cret"


def test_probe_refused():
    from lbsplit.sandbox import free_port

    assert probe(f"http://127.0.0.1:{free_port()}/h", 1.0, {}).error == "connection refused"


def test_redact_drops_credentials():
    assert redact("http://user:pw@127.0.0.1:8080/hook?token=x") == "http://127.0.0.1:8080/hook"
