"""Crash safety on purpose: the transaction stopped at every named step by SIGKILL and by SIGTERM.

`LBSPLIT_FAILPOINT=STEP:ACTION` makes the real `lbsplit apply` kill (or SIGTERM) itself
at that step against a real nginx; each case asserts the exact outcome: what is on disk
right after, what the next command's repair does, and what nginx serves in the end.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import live, REPO, run_cli, state
from lbsplit.demo.sandbox import Sandbox
from lbsplit.rollout.transaction import FAILPOINT_ENV, STEPS

UNTOUCHED, ROLLED_BACK, FINISHED = "untouched", "rolled back", "finished"
# What the next command finds after a SIGKILL at each step.
AFTER_KILL = {
    "after-lock": UNTOUCHED,
    "after-include": UNTOUCHED,  # a new whitelist map file may be left; nothing refers to it yet
    "after-backup": UNTOUCHED,
    "after-journal": ROLLED_BACK,
    "after-swap": ROLLED_BACK,
    "after-test": ROLLED_BACK,
    "after-reload": FINISHED,  # nginx was asked to reload: repair waits for it and records it
    "after-verify": FINISHED,
    "after-state": FINISHED,
    "after-history": FINISHED,
}
# SIGTERM: the undo scope runs before the commit point (nginx serving the new generation); after it, the
# command finishes and says the signal came late.
AFTER_TERM = {
    "after-lock": (130, "nothing was changed", UNTOUCHED),
    "after-include": (130, "nothing was changed", UNTOUCHED),
    "after-backup": (130, "nothing was changed", UNTOUCHED),
    "after-journal": (130, "the previous config was put back", UNTOUCHED),
    "after-swap": (130, "the previous config was put back", UNTOUCHED),
    "after-test": (130, "the previous config was put back", UNTOUCHED),
    "after-reload": (130, "the previous config was put back", UNTOUCHED),
    "after-verify": (0, "SIGTERM arrived after nginx already served", FINISHED),
    "after-state": (0, "SIGTERM arrived after nginx already served", FINISHED),
    "after-history": (0, "SIGTERM arrived after nginx already served", FINISHED),
}


@pytest.fixture(scope="module")
def sb(tmp_path_factory, nginx_bin):
    """One sandbox for the whole matrix: each case starts from whatever stage the last one left."""
    box = Sandbox(tmp_path_factory.mktemp("crash") / "sb", binary=nginx_bin, nginx_dir=REPO / "nginx")
    box.write_config(whitelist=["test_user_001"])
    assert run_cli(box.config_path, "init").returncode == 0
    box.start()
    assert run_cli(box.config_path, "apply", "10").returncode == 0
    yield box
    box.stop()


def history(sb) -> list[dict]:
    return [json.loads(line) for line in (sb.state_dir / "history.jsonl").read_text().splitlines()]


def serving(sb) -> dict:
    from lbsplit.config import load
    from lbsplit.nginx.process import Nginx

    return Nginx(load(sb.config_path).nginx).serving()


def nginx_t_passes(sb) -> bool:
    argv = [sb.binary, "-p", str(sb.front.prefix), "-c", str(sb.front.conf), "-t", "-q"]
    return subprocess.run(argv, capture_output=True).returncode == 0


def crashed_apply(sb, step: str, action: str):
    """`lbsplit apply` to the other stage, stopped at `step`; returns (target, old bytes, the process)."""
    before = state(sb)
    target = "30" if before["hundredths"] == 1000 else "10"
    old = live(sb)
    env = {**os.environ, FAILPOINT_ENV: f"{step}:{action}"}
    argv = [sys.executable, "-m", "lbsplit", "--config", str(sb.config_path), "apply", target]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    return before, target, old, proc


def assert_outcome(sb, outcome: str, before: dict, target: str, old: bytes, entries_before: int) -> None:
    s, answer = state(sb), serving(sb)
    if outcome == FINISHED:
        assert s["generation"] > before["generation"] and s["hundredths"] == int(target) * 100
        assert f"{target}% lbsplit_v2;".encode() in live(sb)
        assert [e["generation"] for e in history(sb)].count(s["generation"]) == 1, "a change recorded twice"
        assert len(history(sb)) == entries_before + 1
    else:
        assert s == before and live(sb) == old
    assert answer["generation"] == s["generation"] and answer["percent"] == s["hundredths"] / 100
    assert not (sb.state_dir / "journal.json").exists()
    assert not list(sb.output_dir.glob(".lbsplit-tmp-*")) and not list(sb.state_dir.rglob(".lbsplit-tmp-*"))


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_step_is_repaired_to_the_exact_outcome(sb, step):
    entries = len(history(sb))
    before, target, old, proc = crashed_apply(sb, step, "kill")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    now = live(sb)
    assert now == old or f"{target}% lbsplit_v2;".encode() in now, "torn file on disk"
    assert nginx_t_passes(sb)
    repaired = run_cli(sb.config_path, "repair")
    assert repaired.returncode == 0, repaired.stderr
    expected = AFTER_KILL[step]
    said = {UNTOUCHED: "nothing to repair", ROLLED_BACK: "rolled back the interrupted `apply",
            FINISHED: "finished the interrupted `apply"}[expected]
    assert repaired.stdout.startswith(said), repaired.stdout
    if expected == ROLLED_BACK:
        entries += 1  # repair records its rollback
        assert history(sb)[-1]["command"] == f"repair (apply {target})"
    assert_outcome(sb, expected, before, target, old, entries)


@pytest.mark.parametrize("action", ["term", "term-dropped"])
@pytest.mark.parametrize("step", STEPS)
def test_sigterm_at_each_step_undoes_before_the_commit_point_and_finishes_after_it(sb, step, action):
    # term-dropped: the SIGTERM lands in a finalizer, where Python drops what the handler raises (CI met one in
    # a weakref callback of the import machinery); the transaction asks at its next step and ends the same way.
    entries = len(history(sb))
    before, target, old, proc = crashed_apply(sb, step, action)
    code, message, expected = AFTER_TERM[step]
    assert proc.returncode == code, proc.stderr
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    if code == 130:
        assert proc.stderr.strip().count("\n") == 0, "one line"
    assert_outcome(sb, expected, before, target, old, entries)


def test_a_lost_backup_stops_repair_with_exit_7_and_revert_still_works(sb):
    before, target, old, proc = crashed_apply(sb, "after-swap", "kill")
    assert proc.returncode == -signal.SIGKILL
    (sb.state_dir / "lbsplit.conf.before").unlink()
    repaired = run_cli(sb.config_path, "repair")
    assert repaired.returncode == 7 and "backup" in repaired.stderr and "is gone" in repaired.stderr
    assert live(sb) != old  # nothing was guessed
    reverted = run_cli(sb.config_path, "revert")
    assert reverted.returncode == 0, reverted.stderr
    assert "could not repair" in reverted.stdout
    assert serving(sb)["v2"] is False and state(sb)["v2_enabled"] is False
    assert run_cli(sb.config_path, "apply", "10").returncode == 0  # back where the matrix expects it


def test_a_planted_backup_is_refused_not_served(sb):
    before, target, old, proc = crashed_apply(sb, "after-swap", "kill")
    planted = old + b"\nserver { listen 127.0.0.1:1; location / { autoindex on; } }\n"
    (sb.state_dir / "lbsplit.conf.before").write_bytes(planted)
    repaired = run_cli(sb.config_path, "repair")
    assert repaired.returncode == 7 and "is not the file" in repaired.stderr
    assert b"autoindex" not in live(sb)
    (sb.state_dir / "lbsplit.conf.before").write_bytes(old)  # the real backup back: repair rolls back
    assert run_cli(sb.config_path, "repair").returncode == 0
    assert live(sb) == old and serving(sb)["generation"] == before["generation"]
