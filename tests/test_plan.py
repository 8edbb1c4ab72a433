"""`lbsplit plan` prints the seed plan's numbers; small command-line fixes found by trying it as a new user."""

import json

import pytest

from conftest import run_cli

SEED = '''state_dir = "state"
[upstreams]
v1 = ["127.0.0.1:1"]
v2 = ["127.0.0.1:2"]
[health]
url = "http://127.0.0.1:1/health"
'''


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "lbsplit.toml"
    path.write_text(SEED)
    return path


def test_plan_prints_the_seed_plans_numbers(config):
    result = run_cli(config, "plan")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["1", "whitelist", "only", "standard", "5%", "2%", "10", "30", "300s", "60s", "300s"]
    assert lines[2].split() == ["2", "10%", "of", "users", "standard", "5%", "2%", "10", "30", "300s", "60s", "300s"]
    assert lines[3].split() == ["3", "30%", "of", "users", "enhanced", "4%", "1.5%", "8", "25", "60s", "30s", "120s"]
    assert lines[4].split() == ["4", "100%", "of", "users", "critical", "3%", "1%", "5", "20", "30s", "15s", "60s"]
    assert "error_rate P1, timeout_rate P1, dead_letter_growth P2, avg_response_time P2" in result.stdout
    assert "next: 0%" in result.stdout  # nothing applied: the first stage is the whitelist only


def test_plan_json_has_custom_rules_per_stage(config):
    config.write_text(SEED + '[[health.metrics]]\nname = "ai_failure_rate"\nmax = 0.05\nlevel = "P1"\n'
                             'stages = { "10" = { max = 0.1 } }\n')
    view = json.loads(run_cli(config, "plan", "--json").stdout)
    limits = [s["custom"][0]["limit"] for s in view["stages"]]
    assert limits == [0.1, 0.1, 0.05, 0.05] and view["of"] == 4
    assert view["stages"][3]["thresholds"]["timeout_rate"] == {"limit": 0.01, "level": "P1"}


@pytest.mark.parametrize("args, fragment", [
    (["watchdog", "--once", "--loop"], "--once and --loop"),
    (["history", "-n", "0"], "-n: 0"),
    (["history", "-n", "-1"], "-n: -1"),
    (["report", "--window", "5"], "no unit"),
])
def test_contradictions_and_odd_numbers_are_refused(config, args, fragment):
    result = run_cli(config, *args)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr


def test_an_empty_history_says_so(config):
    result = run_cli(config, "history")
    assert result.returncode == 0 and "no history yet" in result.stdout


def test_a_top_level_key_under_a_table_gets_a_hint(config):
    config.write_text(SEED + "[split]\nstages = [10, 30, 100]\n")
    result = run_cli(config, "render", "10")
    assert result.returncode == 2
    assert "split.stages: unknown key; stages is a top-level key: move it above the first [table]" in result.stderr


def test_route_dash_answers_ids_from_stdin_one_json_line_each(config):
    import subprocess
    import sys

    argv = [sys.executable, "-m", "lbsplit", "--config", str(config), "route", "-", "--percent", "30"]
    done = subprocess.run(argv, input="alice\nbob\n\ncarol\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["user_id"] for a in answers] == ["alice", "bob", "", "carol"]
    single = json.loads(run_cli(config, "route", "bob", "--percent", "30", "--json").stdout)
    assert answers[1] == single


def test_force_overrides_and_the_share_wording_are_recorded(sandbox):
    from fakes import HealthEndpoint

    endpoint = HealthEndpoint()
    try:
        sandbox.write_config(whitelist=["vip"], mode="weight",
                             extra=f'\n[health]\nurl = "{endpoint.url}"\ntimeout = 1\n')
        zero = run_cli(sandbox.config_path, "apply", "0")
        assert zero.returncode == 0 and "(the whitelist only)" in zero.stdout
        endpoint.mode = "breach:error_rate=0.5"
        forced = run_cli(sandbox.config_path, "apply", "30", "--force", "--reason", "hotfix")
        assert forced.returncode == 0 and "the whitelist plus 30% of requests" in forced.stdout  # weight mode
        last = json.loads(run_cli(sandbox.config_path, "history", "--json").stdout.splitlines()[-1])
        assert last["command"] == "apply 30" and last["reason"] == "hotfix"
        assert any(item.startswith("[FAIL] error_rate: 0.5") for item in last["forced"])
        text = run_cli(sandbox.config_path, "history", "-n", "1").stdout
        assert "FORCED past: [FAIL] error_rate: 0.5" in text, text  # not only in the JSON
    finally:
        endpoint.close()


def test_status_names_each_alert_once_with_its_source_and_none_after_a_revert(sandbox):
    import time

    from lbsplit.rollout.state import StateStore
    from lbsplit.watch.memory import WatchdogState, save_state

    assert run_cli(sandbox.config_path, "apply", "10").returncode == 0
    alert = {"level": "P1", "rule": "error_rate", "value": 0.5, "limit": 0.05, "bound": "max", "since": time.time()}
    save_state(StateStore(sandbox.state_dir).watchdog_path, WatchdogState(
        last_check_at=time.time(), last_outcome="fail", consecutive_failures=1,
        active_alerts=[dict(alert, source="endpoint"), dict(alert, source="log"), dict(alert, source="log")]))
    text = run_cli(sandbox.config_path, "status").stdout
    assert "active alerts: P1 error_rate (endpoint), P1 error_rate (log)\n" in text, text
    assert run_cli(sandbox.config_path, "revert").returncode == 0
    assert "active alerts: none" in run_cli(sandbox.config_path, "status").stdout  # not the stale ones of 10%
