import os
import stat
import threading
import time

import pytest

from lbsplit.errors import EnvironmentProblem, LockBusy
from lbsplit.rollout.files import TEMP_PREFIX, Lock, atomic_write, yields_to_revert


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "lbsplit.conf"
    target.write_text("old")
    atomic_write(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["lbsplit.conf"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_atomic_write_into_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(EnvironmentProblem, match="cannot write .*create the directory"):
        atomic_write(tmp_path / "nope" / "x.conf", "data")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_atomic_write_without_permission(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(EnvironmentProblem, match="Permission denied"):
            atomic_write(tmp_path / "x.conf", "data")
    finally:
        tmp_path.chmod(0o755)
    assert not list(tmp_path.glob(TEMP_PREFIX + "*"))


def test_lock_waits_then_fails_naming_the_holder(tmp_path):
    path = tmp_path / "lock"
    with Lock(path, 5, "apply 30"):
        started = time.monotonic()
        with pytest.raises(LockBusy, match=r"held by pid \d+ \(apply 30\)"):
            Lock(path, 0.3, "revert").acquire()
        assert time.monotonic() - started >= 0.3


def test_lock_is_taken_once_the_holder_lets_go(tmp_path):
    path = tmp_path / "lock"
    first = Lock(path, 5, "first").acquire()
    threading.Timer(0.2, first.release).start()
    with Lock(path, 5, "second"):
        assert "second" in path.read_text()


@pytest.mark.parametrize("purpose, yields", [
    ("apply 30", True), ("promote 50", True), ("auto-promote 30", True), ("watchdog step back to 10", True),
    ("check", True), ("init", True), ("repair", True),
    ("revert", False), ("watchdog", False), ("watchdog revert", False), ("fleet apply 30", False),
    ("fleet revert", False),
])
def test_a_revert_ends_only_holders_that_are_not_reverts_themselves(purpose, yields):
    assert yields_to_revert(f"pid 123 ({purpose})") is yields


def test_a_holder_that_cannot_be_named_is_waited_for():
    assert not yields_to_revert("another lbsplit command")
    assert not yields_to_revert("pid 123")


def test_rename_says_what_the_holder_does_now(tmp_path):
    path = tmp_path / "lock"
    with Lock(path, 0, "watchdog") as lock:
        assert not yields_to_revert(lock.holder())
        lock.rename("watchdog step back to 10")
        assert lock.holder() == f"pid {os.getpid()} (watchdog step back to 10)"
        assert yields_to_revert(lock.holder())


def test_link_or_copy_onto_an_existing_link_leaves_no_temp_file(tmp_path):
    from lbsplit.rollout.files import link_or_copy

    source = tmp_path / "live.conf"
    source.write_text("gen 3")
    target = tmp_path / "3.conf"
    assert link_or_copy(source, target) and link_or_copy(source, target)
    assert target.read_text() == "gen 3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3.conf", "live.conf"]
