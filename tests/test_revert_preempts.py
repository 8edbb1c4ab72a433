"""A person's `revert` does not wait behind a slow command: it ends the holder of the lock (whose
transaction is crash-safe at every step) and reverts; a command that started before the revert
never widens after it. Real command line, real nginx, real requests."""

import json
import os
import subprocess
import sys
import time

from conftest import run_cli, share

IDS = [f"user-{i}" for i in range(1000)] + ["test_user_001"]


def start(sb, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lbsplit", "--config", str(sb.config_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.05)


def test_revert_ends_a_slow_apply_and_nothing_widens_after_it(sandbox):
    assert run_cli(sandbox.config_path, "apply", "10").returncode == 0
    # A 40 s smoke test runs inside `apply 30`, under the lock; a second apply waits behind it.
    sandbox.config_path.write_text(sandbox.config_path.read_text() + '\n[hooks]\npre_promote = ["sleep", "40"]\n')
    lock = sandbox.state_dir / "lock"
    slow = start(sandbox, "apply", "30")
    wait_for(lambda: "apply 30" in lock.read_text(), "apply 30 holds the lock")
    time.sleep(0.5)
    assert slow.poll() is None, slow.communicate()
    waiting = start(sandbox, "apply", "50", "--force")
    time.sleep(0.5)  # it reads the live state, then waits for the lock
    result = run_cli(sandbox.config_path, "revert", "--reason", "v2 misbehaves")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "preempted pid" in result.stdout and "apply 30" in result.stdout, result.stdout
    assert share(sandbox, IDS) == 0.0
    code, err = slow.wait(timeout=30), slow.stderr.read()
    assert code == 130, err  # its undo ran: the previous file was back before the revert replaced it
    # The waiting apply either took the lock first and was ended too (130), or took it after the revert
    # and refused to widen past it (5): never anything that widens.
    code, err = waiting.wait(timeout=60), waiting.stderr.read()
    assert (code, code == 5 and "landed while this command waited" in err or code == 130) in ((5, True), (130, True)), err
    assert share(sandbox, IDS) == 0.0  # nobody widened after the revert
    assert run_cli(sandbox.config_path, "status").returncode == 0


def test_revert_never_ends_another_revert(sandbox):
    from lbsplit.rollout.files import Lock

    assert run_cli(sandbox.config_path, "apply", "10").returncode == 0
    with Lock(sandbox.state_dir / "lock", 0, "revert") as held:
        proc = start(sandbox, "revert")
        time.sleep(1.5)  # past PREEMPT_AFTER and both grace periods: it must still be waiting
        assert proc.poll() is None
        assert held.holder_pid() is not None
    code, out = proc.wait(timeout=60), proc.stdout.read()
    assert code == 0 and "preempted" not in out
    assert share(sandbox, IDS) == 0.0


def test_revert_waits_for_the_watchdog_whose_revert_is_its_own(sandbox):
    from lbsplit.rollout.files import Lock

    assert run_cli(sandbox.config_path, "apply", "10").returncode == 0
    with Lock(sandbox.state_dir / "lock", 0, "watchdog"):
        proc = start(sandbox, "revert")
        time.sleep(1.5)  # past PREEMPT_AFTER and both grace periods: still waiting, the holder alive
        assert proc.poll() is None
    code, out = proc.wait(timeout=60), proc.stdout.read()
    assert code == 0 and "preempted" not in out, out
    assert share(sandbox, IDS) == 0.0


def test_revert_ends_by_asking_v1_through_nginx_and_only_warns_when_v1_fails(sandbox):
    from lbsplit.demo.sandbox import free_port

    assert run_cli(sandbox.config_path, "apply", "10").returncode == 0
    result = run_cli(sandbox.config_path, "revert")
    assert result.returncode == 0, result.stderr
    assert "v1 answers through nginx: 5/5 (200 x5)" in result.stdout, result.stdout
    entries = run_cli(sandbox.config_path, "history", "--json").stdout.splitlines()
    assert "v1 answers through nginx: 5/5" in entries[-1]
    # v1 down (nothing listens on its port): the revert still happens and exits 0, and says so loudly.
    sandbox.write_config(whitelist=["test_user_001"], v1=[f"127.0.0.1:{free_port()}"])
    assert run_cli(sandbox.config_path, "apply", "10").returncode == 0
    result = run_cli(sandbox.config_path, "revert")
    assert result.returncode == 0, result.stderr
    assert "WARNING: v1 answers through nginx: 0/5 (502 x5)" in result.stdout, result.stdout
    assert json_stage(sandbox) is False


def json_stage(sb) -> bool:
    import json

    return json.loads(run_cli(sb.config_path, "status", "--json").stdout)["v2_enabled"]


def due_a_step_back(sb, endpoint, extra: str) -> None:
    """v2 at 30% (stages 10, 30, 100) with a failing health endpoint: the next watchdog check steps back to 10."""
    sb.write_config(top="stages = [10, 30, 100]", extra=(
        f'\n[health]\nurl = "{endpoint.url}"\ntimeout = 1\nfailures_before_revert = 1\non_breach = "previous"\n'
        + extra))
    assert run_cli(sb.config_path, "apply", "10").returncode == 0
    assert run_cli(sb.config_path, "apply", "30").returncode == 0
    endpoint.mode = "status:500"


def test_a_watchdog_step_back_ended_by_a_revert_says_interrupted_not_revert_failed(sandbox, endpoint, webhook, tmp_path):
    due_a_step_back(sandbox, endpoint, f'\n[notify]\nwebhook = "{webhook.url}"\ntimeout = 2\n')
    barrier = tmp_path / "go"  # never created: the step back holds the lock until it is ended
    watchdog = subprocess.Popen([sys.executable, "-m", "lbsplit", "--config", str(sandbox.config_path), "watchdog",
                                 "--once"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "LBSPLIT_FAILPOINT": f"after-lock:wait={barrier}"})
    wait_for(lambda: list(tmp_path.glob("go.*")), "the step back holds the lock")
    assert "watchdog step back to 10" in (sandbox.state_dir / "lock").read_text()
    result = run_cli(sandbox.config_path, "revert", "--reason", "a person decides")
    assert result.returncode == 0 and "preempted" in result.stdout, result.stdout + result.stderr
    out, err = watchdog.communicate(timeout=30)
    assert watchdog.returncode == 130, out + err
    assert "interrupted by SIGTERM" in err and "REVERT FAILED" not in out + err, out + err
    log = (sandbox.state_dir / "watchdog.log").read_text()
    assert "watchdog step back to 10 interrupted" in log and "REVERT FAILED" not in log, log
    assert "revert_failed" not in json.dumps(webhook.received), webhook.received
    assert share(sandbox, IDS) == 0.0


def test_a_revert_after_a_watchdog_step_back_lets_its_post_revert_hook_and_state_save_finish(sandbox, endpoint, tmp_path):
    started, finished = tmp_path / "hook-started", tmp_path / "hook-finished"
    hook = json.dumps([sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); "
                                             f"time.sleep(3); pathlib.Path({str(finished)!r}).touch()"])
    due_a_step_back(sandbox, endpoint, f'\n[hooks]\npost_revert = {hook}\ntimeout = 30\n')
    watchdog = start(sandbox, "watchdog", "--once")
    wait_for(started.exists, "the watchdog stepped back and runs its post_revert hook")
    result = run_cli(sandbox.config_path, "revert", "--reason", "a person decides")
    assert result.returncode == 0 and "preempted" not in result.stdout, result.stdout + result.stderr
    assert share(sandbox, IDS) == 0.0  # the person's revert serves at once, the hook still running
    out, err = watchdog.communicate(timeout=30)
    assert watchdog.returncode == 10, out + err  # it reverted, and finished what follows a revert
    assert finished.exists()  # its post_revert hook was not cut off
    watched = json.loads((sandbox.state_dir / "watchdog.json").read_text())
    assert watched["reverts_total"] == 1 and watched["consecutive_failures"] == 0, watched
    assert share(sandbox, IDS) == 0.0
