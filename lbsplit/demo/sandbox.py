"""A private nginx on loopback with two tiny backends, for `make demo`, the tests and benchmarks.

Everything lives under one directory; ports are picked free on 127.0.0.1; the
processes are ended by their own pids.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ..nginx.process import is_alive, is_master, lua_modules
from ..resources import snippets_dir


PORT_FLOOR = 20000  # free_port() picks from here up to the kernel's ephemeral range
_handed_out: set[int] = set()
_share = (0, 1)  # (index, count): this process picks only ports p with p % count == index
_pick = random.SystemRandom()  # not the global generator, which tests may seed


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def share_ports(index: int, count: int) -> None:
    """Pick only every `count`-th port from now on, starting at `index`: processes that pick at once (test
    workers) then never pick the same port in the gap between a pick and the server's bind."""
    global _share
    if not 0 <= index < count:
        raise ValueError(f"port share {index} of {count}")
    _share = (index, count)


def free_port() -> int:
    """A port free on 127.0.0.1 now, below the kernel's ephemeral range and never handed out twice.

    Outgoing connections take their local ports from the ephemeral range, so a port picked there
    (the kernel's choice for bind(0)) can be taken by a client between this pick and the server's
    bind; below the range only another server can take it.
    """
    high = _ephemeral_low()
    for _ in range(500):
        index, count = _share
        if high - PORT_FLOOR >= 1000 * count:
            port = _pick.randrange(PORT_FLOOR + (index - PORT_FLOOR) % count, high, count)
        else:
            port = 0
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found on 127.0.0.1")


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def fill(template: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        template = template.replace(f"@{name}@", str(value))
    return template


class NginxProcess:
    """One nginx master started from a config text under `prefix`."""

    def __init__(self, prefix: Path, conf_text: str, binary: str):
        self.prefix = Path(prefix)
        self.conf = self.prefix / "nginx.conf"
        self.binary = binary
        self.prefix.mkdir(parents=True, exist_ok=True)
        (self.prefix / "tmp").mkdir(exist_ok=True)
        (self.prefix / "logs").mkdir(exist_ok=True)
        self.conf.write_text(conf_text)

    @property
    def pid_file(self) -> Path:
        return self.prefix / "nginx.pid"

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self, wait_port: int | None = None) -> None:
        result = subprocess.run(
            [self.binary, "-p", str(self.prefix), "-c", str(self.conf)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"nginx did not start: {result.stderr.strip()}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # The pid file and the listening sockets exist before the master sets its title
            # ("nginx: master process ..."); stop() signals only a titled master, so wait for it too.
            pid = self.pid()
            if pid and is_master(pid) and (wait_port is None or _port_open(wait_port)):
                return
            time.sleep(0.02)
        raise RuntimeError("nginx did not come up within 10 s")

    def stop(self) -> None:
        pid = self.pid()
        if pid is None or not is_master(pid):
            return  # never signal a pid that is not our nginx master (the file may be stale)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and is_alive(pid):
            time.sleep(0.02)
        if is_alive(pid):
            raise RuntimeError(f"nginx master {pid} did not exit within 10 s of SIGTERM")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Sandbox:
    """Front nginx (runs lbsplit.conf) + backend nginx (v1, v2), all under `root`."""

    def __init__(self, root: Path, binary: str | None = None, nginx_dir: Path | None = None, lua: bool = False):
        self.root = Path(root)
        self.binary = binary or nginx_binary() or "nginx"
        self.nginx_dir = Path(nginx_dir) if nginx_dir is not None else snippets_dir()
        self.port, self.v1_port, self.v2_port, self.status_port = (free_port() for _ in range(4))
        self.output_dir = self.root / "lbsplit-out"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.root / "state"
        self.config_path = self.root / "lbsplit.toml"
        user_line = "user root;" if os.geteuid() == 0 else ""
        self.runtime = "lua" if lua else "reload"
        # The lua runtime's modules, loaded like a private nginx must (Debian enables them only for its own nginx.conf).
        modules = "".join(f"load_module {m};\n" for m in lua_modules()) if lua else ""
        values = {
            "USER_LINE": user_line,
            "MODULES": modules,
            "OUTPUT_DIR": self.output_dir,
            "NGINX_DIR": self.nginx_dir,
            "PORT": self.port,
            "V1_PORT": self.v1_port,
            "V2_PORT": self.v2_port,
        }
        front_prefix = self.root / "front"
        back_prefix = self.root / "backends"
        self.front = NginxProcess(
            front_prefix,
            fill((self.nginx_dir / "sandbox.conf.tmpl").read_text(), {**values, "PREFIX": front_prefix}),
            self.binary,
        )
        self.backends = NginxProcess(
            back_prefix,
            fill((self.nginx_dir / "backends.conf.tmpl").read_text(), {**values, "PREFIX": back_prefix}),
            self.binary,
        )

    def write_config(self, mode: str = "hash", whitelist: list[str] | None = None, extra: str = "",
                     v1: list[str] | None = None, v2: list[str] | None = None, top: str = "") -> Path:
        """Write lbsplit.toml for this sandbox; returns its path."""
        v1 = v1 or [f"127.0.0.1:{self.v1_port}"]
        v2 = v2 or [f"127.0.0.1:{self.v2_port}"]
        whitelist = whitelist if whitelist is not None else []
        self.config_path.write_text(
            f"""state_dir = "{self.state_dir}"
lock_timeout = 30
{top}

[nginx]
binary = "{self.binary}"
conf = "{self.front.conf}"
prefix = "{self.front.prefix}"
output_dir = "{self.output_dir}"
runtime = "{self.runtime}"
status_listen = "127.0.0.1:{self.status_port}"
verify_timeout = 20

[upstreams]
v1 = {json.dumps(v1)}
v2 = {json.dumps(v2)}

[split]
mode = "{mode}"
key = "$http_x_user_id"
fallback_key = "$remote_addr"
whitelist = {json.dumps(whitelist)}
{extra}"""
        )
        return self.config_path

    def start(self) -> None:
        self.backends.start(wait_port=self.v2_port)
        try:
            self.front.start(wait_port=self.port)
        except BaseException:
            self.backends.stop()  # a front that could not start leaves no backends behind
            raise

    def stop(self) -> None:
        self.front.stop()
        self.backends.stop()

    def variants(self, user_ids: list[str | None], header: str = "X-User-Id") -> list[str]:
        """Ask nginx for each id (None: no header) over fresh keep-alive connections; the body names the variant."""
        out = []
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            for user_id in user_ids:
                headers = {} if user_id is None else {header: user_id.encode("utf-8")}
                for attempt in range(3):
                    try:
                        conn.request("GET", "/", headers=headers)
                        response = conn.getresponse()
                        out.append(response.read().decode().strip())
                        break
                    except (OSError, http.client.HTTPException):
                        # A reused connection that a reload closed: retry on a new one.
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                        if attempt == 2:
                            raise
        finally:
            conn.close()
        return out
