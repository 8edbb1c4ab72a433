"""The one subprocess boundary: nginx -t, reload, finding the master, and what the running nginx serves.

Besides running nginx, it asks lbsplit's own status page (on loopback) which generation
nginx serves: a plain http.client GET, so this module needs no HTTP library.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from ..config import NginxSettings
from ..errors import EnvironmentProblem, NginxTestFailed, ReloadFailed
from .dialect import ENTRY_FILE, STATUS_PATH, parse_status

COMMAND_TIMEOUT = 300  # nginx -t on a 1M-id whitelist takes seconds, not minutes


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        raise EnvironmentProblem(
            f"{what}: {argv[0]!r} not found; install nginx or set nginx.binary (or nginx.reload_command)"
        ) from None
    except PermissionError:
        raise EnvironmentProblem(f"{what}: {argv[0]!r} is not executable by this user") from None
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"{what}: {' '.join(argv)} did not finish in {COMMAND_TIMEOUT}s") from None


def is_master(pid: int) -> bool:
    """Is `pid` an nginx master process?"""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"nginx: master process")
    except OSError:
        return False


def is_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie waiting for its parent to reap it counts as ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _clean(stderr: str) -> str:
    return "\n".join(line for line in stderr.strip().splitlines() if line.strip()) or "(nginx printed nothing)"


class Nginx:
    """One nginx installation as the config describes it."""

    def __init__(self, settings: NginxSettings):
        self.settings = settings
        self._compiled: dict[str, str] | None = None
        self._pid_file: Path | None = None

    # checking and reloading
    def test(self) -> None:
        """Run `nginx -t` on the user's whole config; raise NginxTestFailed with nginx's own words."""
        result = _run(self.settings.base_argv() + ["-t", "-q"], "nginx -t")
        if result.returncode != 0:
            raise NginxTestFailed(_clean(result.stderr))

    def test_snippet(self, text: str) -> str | None:
        """nginx -t on `text` as lbsplit.conf inside a minimal private config; None when it passes.

        Used for the revert config before a widening: it never touches the live file,
        so a crash here leaves nothing to repair. The snippet has the same shape as the
        live lbsplit.conf, which the user's whole config already accepts.
        """
        with tempfile.TemporaryDirectory(prefix="lbsplit-test-") as tmp:
            root = Path(tmp)
            (root / ENTRY_FILE).write_text(text, encoding="utf-8")
            temp_paths = "".join(
                f"    {name}_temp_path {root}/{name};\n" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            (root / "nginx.conf").write_text(
                f"pid {root}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
                f"http {{\n{temp_paths}    include {root}/{ENTRY_FILE};\n}}\n",
                encoding="utf-8",
            )
            result = _run([self.settings.binary, "-p", str(root), "-c", str(root / "nginx.conf"), "-t", "-q"], "nginx -t")
        return None if result.returncode == 0 else _clean(result.stderr).replace(str(root) + "/", "")

    def reload(self) -> None:
        """Ask the master to reload. It returns at once; the switch happens later (see wait_serving)."""
        argv = list(self.settings.reload_command) or self.settings.base_argv() + ["-s", "reload"]
        result = _run(argv, "reload")
        if result.returncode != 0:
            raise ReloadFailed(f"{' '.join(argv)} failed: {_clean(result.stderr)}")

    # what is running
    def compiled_defaults(self) -> dict[str, str]:
        """--prefix and --pid-path from `nginx -V`."""
        if self._compiled is None:
            result = _run([self.settings.binary, "-V"], "nginx -V")
            self._compiled = dict(re.findall(r"--(prefix|pid-path)=(\S+)", result.stderr))
        return self._compiled

    def pid_file(self) -> Path:
        """Where the master writes its pid: the config's setting, the nginx.conf `pid`, or nginx's default."""
        if self._pid_file is None:
            self._pid_file = self._find_pid_file()
        return self._pid_file

    def _find_pid_file(self) -> Path:
        if self.settings.pid_file is not None:
            return self.settings.pid_file
        import crossplane  # only when the pid file is not configured

        prefix = self.settings.prefix or Path(self.compiled_defaults().get("prefix", "/usr/share/nginx"))
        try:
            payload = crossplane.parse(str(self.settings.conf), single=True, check_ctx=False, check_args=False, comments=False)
            parsed = payload["config"][0]["parsed"] if payload["config"] else []
        except (OSError, IndexError, ValueError):
            parsed = []
        for directive in parsed:
            if directive["directive"] == "pid" and directive["args"]:
                path = Path(directive["args"][0])
                return path if path.is_absolute() else prefix / path
        default = Path(self.compiled_defaults().get("pid-path", "/run/nginx.pid"))
        return default if default.is_absolute() else prefix / default

    def master_pid(self) -> int | None:
        """The running master's pid, or None when nginx is not running (no or stale pid file)."""
        try:
            pid = int(self.pid_file().read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_master(pid) else None

    @staticmethod
    def worker_pids(master: int) -> set[int]:
        """Children of the master (workers, cache helpers)."""
        found = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            # the second field is "(comm)" and may contain spaces; ppid is the 2nd field after it
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and fields[1] == str(master):
                found.add(int(entry.name))
        return found

    @staticmethod
    def still_accepting(pids: set[int]) -> set[int]:
        """The old workers that have not yet closed their listening sockets.

        A worker told to quit retitles itself "worker process is shutting down" and
        then closes its listeners; until then it may still take new connections with
        the old config (nginx sleeps 100 ms between starting new workers and stopping old ones).
        """
        alive = set()
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"shutting down" not in cmdline and cmdline.startswith(b"nginx: worker process"):
                alive.add(pid)
        return alive

    def serving(self) -> dict | None:
        """What nginx's lbsplit status page answers right now, or None when nothing answers."""
        host, _, port = self.settings.status_listen.rpartition(":")
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=2)
        try:
            conn.request("GET", STATUS_PATH, headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                return None
            return parse_status(body)
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def serving_generation(self) -> int | None:
        answer = self.serving()
        return answer.get("generation") if isinstance(answer, dict) else None

    def wait_serving(self, generation: int, old_workers: set[int], timeout: float) -> bool:
        """Wait until new connections can only reach the config of `generation`."""
        deadline = time.monotonic() + timeout
        while True:
            if self.serving_generation() == generation and not self.still_accepting(old_workers):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
