"""The fleet the fleet tests share: a real etcd, three real nginx load balancers and their agents on loopback."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from lbsplit.config import load
from lbsplit.demo.sandbox import Sandbox
from lbsplit.rollout import transaction
from harness import EtcdProcess, fleet_section, pipelined_variants

IDS = [f"user-{i}" for i in range(2000)] + ["test_user_001"]
TTL = 3


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed; `make test` installs Debian's etcd-server")
    server = EtcdProcess(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.stop()


class Fleet:
    def __init__(self, root, etcd: EtcdProcess, nginx_bin: str, prefix: str, size: int = 3, lua: bool = False):
        self.etcd, self.prefix = etcd, prefix
        self.boxes = [Sandbox(root / f"lb-{i}", binary=nginx_bin, nginx_dir=REPO / "nginx", lua=lua)
                      for i in range(size)]
        self.agents: dict[int, subprocess.Popen] = {}
        try:
            for i in range(size):
                self.configure(i)
            for sb in self.boxes:
                # `lbsplit init` in-process, as the sandbox fixture does: the library call the command makes,
                # without three Python start-ups per fleet test (the fleet's agents run the real command).
                assert transaction.init(load(sb.config_path)).changed
                sb.start()
        except BaseException:
            self.stop()  # the load balancers already started must not outlive a failed set-up
            raise

    def configure(self, i: int, extra: str = "", nginx_extra: str = "", health: str = "", v2=None) -> None:
        sb = self.boxes[i]
        sb.write_config(whitelist=["test_user_001"], extra=extra, v2=v2)
        text = sb.config_path.read_text()
        if nginx_extra:
            text = text.replace("verify_timeout = 20\n", f"verify_timeout = 20\n{nginx_extra}\n")
        text += fleet_section(getattr(self.etcd, "urls", None) or self.etcd.url, self.prefix, f"lb-{i}", ttl=TTL) + health
        sb.config_path.write_text(text)

    def start_agent(self, i: int, wait: bool = True) -> None:
        log = open(self.boxes[i].root / "agent.log", "a")
        self.agents[i] = subprocess.Popen([sys.executable, "-m", "lbsplit", "--config", str(self.boxes[i].config_path),
                                           "agent"], stdout=log, stderr=log)
        if wait:
            self.wait_registered([i])

    def wait_registered(self, hosts: list[int]) -> None:
        """Until each of these hosts is a reachable member, read from etcd in this process (asking
        `lbsplit status` each time would start a Python process per look)."""
        from lbsplit.fleet.commands import members
        from lbsplit.fleet.store import Etcd, StoreUnavailable

        store = Etcd(tuple(getattr(self.etcd, "urls", None) or [self.etcd.url]), timeout=2)
        wanted = {f"lb-{i}" for i in hosts}

        def reachable() -> bool:
            try:
                return wanted <= {m.name for m in members(store, self.prefix) if m.reachable}
            except StoreUnavailable:
                return False

        self.wait(reachable, f"agents {sorted(wanted)} registered")

    def kill_agent(self, i: int, sig=signal.SIGKILL) -> None:
        proc = self.agents.pop(i)
        proc.send_signal(sig)
        proc.wait(timeout=10)

    def cli(self, i: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return run_cli(self.boxes[i].config_path, *args, timeout=timeout)

    def status(self) -> dict:
        return json.loads(self.cli(0, "status", "--json").stdout)

    def host(self, i: int) -> dict | None:
        return next((h for h in self.status()["hosts"] if h["host"] == f"lb-{i}"), None)

    def wait(self, condition, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for: {what}")
            time.sleep(0.1)

    def barrier(self, step: str, tmp_path: Path):
        """The env that holds commands at failpoint `step`, and release(n): once n are there, let all go."""
        gate = tmp_path / "go"

        def release(n: int) -> None:
            self.wait(lambda: len(list(tmp_path.glob("go.*"))) == n, f"{n} commands held at {step}", timeout=60)
            gate.touch()

        return {**os.environ, "LBSPLIT_FAILPOINT": f"{step}:wait={gate}"}, release

    def served(self, i: int) -> dict:
        """What lb-i's nginx says it serves (its status page), with no etcd involved."""
        return json.loads(self.cli(i, "status", "--local", "--json").stdout)["serving_answer"]

    def variants(self, i: int) -> list[str]:
        return pipelined_variants(self.boxes[i].port, IDS)

    def stop(self) -> None:
        for i in list(self.agents):
            self.kill_agent(i, signal.SIGTERM)
        for sb in self.boxes:
            sb.stop()


@pytest.fixture
def fleet(tmp_path, etcd, nginx_bin, request):
    f = Fleet(tmp_path, etcd, nginx_bin, f"/lbsplit/{request.node.name.replace('[', '-').replace(']', '')[:60]}")
    try:
        for i in range(3):
            f.start_agent(i, wait=False)  # all three register at once
        f.wait_registered([0, 1, 2])
        yield f
    finally:
        f.stop()


def percent_of(answer: dict):
    return answer["percent"] if answer["v2"] else None


HEALTH = "\n[health]\nurl = \"{url}\"\ntimeout = 1\nfailures_before_revert = 1\n" \
         "[[health.thresholds]]\nup_to_percent = 100\ncheck_every = 1\n"




class EtcdCluster:
    """A throwaway 3-member etcd cluster on loopback; members can be killed and started again."""

    def __init__(self, root: Path, size: int = 3):
        from lbsplit.demo.sandbox import free_port

        self.root = Path(root)
        self.names = [f"m{i}" for i in range(size)]
        self.client = {n: free_port() for n in self.names}
        self.peer = {n: free_port() for n in self.names}
        self.urls = [f"http://127.0.0.1:{self.client[n]}" for n in self.names]
        self.procs: dict[str, subprocess.Popen] = {}
        self.initial = ",".join(f"{n}=http://127.0.0.1:{self.peer[n]}" for n in self.names)

    def start_member(self, name: str, state: str = "new") -> None:
        url, peer = f"http://127.0.0.1:{self.client[name]}", f"http://127.0.0.1:{self.peer[name]}"
        self.procs[name] = subprocess.Popen(
            [shutil.which("etcd") or "etcd", "--name", name, "--data-dir", str(self.root / name),
             "--listen-client-urls", url, "--advertise-client-urls", url, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", self.initial,
             "--initial-cluster-state", state, "--initial-cluster-token", "lbsplit-test"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self, timeout: float = 30) -> None:
        from harness import etcd_ready
        from lbsplit.fleet.store import Etcd

        for name in self.names:
            self.start_member(name)
        if not etcd_ready(Etcd(tuple(self.urls), timeout=2), timeout):
            self.stop()
            raise RuntimeError(f"the etcd cluster did not form within {timeout:g} s")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
