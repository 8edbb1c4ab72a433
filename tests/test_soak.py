"""Soak time, manual checks, the plan's position in status, and the alerts view, on real nginx.

Time passing is simulated by moving the recorded times back (applied_at in state.json, the
watchdog's last breach), which is what the gate reads; nothing sleeps.
"""

import datetime as dt
import json

from conftest import run_cli
from fakes import HealthEndpoint


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


def configure(sb, endpoint, plan=""):
    sb.write_config(whitelist=[], top="stages = [10, 30, 100]",
                    extra=f'\n[health]\nurl = "{endpoint.url}"\ntimeout = 1\n{plan}')


def age_stage(sb, hours: float) -> None:
    """Pretend the live stage was applied `hours` ago."""
    path = sb.state_dir / "state.json"
    state = json.loads(path.read_text())
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours)
    state["applied_at"] = when.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    path.write_text(json.dumps(state))


def test_promote_waits_for_the_soak_and_a_persons_apply_is_warned(sandbox):
    endpoint = HealthEndpoint()
    try:
        configure(sandbox, endpoint)
        ok(run_cli(sandbox.config_path, "promote"))  # off -> 10: nothing to soak before
        refused = run_cli(sandbox.config_path, "promote")
        assert refused.returncode == 8 and "[FAIL] soak: clean for 0m" in refused.stderr and "of 48h00m" in refused.stderr
        age_stage(sandbox, 49)
        assert "nginx serves generation" in ok(run_cli(sandbox.config_path, "promote")).stdout  # -> 30
        checked = run_cli(sandbox.config_path, "check", "100")
        assert "[FAIL] soak: clean for 0m" in checked.stdout  # 30% has just begun its 72 h
        # an explicit apply proceeds with a warning...
        warned = ok(run_cli(sandbox.config_path, "apply", "50"))
        assert "[warn] soak: clean for 0m" in warned.stdout and "of 72h00m at 30%" in warned.stdout
        status = json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)
        assert status["percent"] == 50
    finally:
        endpoint.close()


def test_a_breach_during_the_stage_restarts_the_clean_time(sandbox):
    endpoint = HealthEndpoint()
    try:
        configure(sandbox, endpoint)
        ok(run_cli(sandbox.config_path, "apply", "10"))
        age_stage(sandbox, 100)
        endpoint.mode = "breach:dead_letter_growth=11"  # P2 at 10%: an alert, and the soak starts again
        ok(run_cli(sandbox.config_path, "watchdog", "--once"))
        endpoint.mode = "healthy"
        refused = run_cli(sandbox.config_path, "promote")
        assert refused.returncode == 8 and "[FAIL] soak: clean for 0m" in refused.stderr
    finally:
        endpoint.close()


def test_enforce_soak_refuses_an_explicit_apply_too(sandbox):
    endpoint = HealthEndpoint()
    try:
        configure(sandbox, endpoint, plan='\n[plan]\nenforce_soak = true\nsoak = { "10" = "1h" }\n')
        ok(run_cli(sandbox.config_path, "apply", "10"))
        refused = run_cli(sandbox.config_path, "apply", "30")
        assert refused.returncode == 8 and "soak: clean for 0m" in refused.stderr and "of 1h00m" in refused.stderr
    finally:
        endpoint.close()


def test_manual_checks_are_confirmed_by_name_and_recorded(sandbox):
    endpoint = HealthEndpoint()
    try:
        configure(sandbox, endpoint, plan='\n[plan]\nsoak = { "10" = "0s", "30" = "0s", "100" = "1h" }\n')
        ok(run_cli(sandbox.config_path, "promote"))
        ok(run_cli(sandbox.config_path, "promote"))  # at 30%; 100% needs the plan's two manual checks
        refused = run_cli(sandbox.config_path, "promote")
        assert refused.returncode == 8
        assert '[FAIL] check: performance baseline passed: to do: lbsplit promote --confirm' in refused.stderr
        bogus = run_cli(sandbox.config_path, "promote", "--confirm", "it looks fine")
        assert bogus.returncode == 2 and "--confirm" in bogus.stderr and "user feedback positive" in bogus.stderr
        half = run_cli(sandbox.config_path, "promote", "--confirm", "performance baseline passed")
        assert half.returncode == 8 and "[ok  ] check: performance baseline passed: confirmed by" in half.stderr
        done = ok(run_cli(sandbox.config_path, "promote", "--confirm", "user feedback positive",
                          "--reason", "survey of 2026-12-01"))
        assert "nginx serves generation" in done.stdout
        history = [json.loads(l) for l in run_cli(sandbox.config_path, "history", "--json").stdout.splitlines()]
        confirms = [(e["item"], e["stage"]) for e in history if e["command"] == "confirm"]
        assert confirms == [("performance baseline passed", "100"), ("user feedback positive", "100")]
        text = run_cli(sandbox.config_path, "history").stdout
        assert 'confirmed "performance baseline passed" for 100%' in text and \
            'confirmed "user feedback positive" for 100%' in text, text  # each line names its item
        assert history[-1]["command"] == "promote 100"
        status = json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)
        assert status["plan"]["position"] == 3 and status["plan"]["release_complete"] is False
        age_stage(sandbox, 2)  # the 1-hour observation after 100% has passed
        status = json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)
        assert status["plan"]["release_complete"] is True
        assert "release complete" in run_cli(sandbox.config_path, "status").stdout
    finally:
        endpoint.close()


def test_the_alerts_view_lists_what_the_last_check_found(sandbox):
    endpoint = HealthEndpoint()
    try:
        configure(sandbox, endpoint)
        ok(run_cli(sandbox.config_path, "apply", "10"))
        assert "no active alerts" in ok(run_cli(sandbox.config_path, "alerts")).stdout
        endpoint.mode = "breach:avg_response_time=45"
        ok(run_cli(sandbox.config_path, "watchdog", "--once"))
        view = json.loads(ok(run_cli(sandbox.config_path, "alerts", "--json")).stdout)
        [alert] = view["alerts"]
        assert (alert["level"], alert["rule"], alert["value"], alert["limit"]) == ("P2", "avg_response_time", 45, 30)
        assert 0 < view["cooldown_left_s"] <= 300
        table = run_cli(sandbox.config_path, "alerts").stdout
        assert "P2" in table and "avg_response_time" in table and "<=30" in table
        status = json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)
        assert status["watchdog"]["last_outcome"] == "alert" and status["watchdog"]["active_alerts"][0]["rule"] == \
            "avg_response_time"
        endpoint.mode = "healthy"
        ok(run_cli(sandbox.config_path, "watchdog", "--once"))
        assert "no active alerts" in run_cli(sandbox.config_path, "alerts").stdout
    finally:
        endpoint.close()


def test_auto_promote_moves_on_when_soak_and_gate_pass_but_never_past_unconfirmed_checks(sandbox):
    endpoint = HealthEndpoint()
    try:
        configure(sandbox, endpoint, plan='\n[plan]\nauto_promote = true\nsoak = { "10" = "1h", "30" = "0s" }\n')
        ok(run_cli(sandbox.config_path, "apply", "10"))
        ok(run_cli(sandbox.config_path, "watchdog", "--once"))  # 10% has soaked 0 of 1 h: held
        assert json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)["percent"] == 10
        assert "auto-promote to 30% held: [FAIL] soak" in (sandbox.state_dir / "watchdog.log").read_text()
        age_stage(sandbox, 2)
        result = ok(run_cli(sandbox.config_path, "watchdog", "--once"))
        assert "auto-promoted v2 to 30%" in result.stderr
        status = json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)
        assert status["percent"] == 30 and status["serving"]
        assert 0.2 < sandbox.variants([f"u{i}" for i in range(300)]).count("v2") / 300 < 0.4
        # 100% needs the two manual checks: the watchdog does not go there on its own
        ok(run_cli(sandbox.config_path, "watchdog", "--once"))
        assert json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)["percent"] == 30
        history = [json.loads(l) for l in run_cli(sandbox.config_path, "history", "--json").stdout.splitlines()]
        assert [e["command"] for e in history][-1] == "auto-promote 30"
    finally:
        endpoint.close()


def test_plan_check_shows_what_the_gate_says(sandbox):
    endpoint = HealthEndpoint()
    try:
        configure(sandbox, endpoint)
        ok(run_cli(sandbox.config_path, "apply", "10"))
        shown = run_cli(sandbox.config_path, "plan", "--check")
        assert shown.returncode == 8, shown.stderr  # what it prints and its exit code agree, as with `check`
        assert "gate for 30%: refuses" in shown.stdout and "[FAIL] soak: clean for 0m" in shown.stdout
        assert run_cli(sandbox.config_path, "check").returncode == 8
        as_json = run_cli(sandbox.config_path, "plan", "--check", "--json")
        assert as_json.returncode == 8
        view = json.loads(as_json.stdout)
        assert view["gate"]["refuses"] is True and any(i["name"] == "soak" for i in view["gate"]["items"])
        assert ok(run_cli(sandbox.config_path, "plan")).returncode == 0  # without --check: a view, exit 0
    finally:
        endpoint.close()
