"""The watchdog end to end: a fake v2 health endpoint and webhook on loopback, real nginx, real traffic."""

import json

import pytest

from conftest import ok, run_cli
from fakes import WebhookReceiver
from lbsplit.config import load
from lbsplit.rollout.files import Lock
from lbsplit.errors import ExitCode
from lbsplit.watch.watchdog import Watchdog

EXIT_REVERTED = ExitCode.WATCHDOG_REVERTED

USERS = [f"user-{i}" for i in range(300)]
WHITELIST = ["test_user_001", "test_user_002", "internal_staff_001"]


def configure(sb, endpoint, webhook=None, health_extra="", top='stages = [10, 30, 100]'):
    notify = f'\n[notify]\nwebhook = "{webhook.url}"\ntimeout = 2\n' if webhook else ""
    sb.write_config(
        whitelist=WHITELIST, top=top,
        extra=f'\n[health]\nurl = "{endpoint.url}"\ntimeout = 1\n'
              f'prometheus_textfile = "{sb.root}/lbsplit.prom"\n{health_extra}{notify}',
    )


def history(sb):
    return [json.loads(l) for l in run_cli(sb.config_path, "history", "--json").stdout.splitlines()]


def v2_share(sb):
    return sb.variants(USERS + WHITELIST).count("v2")


def test_healthy_v2_is_left_alone(sandbox, endpoint):
    configure(sandbox, endpoint)
    ok(run_cli(sandbox.config_path, "apply", "10"))
    before = v2_share(sandbox)
    for _ in range(4):
        result = run_cli(sandbox.config_path, "watchdog", "--once")
        assert result.returncode == 0 and result.stderr == ""
    assert v2_share(sandbox) == before > 3
    assert history(sandbox)[-1]["command"] == "apply 10"
    log = (sandbox.state_dir / "watchdog.log").read_text().splitlines()
    assert len(log) == 4 and all("check=PASS" in l and "no_data=fail" in l for l in log)
    prom = (sandbox.root / "lbsplit.prom").read_text()
    assert "lbsplit_percent 10" in prom and "lbsplit_watchdog_consecutive_failures 0" in prom


def test_sustained_breach_reverts_after_three_checks_and_notifies(sandbox, endpoint, webhook):
    configure(sandbox, endpoint, webhook)
    ok(run_cli(sandbox.config_path, "apply", "10"))
    endpoint.mode = "breach:error_rate=0.2"
    codes = [run_cli(sandbox.config_path, "watchdog", "--once").returncode for _ in range(3)]
    assert codes == [0, 0, EXIT_REVERTED]
    assert v2_share(sandbox) == 0  # whitelist included: everyone is back on v1
    last = history(sandbox)[-1]
    assert last["command"] == "watchdog revert" and last["to"] == "off"
    assert "error_rate 0.2 > 0.05" in last["reason"] and last["metrics"]["error_rate"] == 0.2
    events = [e["event"] for e in webhook.received]
    assert events == ["apply", "alert", "revert"]  # the person's apply; one alert (then the cooldown); the revert
    assert webhook.received[-1]["metrics"]["error_rate"] == 0.2
    # after a revert the watchdog never re-promotes, even once v2 is healthy again
    endpoint.mode = "healthy"
    assert run_cli(sandbox.config_path, "watchdog", "--once").returncode == 0
    assert v2_share(sandbox) == 0
    assert "lbsplit_reverts_total 1" in (sandbox.root / "lbsplit.prom").read_text()


def test_unreachable_endpoint_reverts_under_no_data_fail(sandbox, endpoint):
    # no_data = "ignore" is judged in-process: tests/test_watchdog_runner.py
    configure(sandbox, endpoint, health_extra='no_data = "fail"\n')
    ok(run_cli(sandbox.config_path, "apply", "10"))
    endpoint.close()
    codes = [run_cli(sandbox.config_path, "watchdog", "--once").returncode for _ in range(3)]
    assert codes[-1] == EXIT_REVERTED
    assert v2_share(sandbox) == 0
    log = (sandbox.state_dir / "watchdog.log").read_text()
    assert "no_data=fail" in log and "connection refused" in log


def test_cron_run_at_100_percent_checks_four_times_15s_apart(sandbox, endpoint):
    configure(sandbox, endpoint)
    ok(run_cli(sandbox.config_path, "apply", "10"))
    ok(run_cli(sandbox.config_path, "apply", "30"))
    ok(run_cli(sandbox.config_path, "apply", "100"))
    settings = load(sandbox.config_path, for_revert=True)
    endpoint.requests = 0  # the gate probed during the applies
    clock = FakeClock()
    code = Watchdog(settings, settings.health, clock=clock.now, sleep=clock.sleep).run("cron")
    assert code == 0
    assert endpoint.requests == 4
    assert clock.slept == pytest.approx([15, 15, 15], abs=0.5)
    assert clock.t - clock.start < 60


def test_cron_run_reverts_a_breach_within_one_minute_at_100(sandbox, endpoint, webhook):
    configure(sandbox, endpoint, webhook)
    for p in ("10", "30", "100"):
        ok(run_cli(sandbox.config_path, "apply", p))
    endpoint.mode = "breach:timeout_rate=0.05"
    settings = load(sandbox.config_path, for_revert=True)
    endpoint.requests = 0  # the gate probed during the applies
    clock = FakeClock()
    code = Watchdog(settings, settings.health, clock=clock.now, sleep=clock.sleep).run("cron")
    assert code == EXIT_REVERTED
    assert endpoint.requests == 3 and clock.slept == pytest.approx([15, 15], abs=0.5)
    assert v2_share(sandbox) == 0


def test_on_breach_previous_steps_back_one_stage(sandbox, endpoint):
    configure(sandbox, endpoint, health_extra='on_breach = "previous"\nfailures_before_revert = 1\n')
    ok(run_cli(sandbox.config_path, "apply", "10"))
    ok(run_cli(sandbox.config_path, "apply", "30"))
    endpoint.mode = "breach:error_rate=0.2"  # P1 (avg_response_time is P2: it would only alert)
    assert run_cli(sandbox.config_path, "watchdog", "--once").returncode == EXIT_REVERTED
    status = json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)
    assert status["percent"] == 10 and status["serving"]
    assert history(sandbox)[-1]["command"] == "watchdog step back to 10"


def test_a_failing_webhook_never_blocks_the_revert(sandbox, endpoint):
    dead = WebhookReceiver(status=500)
    configure(sandbox, endpoint, dead, health_extra="failures_before_revert = 1\n")
    ok(run_cli(sandbox.config_path, "apply", "10"))
    endpoint.mode = "status:503"
    assert run_cli(sandbox.config_path, "watchdog", "--once").returncode == EXIT_REVERTED
    assert v2_share(sandbox) == 0
    assert "answered HTTP 500" in (sandbox.state_dir / "watchdog.log").read_text()
    dead.close()


def test_another_watchdog_running_means_exit_quietly(sandbox, endpoint):
    configure(sandbox, endpoint)
    ok(run_cli(sandbox.config_path, "apply", "10"))
    probed = endpoint.requests  # the gate probed v2 before the first apply
    with Lock(sandbox.state_dir / "watchdog.lock", 0, "other watchdog"):
        result = run_cli(sandbox.config_path, "watchdog", "--once")
    assert result.returncode == 0 and result.stdout == result.stderr == ""
    assert endpoint.requests == probed


def test_a_check_during_an_apply_is_skipped(sandbox, endpoint):
    configure(sandbox, endpoint, health_extra="failures_before_revert = 1\n")
    ok(run_cli(sandbox.config_path, "apply", "10"))
    endpoint.mode = "status:500"
    with Lock(sandbox.state_dir / "lock", 0, "apply 30"):
        result = run_cli(sandbox.config_path, "watchdog", "--once")
    assert result.returncode == 0
    assert "check skipped" in (sandbox.state_dir / "watchdog.log").read_text()
    assert v2_share(sandbox) > 0


def test_nothing_to_watch_when_v2_is_off(sandbox, endpoint):
    configure(sandbox, endpoint)
    result = run_cli(sandbox.config_path, "watchdog")
    assert result.returncode == 0 and result.stderr == "" and endpoint.requests == 0


def test_gate_refuses_a_widening_the_thresholds_forbid(sandbox, endpoint):
    configure(sandbox, endpoint)
    ok(run_cli(sandbox.config_path, "apply", "10"))
    # 0.035 is fine at 10% (limit 5%) and at 30% (4%), but not at 100% (3%)
    endpoint.mode = "breach:error_rate=0.035"
    ok(run_cli(sandbox.config_path, "apply", "30"))
    live = (sandbox.output_dir / "lbsplit.conf").read_bytes()
    result = run_cli(sandbox.config_path, "apply", "100")
    assert result.returncode == 8
    assert "[FAIL] error_rate: 0.035 (limit 0.03 at 100%)" in result.stderr
    assert "[ok  ] revert config: passes nginx -t" in result.stderr
    assert (sandbox.output_dir / "lbsplit.conf").read_bytes() == live
    check = run_cli(sandbox.config_path, "check", "100")
    assert check.returncode == 8 and "[FAIL] error_rate" in check.stdout
    forced = ok(run_cli(sandbox.config_path, "apply", "100", "--force"))
    assert "gate overridden with --force" in forced.stdout
    assert v2_share(sandbox) == len(USERS) + 3


NO_SOAK = '\n[plan]\nsoak = { "10" = "0s", "30" = "0s", "100" = "0s" }\nchecks = { "100" = [] }\n'


def test_gate_warns_when_no_watchdog_runs_and_promote_follows_stages(sandbox, endpoint):
    configure(sandbox, endpoint, health_extra=NO_SOAK)  # soak and manual checks: tests/test_soak.py
    ok(run_cli(sandbox.config_path, "promote"))  # off -> 10
    result = ok(run_cli(sandbox.config_path, "promote"))  # 10 -> 30 through the gate
    assert "[warn] watchdog: has never checked v2" in result.stdout
    ok(run_cli(sandbox.config_path, "watchdog", "--once"))
    result = ok(run_cli(sandbox.config_path, "check"))
    assert "for v2 at 100%" in result.stdout and "[ok  ] watchdog: last checked v2" in result.stdout
    ok(run_cli(sandbox.config_path, "promote"))
    last = run_cli(sandbox.config_path, "promote")  # already at the last stage: nothing to do, not an error
    assert last.returncode == 0 and "nothing to promote" in last.stdout
    checked = run_cli(sandbox.config_path, "check")
    assert checked.returncode == 0 and "nothing to promote" in checked.stdout
    assert [e["command"] for e in history(sandbox)][-3:] == ["promote 10", "promote 30", "promote 100"]


def test_gate_without_health_says_so_and_proceeds(sandbox):
    ok(run_cli(sandbox.config_path, "apply", "10"))
    result = ok(run_cli(sandbox.config_path, "apply", "30"))
    assert "no [health] section in the config: nothing to check" in result.stdout


class FakeClock:
    def __init__(self):
        import time

        self.start = self.t = time.time()
        self.slept = []

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.t += seconds


def test_gate_refuses_when_the_revert_config_would_not_pass_nginx_t(sandbox, endpoint):
    configure(sandbox, endpoint)
    ok(run_cli(sandbox.config_path, "apply", "10"))
    live = (sandbox.output_dir / "lbsplit.conf").read_bytes()
    # v1's name stopped resolving since the last apply: a revert now would fail
    sandbox.config_path.write_text(
        sandbox.config_path.read_text().replace(f'v1 = ["127.0.0.1:{sandbox.v1_port}"]', 'v1 = ["v1-gone.invalid:80"]')
    )
    result = run_cli(sandbox.config_path, "apply", "30")
    assert result.returncode == 8
    assert "[FAIL] revert config: nginx -t rejects it" in result.stderr and "host not found" in result.stderr
    assert (sandbox.output_dir / "lbsplit.conf").read_bytes() == live


def test_bearer_token_is_sent_and_never_printed(sandbox, endpoint, webhook):
    token = "tok-9f8e7d6c5b4a"
    (sandbox.root / "token").write_text(token + "\n")
    configure(sandbox, endpoint, webhook, health_extra='bearer_token_file = "token"\nfailures_before_revert = 1\n')
    ok(run_cli(sandbox.config_path, "apply", "10"))
    endpoint.mode = "status:500"
    result = run_cli(sandbox.config_path, "watchdog", "--once")
    assert result.returncode == EXIT_REVERTED
    assert endpoint.seen_headers[-1]["Authorization"] == f"Bearer {token}"
    seen = result.stdout + result.stderr + run_cli(sandbox.config_path, "history", "--json").stdout
    seen += (sandbox.state_dir / "watchdog.log").read_text() + json.dumps(webhook.received)
    assert token not in seen


def test_loop_mode_keeps_checking_at_the_stage_interval(sandbox, endpoint):
    configure(sandbox, endpoint)
    ok(run_cli(sandbox.config_path, "apply", "10"))
    ok(run_cli(sandbox.config_path, "apply", "30"))
    settings = load(sandbox.config_path, for_revert=True)
    endpoint.requests = 0
    clock = FakeClock()
    code = Watchdog(settings, settings.health, clock=clock.now, sleep=clock.sleep).run("loop", max_loops=5)
    assert code == 0 and endpoint.requests == 5
    assert clock.slept == pytest.approx([30, 30, 30, 30], abs=0.5)  # 30 s at the 30% stage


def test_when_nginx_itself_refuses_the_revert_the_watchdog_says_so_loudly(sandbox, endpoint, webhook):
    configure(sandbox, endpoint, webhook, health_extra="failures_before_revert = 1\n")
    ok(run_cli(sandbox.config_path, "apply", "10"))
    conf = sandbox.front.conf
    original = conf.read_text()
    conf.write_text(original.replace("worker_connections 1024;", "worker_connections 1024; broken_here;"))
    endpoint.mode = "status:500"
    try:
        result = run_cli(sandbox.config_path, "watchdog", "--once")
    finally:
        conf.write_text(original)
    assert result.returncode == 11
    assert "REVERT FAILED" in result.stderr and "broken_here" in result.stderr
    assert [e["event"] for e in webhook.received] == ["apply", "revert_failed"]
    # once the main config is fixed, the next run reverts
    assert run_cli(sandbox.config_path, "watchdog", "--once").returncode == EXIT_REVERTED
    assert v2_share(sandbox) == 0
