import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbsplit.config import load
from lbsplit.demo.sandbox import Sandbox, nginx_binary, share_ports
from lbsplit.rollout import transaction

REPO = Path(__file__).resolve().parent.parent

# pytest-xdist workers pick ports at once: each gets its own share, so a port one picked and has not bound
# yet (a fleet's three nginx start seconds after their configs are written) is never another's pick.
if os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
    share_ports(int(os.environ["PYTEST_XDIST_WORKER"][2:]), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


# Helpers the test files share (each was once copied into several of them).
def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The command's result, after asserting it exited 0 (its output in the failure message)."""
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


def live(sb) -> bytes:
    """The live lbsplit.conf's bytes."""
    return (sb.output_dir / "lbsplit.conf").read_bytes()


def state(sb) -> dict:
    """state_dir/state.json as data."""
    return json.loads((sb.state_dir / "state.json").read_text())


def share(sb, ids: list[str]) -> float:
    """The share of real requests for `ids` that nginx sends to v2."""
    variants = sb.variants(ids)
    return variants.count("v2") / len(variants)


def run_cli(config: Path | None, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real lbsplit command line in a child process."""
    argv = [sys.executable, "-m", "lbsplit"]
    if config is not None:
        argv += ["--config", str(config)]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(argv + list(args), capture_output=True, text=True, timeout=timeout, env=full_env)


def end(proc: subprocess.Popen, grace: float = 10) -> None:
    """End a process a test started: SIGTERM, then SIGKILL after `grace` seconds; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    found = nginx_binary()
    if not found:
        pytest.fail("nginx is not installed; `make test` installs it (apt-get install nginx-light)")
    return found


@pytest.fixture
def sandbox(tmp_path, nginx_bin):
    """A private nginx on loopback with v1/v2 backends; lbsplit.toml written, lbsplit.conf initialised.

    Ports are picked free, but another process may take one before nginx binds it: then the
    half-started sandbox is stopped and a new one with new ports is tried (at most 3 times).
    """
    for attempt in range(3):
        sb = Sandbox(tmp_path / f"sb{attempt or ''}", binary=nginx_bin, nginx_dir=REPO / "nginx")
        sb.write_config(whitelist=["test_user_001", "test_user_002", "internal_staff_001"])
        # `lbsplit init` in-process: the same library call the command makes, without a Python start-up per
        # test (tests/test_crash.py and the demo run the real command).
        assert transaction.init(load(sb.config_path)).changed
        try:
            sb.backends.start(wait_port=sb.v2_port)
            sb.front.start(wait_port=sb.port)
            break
        except RuntimeError:
            sb.stop()  # never leave a half-started sandbox running
            if attempt == 2:
                raise
    yield sb
    sb.stop()


@pytest.fixture
def endpoint():
    """A fake v2 health endpoint on loopback (see fakes.HealthEndpoint)."""
    from fakes import HealthEndpoint

    e = HealthEndpoint()
    yield e
    e.close()


@pytest.fixture
def webhook():
    """A webhook receiver on loopback that keeps what it was sent."""
    from fakes import WebhookReceiver

    w = WebhookReceiver()
    yield w
    w.close()
