"""Severities (P1 reverts, P2 alerts and holds, P3 informs) and custom metrics with bounds."""

import json

import pytest

from conftest import run_cli
from fakes import HEALTHY, HealthEndpoint, WebhookReceiver
from lbsplit.config import CustomMetric, load
from lbsplit.model import DEFAULT_THRESHOLDS, METRICS, Bound, Level, NoData, Outcome
from lbsplit.watch.judge import decide, evaluate

FIELDS = {m: m for m in METRICS}
T10, T30, T100 = DEFAULT_THRESHOLDS
AI = CustomMetric("ai_failure_rate", "data.ai.failure_rate", Level.P1, 0.01, ((Bound.MAX, 0.05),),
                  ((1000, ((Bound.MAX, 0.10),)),))
BACKLOG = CustomMetric("dead_letter_backlog", "dead_letter_backlog", Level.P2, 1.0, ((Bound.MAX, 0.0),))
BASELINE = CustomMetric("baseline_passed", "baseline_passed", Level.P3, 1.0, ((Bound.MIN, 1.0),))


def judge(payload, hundredths=3000, thresholds=T30, custom=(AI, BACKLOG, BASELINE), policy=NoData.FAIL):
    return evaluate(payload, None, thresholds, FIELDS, policy, None, custom, None, hundredths)


def answer(ai_percent=1.0, backlog=0, baseline=1, **metrics):
    return {**HEALTHY, **metrics, "data": {"ai": {"failure_rate": ai_percent}}, "dead_letter_backlog": backlog,
            "baseline_passed": baseline}


def test_a_p2_breach_alerts_and_never_counts_toward_a_revert():
    check = judge(answer(dead_letter_growth=9))  # 9/h > 8/h at 30%: P2 in the plan
    assert check.outcome == Outcome.ALERT
    assert decide(2, check, 3).consecutive == 0 and not decide(2, check, 3).revert
    assert decide(2, check, 3, (Level.P1, Level.P2)).revert  # unless configured


def test_custom_metrics_by_path_scale_bounds_and_stage():
    assert judge(answer()).outcome == Outcome.PASS
    failing = judge(answer(ai_percent=50))  # 50 percent, scaled by 0.01 to 0.5 > 0.05
    assert failing.outcome == Outcome.FAIL
    assert [(r.metric, r.value, r.limit) for r in failing.breaches] == [("ai_failure_rate", 0.5, 0.05)]
    # a looser range for stages up to 10%
    assert judge(answer(ai_percent=8), hundredths=1000, thresholds=T10).outcome == Outcome.PASS
    assert judge(answer(ai_percent=8), hundredths=10000, thresholds=T100).outcome == Outcome.FAIL
    assert judge(answer(backlog=3)).outcome == Outcome.ALERT
    p3 = judge(answer(baseline=0))  # below its min, but P3: information only
    assert p3.outcome == Outcome.PASS and p3.breaches[0].bound == Bound.MIN and p3.breaches[0].level == Level.P3


def test_a_missing_custom_metric_is_no_data_at_its_level():
    payload = answer()
    del payload["dead_letter_backlog"]
    assert judge(payload).outcome == Outcome.ALERT  # P2 data missing under no_data = fail
    assert judge(payload, policy=NoData.IGNORE).outcome == Outcome.NO_DATA
    del payload["data"]
    assert judge(payload).outcome == Outcome.FAIL  # P1 data missing


@pytest.mark.parametrize("extra, fragment", [
    ('[[health.metrics]]\nname = "x"\n', "health.metrics[0]: give max and/or min"),
    ('[[health.metrics]]\nname = "x"\nmax = 1\nlevel = "P4"\n', "health.metrics[0].level"),
    ('[[health.metrics]]\nname = "error_rate"\nmax = 1\n', "is defined twice (or is a built-in metric"),
    ('[[health.metrics]]\nname = "x"\npath = "a..b"\nmax = 1\n', "health.metrics[0].path"),
    ('[[health.metrics]]\nname = "x"\nmax = nan\n', "health.metrics[0].max"),
    ('revert_levels = ["P2"]\n', "must include \"P1\""),
    ('[health.levels]\nerror_rate = "high"\n', "health.levels.error_rate"),
    ('[health.scale]\nerror_rate = 0\n', "health.scale.error_rate"),
])
def test_bad_rules_are_one_line_errors(tmp_path, extra, fragment):
    config = tmp_path / "lbsplit.toml"
    config.write_text('state_dir = "s"\n[upstreams]\nv1 = ["a:1"]\nv2 = ["b:1"]\n'
                      f'[health]\nurl = "http://127.0.0.1:1/h"\n{extra}')
    result = run_cli(config, "render", "10")
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def configure(sb, endpoint, webhook, extra=""):
    sb.write_config(whitelist=[], top="stages = [10, 30, 100]",
                    extra=f'\n[health]\nurl = "{endpoint.url}"\ntimeout = 1\n{extra}'
                          f'\n[notify]\nwebhook = "{webhook.url}"\n')


def test_p2_dead_letter_growth_at_30_alerts_and_holds_instead_of_reverting(sandbox, endpoint):
    webhook = WebhookReceiver()
    try:
        configure(sandbox, endpoint, webhook)
        for percent in ("10", "30"):
            assert run_cli(sandbox.config_path, "apply", percent).returncode == 0
        on_v2 = sandbox.variants([f"u{i}" for i in range(200)]).count("v2")
        endpoint.mode = "breach:dead_letter_growth=9"
        codes = [run_cli(sandbox.config_path, "watchdog", "--once").returncode for _ in range(3)]
        assert codes == [0, 0, 0]
        assert sandbox.variants([f"u{i}" for i in range(200)]).count("v2") == on_v2 > 0  # no revert
        alerts = [e for e in webhook.received if e["event"] == "alert"]
        assert len(alerts) == 1 and alerts[0]["levels"] == ["P2"] and alerts[0]["level"] == "P2"  # once: cooldown
        assert (sandbox.state_dir / "watchdog.log").read_text().count("check=ALERT") == 3
        refused = run_cli(sandbox.config_path, "promote")  # P2 holds promotion
        assert refused.returncode == 8 and "dead_letter_growth" in refused.stderr and "P2" in refused.stderr
    finally:
        webhook.close()


def test_a_custom_p1_metric_fails_the_final_check(sandbox):
    endpoint = HealthEndpoint()
    webhook = WebhookReceiver()
    try:
        configure(sandbox, endpoint, webhook, extra='[[health.metrics]]\nname = "ai_failure_rate"\n'
                                                     'max = 0.05\nlevel = "P1"\n')
        endpoint.mode = "raw:" + json.dumps({**HEALTHY, "ai_failure_rate": 0.01})
        for percent in ("10", "30"):
            assert run_cli(sandbox.config_path, "apply", percent).returncode == 0
        endpoint.mode = "raw:" + json.dumps({**HEALTHY, "ai_failure_rate": 0.5})  # half the AI calls fail
        before = (sandbox.output_dir / "lbsplit.conf").read_bytes()
        refused = run_cli(sandbox.config_path, "apply", "100")
        assert refused.returncode == 8
        assert "[FAIL] ai_failure_rate: 0.5 (limit 0.05 at 100%)" in refused.stderr
        assert (sandbox.output_dir / "lbsplit.conf").read_bytes() == before
    finally:
        endpoint.close()
        webhook.close()


def test_the_default_plan_is_the_seeds(tmp_path):
    config = tmp_path / "lbsplit.toml"
    config.write_text('state_dir = "s"\n[upstreams]\nv1 = ["a:1"]\nv2 = ["b:1"]\n[health]\nurl = "http://127.0.0.1:1/h"\n')
    settings = load(config)
    assert settings.stages == (0, 1000, 3000, 10000)  # the whitelist only, then 10, 30, 100
    assert dict(settings.health.levels) == {"error_rate": "P1", "timeout_rate": "P1",
                                            "dead_letter_growth": "P2", "avg_response_time": "P2"}
