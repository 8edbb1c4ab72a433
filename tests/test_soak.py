"""Soak time, manual checks, the plan's position in status, and the alerts view, on real nginx.

Time passing is simulated by moving the recorded times back (applied_at in state.json, the
watchdog's last breach), which is what the gate reads; nothing sleeps.
"""

import datetime as dt
import json
import re

from conftest import ok, run_cli
from fakes import HealthEndpoint


def configure(sb, endpoint, plan=""):
    sb.write_config(whitelist=[], top="stages = [10, 30, 100]",
                    extra=f'\n[health]\nurl = "{endpoint.url}"\ntimeout = 1\n{plan}')


def age_stage(sb, hours: float, watched: float | None = None, stopped_ago: float = 0.0) -> None:
    """Pretend the live stage was applied `hours` ago and the watchdog watched it clean for `watched` hours (all
    along by default), its last check `stopped_ago` hours ago. watched=0: no watchdog ever ran."""
    import time

    path = sb.state_dir / "state.json"
    state = json.loads(path.read_text())
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours)
    state["applied_at"] = when.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    path.write_text(json.dumps(state))
    watched = hours if watched is None else watched
    wd_path = sb.state_dir / "watchdog.json"
    wd = json.loads(wd_path.read_text()) if wd_path.exists() else {}
    if watched:
        last = time.time() - stopped_ago * 3600
        wd.update(watched_generation=state["generation"], watched_s=watched * 3600, watched_last_at=last,
                  last_check_at=last)
    else:
        wd.update(watched_generation=None, watched_s=0.0, watched_last_at=None, last_check_at=None)
    wd_path.write_text(json.dumps(wd))


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


def test_the_soak_clock_counts_only_time_the_watchdog_watched(sandbox):
    """49 h at 10% with no watchdog ever running is not 48 h of soak; nor is 10 h watched and then a watchdog
    that stopped 2 h ago. Real watchdog runs then move the clock."""
    endpoint = HealthEndpoint()
    try:
        configure(sandbox, endpoint)
        ok(run_cli(sandbox.config_path, "promote"))  # off -> 10
        age_stage(sandbox, 49, watched=0)
        refused = run_cli(sandbox.config_path, "promote")
        assert refused.returncode == 8, refused.stdout
        assert "[FAIL] soak: clean for 0m00s of 48h00m at 10%, watched time only; the watchdog has not checked " \
               "this stage yet, so the clock stands still" in refused.stderr
        age_stage(sandbox, 49, watched=10, stopped_ago=2)
        refused = run_cli(sandbox.config_path, "promote")
        assert refused.returncode == 8 and "clean for 10h00m of 48h00m" in refused.stderr
        assert "the watchdog stopped 2h00m ago" in refused.stderr, refused.stderr
        status = run_cli(sandbox.config_path, "status").stdout
        assert "clean for 10h00m of 48h00m watched (the watchdog stopped 2h00m ago)" in status, status
        age_stage(sandbox, 49, watched=10, stopped_ago=0)
        before = json.loads((sandbox.state_dir / "watchdog.json").read_text())["watched_s"]
        ok(run_cli(sandbox.config_path, "watchdog", "--once"))
        after = json.loads((sandbox.state_dir / "watchdog.json").read_text())["watched_s"]
        assert 0 < after - before < 120, (before, after)  # the real check added the time since the last one
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
        # advisory = []: both of the plan's manual checks are key here (by default user feedback only warns)
        configure(sandbox, endpoint, plan='\n[plan]\nsoak = { "10" = "0s", "30" = "0s", "100" = "1h" }\nadvisory = []\n')
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


def test_a_widening_while_nobody_watches_is_refused_unless_forced(sandbox):
    """v2 on for an hour with no watchdog ever run, or one that stopped: the gate refuses to widen (exit 8);
    right after a change it only warns (cron may not have run yet); --force proceeds and is recorded."""
    endpoint = HealthEndpoint()
    try:
        configure(sandbox, endpoint, plan='\n[plan]\nsoak = { "10" = "0s" }\n')
        ok(run_cli(sandbox.config_path, "apply", "10"))
        fresh = ok(run_cli(sandbox.config_path, "check", "30"))
        assert "[warn] watchdog: has never checked v2" in fresh.stdout
        age_stage(sandbox, 1, watched=0)
        refused = run_cli(sandbox.config_path, "apply", "30")
        assert refused.returncode == 8 and "[FAIL] watchdog: has never checked v2" in refused.stderr, refused.stderr
        age_stage(sandbox, 1, watched=0.5, stopped_ago=0.5)
        refused = run_cli(sandbox.config_path, "apply", "30")
        # 30m00s when aged, a second more on a slow start (seen as 30m01s)
        assert refused.returncode == 8 and re.search(r"\[FAIL\] watchdog: last checked v2 30m0[0-5]s ago",
                                                     refused.stderr), refused.stderr
        forced = ok(run_cli(sandbox.config_path, "apply", "30", "--force"))
        assert "gate overridden with --force" in forced.stdout
        last = [json.loads(x) for x in (sandbox.state_dir / "history.jsonl").read_text().splitlines()][-1]
        assert any("watchdog" in item for item in last["forced"])
        assert sandbox.variants([f"user-{i}" for i in range(300)]).count("v2") > 50
    finally:
        endpoint.close()


def test_the_final_check_follows_the_plans_key_column_and_lists_all_ten_items(sandbox):
    """User feedback is not key in the plan: unconfirmed, it warns; the performance baseline is key and blocks.
    The three items only the user's metrics can judge are listed as not configured, in `plan` and `check`."""
    endpoint = HealthEndpoint()
    try:
        configure(sandbox, endpoint, plan='\n[plan]\nsoak = { "10" = "0s", "30" = "0s" }\n')
        plan = ok(run_cli(sandbox.config_path, "plan")).stdout
        final = plan.split("final check before 100% (the plan's ten items):\n", 1)[1].splitlines()
        assert len(final) == 10, final
        assert sum(line.startswith("  todo") for line in final) == 3
        assert 'todo AI failure rate below 5%: not configured: add a [[health.metrics]] entry with name = ' \
               '"ai_failure_rate" and max = 0.05' in plan
        ok(run_cli(sandbox.config_path, "apply", "30"))
        ok(run_cli(sandbox.config_path, "watchdog", "--once"))
        refused = run_cli(sandbox.config_path, "promote")
        assert refused.returncode == 8
        assert '[FAIL] check: performance baseline passed: to do' in refused.stderr
        assert '[warn] check: user feedback positive: to do: lbsplit promote --confirm "user feedback positive" ' \
               '(not key: a warning, never a refusal)' in refused.stderr
        assert '[warn] final check: database error rate below 1%: not configured' in refused.stderr
        promoted = ok(run_cli(sandbox.config_path, "promote", "--confirm", "performance baseline passed"))
        assert "[warn] check: user feedback positive" in promoted.stdout
        assert json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)["percent"] == 100
    finally:
        endpoint.close()
