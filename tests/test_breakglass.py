"""The break-glass never lies: each way revert, apply, status or the watchdog was found to fail, on real nginx.

One test per finding; the comment above each names it. Every test drives the real `lbsplit`
command against a real nginx on loopback, unless it checks a pure decision.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import live, ok, run_cli, share
from fakes import HealthEndpoint
from lbsplit.nginx.process import parent_pid
from lbsplit.rollout.files import Lock

IDS = [f"user-{i}" for i in range(300)]


def one_line(result, code):
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def served(sb) -> dict:
    return json.loads(run_cli(sb.config_path, "status", "--json").stdout)


def restart_front(sb, conf_text: str) -> None:
    sb.front.stop()
    sb.front.conf.write_text(conf_text)
    sb.front.start(wait_port=sb.port)


# 1. The pid directive in an included file: lbsplit finds the master through the status page.
def test_a_pid_directive_in_an_included_file_still_reloads_the_running_nginx(sandbox):
    conf = sandbox.front.conf.read_text()
    pid_line = f"pid {sandbox.front.prefix}/nginx.pid;"
    (sandbox.front.prefix / "pid.conf").write_text(pid_line + "\n")
    restart_front(sandbox, conf.replace(pid_line, f"include {sandbox.front.prefix}/pid.conf;"))
    result = ok(run_cli(sandbox.config_path, "apply", "20"))
    assert "nginx serves generation" in result.stdout
    assert 0.1 < share(sandbox, IDS) < 0.3
    ok(run_cli(sandbox.config_path, "revert"))
    assert share(sandbox, IDS) == 0 and served(sandbox)["serving"] is True


# 1. Orphaned workers (the master was killed) still serve: revert fails loudly, never "not running".
def test_orphaned_workers_serving_make_revert_fail_loudly(sandbox):
    ok(run_cli(sandbox.config_path, "apply", "30"))
    master = sandbox.front.pid()
    workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and parent_pid(int(p)) == master]
    os.kill(master, signal.SIGKILL)
    try:
        deadline = time.monotonic() + 5
        while parent_pid(workers[0]) == master and time.monotonic() < deadline:
            time.sleep(0.02)
        result = run_cli(sandbox.config_path, "revert")
        err = one_line(result, 6)
        assert "cannot find its master" in err and "nginx.pid_file" in err
        assert share(sandbox, IDS) > 0.1  # exit 6 told the truth: users are still on v2
    finally:
        for pid in workers:  # end the workers this test orphaned, by their pids
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# 2. A stale pid file naming another nginx master: that nginx is never signalled.
def test_a_pid_file_naming_another_nginx_master_never_signals_it(sandbox):
    other = sandbox.backends.pid()
    other_workers = {int(p) for p in os.listdir("/proc") if p.isdigit() and parent_pid(int(p)) == other}
    wrong = sandbox.root / "wrong.pid"
    wrong.write_text(f"{other}\n")
    sandbox.config_path.write_text(sandbox.config_path.read_text().replace(
        "verify_timeout = 20", f'verify_timeout = 20\npid_file = "{wrong}"'))
    ok(run_cli(sandbox.config_path, "apply", "30"))
    assert 0.2 < share(sandbox, IDS) < 0.4  # the front nginx, found through its status page, was reloaded
    now = {int(p) for p in os.listdir("/proc") if p.isdigit() and parent_pid(int(p)) == other}
    assert now == other_workers  # a SIGHUP would have replaced the backends' workers


# 3. Two configs sharing one output_dir: the second cannot take it over, and status tells the truth.
def test_two_configs_sharing_one_output_dir_are_detected(sandbox):
    ok(run_cli(sandbox.config_path, "apply", "10"))
    before = live(sandbox)
    other = sandbox.root / "other.toml"
    other.write_text(sandbox.config_path.read_text().replace(str(sandbox.state_dir), str(sandbox.root / "state-b")))
    err = one_line(run_cli(other, "apply", "58"), 2)
    assert "managed by another lbsplit config" in err and "nginx.output_dir" in err
    assert live(sandbox) == before
    # a revert from the other config is the break-glass: it warns and proceeds
    result = ok(run_cli(other, "revert"))
    assert "WARNING" in result.stdout and "managed by another lbsplit config" in result.stdout
    status = run_cli(sandbox.config_path, "status")
    assert status.returncode == 9 and "serving:     NO" in status.stdout
    assert "another lbsplit config" in status.stdout


# 5. status_listen on the site's own address: refused before anything changes.
def test_status_listen_on_the_sites_own_address_is_refused(sandbox):
    ok(run_cli(sandbox.config_path, "apply", "10"))
    before, traffic = live(sandbox), sandbox.variants(IDS)
    text = sandbox.config_path.read_text()
    sandbox.config_path.write_text(text.replace(f"127.0.0.1:{sandbox.status_port}", f"127.0.0.1:{sandbox.port}"))
    err = one_line(run_cli(sandbox.config_path, "apply", "50"), 2)
    assert "nginx.status_listen" in err and f"listen 127.0.0.1:{sandbox.port}" in err
    assert live(sandbox) == before and sandbox.variants(IDS) == traffic


def test_revert_keeps_the_live_status_listen_rather_than_take_the_sites_port(sandbox):
    ok(run_cli(sandbox.config_path, "apply", "10"))
    text = sandbox.config_path.read_text()
    sandbox.config_path.write_text(text.replace(f"127.0.0.1:{sandbox.status_port}", f"127.0.0.1:{sandbox.port}"))
    result = run_cli(sandbox.config_path, "revert")
    assert result.returncode == 0, result.stderr
    assert f"kept the live 127.0.0.1:{sandbox.status_port}" in result.stdout
    assert f"listen 127.0.0.1:{sandbox.status_port};" in live(sandbox).decode()
    assert set(sandbox.variants(IDS)) == {"v1"}  # the site's port still answers the site, everyone on v1


def test_init_refuses_a_status_listen_the_site_already_listens_on(tmp_path, nginx_bin):
    """Before the include is added (the README's order), init sees the site's listens and refuses a clash."""
    from conftest import REPO
    from lbsplit.demo.sandbox import Sandbox

    sb = Sandbox(tmp_path / "sb", binary=nginx_bin, nginx_dir=REPO / "nginx")
    sb.write_config(whitelist=["test_user_001"])
    prefix = sb.front.prefix
    sb.front.conf.write_text(sb.front.conf.read_text()
                             .replace(f"include {sb.output_dir}/lbsplit.conf;", "")
                             .replace(f"include {sb.nginx_dir}/lbsplit-proxy.conf;", "return 200 'site\\n';")
                             .replace(f"access_log {prefix}/lbsplit-access.log lbsplit;", ""))
    text = sb.config_path.read_text()
    sb.config_path.write_text(text.replace(f"127.0.0.1:{sb.status_port}", f"127.0.0.1:{sb.port}"))
    err = one_line(run_cli(sb.config_path, "init"), 2)
    assert "nginx.status_listen" in err and f"listen 127.0.0.1:{sb.port}" in err
    assert not (sb.output_dir / "lbsplit.conf").exists()
    sb.config_path.write_text(text)  # a free port: init goes through
    assert run_cli(sb.config_path, "init").returncode == 0


# 18. The include missing from nginx.conf: refused at once with the line to add.
def test_a_missing_include_is_refused_with_the_line_to_add(sandbox):
    conf = sandbox.front.conf.read_text()
    include = f"include {sandbox.output_dir}/lbsplit.conf;"
    prefix = sandbox.front.prefix
    restart_front(sandbox, conf.replace(include, "")
                  .replace(f"include {sandbox.nginx_dir}/lbsplit-proxy.conf;", "return 200 'site\\n';")
                  .replace(f"access_log {prefix}/lbsplit-access.log lbsplit;", ""))
    err = one_line(run_cli(sandbox.config_path, "apply", "10"), 2)
    assert f"add `include {sandbox.output_dir / 'lbsplit.conf'};`" in err
    status = run_cli(sandbox.config_path, "status")
    assert status.returncode == 9 and "does nginx include lbsplit.conf yet" in status.stdout, status.stdout


# 6. Typos and wrong types outside what a revert needs: revert warns and proceeds.
def test_revert_proceeds_past_typos_and_wrong_types_elsewhere(sandbox):
    ok(run_cli(sandbox.config_path, "apply", "100"))
    text = sandbox.config_path.read_text()
    broken = (text.replace("whitelist = [", "whitelst = [")
              .replace(f'v2 = ["127.0.0.1:{sandbox.v2_port}"]', 'v2 = "127.0.0.1:1"')
              + '\n[health]\nurl = "http://127.0.0.1:1/h"\ntimout = 5\n[notify]\nwebhook = 5\n')
    sandbox.config_path.write_text(broken)
    assert run_cli(sandbox.config_path, "apply", "10").returncode == 2
    result = ok(run_cli(sandbox.config_path, "revert"))
    for name in ("split.whitelst", "upstreams.v2", "health.timout", "notify.webhook"):
        assert name in result.stderr, result.stderr
    assert set(sandbox.variants(IDS + ["test_user_001"])) == {"v1"}


# 7. Damaged state files: revert works; status and repair name the file.
@pytest.mark.parametrize("name, content", [("state.json", b""), ("state.json", b'{"generation": 3'),
                                           ("journal.json", b"{}"), ("journal.json", b'{"extra": 1}')])
def test_damaged_state_files_never_block_revert(sandbox, name, content):
    ok(run_cli(sandbox.config_path, "apply", "30"))
    (sandbox.state_dir / name).write_bytes(content)
    status = run_cli(sandbox.config_path, "status")
    assert status.returncode == 7 and name in status.stderr and "Traceback" not in status.stderr
    if name == "journal.json":
        err = one_line(run_cli(sandbox.config_path, "repair"), 7)
        assert name in err and "damaged" in err
    ok(run_cli(sandbox.config_path, "revert"))
    assert share(sandbox, IDS) == 0
    assert ok(run_cli(sandbox.config_path, "status")) and served(sandbox)["serving"] is True


def test_a_damaged_watchdog_state_never_blocks_the_watchdogs_revert(sandbox):
    endpoint = HealthEndpoint()
    try:
        sandbox.write_config(whitelist=["test_user_001"],
                             extra=f'\n[health]\nurl = "{endpoint.url}"\nfailures_before_revert = 1\n')
        ok(run_cli(sandbox.config_path, "apply", "30"))
        (sandbox.state_dir / "watchdog.json").write_bytes(b"[" * 100000)
        endpoint.mode = "status:500"
        assert run_cli(sandbox.config_path, "watchdog", "--once").returncode == 10
        assert share(sandbox, IDS) == 0
    finally:
        endpoint.close()


# 8. Non-finite, negative, huge and deeply nested answers are no data, never healthy.
@pytest.mark.parametrize("body", [b'{"error_rate": NaN, "timeout_rate": 0, "dead_letter_growth": 0, "avg_response_time": 1}',
                                  b'{"error_rate": -1, "timeout_rate": 0, "dead_letter_growth": 0, "avg_response_time": 1}',
                                  b'{"error_rate": 1' + b"0" * 400 + b', "timeout_rate": 0}',
                                  b"[" * 200000])
def test_nonsense_from_the_endpoint_is_a_failed_check_and_reverts(sandbox, body):
    endpoint = HealthEndpoint()
    try:
        sandbox.write_config(whitelist=[], extra=f'\n[health]\nurl = "{endpoint.url}"\nfailures_before_revert = 1\n')
        ok(run_cli(sandbox.config_path, "apply", "30"))
        endpoint.mode = "raw:" + body.decode()
        result = run_cli(sandbox.config_path, "watchdog", "--once")
        assert result.returncode == 10, result.stderr
        assert "Traceback" not in result.stderr and share(sandbox, IDS) == 0
    finally:
        endpoint.close()


@pytest.mark.parametrize("line, fragment", [("error_rate = nan", "not a usable limit"),
                                            ("error_rate = 5", "above 1"), ("timeout_rate = inf", "not a usable limit")])
def test_thresholds_must_be_finite_and_rates_fractions(sandbox, line, fragment):
    sandbox.write_config(whitelist=[], extra='\n[health]\nurl = "http://127.0.0.1:1/h"\n'
                                              f'[[health.thresholds]]\nup_to_percent = 100\n{line}\n')
    err = one_line(run_cli(sandbox.config_path, "apply", "10"), 2)
    assert "health.thresholds[0]" in err and fragment in err


def test_a_bad_access_log_line_is_skipped_and_counted_never_fatal(sandbox):
    log = sandbox.root / "access.log"
    log.write_text("inf\tlbsplit_v2\t200\t200\t0.1\t0.1\t0\t127.0.0.1:1\n" + "nan\tx\n" + "x" * 300000)
    sandbox.write_config(whitelist=[], extra=f'\n[health]\nsource = "nginx_log"\naccess_log = "{log}"\n'
                                              'no_data = "ignore"\n')
    ok(run_cli(sandbox.config_path, "apply", "10"))
    for _ in range(2):  # the cursor moves past them: the second run does not meet them again
        ok(run_cli(sandbox.config_path, "watchdog", "--once"))
    state = json.loads((sandbox.state_dir / "watchdog.json").read_text())
    assert state["log_cursor"]["offset"] > 0
    assert ok(run_cli(sandbox.config_path, "report", "--json"))


def _has_open(pid: int, path: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                return True
        except OSError:
            pass
    return False


# 13. SIGINT while waiting for the lock: exit 130 with one line, nothing changed.
def test_sigint_while_waiting_for_the_lock_is_130_with_one_line(sandbox):
    before = live(sandbox)
    with Lock(sandbox.state_dir / "lock", 0, "a test"):
        argv = [sys.executable, "-m", "lbsplit", "--config", str(sandbox.config_path), "apply", "10"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Signal only once it holds the lock file open (it is at the flock loop): a fixed sleep can land
        # in Python's start-up on a loaded machine, where SIGINT is a traceback, not lbsplit's line.
        lock = os.path.realpath(sandbox.state_dir / "lock")
        deadline = time.monotonic() + 30
        while not _has_open(proc.pid, lock):
            assert proc.poll() is None and time.monotonic() < deadline, "the command never opened the lock"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip() == "lbsplit: interrupted by SIGINT; nothing was changed"
    assert live(sandbox) == before


# 14. fallback_key = key would send every id-less request to v2.
def test_fallback_key_equal_to_key_is_refused(sandbox):
    sandbox.config_path.write_text(sandbox.config_path.read_text().replace(
        'fallback_key = "$remote_addr"', 'fallback_key = "$http_x_user_id"'))
    err = one_line(run_cli(sandbox.config_path, "apply", "1"), 2)
    assert "split.fallback_key" in err


# 15. Whitelist files: a BOM, a FIFO, /dev/zero, a file only root may read.
def test_a_whitelist_file_with_a_bom_matches_its_first_id(sandbox):
    (sandbox.root / "wl.txt").write_bytes(b"\xef\xbb\xbfbom_user\nsecond_user\n")
    sandbox.write_config(whitelist=[], extra='whitelist_file = "wl.txt"\n')
    ok(run_cli(sandbox.config_path, "apply", "0"))
    assert sandbox.variants(["bom_user", "second_user", "someone"]) == ["v2", "v2", "v1"]


@pytest.mark.parametrize("kind", ["fifo", "devzero", "private"])
def test_whitelist_files_that_are_not_plain_public_text_are_refused(sandbox, kind):
    path = sandbox.root / "wl"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        path.symlink_to("/dev/zero")
    else:
        path.write_text("secret_user\n")
        path.chmod(0o600)
    sandbox.write_config(whitelist=[], extra='whitelist_file = "wl"\n')
    err = one_line(run_cli(sandbox.config_path, "apply", "10", timeout=30), 2)
    assert "split.whitelist_file" in err
    assert ("world-readable" if kind == "private" else "not a regular file") in err
    assert b"secret_user" not in live(sandbox)


# 16. Unicode digits, a trailing newline, a header with CRLF, credentials in a URL, umask 000, a lock symlink.
@pytest.mark.parametrize("old, new, fragment", [
    ('v1 = ["127.0.0.1:{v1}"]', 'v1 = ["127.0.0.1:1880\u00b2"]', "upstreams.v1[0]"),
    ('v1 = ["127.0.0.1:{v1}"]', 'v1 = ["127.0.0.1:{v1} weight=\u00b2"]', "weight="),
    ('v1 = ["127.0.0.1:{v1}"]', 'v1 = ["127.0.0.1:\uff11\uff12"]', "upstreams.v1[0]"),
    ('status_listen = "127.0.0.1:{status}"', 'status_listen = "127.0.0.1:91\u00b2"', "nginx.status_listen"),
    ('key = "$http_x_user_id"', 'key = "$http_x_user_id\\n"', "split.key"),
])
def test_odd_digits_and_newlines_are_bad_input(sandbox, old, new, fragment):
    values = {"v1": sandbox.v1_port, "status": sandbox.status_port}
    text = sandbox.config_path.read_text()
    sandbox.config_path.write_text(text.replace(old.format(**values), new.format(**values)))
    err = one_line(run_cli(sandbox.config_path, "apply", "10"), 2)
    assert fragment in err


def test_headers_and_urls_are_checked_and_secrets_never_printed(sandbox):
    sandbox.write_config(whitelist=[], extra='\n[health]\nurl = "http://127.0.0.1:1/h"\n'
                                              'headers = { X-Env = "prod\\r\\nX-Evil: 1" }\n')
    assert "health.headers.X-Env" in one_line(run_cli(sandbox.config_path, "apply", "10"), 2)
    sandbox.write_config(whitelist=[], extra='\n[health]\nurl = "http://admin:hunter2@127.0.0.1:1/h x"\n')
    err = one_line(run_cli(sandbox.config_path, "apply", "10"), 2)
    assert "health.url" in err and "hunter2" not in err


def test_the_watchdog_log_is_0644_even_under_umask_000(sandbox):
    endpoint = HealthEndpoint()
    try:
        sandbox.write_config(whitelist=[], extra=f'\n[health]\nurl = "{endpoint.url}"\n')
        ok(run_cli(sandbox.config_path, "apply", "10"))
        argv = [sys.executable, "-m", "lbsplit", "--config", str(sandbox.config_path), "watchdog", "--once"]
        subprocess.run(argv, preexec_fn=lambda: os.umask(0), capture_output=True, timeout=60, check=True)
        assert (sandbox.state_dir / "watchdog.log").stat().st_mode & 0o777 == 0o644
    finally:
        endpoint.close()


def test_a_planted_lock_symlink_is_never_followed(sandbox):
    target = sandbox.root / "precious"
    target.write_text("keep me\n")
    (sandbox.state_dir / "lock").unlink(missing_ok=True)
    (sandbox.state_dir / "lock").symlink_to(target)
    err = one_line(run_cli(sandbox.config_path, "revert"), 6)
    assert "symbolic link" in err
    assert target.read_text() == "keep me\n"


# 17. Turning v2 on is a widening: the gate applies after a revert too.
def test_the_gate_guards_turning_v2_on_after_a_revert(sandbox):
    endpoint = HealthEndpoint()
    try:
        sandbox.write_config(whitelist=[], extra=f'\n[health]\nurl = "{endpoint.url}"\n')
        ok(run_cli(sandbox.config_path, "apply", "10"))
        ok(run_cli(sandbox.config_path, "revert"))
        endpoint.mode = "breach:error_rate=0.1"
        before = live(sandbox)
        result = run_cli(sandbox.config_path, "apply", "100")
        assert result.returncode == 8 and "refusing to widen v2 from off to 100%" in result.stderr
        assert live(sandbox) == before and share(sandbox, IDS) == 0
    finally:
        endpoint.close()


# 12. A nearly full state_dir: refused before anything changes (not after nginx serves it).
def test_a_full_state_dir_fails_before_the_point_of_no_return(sandbox):
    import shutil

    saved = sandbox.root / "state-saved"
    shutil.copytree(sandbox.state_dir, saved, symlinks=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(sandbox.state_dir)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        shutil.copytree(saved, sandbox.state_dir, symlinks=True, dirs_exist_ok=True)
        ok(run_cli(sandbox.config_path, "apply", "10"))
        st = os.statvfs(sandbox.state_dir)
        filler = sandbox.state_dir / "filler"
        filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - (256 << 10)))  # leave 256 KiB
        before, traffic = live(sandbox), sandbox.variants(IDS)
        err = one_line(run_cli(sandbox.config_path, "apply", "30"), 6)
        assert "free" in err and "nothing was changed" in err
        assert live(sandbox) == before and sandbox.variants(IDS) == traffic
        filler.unlink()
        ok(run_cli(sandbox.config_path, "apply", "30"))
    finally:
        subprocess.run(["umount", str(sandbox.state_dir)], capture_output=True)


def test_a_nearly_full_state_dir_does_not_stop_a_revert(tmp_path, nginx_bin):
    """592 KiB free in state_dir: a revert needs the few KB it writes, not a fixed 1 MiB margin."""
    from conftest import REPO
    from lbsplit.demo.sandbox import Sandbox

    sb = Sandbox(tmp_path / "sb", binary=nginx_bin, nginx_dir=REPO / "nginx")
    sb.state_dir.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(sb.state_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        sb.write_config(whitelist=["test_user_001"])
        assert run_cli(sb.config_path, "init").returncode == 0
        sb.start()
        ok(run_cli(sb.config_path, "apply", "30"))
        st = os.statvfs(sb.state_dir)
        filler = st.f_bavail * st.f_frsize - 592 * 1024
        (sb.state_dir / "filler").write_bytes(b"\0" * filler)
        st = os.statvfs(sb.state_dir)
        assert 560 * 1024 <= st.f_bavail * st.f_frsize <= 600 * 1024
        result = run_cli(sb.config_path, "revert")
        assert result.returncode == 0, result.stderr
        assert set(sb.variants(IDS)) == {"v1"}
        assert json.loads(run_cli(sb.config_path, "status", "--json").stdout)["v2_enabled"] is False
        refused = run_cli(sb.config_path, "apply", "30")  # a widening still wants its margin
        assert refused.returncode == 6 and "Free some space" in refused.stderr
    finally:
        sb.stop()
        subprocess.run(["umount", str(sb.state_dir)], capture_output=True)


@pytest.mark.parametrize("runtime", ["reload", "lua"])
def test_a_state_dir_with_no_room_left_still_reverts_and_says_what_it_did_not_record(tmp_path, nginx_bin, runtime):
    """state_dir full to the last byte: revert switches the traffic anyway (the live file is in output_dir),
    exits 6 saying what nginx serves and what it could not record; repair records it once there is room,
    and its generation number is never handed out again. Both runtimes (the lua one with no reload)."""
    from conftest import REPO
    from lbsplit.demo.sandbox import Sandbox
    from lbsplit.nginx.process import lua_modules

    if runtime == "lua" and not lua_modules():
        pytest.fail("Debian's libnginx-mod-http-lua is not installed; `make test` installs it")
    sb = Sandbox(tmp_path / "sb", binary=nginx_bin, nginx_dir=REPO / "nginx", lua=runtime == "lua")
    sb.runtime = runtime
    sb.state_dir.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(sb.state_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        sb.write_config(whitelist=["test_user_001"])
        assert run_cli(sb.config_path, "init").returncode == 0
        sb.start()
        ok(run_cli(sb.config_path, "apply", "30"))
        before = json.loads((sb.state_dir / "state.json").read_text())
        history_before = (sb.state_dir / "history.jsonl").read_bytes()
        filler = sb.state_dir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # every last block
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        assert os.statvfs(sb.state_dir).f_bavail == 0
        result = run_cli(sb.config_path, "revert")
        err = one_line(result, 6)
        generation = before["generation"] + 1
        assert f"nginx serves generation {generation} (v2 off" in err and "no room to record it" in err, err
        assert "`lbsplit repair`" in err
        assert set(sb.variants(IDS)) == {"v1"}, "the traffic is switched even though nothing could be recorded"
        assert json.loads((sb.state_dir / "state.json").read_text()) == before
        assert (sb.state_dir / "history.jsonl").read_bytes() == history_before
        assert not (sb.state_dir / "journal.json").exists()
        status = run_cli(sb.config_path, "status")
        assert status.returncode == 9 and "lbsplit repair" in status.stdout + status.stderr, status.stdout

        filler.unlink()
        repaired = run_cli(sb.config_path, "repair")
        assert repaired.returncode == 0 and "recorded the revert" in repaired.stdout, repaired.stdout
        after = json.loads(run_cli(sb.config_path, "status", "--json").stdout)
        assert after["generation"] == generation and after["v2_enabled"] is False
        assert run_cli(sb.config_path, "status").returncode == 0
        last = [json.loads(line) for line in (sb.state_dir / "history.jsonl").read_text().splitlines()][-1]
        assert last["command"] == "revert" and last["generation"] == generation and "state_dir was full" in last["result"]
        ok(run_cli(sb.config_path, "apply", "10"))
        assert json.loads((sb.state_dir / "state.json").read_text())["generation"] == generation + 1
        assert 0 < sb.variants(IDS).count("v2") < len(IDS)
    finally:
        sb.stop()
        subprocess.run(["umount", str(sb.state_dir)], capture_output=True)
