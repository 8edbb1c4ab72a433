"""Failures on a real nginx: nothing changes, the message says why, the exit code tells which."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli

IDS = [f"user-{i}" for i in range(400)]


def live_bytes(sb):
    return (sb.output_dir / "lbsplit.conf").read_bytes()


def status(sb):
    return json.loads(run_cli(sb.config_path, "status", "--json").stdout)


def applied(sb, percent):
    result = run_cli(sb.config_path, "apply", percent)
    assert result.returncode == 0, result.stderr
    return sb.variants(IDS)


def test_failed_nginx_test_leaves_live_bytes_and_traffic_unchanged(sandbox):
    traffic = applied(sandbox, "10")
    before = live_bytes(sandbox)
    # A v2 host that does not resolve passes lbsplit's checks; nginx -t rejects it.
    sandbox.write_config(v2=["v2-does-not-exist.invalid:8080"], whitelist=["test_user_001"])
    result = run_cli(sandbox.config_path, "apply", "30")
    assert result.returncode == 3
    assert "nginx -t rejected the new config (previous config still live)" in result.stderr
    assert "host not found in upstream" in result.stderr
    assert "Traceback" not in result.stderr
    assert live_bytes(sandbox) == before
    assert sandbox.variants(IDS) == traffic
    assert status(sandbox)["generation"] == 2
    assert not list(sandbox.output_dir.glob(".lbsplit-tmp-*"))


def test_a_main_config_broken_by_someone_else_is_named_as_such(sandbox):
    applied(sandbox, "10")
    before = live_bytes(sandbox)
    conf = sandbox.front.conf
    original = conf.read_text()
    conf.write_text(original.replace("worker_connections 1024;", "worker_connections 1024; bogus_directive on;"))
    try:
        result = run_cli(sandbox.config_path, "apply", "30")
    finally:
        conf.write_text(original)
    assert result.returncode == 3
    assert "problem is elsewhere in your nginx config" in result.stderr
    assert "bogus_directive" in result.stderr
    assert live_bytes(sandbox) == before


def test_a_reload_that_does_not_take_effect_is_undone(sandbox):
    traffic = applied(sandbox, "10")
    before = live_bytes(sandbox)
    # nginx -t passes with a port in use; the master then fails to bind and keeps the old config.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy = blocker.getsockname()[1]
    text = sandbox.config_path.read_text()
    sandbox.config_path.write_text(
        text.replace(f"127.0.0.1:{sandbox.status_port}", f"127.0.0.1:{busy}").replace("verify_timeout = 20", "verify_timeout = 3")
    )
    try:
        result = run_cli(sandbox.config_path, "apply", "30")
    finally:
        blocker.close()
        sandbox.config_path.write_text(text)
    assert result.returncode == 4, result.stderr
    # asked at the restored file's status address, not the failed change's
    assert "Previous config restored; nginx serves generation" in result.stderr and " again" in result.stderr
    assert live_bytes(sandbox) == before
    assert sandbox.variants(IDS) == traffic
    assert status(sandbox)["serving"] is True


def test_nginx_not_running_installs_checks_and_says_so(sandbox):
    sandbox.front.stop()
    result = run_cli(sandbox.config_path, "apply", "30")
    assert result.returncode == 0, result.stderr
    assert "nginx is not running" in result.stdout and "nothing was reloaded" in result.stdout
    assert b"30% lbsplit_v2;" in live_bytes(sandbox)
    s = status(sandbox)
    assert s["nginx_running"] is False and s["percent"] == 30
    sandbox.front.start(wait_port=sandbox.port)
    on_v2 = sandbox.variants(IDS).count("v2") / len(IDS)
    assert 0.2 < on_v2 < 0.4


def test_bad_input_exits_2_with_one_line_and_changes_nothing(sandbox):
    applied(sandbox, "10")
    before = live_bytes(sandbox)
    for args in (["apply", "101"], ["apply", "-5"], ["apply", "12.345"], ["apply", "ten"]):
        result = run_cli(sandbox.config_path, *args)
        assert result.returncode == 2, args
        assert result.stderr.startswith("lbsplit: percent: "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    sandbox.write_config(whitelist=["ok", "not ok"])
    result = run_cli(sandbox.config_path, "apply", "30")
    assert result.returncode == 2 and "split.whitelist[1]" in result.stderr and "Traceback" not in result.stderr
    assert live_bytes(sandbox) == before


def test_revert_works_when_split_v2_and_whitelist_are_broken(sandbox):
    applied(sandbox, "100")
    sandbox.config_path.write_text(
        sandbox.config_path.read_text()
        .replace(f'v2 = ["127.0.0.1:{sandbox.v2_port}"]', 'v2 = ["garbage here"]')
        .replace('mode = "hash"', 'mode = "hash"\nwhitelist_file = "missing.txt"')
    )
    assert run_cli(sandbox.config_path, "apply", "10").returncode == 2
    result = run_cli(sandbox.config_path, "revert")
    assert result.returncode == 0, result.stderr
    assert set(sandbox.variants(IDS + ["test_user_001"])) == {"v1"}


def test_missing_nginx_binary_is_one_clear_line(sandbox):
    sandbox.config_path.write_text(
        sandbox.config_path.read_text().replace(f'binary = "{sandbox.binary}"', 'binary = "/nonexistent/nginx"')
    )
    before = live_bytes(sandbox)
    result = run_cli(sandbox.config_path, "apply", "10")
    assert result.returncode == 6
    assert "not found; install nginx or set nginx.binary" in result.stderr
    assert live_bytes(sandbox) == before


def test_two_applies_racing_serialize(sandbox):
    argv = [sys.executable, "-m", "lbsplit", "--config", str(sandbox.config_path)]
    procs = [subprocess.Popen(argv + ["apply", p], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in ("10", "30", "50")]
    procs.append(subprocess.Popen(argv + ["revert"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=120) for p in procs]
    assert procs[3].returncode == 0, outputs
    # An apply either ran, or met the revert: ended by it (130, its undo ran) or, having waited behind it,
    # refused to widen past it (5). Never anything else.
    for p, (out, err) in zip(procs[:3], outputs):
        assert p.returncode == 0 or (p.returncode == 130 and "interrupted by SIGTERM" in err) or (
            p.returncode == 5 and "landed while this command waited" in err), (p.returncode, out, err)
    s = status(sandbox)
    history = [json.loads(l) for l in run_cli(sandbox.config_path, "history", "--json").stdout.splitlines()]
    changed = sum("nginx serves generation" in out for out, _ in outputs)
    unchanged = sum("nothing changed" in out for out, _ in outputs)
    refused = sum(p.returncode in (5, 130) for p in procs)
    assert changed + unchanged + refused == 4  # a revert that wins the lock first finds v2 already off
    assert len(history) == 1 + changed  # init + every change, none lost
    # each change started from the one before it: they did not interleave
    for a, b in zip(history, history[1:]):
        assert b["from"] == a["to"]
    assert history[-1]["generation"] == s["generation"] == s["serving_generation"]


def test_lock_busy_fails_after_the_bounded_wait(sandbox):
    from lbsplit.rollout.files import Lock

    sandbox.config_path.write_text(sandbox.config_path.read_text().replace("lock_timeout = 30", "lock_timeout = 1"))
    with Lock(sandbox.state_dir / "lock", 1, "test holding the lock"):
        result = run_cli(sandbox.config_path, "apply", "10")
    assert result.returncode == 5
    assert "held by pid" in result.stderr and "test holding the lock" in result.stderr


def crash_trial(sb, command: list[str], delay: float, expect_new: bytes) -> str:
    """kill -9 `lbsplit COMMAND` after `delay` s; check the disk and nginx; repair; return what repair said."""
    old = live_bytes(sb)
    argv = [sys.executable, "-m", "lbsplit", "--config", str(sb.config_path), *command]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    now = live_bytes(sb)
    assert now == old or expect_new in now, "torn or foreign file on disk"
    assert subprocess.run([sb.binary, "-p", str(sb.front.prefix), "-c", str(sb.front.conf), "-t", "-q"]).returncode == 0
    unfinished = status(sb)["unfinished_transaction"]
    result = run_cli(sb.config_path, "repair")
    assert result.returncode == 0, result.stderr
    # a kill between creating a temp file and renaming it leaves one; the next command removes it
    assert not list(sb.output_dir.glob(".lbsplit-tmp-*")) and not list(sb.state_dir.rglob(".lbsplit-tmp-*"))
    assert ("interrupted" in result.stdout) == (unfinished is not None)
    s = status(sb)
    assert s["unfinished_transaction"] is None
    assert s["serving"] is True and s["generation"] == s["serving_generation"], (s, result.stdout)
    # state and history agree with what nginx serves
    last = json.loads(run_cli(sb.config_path, "history", "--json").stdout.splitlines()[-1])
    served = (sb.output_dir / "lbsplit.conf").read_bytes()
    assert (b"v2 off" in served) == (s["v2_enabled"] is False)
    assert last["generation"] == s["generation"] or last["command"].startswith("repair")
    return result.stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(20))
def test_kill_9_during_apply_or_revert_leaves_old_or_new_and_is_repaired(sandbox, trial):
    """Random delays, an extra to tests/test_crash.py's exact failpoint matrix."""
    applied(sandbox, "10")
    delay = 0.1 + (trial // 2) * 0.04  # from python start-up to after the verify
    if trial % 2 == 0:
        crash_trial(sandbox, ["apply", "30"], delay, b"30% lbsplit_v2;")
    else:
        crash_trial(sandbox, ["revert"], delay, b"v2 off (everyone on v1)")


@pytest.mark.slow
def test_200_crash_trials(sandbox):
    import random

    rng = random.Random(9)
    outcomes = {}
    for trial in range(200):
        percent = rng.choice(["10", "30", "50"])
        applied(sandbox, percent)
        if trial % 2:
            said = crash_trial(sandbox, ["revert"], rng.uniform(0.05, 0.6), b"v2 off (everyone on v1)")
        else:
            target = {"10": "30", "30": "50", "50": "10"}[percent]
            said = crash_trial(sandbox, ["apply", target], rng.uniform(0.05, 0.6), f"{target}% lbsplit_v2;".encode())
        kind = said.split(" ")[0]
        outcomes[kind] = outcomes.get(kind, 0) + 1
    print("repair outcomes over 200 trials:", outcomes)
    # delays from 0.05 s to 0.6 s reach before, inside and after the transaction
    assert outcomes.get("nothing", 0) > 0 and outcomes.get("rolled", 0) > 0 and outcomes.get("finished", 0) > 0, outcomes


def with_reload_command(sb, argv):
    text = "".join(line for line in sb.config_path.read_text().splitlines(keepends=True)
                   if not line.startswith("reload_command"))
    sb.config_path.write_text(text.replace("verify_timeout = 20\n", f"verify_timeout = 20\nreload_command = {json.dumps(argv)}\n"))


def test_a_reload_command_is_used_instead_of_the_signal(sandbox):
    # The default reload is SIGHUP to the master; a configured reload_command replaces it, and
    # lbsplit still verifies that nginx serves the result.
    with_reload_command(sandbox, [sandbox.binary, "-p", str(sandbox.front.prefix), "-c", str(sandbox.front.conf),
                                  "-s", "reload"])
    on_v2 = applied(sandbox, "30").count("v2") / len(IDS)
    assert 0.2 < on_v2 < 0.4
    before, traffic = live_bytes(sandbox), sandbox.variants(IDS)
    with_reload_command(sandbox, ["/bin/false"])
    result = run_cli(sandbox.config_path, "apply", "60")
    assert result.returncode == 4, result.stderr
    assert "/bin/false failed" in result.stderr and "Previous config restored" in result.stderr
    assert live_bytes(sandbox) == before
    assert sandbox.variants(IDS) == traffic


def test_reload_of_a_master_that_just_exited_is_a_reload_failure(sandbox):
    from lbsplit.config import load
    from lbsplit.errors import ReloadFailed
    from lbsplit.nginx.process import Nginx

    child = subprocess.Popen(["sleep", "0"])
    child.wait()  # a pid that no longer exists
    with pytest.raises(ReloadFailed, match=f"master \\(pid {child.pid}\\) exited"):
        Nginx(load(sandbox.config_path).nginx).reload(child.pid)


def test_the_masters_children_are_the_same_read_either_way(sandbox):
    # /proc/<pid>/task/<pid>/children is the fast way; the scan of every process's parent is the fallback.
    from lbsplit.nginx.process import Nginx

    master = sandbox.front.pid()
    fast = Nginx.worker_pids(master)
    assert fast and fast == Nginx.children_by_scan(master)
    applied(sandbox, "20")  # a reload: new workers, and the old ones leave
    deadline = time.monotonic() + 10
    while Nginx.worker_pids(master) & fast and time.monotonic() < deadline:
        time.sleep(0.05)
    after = Nginx.worker_pids(master)
    assert after and not after & fast and after == Nginx.children_by_scan(master)


def test_the_pid_file_is_read_from_nginx_conf_again_whenever_it_changes(tmp_path):
    # Remembered per process for the fleet agent, keyed by nginx.conf's stat: an edit is seen.
    from lbsplit.config import NginxSettings
    from lbsplit.nginx.process import Nginx

    conf = tmp_path / "nginx.conf"
    settings = NginxSettings(binary="/bin/true", conf=conf, prefix=tmp_path, output_dir=tmp_path, reload_command=(),
                             status_listen="127.0.0.1:9181", verify_timeout=5, pid_file=None)
    conf.write_text("pid run/a.pid;\nevents {}\n")
    assert Nginx(settings).pid_file() == tmp_path / "run/a.pid"
    assert Nginx(settings).pid_file() == tmp_path / "run/a.pid"
    conf.write_text("pid /elsewhere/b.pid;\nevents {}\n")
    assert Nginx(settings).pid_file() == Path("/elsewhere/b.pid")
    conf.write_text("pid /elsewhere/c.pid;\nevents {}\n")  # the same size
    os.utime(conf, ns=(1, 10**18))
    assert Nginx(settings).pid_file() == Path("/elsewhere/c.pid")
