"""The seed's whole rollout plan, end to end, on real nginx with a fake health endpoint.

whitelist only -> 10% -> 30% -> 100% with the plan's soak times (time moved by rewriting the
recorded times, nothing sleeps), a P2 alert that holds, custom metrics failing the final check,
manual confirmations, hooks, notifications in two formats, "release complete", and a P1 revert.
"""

import datetime as dt
import json
import sys

from conftest import ok, run_cli
from fakes import HEALTHY, HealthEndpoint, WebhookReceiver

WHITELIST = ["test_user_001", "test_user_002", "internal_staff_001"]
USERS = [f"user-{i}" for i in range(400)]
FINAL = {"ai_failure_rate": 0.01, "db_error_rate": 0.001, "dead_letter_backlog": 0}


def age(sb, hours):
    """Move the live stage's start, and any breach the watchdog saw, `hours` into the past."""
    path = sb.state_dir / "state.json"
    state = json.loads(path.read_text())
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours)
    state["applied_at"] = when.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    path.write_text(json.dumps(state))
    wd_path = sb.state_dir / "watchdog.json"
    wd = json.loads(wd_path.read_text()) if wd_path.exists() else {}
    if wd.get("last_breach_at"):
        wd["last_breach_at"] -= hours * 3600
    # ... and the watchdog watched it all along (soak counts watched time only; tests/test_soak.py)
    import time

    wd.update(watched_generation=state["generation"], watched_s=hours * 3600, watched_last_at=time.time(),
              last_check_at=time.time())
    wd_path.write_text(json.dumps(wd))


def v2_users(sb):
    return sb.variants(USERS).count("v2")


def test_the_seed_plan_end_to_end(sandbox, tmp_path):
    endpoint, json_hook, wecom_hook = HealthEndpoint(), WebhookReceiver(), WebhookReceiver()
    envs = tmp_path / "hooks.jsonl"
    recorder = json.dumps([sys.executable, "-c", "import os, json; open(%r, 'a').write(json.dumps({k: v for k, v in "
                           "os.environ.items() if k.startswith('LBSPLIT_')}) + '\\n')" % str(envs)])
    try:
        sandbox.write_config(whitelist=WHITELIST, extra=f'''
[health]
url = "{endpoint.url}"
timeout = 1

[[health.metrics]]
name = "ai_failure_rate"
max = 0.05
level = "P1"

[[health.metrics]]
name = "db_error_rate"
max = 0.01
level = "P1"

[[health.metrics]]
name = "dead_letter_backlog"
max = 0

[hooks]
post_apply = {recorder}
post_revert = {recorder}

[notify]
webhook = "{json_hook.url}"

[[notify.webhooks]]
url = "{wecom_hook.url}"
format = "wecom"
min_level = "P2"
''')
        endpoint.mode = "raw:" + json.dumps({**HEALTHY, **FINAL})
        plan = ok(run_cli(sandbox.config_path, "plan")).stdout
        assert "1  whitelist only" in plan and "4  100% of users" in plan and "next: 0%" in plan

        # Step 2.1: the whitelist, then 10%
        ok(run_cli(sandbox.config_path, "promote"))
        assert sandbox.variants(WHITELIST) == ["v2"] * 3 and v2_users(sandbox) == 0
        ok(run_cli(sandbox.config_path, "promote"))
        assert 20 < v2_users(sandbox) < 60

        # Step 2.2: 30% only after 48 h clean at 10%
        assert run_cli(sandbox.config_path, "promote").returncode == 8
        age(sandbox, 49)
        ok(run_cli(sandbox.config_path, "promote"))
        at_30 = v2_users(sandbox)
        assert 90 < at_30 < 150

        # a P2 breach at 30% alerts and holds, never reverts
        endpoint.mode = "raw:" + json.dumps({**HEALTHY, **FINAL, "dead_letter_growth": 9})
        ok(run_cli(sandbox.config_path, "watchdog", "--once"))
        assert v2_users(sandbox) == at_30
        age(sandbox, 80)  # 72 h clean at 30%, counted from the alert
        held = run_cli(sandbox.config_path, "promote")
        assert held.returncode == 8 and "dead_letter_growth: 9 (limit 5 at 100%, P2)" in held.stderr

        # the final check: custom metrics, then the manual checks
        endpoint.mode = "raw:" + json.dumps({**HEALTHY, **FINAL, "ai_failure_rate": 0.5, "dead_letter_backlog": 12})
        final = run_cli(sandbox.config_path, "promote")
        assert final.returncode == 8
        assert "[FAIL] ai_failure_rate: 0.5 (limit 0.05 at 100%)" in final.stderr
        assert "[FAIL] dead_letter_backlog: 12 (limit 0 at 100%, P2)" in final.stderr
        endpoint.mode = "raw:" + json.dumps({**HEALTHY, **FINAL})
        todo = run_cli(sandbox.config_path, "promote")
        assert todo.returncode == 8 and "to do: lbsplit promote --confirm \"user feedback positive\"" in todo.stderr
        ok(run_cli(sandbox.config_path, "promote", "--confirm", "performance baseline passed",
                   "--confirm", "user feedback positive", "--reason", "final check"))

        # Step 2.3: 100%, then the 24-hour observation
        assert v2_users(sandbox) == len(USERS)
        status = json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)
        assert status["plan"]["position"] == 4 and not status["plan"]["release_complete"]
        age(sandbox, 25)
        ok(run_cli(sandbox.config_path, "watchdog", "--once"))
        assert "release complete" in ok(run_cli(sandbox.config_path, "status")).stdout

        # a P1 breach: three failed checks in a row revert everyone, whitelist included
        endpoint.mode = "raw:" + json.dumps({**HEALTHY, **FINAL, "error_rate": 0.2})
        codes = [run_cli(sandbox.config_path, "watchdog", "--once").returncode for _ in range(3)]
        assert codes == [0, 0, 10]
        assert v2_users(sandbox) == 0 and sandbox.variants(WHITELIST) == ["v1"] * 3

        events = [e["event"] for e in json_hook.received]
        # the P1 failures' alert falls within the cooldown of the P2 alert minutes before: the revert says it all
        assert events == ["promote", "promote", "promote", "alert", "promote", "recovery", "release_complete", "revert"]
        assert [e["text"]["content"][:13] for e in wecom_hook.received] == ["[lbsplit P2] ", "[lbsplit P1] "]
        ran = [json.loads(line) for line in envs.read_text().splitlines()]
        assert [(r["LBSPLIT_EVENT"], r["LBSPLIT_STAGE"]) for r in ran] == [
            ("post_apply", "0"), ("post_apply", "10"), ("post_apply", "30"), ("post_apply", "100"),
            ("post_revert", "off")]
        history = [json.loads(l) for l in run_cli(sandbox.config_path, "history", "--json").stdout.splitlines()]
        commands = [e["command"] for e in history if not e["command"].startswith("hook")]
        assert commands == ["init", "promote 0", "promote 10", "promote 30", "confirm", "confirm", "promote 100",
                            "watchdog revert"]
    finally:
        endpoint.close()
        json_hook.close()
        wecom_hook.close()
