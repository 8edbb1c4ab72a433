"""The judge never raises and never passes nonsense; the watchdog runner's clocks, alarms and a gzip bomb."""

import gzip
import json
import math
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from hypothesis import given, settings, strategies as st

from lbsplit.config import DEFAULT_THRESHOLDS
from lbsplit.errors import ExitCode
from lbsplit.model import METRICS, RATE_METRICS, NoData, Outcome
from lbsplit.rollout.files import Lock
from lbsplit.watch.judge import evaluate
from lbsplit.watch.memory import load_state

FIELDS = {m: m for m in METRICS}
T10 = DEFAULT_THRESHOLDS[0]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries({m: json_values for m in METRICS}),
    st.fixed_dictionaries({"metrics": st.fixed_dictionaries({m: json_values for m in METRICS})}),
)


@settings(max_examples=400, deadline=None)
@given(payload=payloads, policy=st.sampled_from(list(NoData)))
def test_the_judge_returns_a_verdict_and_never_passes_a_value_it_cannot_use(payload, policy):
    check = evaluate(payload, None, T10, FIELDS, policy)
    assert check.outcome in set(Outcome)
    for metric, value in check.metrics.items():
        if value is not None:
            assert math.isfinite(value) and value >= 0 and (metric not in RATE_METRICS or value <= 1)
    if check.outcome == Outcome.PASS:
        assert all(check.metrics[m] is not None for m in METRICS) and not check.missing


def test_deep_nesting_and_huge_numbers_from_the_wire_are_no_data():
    deep = json.loads("[" * 500 + "]" * 500)
    assert evaluate(deep, None, T10, FIELDS, NoData.FAIL).outcome == Outcome.FAIL
    huge = {"error_rate": 10**400, "timeout_rate": 0, "dead_letter_growth": 0, "avg_response_time": 1}
    check = evaluate(huge, None, T10, FIELDS, NoData.FAIL)
    assert check.outcome == Outcome.FAIL and check.missing[0].metric == "error_rate"
    assert "too large" in check.missing[0].why


# ---- the runner in-process: a written state at 10%, a fake probe; nothing here reverts
def runner(tmp_path, probe, clock, sleep, monotonic=None, notify=None):
    from lbsplit.config import load
    from lbsplit.rollout.state import State, StateStore
    from lbsplit.watch.watchdog import Watchdog

    config = tmp_path / "lbsplit.toml"
    config.write_text('state_dir = "state"\n[upstreams]\nv1 = ["127.0.0.1:1"]\nv2 = ["127.0.0.1:2"]\n'
                      '[health]\nurl = "http://127.0.0.1:1/h"\n[notify]\nwebhook = "http://127.0.0.1:1/hook"\n')
    s = load(config)
    store = StateStore(s.state_dir)
    store.ensure()
    store.write_state(State(generation=2, v2_enabled=True, hundredths=1000, mode="hash", applied_at="t",
                            applied_by="u", command="apply 10", sha256="x", reloaded=True))
    sent = []
    wd = Watchdog(s, s.health, probe=probe, clock=clock, sleep=sleep, monotonic=monotonic,
                  notify=notify or (lambda url, body, timeout: sent.append(body)), echo=lambda m: None)
    return wd, store, sent


def healthy_probe(url, timeout, headers):
    from lbsplit.watch.endpoint import Sample

    return Sample(0.0, {"error_rate": 0, "timeout_rate": 0, "dead_letter_growth": 0, "avg_response_time": 1}, None)


def test_a_lock_held_past_the_stage_interval_is_an_act_now_alarm(tmp_path):
    t = [1_800_000_000.0]
    wd, store, sent = runner(tmp_path, healthy_probe, clock=lambda: t[0], sleep=lambda s: None)
    with Lock(store.lock_path, 0, "a stopped apply"):
        assert wd.run("once") == ExitCode.OK  # held for a moment: skipped, no alarm
        t[0] += 61
        assert wd.run("once") == ExitCode.WATCHDOG_ACT_NOW
        t[0] += 60
        assert wd.run("once") == ExitCode.WATCHDOG_ACT_NOW
    assert [b["event"] for b in sent] == ["stuck"]  # one webhook, not one a minute
    assert "a stopped apply" in sent[0]["holder"]
    assert "ACT NOW" in (store.dir / "watchdog.log").read_text()
    assert wd.run("once") == ExitCode.OK  # the lock is free again: back to normal
    assert load_state(store.watchdog_path).busy_since is None


def test_a_backwards_clock_jump_never_makes_a_cron_run_sleep_long(tmp_path):
    wall = [1_800_000_000.0]
    mono = [100.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        mono[0] += seconds
        wall[0] += seconds - 3600  # the wall clock jumps back an hour during the run

    wd, store, _ = runner(tmp_path, healthy_probe, clock=lambda: wall[0], sleep=sleep, monotonic=lambda: mono[0])
    assert wd.run("cron") == ExitCode.OK
    assert sum(slept) < 60 and slept == []  # at 10% one check a minute: no sleep at all
    store.write_state(store.read_state().__class__(**{**store.read_state().__dict__, "hundredths": 10000}))
    slept.clear()
    assert wd.run("cron") == ExitCode.OK
    assert slept == [15, 15, 15]  # four checks 15 s apart by the monotonic clock


def test_an_unwritable_watchdog_log_and_textfile_never_stop_a_check(tmp_path):
    wd, store, _ = runner(tmp_path, healthy_probe, clock=lambda: 1_800_000_000.0, sleep=lambda s: None)
    (tmp_path / "not-a-dir").write_text("")
    object.__setattr__(wd.health, "log", tmp_path / "not-a-dir" / "watchdog.log")
    object.__setattr__(wd.health, "prometheus_textfile", tmp_path / "missing" / "lbsplit.prom")
    assert wd.run("once") == ExitCode.OK
    assert load_state(store.watchdog_path).last_outcome == Outcome.PASS


class _Bomb(BaseHTTPRequestHandler):
    body = gzip.compress(b"\0" * (200 << 20), compresslevel=9)  # 200 MiB of zeros in ~200 KiB

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        try:
            self.wfile.write(self.body)
        except OSError:
            pass


def test_a_gzip_bomb_is_cut_off_at_the_cap_of_decoded_bytes():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Bomb)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # VmHWM: this process's own peak (ru_maxrss would include the parent's at fork time)
        code = ("import re; from lbsplit.watch.endpoint import probe; "
                f"s = probe('http://127.0.0.1:{server.server_address[1]}/h', 10, {{}}); "
                "print(s.error); print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        error, rss_kib = out.stdout.split("\n")[:2]
        assert error == "answer larger than 1048576 bytes", out.stderr
        assert int(rss_kib) < 100 * 1024  # KiB: far below the 200 MiB the answer unpacks to
    finally:
        server.shutdown()
        server.server_close()


def test_a_watchdog_at_a_terminal_prints_every_check_and_why_it_skips(tmp_path):
    lines = []
    wd, store, _ = runner(tmp_path, healthy_probe, clock=lambda: 1_800_000_000.0, sleep=lambda s: None)
    wd.chatty, wd.echo = True, lines.append
    assert wd.run("once") == ExitCode.OK
    assert len(lines) == 1 and "check=PASS" in lines[0]
    with Lock(store.lock_path, 0, "an apply"):
        assert wd.run("once") == ExitCode.OK
    assert lines[-1].startswith("check skipped: pid") and "an apply" in lines[-1]
