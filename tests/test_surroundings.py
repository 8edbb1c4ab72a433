"""Broken surroundings on a real nginx: each gives one clear message and leaves the live config as it was."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import live, ok, run_cli

USERS = [f"user-{i}" for i in range(200)]


def one_clear_line(result, code):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("lbsplit: ")


@pytest.mark.parametrize(
    "config_text, fragment",
    [
        ("state_dir = [\n", "is not valid TOML"),
        ("[upstreams]\nv1 = 5\n", "upstreams.v1: expected a list"),
        ("[upstreams]\nv1 = [\"127.0.0.1:1\"]\nv2 = [\"127.0.0.1:2\"]\n[split]\nwhitelist_fil = \"x\"\n",
         "did you mean split.whitelist_file?"),
    ],
)
def test_malformed_config_files(sandbox, config_text, fragment):
    ok(run_cli(sandbox.config_path, "apply", "10"))
    before = live(sandbox)
    bad = sandbox.root / "bad.toml"
    bad.write_text(config_text)
    result = run_cli(bad, "apply", "30")
    one_clear_line(result, 2)
    assert fragment in result.stderr
    assert live(sandbox) == before


@pytest.mark.parametrize("content, fragment", [(b"ok\n\x00\x01binary", "looks binary"), (None, "does not exist")])
def test_bad_whitelist_files(sandbox, content, fragment):
    ok(run_cli(sandbox.config_path, "apply", "10"))
    before = live(sandbox)
    if content is not None:
        (sandbox.root / "wl.bin").write_bytes(content)
    sandbox.write_config(extra='whitelist_file = "wl.bin"\n')
    result = run_cli(sandbox.config_path, "apply", "30")
    one_clear_line(result, 2)
    assert fragment in result.stderr and "split.whitelist_file" in result.stderr
    assert live(sandbox) == before


def test_stale_pid_file_means_not_running(sandbox):
    sandbox.front.stop()
    pid_file = sandbox.front.pid_file
    # a live pid that is surely not nginx: a sleep this test starts
    other = subprocess.Popen(["sleep", "30"])
    try:
        pid_file.write_text(f"{other.pid}\n")
        result = ok(run_cli(sandbox.config_path, "apply", "30"))
        assert "nginx is not running" in result.stdout
        assert json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)["nginx_running"] is False
        assert other.poll() is None  # lbsplit never signalled it
    finally:
        other.kill()
        other.wait()
        pid_file.unlink()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture
def small_output_dir(sandbox):
    """Move the sandbox's output_dir onto a 256 KiB tmpfs (skip where mounting is not allowed)."""
    mount = sandbox.root / "small"
    if not _mount_tmpfs(mount, "256k"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        target = mount / "lbsplit.conf"
        target.write_bytes(live(sandbox))
        (sandbox.output_dir / "lbsplit.conf").unlink()
        sandbox.output_dir.rmdir()
        sandbox.output_dir.symlink_to(mount)  # nginx.conf includes the old path; it now lands on the tmpfs
        yield mount
    finally:
        _umount(mount)


def test_disk_full_while_writing_leaves_live_config_and_traffic(sandbox, small_output_dir):
    import random
    import uuid

    ok(run_cli(sandbox.config_path, "apply", "10"))
    before = live(sandbox)
    traffic = sandbox.variants(USERS)
    rng = random.Random(1)
    (sandbox.root / "wl.txt").write_text("\n".join(str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(20_000)))
    sandbox.write_config(extra='whitelist_file = "wl.txt"\n')  # ~1 MB of config: does not fit
    result = run_cli(sandbox.config_path, "apply", "30")
    one_clear_line(result, 6)
    assert "No space left on device" in result.stderr and "free some disk space" in result.stderr
    assert live(sandbox) == before
    assert sandbox.variants(USERS) == traffic
    # no temp file left; the only map file is the live whitelist's (3 ids), not the one that did not fit
    left = sorted(p.name for p in small_output_dir.rglob("*") if not p.is_dir())
    assert left[0] == "lbsplit.conf" and len(left) == 2 and left[1].startswith("whitelist-"), left
    assert (small_output_dir / "lbsplit.d" / left[1]).stat().st_size < 200
    status = json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)
    assert status["serving"] and status["unfinished_transaction"] is None


def test_read_only_output_dir(sandbox, small_output_dir):
    ok(run_cli(sandbox.config_path, "apply", "10"))
    before = live(sandbox)
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_output_dir)]).returncode == 0
    result = run_cli(sandbox.config_path, "apply", "30")
    one_clear_line(result, 6)
    assert "Read-only file system" in result.stderr
    assert live(sandbox) == before
    # the failed write cleaned up after itself: no journal, so the next command does not reload for nothing
    assert not (sandbox.state_dir / "journal.json").exists()
    # revert cannot write either; it must say so just as clearly, and traffic stays as it was
    result = run_cli(sandbox.config_path, "revert")
    one_clear_line(result, 6)


def test_files_have_sane_modes(sandbox):
    ok(run_cli(sandbox.config_path, "apply", "10"))
    assert (sandbox.output_dir / "lbsplit.conf").stat().st_mode & 0o777 == 0o644
    for path in sandbox.state_dir.rglob("*"):
        assert not path.stat().st_mode & 0o002, f"{path} is world-writable"


def test_no_shell_anywhere():
    files = sorted((Path(__file__).parent.parent / "lbsplit").rglob("*.py"))
    # The two modules that run subprocesses must be among those read, or this check reads nothing that matters.
    assert {"process.py", "hooks.py"} <= {p.name for p in files}
    for path in files:
        source = path.read_text()
        assert "shell=True" not in source and "os.system(" not in source and "os.popen(" not in source, path
