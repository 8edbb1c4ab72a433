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

from ..nginx.process import is_alive, is_master
from ..rollout.transaction import lua_modules
from ..resources import snippets_dir


PORT_FLOOR = 20000  # free_port() picks from here up to the kernel's ephemeral range
_handed_out: set[int] = set()
_pick = random.SystemRandom()  # not the global generator, which tests may seed


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free on 127.0.0.1 now, below the kernel's ephemeral range and never handed out twice.

    Outgoing connections take their local ports from the ephemeral range, so a port picked there
    (the kernel's choice for bind(0)) can be taken by a client between this pick and the server's
    bind; below the range only another server can take it.
    """
    high = _ephemeral_low()
    for _ in range(500):
        port = _pick.randrange(PORT_FLOOR, high) if high - PORT_FLOOR >= 1000 else 0
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


def pipelined_variants(port: int, user_ids: list[str], header: str = "X-User-Id", batch: int = 200,
                       per_connection: int = 1000, query: str | None = None) -> list[str]:
    """Like Sandbox.variants, but HTTP/1.1-pipelined in batches: ~10x faster, for benchmarks and large checks.

    With `query`, each id goes in the URL as ?QUERY=ID (ids must be URL-safe) instead of a header.
    A new connection every `per_connection` requests: nginx closes a keep-alive connection after
    keepalive_requests (1000 by default).
    """
    out: list[str] = []
    for first in range(0, len(user_ids), per_connection):
        out += _pipelined_one_connection(port, user_ids[first:first + per_connection], header, batch, query)
    return out


def _pipelined_one_connection(port: int, user_ids: list[str], header: str, batch: int,
                              query: str | None = None) -> list[str]:
    out: list[str] = []
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        buffer = b""
        for start in range(0, len(user_ids), batch):
            chunk = user_ids[start:start + batch]
            if query is None:
                requests = (b"GET / HTTP/1.1\r\nHost: bench\r\n" + header.encode() + b": " + u.encode("utf-8")
                            + b"\r\n\r\n" for u in chunk)
            else:
                requests = (f"GET /?{query}={u} HTTP/1.1\r\nHost: bench\r\n\r\n".encode("utf-8") for u in chunk)
            sock.sendall(b"".join(requests))
            wanted = len(chunk)
            while wanted:
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    head = buffer[:end].decode("latin-1")
                    length = int(next(l.split(":", 1)[1] for l in head.split("\r\n") if l.lower().startswith("content-length")))
                    if len(buffer) >= end + 4 + length:
                        out.append(buffer[end + 4:end + 4 + length].decode().strip())
                        buffer = buffer[end + 4 + length:]
                        wanted -= 1
                        continue
                data = sock.recv(1 << 16)
                if not data:
                    raise ConnectionError("nginx closed the connection mid-batch")
                buffer += data
    finally:
        sock.close()
    return out


class TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""

    def __init__(self, root: Path):
        self.dir = Path(root) / "tls"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca, self.server_cert, self.server_key = self.dir / "ca.pem", self.dir / "server.pem", self.dir / "server.key"
        self.client_cert, self.client_key = self.dir / "client.pem", self.dir / "client.key"
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("openssl is not installed; `make test` installs it from Debian's packages")

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], check=True, capture_output=True, cwd=self.dir)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lbsplit test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
        for name, extension in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
                                ("client", "extendedKeyUsage=clientAuth")):
            (self.dir / f"{name}.ext").write_text(extension + "\n")
            run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=lbsplit test {name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")
            run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")


def etcd_ready(store, timeout: float, running=lambda: True) -> bool:
    """Wait until etcd takes a put (it answers and has a quorum); False after `timeout` or once `running()` fails."""
    from ..fleet.store import StoreUnavailable

    deadline = time.monotonic() + timeout
    while True:
        try:
            store.put("/ready", "1")
            return True
        except StoreUnavailable:
            if time.monotonic() > deadline or not running():
                return False
            time.sleep(0.1)


class EtcdProcess:
    """A throwaway single-node etcd on loopback (own data dir, free ports) that can stop and start again."""

    def __init__(self, root: Path, binary: str | None = None, tls: "TlsFiles | None" = None):
        self.binary = binary or shutil.which("etcd") or "etcd"
        self.data = Path(root) / "etcd"
        self.client, self.peer = free_port(), free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.client}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> None:
        from ..fleet.store import Etcd

        peer = f"http://127.0.0.1:{self.peer}"
        tls_args = [] if self.tls is None else [
            "--cert-file", str(self.tls.server_cert), "--key-file", str(self.tls.server_key),
            "--client-cert-auth", "--trusted-ca-file", str(self.tls.ca)]
        self.proc = subprocess.Popen(
            [self.binary, "--data-dir", str(self.data), "--name", "default", "--listen-client-urls", self.url,
             "--advertise-client-urls", self.url, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"default={peer}", *tls_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        store = Etcd((self.url,), timeout=2) if self.tls is None else \
            Etcd((self.url,), timeout=2, ca_file=self.tls.ca, cert=(self.tls.client_cert, self.tls.client_key))
        if not etcd_ready(store, timeout, lambda: self.proc.poll() is None):
            self.stop()
            raise RuntimeError(f"etcd did not start on loopback within {timeout:g} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def fleet_section(etcd_url: str | list[str], prefix: str, host: str, ttl: int = 3, apply_timeout: float = 20) -> str:
    """The [fleet] table for one sandbox host (one etcd client URL, or a cluster's list)."""
    urls = ", ".join(f'"{u}"' for u in ([etcd_url] if isinstance(etcd_url, str) else etcd_url))
    return (f'\n[fleet]\netcd = [{urls}]\nprefix = "{prefix}"\nhost = "{host}"\n'
            f"agent_ttl = {ttl}\napply_timeout = {apply_timeout:g}\n")
