"""The watchdog runner: its memory between runs, clocks and alarms, unwritable outputs, and webhooks and
hooks that never delay the next check."""

from fakes import HEALTHY
from lbsplit.errors import ExitCode
from lbsplit.model import DEFAULT_THRESHOLDS, Outcome
from lbsplit.rollout.files import Lock
from lbsplit.watch.memory import load_state, prometheus_text, WatchdogState

T10, T30, T100 = DEFAULT_THRESHOLDS


# ---- the runner in-process: a written state at 10%, a fake probe; nothing here reverts
def clocked_runner(tmp_path, probe, clock, sleep, monotonic=None, notify=None):
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
    wd, store, sent = clocked_runner(tmp_path, healthy_probe, clock=lambda: t[0], sleep=lambda s: None)
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

    wd, store, _ = clocked_runner(tmp_path, healthy_probe, clock=lambda: wall[0], sleep=sleep, monotonic=lambda: mono[0])
    assert wd.run("cron") == ExitCode.OK
    assert sum(slept) < 60 and slept == []  # at 10% one check a minute: no sleep at all
    store.write_state(store.read_state().__class__(**{**store.read_state().__dict__, "hundredths": 10000}))
    slept.clear()
    assert wd.run("cron") == ExitCode.OK
    assert slept == [15, 15, 15]  # four checks 15 s apart by the monotonic clock


def test_an_unwritable_watchdog_log_and_textfile_never_stop_a_check(tmp_path):
    wd, store, _ = clocked_runner(tmp_path, healthy_probe, clock=lambda: 1_800_000_000.0, sleep=lambda s: None)
    (tmp_path / "not-a-dir").write_text("")
    object.__setattr__(wd.health, "log", tmp_path / "not-a-dir" / "watchdog.log")
    object.__setattr__(wd.health, "prometheus_textfile", tmp_path / "missing" / "lbsplit.prom")
    assert wd.run("once") == ExitCode.OK
    assert load_state(store.watchdog_path).last_outcome == Outcome.PASS


def test_a_watchdog_at_a_terminal_prints_every_check_and_why_it_skips(tmp_path):
    lines = []
    wd, store, _ = clocked_runner(tmp_path, healthy_probe, clock=lambda: 1_800_000_000.0, sleep=lambda s: None)
    wd.chatty, wd.echo = True, lines.append
    assert wd.run("once") == ExitCode.OK
    assert len(lines) == 1 and "check=PASS" in lines[0]
    with Lock(store.lock_path, 0, "an apply"):
        assert wd.run("once") == ExitCode.OK
    assert lines[-1].startswith("check skipped: pid") and "an apply" in lines[-1]


def test_prometheus_text_has_every_series():
    wd = WatchdogState(consecutive_failures=2, last_check_at=1700000000.0, reverts_total=1,
                       last_metrics={"error_rate": 0.07, "timeout_rate": None})
    text = prometheus_text(30, 5, wd, T30)
    for line in ("lbsplit_percent 30", "lbsplit_generation 5", "lbsplit_watchdog_consecutive_failures 2",
                 "lbsplit_reverts_total 1", "lbsplit_last_check_timestamp_seconds 1700000000.000",
                 'lbsplit_v2_health{metric="error_rate"} 0.07', 'lbsplit_v2_threshold{metric="error_rate"} 0.04'):
        assert line in text.splitlines()
    assert "timeout_rate\"} None" not in text


def test_a_damaged_watchdog_state_only_loses_the_count(tmp_path):
    path = tmp_path / "watchdog.json"
    for raw in (b"", b"{", b"[1, 2]", b'{"consecutive_failures": "x"}', b'{"unknown": 1}', b"[" * 100000):
        path.write_bytes(raw)
        assert load_state(path).consecutive_failures == 0


# ---- the runner in-process: a written state, a fake probe, no nginx (these sequences never revert)
def answering_runner(tmp_path, answers, no_data="fail"):
    """A Watchdog over a state at 10% whose probe returns `answers` in turn."""
    from lbsplit.config import load
    from lbsplit.rollout.state import State, StateStore
    from lbsplit.watch.endpoint import Sample
    from lbsplit.watch.watchdog import Watchdog

    config = tmp_path / "lbsplit.toml"
    config.write_text(f'state_dir = "state"\n[upstreams]\nv1 = ["127.0.0.1:1"]\nv2 = ["127.0.0.1:2"]\n'
                      f'[health]\nurl = "http://127.0.0.1:1/h"\nno_data = "{no_data}"\n')
    settings = load(config)
    store = StateStore(settings.state_dir)
    store.ensure()
    store.write_state(State(generation=2, v2_enabled=True, hundredths=1000, mode="hash", applied_at="t",
                            applied_by="u", command="apply 10", sha256="x", reloaded=True))
    queue = list(answers)

    def probe(url, timeout, headers):
        payload, error = queue.pop(0)
        return Sample(0.0, payload, error)

    return Watchdog(settings, settings.health, probe=probe, notify=lambda *a: None, echo=lambda m: None), store


def test_a_passing_check_resets_the_count(tmp_path):
    down, up = (None, "HTTP 500"), (HEALTHY, None)
    wd, store = answering_runner(tmp_path, [down, down, up, down, down])
    counts = []
    for _ in range(5):
        assert wd.run("once") == 0
        counts.append(load_state(store.watchdog_path).consecutive_failures)
    assert counts == [1, 2, 0, 1, 2]
    assert store.read_state().v2_enabled


def test_unreachable_endpoint_under_no_data_ignore_never_counts(tmp_path):
    wd, store = answering_runner(tmp_path, [(None, "connection refused")] * 3, no_data="ignore")
    assert [wd.run("once") for _ in range(3)] == [0, 0, 0]
    saved = load_state(store.watchdog_path)
    assert saved.consecutive_failures == 0 and saved.last_outcome == Outcome.NO_DATA
    log = (store.dir / "watchdog.log").read_text()
    assert log.count("check=NO_DATA") == 3 and "no_data=ignore" in log and "connection refused" in log


def test_hanging_webhooks_never_delay_the_next_check_and_a_send_waits_one_timeout_in_all(tmp_path):
    """Three webhooks that never answer: the watchdog's checks go on while the alerts are still on their way
    (no clock involved: the fake post blocks until released), and a person's send returns after one
    notify.timeout for all three, naming each that did not answer."""
    import threading

    from lbsplit.config import load
    from lbsplit.model import Level
    from lbsplit.watch import notify

    release, calls = threading.Event(), []

    def hanging(url, payload, timeout):
        calls.append(url)
        release.wait(30)
        return "webhook timed out"

    wd, store = answering_runner(tmp_path, [(None, "HTTP 500"), (None, "HTTP 500")])
    config = tmp_path / "lbsplit.toml"
    config.write_text(config.read_text() + '[notify]\ntimeout = 0.2\nwebhooks = ['
                      + ", ".join(f'{{ url = "http://127.0.0.1:{p}/hook" }}' for p in (1, 2, 3)) + "]\n")
    settings = load(config)
    wd.settings, wd.notify = settings, hanging
    try:
        assert wd.check_once().kind == "fail"  # its alert went to three webhooks that hang
        assert wd.check_once().kind == "fail"  # ... and the next check ran while they still hang
        assert not release.is_set() and len(calls) >= 3
        assert load_state(store.watchdog_path).consecutive_failures == 2
        late = notify.send(settings, "apply", Level.P3, "a person's apply", post=hanging)
        assert len(late) == 3 and all("did not answer within 0.2s" in line for line in late), late
    finally:
        release.set()
        notify.drain(5)
    assert all(line.startswith("notify ") for line in notify.drain(1))


def test_a_slow_on_alert_hook_never_delays_the_next_check(tmp_path):
    """The on_alert hook blocks until the test lets it go: both checks run meanwhile, and the history records
    the hook once it ends."""
    import json
    import sys

    from lbsplit.config import load

    started, go = tmp_path / "started", tmp_path / "go"
    script = ("import os, sys, time\nopen(sys.argv[1], 'a').write('x')\n"
              "while not os.path.exists(sys.argv[2]):\n    time.sleep(0.02)\n")
    wd, store = answering_runner(tmp_path, [(None, "HTTP 500"), (None, "HTTP 500")])
    config = tmp_path / "lbsplit.toml"
    config.write_text(config.read_text() + "[hooks]\ntimeout = 30\non_alert = "
                      + json.dumps([sys.executable, "-c", script, str(started), str(go)]) + "\n")
    wd.settings = load(config)
    try:
        assert wd.check_once().kind == "fail"
        assert wd.check_once().kind == "fail"  # the first alert's hook still waits for `go`
        assert not go.exists() and load_state(store.watchdog_path).consecutive_failures == 2
    finally:
        go.touch()
        for thread in wd._hooks_running:
            thread.join(30)
    assert started.read_text().startswith("x")
    hooks = [e for e in store.read_history() if e["command"] == "hook on_alert"]
    assert hooks and hooks[0]["result"] == "ok"
