"""Fleet mode under faults: exit 0 only when every member serves the change, else the exact truth.

Real etcd (one node, and a 3-member cluster), three real nginx load balancers and their agent
processes on loopback. Each case asserts the exit code, the message naming the host, what each
LB's nginx answers and the share of real requests on v2 through it, and `status` afterwards.
"""

import calendar
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fleet_harness import HEALTH, TTL, EtcdCluster, Fleet, etcd, fleet, percent_of  # noqa: F401 - fixtures
from lbsplit.fleet.store import Etcd


def share(variants: list[str]) -> float:
    return variants.count("v2") / len(variants)


# libfaketime 0.9.10 fails clock_nanosleep (EINVAL) when the monotonic clock is left real, and faking the
# monotonic clock makes every timed wait last the offset: the skewed operator sleeps on an Event instead.
SKEWED = ("import runpy, sys, threading, time; time.sleep = lambda s: threading.Event().wait(s); "
          "sys.argv[0] = 'lbsplit'; runpy.run_module('lbsplit', run_name='__main__')")


def lbsplit(fleet: Fleet, i: int, *args: str, env: dict | None = None, skew: str | None = None) -> subprocess.Popen:
    """The real command line in the background; with `skew` (e.g. "-120s") its wall clock is off by that much."""
    python = [sys.executable, "-m", "lbsplit"] if skew is None else \
        [shutil.which("faketime") or "faketime", "-f", skew, sys.executable, "-c", SKEWED]
    extra = {} if skew is None else {"FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    return subprocess.Popen([*python, "--config", str(fleet.boxes[i].config_path), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **extra, **(env or {})})


def history(fleet: Fleet) -> list[dict]:
    return [json.loads(line) for line in fleet.cli(0, "history", "--json").stdout.splitlines()]


def test_revert_with_a_killed_agent_reverts_the_rest_and_exits_12_naming_what_it_still_serves(fleet):
    assert fleet.cli(0, "apply", "30").returncode == 0
    fleet.kill_agent(2)  # its nginx keeps serving 30%
    result = fleet.cli(0, "revert", "--reason", "drill")
    assert result.returncode == 12, result.stdout + result.stderr
    assert "lb-2: unreachable, last seen serving 30%" in result.stderr, result.stderr
    assert "revert --local" in result.stderr
    assert [fleet.served(i)["v2"] for i in range(3)] == [False, False, True]
    assert [share(fleet.variants(i)) for i in range(2)] == [0.0, 0.0]
    assert abs(share(fleet.variants(2)) - 0.30) < 0.04  # the truth: lb-2 still sends 30% to v2
    status = fleet.cli(0, "status")
    assert status.returncode == 12 and "unreachable" in status.stdout, status.stdout + status.stderr
    assert history(fleet)[-1]["result"] == "reverted, incomplete"
    fleet.start_agent(2)  # back: it follows the revert, and only then is everything vouched for
    fleet.wait(lambda: fleet.served(2)["v2"] is False, "lb-2 reverts when its agent is back")
    assert share(fleet.variants(2)) == 0.0
    fleet.wait(lambda: fleet.cli(0, "status").returncode == 0, "status exits 0 again")


def test_a_change_slower_than_agent_ttl_keeps_the_member_and_completes(fleet):
    # lb-1's pre_promote smoke test takes 2.5 x agent_ttl: the lease is kept by the agent's own thread.
    fleet.configure(1, health=f'\n[hooks]\npre_promote = ["sleep", "{2.5 * TTL:g}"]\n')
    result = fleet.cli(0, "apply", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "served by 3 of 3 members" in result.stdout
    assert [percent_of(fleet.served(i)) for i in range(3)] == [30, 30, 30]
    assert all(abs(share(fleet.variants(i)) - 0.30) < 0.04 for i in range(3))
    assert fleet.cli(0, "status").returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGKILL], ids=["frozen", "killed"])
def test_an_agent_frozen_or_killed_during_the_commit_fails_the_change_and_the_fleet_goes_back(fleet, sig):
    assert fleet.cli(0, "apply", "10").returncode == 0
    before = [fleet.variants(i) for i in range(3)]
    fleet.configure(2, health=f'\n[hooks]\npre_promote = ["sleep", "{TTL:g}"]\n')  # lb-2 busy when frozen
    store = Etcd((fleet.etcd.url,), timeout=2)
    proc = lbsplit(fleet, 0, "apply", "50")
    def committed_50() -> bool:  # one read: two could see the old commit and then the new proposal
        desired = json.loads(store.get(f"{fleet.prefix}/desired").value)
        return desired["phase"] == "committed" and desired["stage"]["hundredths"] == 5000

    fleet.wait(committed_50, "the change is committed")
    fleet.agents[2].send_signal(sig)
    try:
        code, err = proc.wait(timeout=120), proc.stderr.read()
        assert code == 12, err
        assert "failed on lb-2" in err and "lb-2: became unreachable during the change" in err, err
        assert [percent_of(fleet.served(i)) for i in range(2)] == [10, 10]
        assert "rollback to 10% is incomplete" in err  # lb-2 cannot be vouched for while it is away
    finally:
        if sig == signal.SIGSTOP:
            fleet.agents[2].send_signal(signal.SIGCONT)
        else:
            fleet.agents.pop(2).wait(timeout=10)
            fleet.start_agent(2)  # restarted: its nginx may be at 50% from the change it was killed in
    # Back, it finishes (or repairs) what it was doing, then follows the rollback: 10%, the same users.
    fleet.wait(lambda: fleet.cli(0, "status").returncode == 0, "lb-2 re-registers and serves the rollback",
               timeout=60)
    assert [percent_of(fleet.served(i)) for i in range(3)] == [10, 10, 10]
    assert [fleet.variants(i) for i in range(3)] == before


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGKILL], ids=["frozen", "killed"])
def test_an_agent_frozen_or_killed_during_the_proposal_fails_it_before_anything_changes(fleet, sig):
    assert fleet.cli(0, "apply", "10").returncode == 0
    # lb-2's agent stops answering just before the proposal: its lease is still alive when the operator reads
    # the fleet (a member, reachable), and lapses while the proposal waits for its word.
    fleet.agents[2].send_signal(sig)
    proc = lbsplit(fleet, 0, "apply", "50")
    try:
        code, err = proc.wait(timeout=120), proc.stderr.read()
        assert code == 12, err
        # "refused by lb-2" (its lease lapsed while the proposal waited) or, on a slow start, refused up front
        assert "refused" in err and "lb-2" in err and "nothing changed" in err, err
        assert [percent_of(fleet.served(i)) for i in range(3)] == [10, 10, 10]
        status = fleet.cli(0, "status")
        assert status.returncode == 12, status.stdout
    finally:
        if sig == signal.SIGSTOP:
            fleet.agents[2].send_signal(signal.SIGCONT)
        else:
            fleet.agents.pop(2).wait(timeout=10)
            fleet.start_agent(2)
    fleet.wait(lambda: fleet.cli(0, "status").returncode == 0, "lb-2 registers again", timeout=30)
    assert [percent_of(fleet.served(i)) for i in range(3)] == [10, 10, 10]


def test_a_second_agent_for_a_host_refuses_and_stopping_it_leaves_the_first_alone(fleet):
    second = lbsplit(fleet, 0, "agent")
    code, err = second.wait(timeout=30), second.stderr.read()
    assert code == 5, err
    assert "another agent for lb-0 already runs" in err and "agent for lb-0" in err, err
    time.sleep(TTL)  # had it revoked the first agent's lease, lb-0 would be unreachable by now
    assert fleet.host(0)["reachable"] is True
    result = fleet.cli(1, "apply", "10")
    assert result.returncode == 0 and "served by 3 of 3 members" in result.stdout, result.stdout + result.stderr
    assert [percent_of(fleet.served(i)) for i in range(3)] == [10, 10, 10]


def test_the_stage_nginx_serves_decides_not_a_remembered_change_id(fleet):
    """etcd restarted empty: change ids start again at 1, yet apply 100 exits 0 only once every LB serves 100%."""
    assert fleet.cli(0, "apply", "30").returncode == 0
    fleet.etcd.stop()
    shutil.rmtree(fleet.etcd.data)
    fleet.etcd.start()
    fleet.wait(lambda: all((h := fleet.host(i)) is not None and h["reachable"] for i in range(3)),
               "every agent registers with the new etcd", timeout=6 * TTL)
    status = fleet.cli(0, "status", "--json")
    assert json.loads(status.stdout)["desired"] is None
    result = fleet.cli(0, "apply", "100", "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fleet change 1:" in result.stdout  # the counter restarted ...
    assert [percent_of(fleet.served(i)) for i in range(3)] == [100, 100, 100]  # ... and yet every LB moved
    assert all(share(fleet.variants(i)) == 1.0 for i in range(3))
    assert fleet.cli(0, "status").returncode == 0


def test_a_stopped_nginx_is_reported_at_once_by_name(fleet):
    fleet.boxes[2].front.stop()
    try:
        result = fleet.cli(0, "apply", "10")
        assert result.returncode == 9, result.stdout + result.stderr
        assert "refused by lb-2" in result.stderr and "nginx on lb-2 does not answer" in result.stderr, result.stderr
        assert "no answer within" not in result.stderr and "nothing changed" in result.stderr
        assert [fleet.served(i)["v2"] for i in range(2)] == [False, False]
        assert [share(fleet.variants(i)) for i in range(2)] == [0.0, 0.0]
    finally:
        fleet.boxes[2].front.start(wait_port=fleet.boxes[2].port)


def test_the_rollback_of_a_failed_narrowing_is_not_stopped_by_the_gate(fleet):
    # Every host's gate refuses a widening (enforce_soak: 48 h at each stage) ...
    for i in range(3):
        fleet.configure(i, health="\n[plan]\nenforce_soak = true\n")
    assert fleet.cli(0, "apply", "30", "--force").returncode == 0
    # ... and lb-2's nginx.conf gets a broken line, so its nginx -t rejects the narrowing to 10%.
    conf = fleet.boxes[2].front.conf
    good = conf.read_text()
    conf.write_text(good.replace("http {", "http {\n    this_is_not_a_directive on;", 1))
    try:
        result = fleet.cli(0, "apply", "10")
        assert result.returncode == 3, result.stdout + result.stderr
        assert "failed on lb-2" in result.stderr
        # lb-2 never left 30% (its nginx -t refused the narrowing), so it serves the rollback as well.
        assert "the fleet is back at the previous stage (30%) on lb-0, lb-1, lb-2" in result.stderr, result.stderr
        assert [percent_of(fleet.served(i)) for i in range(3)] == [30, 30, 30]  # the undo was a widening
        assert all(abs(share(fleet.variants(i)) - 0.30) < 0.04 for i in range(3))
    finally:
        conf.write_text(good)
    assert fleet.cli(0, "status").returncode == 0


def test_forget_removes_a_gone_member_and_refuses_a_running_one(fleet):
    refused = fleet.cli(0, "forget", "lb-2")
    assert refused.returncode == 2 and "agent is running" in refused.stderr, refused.stderr
    fleet.kill_agent(2, signal.SIGTERM)
    fleet.boxes[2].stop()
    assert fleet.cli(0, "apply", "10").returncode == 12
    forgot = fleet.cli(0, "forget", "lb-2", "--reason", "decommissioned")
    assert forgot.returncode == 0 and "no longer a member" in forgot.stdout, forgot.stderr
    result = fleet.cli(0, "apply", "10")
    assert result.returncode == 0 and "served by 2 of 2 members" in result.stdout, result.stderr
    assert fleet.cli(0, "status").returncode == 0
    assert any(e["command"] == "forget lb-2" and e["reason"] == "decommissioned" for e in history(fleet))
    unknown = fleet.cli(0, "forget", "lb-9")
    assert unknown.returncode == 2 and "not a member" in unknown.stderr


def test_a_skewed_operator_clock_never_makes_a_live_proposal_stale(fleet, tmp_path):
    """Operator A runs 2 minutes behind (libfaketime) and is held while proposing; B must not take over."""
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.fail("faketime is not installed; `make test` installs Debian's faketime")
    assert fleet.cli(0, "apply", "10").returncode == 0
    env, release = fleet.barrier("after-propose", tmp_path)
    a = lbsplit(fleet, 0, "apply", "50", env=env, skew="-120s")
    fleet.wait(lambda: len(list(tmp_path.glob("go.*"))) == 1, "A holds its proposal", timeout=60)
    b = fleet.cli(1, "apply", "30")
    assert b.returncode == 5 and "still being proposed" in b.stderr, b.stdout + b.stderr
    release(1)
    code, out, err = a.wait(timeout=120), a.stdout.read(), a.stderr.read()
    assert code == 0, err
    assert "served by 3 of 3 members" in out
    stamped = json.loads(fleet.cli(0, "status", "--json").stdout)["desired"]["at"]
    assert time.time() - calendar.timegm(time.strptime(stamped, "%Y-%m-%dT%H:%M:%SZ")) > 100  # A's clock was off
    assert [percent_of(fleet.served(i)) for i in range(3)] == [50, 50, 50]


def test_a_3_member_etcd_cluster_loses_one_member_mid_change_and_then_its_quorum(tmp_path, nginx_bin):
    cluster = EtcdCluster(tmp_path / "etcd")
    cluster.start()
    f = None
    try:
        f = Fleet(tmp_path, cluster, nginx_bin, "/lbsplit/cluster")
        for i in range(3):
            f.start_agent(i, wait=False)
        f.wait_registered([0, 1, 2])
        assert f.cli(0, "apply", "10").returncode == 0
        proc = lbsplit(f, 0, "apply", "30", env={"LBSPLIT_FAILPOINT": f"after-propose:wait={tmp_path / 'go'}"})
        f.wait(lambda: len(list(tmp_path.glob("go.*"))) == 1, "the change is proposed")
        cluster.kill("m0")  # the first endpoint every client tries
        (tmp_path / "go").touch()
        code, out, err = proc.wait(timeout=120), proc.stdout.read(), proc.stderr.read()
        assert code == 0, err
        assert "served by 3 of 3 members" in out
        assert [percent_of(f.served(i)) for i in range(3)] == [30, 30, 30]
        cluster.kill("m1")  # no quorum: every fleet command fails clearly; the LBs keep serving
        for args in (("apply", "50"), ("revert",), ("status",)):
            result = f.cli(0, *args, timeout=60)
            assert result.returncode == 6, (args, result.stdout, result.stderr)
            assert "etcd" in result.stderr and "Traceback" not in result.stderr
        assert [percent_of(f.served(i)) for i in range(3)] == [30, 30, 30]
        assert all(abs(share(f.variants(i)) - 0.30) < 0.04 for i in range(3))
    finally:
        if f is not None:
            f.stop()
        cluster.stop()


WATCH = HEALTH.replace("failures_before_revert = 1\n", 'failures_before_revert = 1\non_breach = "previous"\n')


def test_a_frozen_leader_that_thaws_cannot_act_again(fleet, endpoint, tmp_path):
    """The leader is held just before its fenced write, frozen past its lease; another leads and steps the fleet
    back once; the thawed old leader's write fails on the fence: exactly one history entry for the decision."""
    for i in range(3):
        fleet.configure(i, health=WATCH.format(url=endpoint.url))
    assert fleet.cli(0, "apply", "30", "--force").returncode == 0
    endpoint.mode = "breach:error_rate=0.5"
    store = Etcd((fleet.etcd.url,), timeout=2)
    gate_file = tmp_path / "go"
    old = lbsplit(fleet, 0, "watchdog", "--once", env={"LBSPLIT_FAILPOINT": f"before-fleet-act:wait={gate_file}"})
    fleet.wait(lambda: len(list(tmp_path.glob("go.*"))) == 1, "lb-0 leads and is about to act", timeout=60)
    old.send_signal(signal.SIGSTOP)
    try:
        fleet.wait(lambda: store.get(f"{fleet.prefix}/watchdog") is None, "the frozen leader's lease lapses",
                   timeout=4 * TTL)
        new = fleet.cli(1, "watchdog", "--once")
        assert new.returncode == 10, new.stdout + new.stderr
        assert [percent_of(fleet.served(i)) for i in range(3)] == [10, 10, 10]
        gate_file.touch()
    finally:
        old.send_signal(signal.SIGCONT)
    code, err = old.wait(timeout=60), old.stderr.read()
    assert code == 0 and "no longer leads the fleet" in err, err
    assert [percent_of(fleet.served(i)) for i in range(3)] == [10, 10, 10]
    steps = [e for e in history(fleet) if e["command"].startswith("watchdog")]
    assert len(steps) == 1 and steps[0]["to"] == "10%", steps


def test_a_leader_whose_own_host_was_reverted_locally_still_judges_the_fleet(fleet, endpoint):
    for i in range(3):
        fleet.configure(i, health=HEALTH.format(url=endpoint.url))
    assert fleet.cli(0, "apply", "30", "--force").returncode == 0
    assert fleet.cli(0, "revert", "--local").returncode == 0
    endpoint.mode = "breach:error_rate=0.5"
    result = fleet.cli(0, "watchdog", "--once")
    assert result.returncode == 10, result.stdout + result.stderr
    assert [fleet.served(i)["v2"] for i in range(3)] == [False] * 3
    assert all(share(fleet.variants(i)) == 0.0 for i in range(3))
    assert [e["command"] for e in history(fleet)].count("revert") == 1
