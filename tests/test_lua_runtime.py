"""The zero-reload runtime (nginx.runtime = "lua") against a real nginx with Debian's lua module loaded.

Percent changes and reverts set the live stage through the control endpoint: the same nginx
workers keep serving (no reload), users land exactly where split_clients would put them, a
revert works while nginx.conf no longer passes `nginx -t`, and a crash at every step of the
zero-reload path ends in the exact outcome the crash matrix of the reload path asserts.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import live, REPO, run_cli, state
from lbsplit.config import load
from lbsplit.demo.sandbox import Sandbox, free_port
from harness import pipelined_variants
from lbsplit.model import Mode, Stage
from lbsplit.nginx.dialect import CONTROL_PATH, TOKEN_HEADER, live_stage
from lbsplit.nginx.process import Nginx
from lbsplit.nginx.route import explain, folded_keys
from lbsplit.rollout.state import StateStore
from lbsplit.nginx.process import lua_modules
from lbsplit.rollout.transaction import FAILPOINT_ENV, LUA_STEPS

WHITELIST = ["test_user_001", "Internal_Staff_001"]
IDS = [f"user-{i}" for i in range(2000)] + WHITELIST + ["TEST_USER_001"]


def make(root, nginx_bin, lua_loaded=True, runtime="lua") -> Sandbox:
    if not lua_modules():
        pytest.fail("Debian's libnginx-mod-http-lua is not installed; `make test` installs it")
    sb = Sandbox(root, binary=nginx_bin, nginx_dir=REPO / "nginx", lua=lua_loaded)
    sb.runtime = runtime
    sb.write_config(whitelist=WHITELIST)
    return sb


def started(sb: Sandbox) -> Sandbox:
    init = run_cli(sb.config_path, "init")
    assert init.returncode == 0, init.stderr
    sb.start()
    return sb


@pytest.fixture
def lua_sb(tmp_path, nginx_bin):
    sb = started(make(tmp_path / "sb", nginx_bin))
    yield sb
    sb.stop()


def workers(sb: Sandbox) -> set[int]:
    return Nginx(load(sb.config_path).nginx).worker_pids(sb.front.pid())


def answer(sb: Sandbox) -> dict:
    return Nginx(load(sb.config_path).nginx).serving()


def served(sb: Sandbox, ids=IDS) -> list[str]:
    return pipelined_variants(sb.port, ids)


def expected(stage: Stage) -> list[str]:
    keys = folded_keys(WHITELIST)
    return [str(explain(i, stage, Mode.HASH, keys, None).variant) for i in IDS]


def apply(sb: Sandbox, *args: str) -> subprocess.CompletedProcess:
    result = run_cli(sb.config_path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_percent_changes_and_reverts_set_the_stage_live_without_a_reload(lua_sb):
    apply(lua_sb, "apply", "10")  # v2 comes in: the upstreams change, so this one reloads
    before = workers(lua_sb)
    assert len(before) == 2
    for args, stage in ((("apply", "30", "--force"), Stage.at(3000)), (("apply", "33.33", "--force"), Stage.at(3333)),
                        (("revert",), Stage.off()), (("apply", "0", "--force"), Stage.at(0)),
                        (("apply", "100", "--force"), Stage.at(10000)), (("apply", "10", "--force"), Stage.at(1000))):
        result = apply(lua_sb, *args)
        assert "set live with no reload" in result.stdout
        assert served(lua_sb) == expected(stage), f"variants differ from split_clients' arithmetic at {stage}"
        s, a = state(lua_sb), answer(lua_sb)
        assert a["generation"] == s["generation"] and a["v2"] is stage.v2_enabled
        assert a["workers"] == [s["generation"]] * 2
        assert live_stage(live(lua_sb).decode()) == (s["generation"], stage.hundredths if stage.v2_enabled else -1)
        assert run_cli(lua_sb.config_path, "status").returncode == 0
    assert workers(lua_sb) == before, "nginx reloaded"
    # `lbsplit route` reads the lua-runtime file's whitelist and stage: exactly what nginx serves.
    routed = subprocess.run([sys.executable, "-m", "lbsplit", "--config", str(lua_sb.config_path), "route", "-"],
                            input="\n".join(IDS[:300] + WHITELIST) + "\n", capture_output=True, text=True, timeout=60)
    assert [json.loads(line)["variant"] for line in routed.stdout.splitlines()] == served(lua_sb, IDS[:300] + WHITELIST)
    history = [json.loads(line) for line in (lua_sb.state_dir / "history.jsonl").read_text().splitlines()]
    # a revert's result also says how v1 answered through nginx afterwards
    assert [h["result"].split(";")[0] for h in history[-6:]] == ["set live (lua runtime, no reload)"] * 6


def test_switching_runtime_moves_nobody(lua_sb):
    apply(lua_sb, "apply", "10")
    apply(lua_sb, "apply", "30", "--force")
    in_lua = served(lua_sb)
    assert in_lua == expected(Stage.at(3000))
    lua_sb.runtime = "reload"
    lua_sb.write_config(whitelist=WHITELIST)
    result = apply(lua_sb, "apply", "30", "--force")
    assert "set live" not in result.stdout and b"split_clients" in live(lua_sb)  # real split_clients now
    assert served(lua_sb) == in_lua
    lua_sb.runtime = "lua"
    lua_sb.write_config(whitelist=WHITELIST)
    apply(lua_sb, "apply", "30", "--force")
    assert b"lbsplit_live" in live(lua_sb) and served(lua_sb) == in_lua


def test_revert_works_when_the_rest_of_nginx_conf_fails_nginx_t(lua_sb):
    apply(lua_sb, "apply", "10")
    apply(lua_sb, "apply", "30", "--force")
    before = workers(lua_sb)
    conf = lua_sb.front.conf.read_text()
    lua_sb.front.conf.write_text(conf.replace("http {", "http {\n    this_is_not_a_directive on;", 1))
    widened = run_cli(lua_sb.config_path, "apply", "50", "--force")
    assert widened.returncode == 0  # a percent change needs no nginx -t either
    reverted = run_cli(lua_sb.config_path, "revert")
    assert reverted.returncode == 0, reverted.stderr
    assert set(served(lua_sb)) == {"v1"}
    assert answer(lua_sb)["v2"] is False and workers(lua_sb) == before
    lua_sb.front.conf.write_text(conf)


def test_a_whitelist_change_goes_through_the_reload_path(lua_sb):
    apply(lua_sb, "apply", "10")
    before = workers(lua_sb)
    lua_sb.write_config(whitelist=[*WHITELIST, "new_tester_9"])
    result = apply(lua_sb, "apply", "10")
    assert "set live" not in result.stdout
    assert workers(lua_sb).isdisjoint(before)  # reloaded: new workers
    assert served(lua_sb, ["new_tester_9", "NEW_TESTER_9"]) == ["v2", "v2"]
    assert answer(lua_sb)["generation"] == state(lua_sb)["generation"]


def test_a_restart_serves_the_stage_the_file_holds(lua_sb):
    apply(lua_sb, "apply", "10")
    apply(lua_sb, "apply", "30", "--force")
    at_30 = served(lua_sb)
    lua_sb.front.stop()
    lua_sb.front.start(wait_port=lua_sb.port)  # the shared dict is gone; init_by_lua sets it from the file
    assert served(lua_sb) == at_30
    assert answer(lua_sb)["generation"] == state(lua_sb)["generation"]
    assert run_cli(lua_sb.config_path, "status").returncode == 0


def test_status_compares_the_live_stage_with_the_state(lua_sb):
    apply(lua_sb, "apply", "10")
    s = state(lua_sb)
    token = StateStore(lua_sb.state_dir).control_token()
    assert control(lua_sb, json.dumps({"generation": s["generation"], "stage": 10000,
                                       "seq": time.time_ns() // 1000}, separators=(",", ":")),
                   token)[0] == 200  # behind lbsplit's back
    status = run_cli(lua_sb.config_path, "status")
    assert status.returncode == 9, status.stdout
    apply(lua_sb, "apply", "10")  # lbsplit sets what its state says again
    assert run_cli(lua_sb.config_path, "status").returncode == 0 and answer(lua_sb)["percent"] == 10


@pytest.fixture(scope="module")
def at_10(tmp_path_factory, nginx_bin):
    sb = started(make(tmp_path_factory.mktemp("luacontrol") / "sb", nginx_bin))
    apply(sb, "apply", "10")
    yield sb
    sb.stop()


def control(sb: Sandbox, body: str, token: str | None, method: str = "POST") -> tuple[int, str]:
    port = int(load(sb.config_path).nginx.status_listen.rpartition(":")[2])
    head = f"{method} {CONTROL_PATH} HTTP/1.0\r\nHost: x\r\nContent-Length: {len(body.encode())}\r\n"
    if token is not None:
        head += f"{TOKEN_HEADER}: {token}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head.encode() + b"\r\n" + body.encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return int(data.split()[1]), data.partition(b"\r\n\r\n")[2].decode()


@pytest.mark.parametrize("body, token, method, code", [
    ('{"generation":99,"stage":5000,"seq":7}', None, "POST", 403),
    ('{"generation":99,"stage":5000,"seq":7}', "0" * 64, "POST", 403),
    ('{"generation":99,"stage":5000,"seq":7}', "TOKEN", "GET", 405),
    ('{"generation": 99, "stage": 5000, "seq": 7}', "TOKEN", "POST", 400),  # not the one canonical form
    ('{"generation":99,"stage":5000}', "TOKEN", "POST", 400),  # no seq
    ('{"generation":99,"stage":5000,"seq":07}', "TOKEN", "POST", 400),
    ('{"generation":99,"stage":5000,"seq":99999999999999999999}', "TOKEN", "POST", 400),
    ('{"stage":5000,"generation":99}', "TOKEN", "POST", 400),
    ('{"generation":99,"stage":5000,"seq":7,"x":1}', "TOKEN", "POST", 400),
    ('{"generation":99,"stage":10001,"seq":7}', "TOKEN", "POST", 400),
    ('{"generation":99,"stage":-2,"seq":7}', "TOKEN", "POST", 400),
    ('{"generation":99,"stage":50.5,"seq":7}', "TOKEN", "POST", 400),
    ('{"generation":99,"stage":-0,"seq":7}', "TOKEN", "POST", 400),  # would show as "percent": -0
    ('{"generation":99,"stage":05000,"seq":7}', "TOKEN", "POST", 400),
    ('{"generation":099,"stage":5000,"seq":7}', "TOKEN", "POST", 400),
    ('{"generation":"99","stage":5000,"seq":7}', "TOKEN", "POST", 400),
    ('{"generation":99999999999999999999,"stage":5000,"seq":7}', "TOKEN", "POST", 400),
    ("generation=99&stage=5000", "TOKEN", "POST", 400),
    ("", "TOKEN", "POST", 400),
    ('{"generation":99,"stage":5000,"seq":7}' + " " * 100, "TOKEN", "POST", 400),
])
def test_the_control_endpoint_refuses_anything_but_the_token_and_strict_json(at_10, body, token, method, code):
    before = {k: v for k, v in answer(at_10).items() if k != "pid"}
    real = StateStore(at_10.state_dir).control_token()
    got, text = control(at_10, body, real if token == "TOKEN" else token, method)
    assert got == code, text
    assert json.loads(text)["error"]
    assert {k: v for k, v in answer(at_10).items() if k != "pid"} == before  # nothing changed
    assert before["percent"] == 10


def test_the_control_token_stays_private(lua_sb):
    token_file = lua_sb.state_dir / "control.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.read_text().strip() not in live(lua_sb).decode()


def test_without_the_lua_module_init_and_apply_exit_2_and_change_nothing(tmp_path, nginx_bin):
    sb = make(tmp_path / "sb", nginx_bin, lua_loaded=False)
    init = run_cli(sb.config_path, "init")
    assert init.returncode == 2, init.stderr
    assert "libnginx-mod-http-lua" in init.stderr and "load_module" in init.stderr and "nginx.runtime" in init.stderr
    assert init.stderr.strip().count("\n") == 0 and "Traceback" not in init.stderr
    assert not (sb.output_dir / "lbsplit.conf").exists()
    # A running reload-runtime nginx, switched to runtime = "lua" in the config: refused, still serving.
    sb.runtime = "reload"
    sb.write_config(whitelist=WHITELIST)
    started(sb)
    try:
        apply(sb, "apply", "10")
        old, generation, at_10 = live(sb), answer(sb)["generation"], served(sb)
        sb.runtime = "lua"
        sb.write_config(whitelist=WHITELIST)
        refused = run_cli(sb.config_path, "apply", "30", "--force")
        assert refused.returncode == 2 and "libnginx-mod-http-lua" in refused.stderr
        assert live(sb) == old and answer(sb)["generation"] == generation and served(sb) == at_10
    finally:
        sb.stop()


def test_weight_mode_is_refused_in_the_lua_runtime(tmp_path, nginx_bin):
    sb = make(tmp_path / "sb", nginx_bin)
    sb.write_config(mode="weight", whitelist=WHITELIST)
    result = run_cli(sb.config_path, "apply", "10")
    assert result.returncode == 2 and result.stderr.startswith("lbsplit: split.mode:"), result.stderr


def test_the_watchdog_reverts_without_a_reload(lua_sb, endpoint):
    lua_sb.write_config(whitelist=WHITELIST, extra=f'\n[health]\nurl = "{endpoint.url}"\ntimeout = 1\n'
                                                      "failures_before_revert = 1\n")
    endpoint.mode = "healthy"
    apply(lua_sb, "apply", "10")
    before = workers(lua_sb)
    endpoint.mode = "breach:error_rate=0.5"
    result = run_cli(lua_sb.config_path, "watchdog", "--once")
    assert result.returncode == 10, result.stdout + result.stderr
    assert answer(lua_sb)["v2"] is False and set(served(lua_sb)) == {"v1"}
    assert workers(lua_sb) == before


# ---- crash safety of the zero-reload path: every step x SIGKILL and SIGTERM
ROLLED_BACK, FINISHED, UNTOUCHED = "rolled back", "finished", "untouched"
AFTER_KILL = {"after-lock": UNTOUCHED, "after-backup": UNTOUCHED, "after-journal": ROLLED_BACK,
              "after-swap": ROLLED_BACK, "after-control": FINISHED, "after-verify": FINISHED,
              "after-state": FINISHED, "after-history": FINISHED}
AFTER_TERM = {"after-lock": (130, UNTOUCHED), "after-backup": (130, UNTOUCHED), "after-journal": (130, UNTOUCHED),
              "after-swap": (130, UNTOUCHED), "after-control": (130, UNTOUCHED), "after-verify": (0, FINISHED),
              "after-state": (0, FINISHED), "after-history": (0, FINISHED)}


@pytest.fixture(scope="module")
def crash_sb(tmp_path_factory, nginx_bin):
    sb = started(make(tmp_path_factory.mktemp("luacrash") / "sb", nginx_bin))
    assert run_cli(sb.config_path, "apply", "10").returncode == 0
    yield sb
    sb.stop()


@pytest.mark.parametrize("action", ["kill", "term"])
@pytest.mark.parametrize("step", LUA_STEPS)
def test_a_crash_at_each_step_of_the_zero_reload_path_ends_exactly(crash_sb, step, action):
    sb = crash_sb
    before, old = state(sb), live(sb)
    target = "30" if before["hundredths"] == 1000 else "10"
    entries = len((sb.state_dir / "history.jsonl").read_text().splitlines())
    env = {**os.environ, FAILPOINT_ENV: f"{step}:{action}"}
    proc = subprocess.run([sys.executable, "-m", "lbsplit", "--config", str(sb.config_path), "apply", target, "--force"],
                          capture_output=True, text=True, env=env, timeout=120)
    if action == "kill":
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        outcome = AFTER_KILL[step]
        repaired = run_cli(sb.config_path, "repair")
        assert repaired.returncode == 0, repaired.stderr
        said = {UNTOUCHED: "nothing to repair", ROLLED_BACK: "rolled back the interrupted `apply",
                FINISHED: "finished the interrupted `apply"}[outcome]
        assert repaired.stdout.startswith(said), repaired.stdout
        entries += outcome == ROLLED_BACK  # repair records its rollback
    else:
        code, outcome = AFTER_TERM[step]
        assert proc.returncode == code, proc.stdout + proc.stderr
    s, a = state(sb), answer(sb)
    if outcome == FINISHED:
        assert s["generation"] > before["generation"] and s["hundredths"] == int(target) * 100
        assert len((sb.state_dir / "history.jsonl").read_text().splitlines()) == entries + 1
    else:
        assert s == before and live(sb) == old
        assert len((sb.state_dir / "history.jsonl").read_text().splitlines()) == entries
    # The file, the shared dict and the state agree; nothing is left half-done.
    assert live_stage(live(sb).decode()) == (s["generation"], s["hundredths"])
    assert a["generation"] == s["generation"] and a["percent"] == s["hundredths"] / 100
    assert a["workers"] == [s["generation"]] * 2
    assert not (sb.state_dir / "journal.json").exists()
    assert not list(sb.output_dir.glob(".lbsplit-tmp-*"))
    assert re.search(r"serving: +yes", run_cli(sb.config_path, "status").stdout)


def test_a_location_with_its_own_lua_rewrite_handler_is_named_and_can_call_the_split(tmp_path, nginx_bin):
    sb = make(tmp_path / "sb", nginx_bin)
    with_call, without_call = free_port(), free_port()
    proxy = f"include {REPO}/nginx/lbsplit-proxy.conf;"
    extra = (f"    server {{ listen 127.0.0.1:{with_call}; location / {{ rewrite_by_lua_block {{ lbsplit_rewrite() }} {proxy} }} }}\n"
             f"    server {{ listen 127.0.0.1:{without_call}; location / {{ rewrite_by_lua_block {{ local x = 1 }} {proxy} }} }}\n")
    conf = sb.front.conf.read_text()
    sb.front.conf.write_text(conf[:conf.rindex("}")] + extra + "}\n")
    started(sb)
    try:
        result = apply(sb, "apply", "30")
        assert result.stdout.count("has its own rewrite_by_lua handler") == 2, result.stdout
        assert "lbsplit_rewrite()" in result.stdout
        assert pipelined_variants(with_call, IDS) == served(sb) == expected(Stage.at(3000))
        assert set(pipelined_variants(without_call, IDS)) == {"v1"}
    finally:
        sb.stop()


def test_report_reads_the_same_access_log_in_the_lua_runtime(lua_sb):
    lua_sb.write_config(whitelist=WHITELIST, extra=f'\n[health]\nsource = "nginx_log"\n'
                                                      f'access_log = "{lua_sb.front.prefix}/lbsplit-access.log"\n')
    apply(lua_sb, "apply", "10")
    apply(lua_sb, "apply", "30", "--force")
    got = served(lua_sb)
    report = json.loads(run_cli(lua_sb.config_path, "report", "--window", "1m", "--json").stdout)["variants"]
    assert report["v2"]["requests"] == got.count("v2") and report["v1"]["requests"] == got.count("v1")


def test_http_level_access_rules_never_refuse_lbsplits_own_status_and_control(tmp_path, nginx_bin):
    """auth_basic and allow/deny at http level are inherited by every server: lbsplit's own status and control
    endpoints answer in the rewrite phase, before them, so apply and revert still work with no reload."""
    sb = make(tmp_path / "sb", nginx_bin)
    conf = sb.front.conf.read_text()
    site_listen = f"listen 127.0.0.1:{sb.port};"
    assert "http {" in conf and site_listen in conf
    sb.front.conf.write_text(conf.replace("http {", 'http {\n    auth_basic "site";\n    auth_basic_user_file /dev/null;\n'
                                          "    allow 192.0.2.1;\n    deny all;\n", 1)
                             .replace(site_listen, f"{site_listen}\n        auth_basic off;\n        allow all;", 1))
    started(sb)
    try:
        seen = []
        for args, expected in ((("apply", "30", "--force"), 30), (("apply", "50", "--force"), 50), (("revert",), None)):
            result = run_cli(sb.config_path, *args)
            assert result.returncode == 0, result.stdout + result.stderr
            got = answer(sb)
            assert (got["percent"] if got["v2"] else None) == expected
            seen.append(workers(sb))
        assert seen[1] == seen[2] == seen[0]  # 50% and the revert went through the control endpoint, no reload
        assert set(pipelined_variants(sb.port, IDS[:500])) == {"v1"}  # the site's own traffic, all on v1
    finally:
        sb.stop()


def test_a_revert_the_control_endpoint_refuses_falls_back_to_a_reload(tmp_path, nginx_bin):
    # A site-wide client_max_body_size of 1 byte makes nginx refuse the control request's body (413).
    sb = make(tmp_path / "sb", nginx_bin)
    sb.front.conf.write_text(sb.front.conf.read_text().replace("http {", "http {\n    client_max_body_size 1;", 1))
    started(sb)
    try:
        assert run_cli(sb.config_path, "apply", "30", "--force").returncode == 0  # v2 comes in with a reload
        assert answer(sb)["percent"] == 30
        result = run_cli(sb.config_path, "revert")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "reverting through a reload instead" in result.stdout and "413" in result.stdout, result.stdout
        assert answer(sb)["v2"] is False
        assert set(served(sb)) == {"v1"}
        assert run_cli(sb.config_path, "status").returncode == 0
    finally:
        sb.stop()


def test_a_replayed_control_request_is_refused_even_with_the_token(lua_sb):
    apply(lua_sb, "apply", "10")
    s = state(lua_sb)
    token = StateStore(lua_sb.state_dir).control_token()
    body = json.dumps({"generation": s["generation"], "stage": 5000, "seq": time.time_ns() // 1000},
                      separators=(",", ":"))
    assert control(lua_sb, body, token)[0] == 200
    code, text = control(lua_sb, body, token)  # the same request again
    assert code == 409 and "replayed" in text
    apply(lua_sb, "apply", "10")  # lbsplit's own next request has a higher seq
    assert answer(lua_sb)["percent"] == 10 and run_cli(lua_sb.config_path, "status").returncode == 0
