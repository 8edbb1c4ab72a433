"""Judging v2 by nginx's own access log, on real nginx with real traffic."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run_cli
from fakes import FlakyBackend
from lbsplit.errors import ExitCode

EXIT_REVERTED = ExitCode.WATCHDOG_REVERTED


def configure(sb, v2_port, endpoint=None, source="nginx_log", extra=""):
    url = f'url = "{endpoint.url}"\n' if endpoint else ""
    sb.write_config(
        v2=[f"127.0.0.1:{v2_port}"], whitelist=["test_user_001"],
        extra=f'\n[health]\nsource = "{source}"\n{url}access_log = "{sb.front.prefix}/lbsplit-access.log"\n'
              f"timeout = 1\nmin_requests = 50\n{extra}",
    )


def traffic(sb, n, threads=1):
    ids = [f"user-{i}" for i in range(n)]
    if threads == 1:
        return sb.variants(ids)
    chunks = [ids[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(sb.variants, chunks), [])


def test_errors_seen_by_nginx_revert_v2_while_its_endpoint_says_healthy(sandbox, endpoint):
    flaky = FlakyBackend(fail_every=5)  # 20% of v2's answers are 500s
    try:
        configure(sandbox, flaky.port, endpoint, source="both")
        assert run_cli(sandbox.config_path, "apply", "50").returncode == 0
        codes = []
        for _ in range(3):
            traffic(sandbox, 400)
            codes.append(run_cli(sandbox.config_path, "watchdog", "--once").returncode)
        assert codes == [0, 0, EXIT_REVERTED]
        assert endpoint.requests >= 3 and endpoint.mode == "healthy"
        last = json.loads(run_cli(sandbox.config_path, "history", "--json").stdout.splitlines()[-1])
        assert last["command"] == "watchdog revert" and "log: v2 error_rate" in last["reason"]
        assert set(sandbox.variants([f"user-{i}" for i in range(100)])) == {"v1"}
        report = json.loads(run_cli(sandbox.config_path, "report", "--window", "1m", "--json").stdout)
        assert report["variants"]["v2"]["error_rate"] == pytest.approx(0.2, abs=0.05)
        assert report["variants"]["v1"]["error_rate"] == 0
    finally:
        flaky.close()


def test_upstream_timeouts_count_as_timeouts(sandbox):
    slow = FlakyBackend(slow_every=4, slow_seconds=3.0)  # beyond the sandbox's proxy_read_timeout of 2 s
    try:
        configure(sandbox, slow.port, extra="failures_before_revert = 1\n")
        assert run_cli(sandbox.config_path, "apply", "100").returncode == 0
        variants = traffic(sandbox, 120, threads=60)  # every slow request in flight at once
        assert variants.count("v2") == 90  # the rest got nginx's 504 page
        result = run_cli(sandbox.config_path, "watchdog", "--once")
        assert result.returncode == EXIT_REVERTED
        assert "timeout_rate 0.25 > 0.01" in result.stderr
        table = run_cli(sandbox.config_path, "report", "--window", "1m").stdout
        assert "v2" in table and "25.00%" in table
    finally:
        slow.close()


def test_healthy_v2_under_low_traffic_is_not_judged(sandbox):
    configure(sandbox, sandbox.v2_port, extra='no_data = "ignore"\n')
    assert run_cli(sandbox.config_path, "apply", "10").returncode == 0
    traffic(sandbox, 100)  # about 10 reach v2: below min_requests
    result = run_cli(sandbox.config_path, "watchdog", "--once")
    assert result.returncode == 0
    log = (sandbox.state_dir / "watchdog.log").read_text()
    assert "check=NO_DATA" in log and "not enough data" in log and "no_data=ignore" in log
    report = run_cli(sandbox.config_path, "report").stdout
    assert "not enough data to judge v2" in report


def test_a_missing_access_log_is_a_failed_check_not_a_crash(sandbox):
    sandbox.write_config(extra=f'\n[health]\nsource = "nginx_log"\naccess_log = "{sandbox.root}/nope.log"\n'
                               "failures_before_revert = 2\n")
    assert run_cli(sandbox.config_path, "apply", "10").returncode == 0
    codes = [run_cli(sandbox.config_path, "watchdog", "--once").returncode for _ in range(2)]
    assert codes == [0, EXIT_REVERTED]
    assert "nope.log is missing" in (sandbox.state_dir / "watchdog.log").read_text()


def test_rotation_in_the_middle_of_a_window_loses_nothing(sandbox):
    import os
    import signal

    flaky = FlakyBackend(fail_every=4)
    try:
        configure(sandbox, flaky.port, extra="failures_before_revert = 5\n")
        assert run_cli(sandbox.config_path, "apply", "100").returncode == 0
        traffic(sandbox, 100)
        assert run_cli(sandbox.config_path, "watchdog", "--once").returncode == 0
        traffic(sandbox, 100)
        log = sandbox.front.prefix / "lbsplit-access.log"
        os.rename(log, f"{log}.1")  # logrotate's rename ...
        os.kill(sandbox.front.pid(), signal.SIGUSR1)  # ... and nginx -s reopen
        import time

        for _ in range(100):
            if log.exists():
                break
            time.sleep(0.02)
        traffic(sandbox, 100)
        assert run_cli(sandbox.config_path, "watchdog", "--once").returncode == 0
        watchdog_log = (sandbox.state_dir / "watchdog.json").read_text()
        metrics = json.loads(watchdog_log)["last_metrics"]
        assert metrics["log_v2_requests"] == 300  # 100 before, 100 in the rotated file, 100 after
        assert metrics["log_v2_error_rate"] == pytest.approx(0.25)
    finally:
        flaky.close()


def test_a_log_in_another_format_is_named_and_lines_stamped_in_the_future_are_refused(sandbox):
    """The site writes the watched log in nginx's `combined` format: the check names that format (found with
    nginx -T) and the fix instead of "0 v2 requests"; the skipped lines are counted. Then 2,000 lines
    stamped an hour ahead: counted as bad, none kept in the watchdog's state."""
    import time

    configure(sandbox, sandbox.v2_port, extra='no_data = "ignore"\n')
    conf = sandbox.front.conf
    conf.write_text(conf.read_text().replace("lbsplit-access.log lbsplit;", "lbsplit-access.log combined;"))
    assert run_cli(sandbox.config_path, "apply", "30").returncode == 0  # the reload puts the site's change live
    traffic(sandbox, 300)
    result = run_cli(sandbox.config_path, "watchdog", "--once")
    assert result.returncode == 0, result.stderr
    log = (sandbox.state_dir / "watchdog.log").read_text().splitlines()[-1]
    assert "check=NO_DATA" in log and "is in lbsplit's log format (300 lines skipped)" in log, log
    assert f"nginx writes it with format combined (in {conf})" in log, log
    assert "`access_log" in log and "lbsplit;`" in log

    conf.write_text(conf.read_text().replace("lbsplit-access.log combined;", "lbsplit-access.log lbsplit;"))
    assert run_cli(sandbox.config_path, "apply", "10").returncode == 0
    access = sandbox.front.prefix / "lbsplit-access.log"
    ahead = time.time() + 3600
    with open(access, "a") as f:
        for i in range(2000):
            f.write(f"{ahead + i / 100:.3f}\tlbsplit_v2\t500\t500\t0.003\t0.003\t0.000\t127.0.0.1:{sandbox.v2_port}\n")
    traffic(sandbox, 200)
    assert run_cli(sandbox.config_path, "watchdog", "--once").returncode == 0
    line = (sandbox.state_dir / "watchdog.log").read_text().splitlines()[-1]
    assert "2000 of" in line and "stamped more than 5s in the future" in line, line
    saved = json.loads((sandbox.state_dir / "watchdog.json").read_text())["log_window"]
    seconds = [int(s) for rows in saved.values() for s in rows]
    assert seconds and max(seconds) <= time.time() + 5, "no row from the future is kept"
