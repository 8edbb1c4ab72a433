import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbsplit.config import load
from lbsplit.demo.sandbox import Sandbox, nginx_binary
from lbsplit.rollout import transaction

REPO = Path(__file__).resolve().parent.parent


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
