"""The judge's pure decisions, the watchdog's memory, and the health probe against a real endpoint on loopback."""

import pytest

from fakes import HEALTHY
from lbsplit.config import DEFAULT_THRESHOLDS
from lbsplit.model import DEFAULT_LEVELS, METRICS, Level, NoData, OnBreach, Outcome, Stage
from lbsplit.watch.endpoint import probe, redact
from lbsplit.watch.judge import (
    ENDPOINT, Check, Missing, Reading, breach_target, cron_checks, decide, evaluate, extract,
)
from lbsplit.watch.memory import WatchdogState, load_state, prometheus_text

FIELDS = {m: m for m in METRICS}
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
    from lbsplit.demo.sandbox import free_port

    assert probe(f"http://127.0.0.1:{free_port()}/h", 1.0, {}).error == "connection refused"


def test_redact_drops_credentials():
    assert redact("http://user:pw@127.0.0.1:8080/hook?token=x") == "http://127.0.0.1:8080/hook"


def test_a_damaged_watchdog_state_only_loses_the_count(tmp_path):
    path = tmp_path / "watchdog.json"
    for raw in (b"", b"{", b"[1, 2]", b'{"consecutive_failures": "x"}', b'{"unknown": 1}', b"[" * 100000):
        path.write_bytes(raw)
        assert load_state(path).consecutive_failures == 0


# ---- the runner in-process: a written state, a fake probe, no nginx (these sequences never revert)
def runner(tmp_path, answers, no_data="fail"):
    """A Watchdog over a state at 10% whose probe returns `answers` in turn."""
    from lbsplit.config import load
    from lbsplit.rollout.state import State, StateStore
    from lbsplit.watch.endpoint import Sample
    from lbsplit.watch.watchdog import Watchdog

    config = tmp_path / "lbsplit.toml"
    config.write_text(f'state_dir = "state"\n[upstreams]\nv1 = ["127.0.0.1:1"]\nv2 = ["127.0.0.1:2"]\n'
                      f'[health]\nurl = "http://127.0.0.1:1/h"\nno_data = "{no_data}"\n')
    settings = load(config)
    store = StateStore(settings.state_dir)
    store.ensure()
    store.write_state(State(generation=2, v2_enabled=True, hundredths=1000, mode="hash", applied_at="t",
                            applied_by="u", command="apply 10", sha256="x", reloaded=True))
    queue = list(answers)

    def probe(url, timeout, headers):
        payload, error = queue.pop(0)
        return Sample(0.0, payload, error)

    return Watchdog(settings, settings.health, probe=probe, notify=lambda *a: None, echo=lambda m: None), store


def test_a_passing_check_resets_the_count(tmp_path):
    down, up = (None, "HTTP 500"), (HEALTHY, None)
    wd, store = runner(tmp_path, [down, down, up, down, down])
    counts = []
    for _ in range(5):
        assert wd.run("once") == 0
        counts.append(load_state(store.watchdog_path).consecutive_failures)
    assert counts == [1, 2, 0, 1, 2]
    assert store.read_state().v2_enabled


def test_unreachable_endpoint_under_no_data_ignore_never_counts(tmp_path):
    wd, store = runner(tmp_path, [(None, "connection refused")] * 3, no_data="ignore")
    assert [wd.run("once") for _ in range(3)] == [0, 0, 0]
    saved = load_state(store.watchdog_path)
    assert saved.consecutive_failures == 0 and saved.last_outcome == Outcome.NO_DATA
    log = (store.dir / "watchdog.log").read_text()
    assert log.count("check=NO_DATA") == 3 and "no_data=ignore" in log and "connection refused" in log


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


def test_hanging_webhooks_never_delay_the_next_check_and_a_send_waits_one_timeout_in_all(tmp_path):
    """Three webhooks that never answer: the watchdog's checks go on while the alerts are still on their way
    (no clock involved: the fake post blocks until released), and a person's send returns after one
    notify.timeout for all three, naming each that did not answer."""
    import threading

    from lbsplit.config import load
    from lbsplit.model import Level
    from lbsplit.watch import notify

    release, calls = threading.Event(), []

    def hanging(url, payload, timeout):
        calls.append(url)
        release.wait(30)
        return "webhook timed out"

    wd, store = runner(tmp_path, [(None, "HTTP 500"), (None, "HTTP 500")])
    config = tmp_path / "lbsplit.toml"
    config.write_text(config.read_text() + '[notify]\ntimeout = 0.2\nwebhooks = ['
                      + ", ".join(f'{{ url = "http://127.0.0.1:{p}/hook" }}' for p in (1, 2, 3)) + "]\n")
    settings = load(config)
    wd.settings, wd.notify = settings, hanging
    try:
        assert wd.check_once().kind == "fail"  # its alert went to three webhooks that hang
        assert wd.check_once().kind == "fail"  # ... and the next check ran while they still hang
        assert not release.is_set() and len(calls) >= 3
        assert load_state(store.watchdog_path).consecutive_failures == 2
        late = notify.send(settings, "apply", Level.P3, "a person's apply", post=hanging)
        assert len(late) == 3 and all("did not answer within 0.2s" in line for line in late), late
    finally:
        release.set()
        notify.drain(5)
    assert all(line.startswith("notify ") for line in notify.drain(1))


def test_a_slow_on_alert_hook_never_delays_the_next_check(tmp_path):
    """The on_alert hook blocks until the test lets it go: both checks run meanwhile, and the history records
    the hook once it ends."""
    import json
    import sys

    from lbsplit.config import load

    started, go = tmp_path / "started", tmp_path / "go"
    script = ("import os, sys, time\nopen(sys.argv[1], 'a').write('x')\n"
              "while not os.path.exists(sys.argv[2]):\n    time.sleep(0.02)\n")
    wd, store = runner(tmp_path, [(None, "HTTP 500"), (None, "HTTP 500")])
    config = tmp_path / "lbsplit.toml"
    config.write_text(config.read_text() + "[hooks]\ntimeout = 30\non_alert = "
                      + json.dumps([sys.executable, "-c", script, str(started), str(go)]) + "\n")
    wd.settings = load(config)
    try:
        assert wd.check_once().kind == "fail"
        assert wd.check_once().kind == "fail"  # the first alert's hook still waits for `go`
        assert not go.exists() and load_state(store.watchdog_path).consecutive_failures == 2
    finally:
        go.touch()
        for thread in wd._hooks_running:
            thread.join(30)
    assert started.read_text().startswith("x")
    hooks = [e for e in store.read_history() if e["command"] == "hook on_alert"]
    assert hooks and hooks[0]["result"] == "ok"
