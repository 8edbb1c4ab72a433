"""Test-only helpers shared by the tests and the benchmarks, kept out of the wheel.

`pipelined_variants` asks nginx for many users' variants over pipelined HTTP/1.1; `TlsFiles`
makes a throwaway CA and certificates; `EtcdProcess` is a single-node etcd on loopback;
`fleet_section` is the [fleet] table for one sandbox host. The sandbox nginx itself ships in the
wheel (lbsplit.demo.sandbox), since `make demo` runs it.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from lbsplit.demo.sandbox import free_port


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
    from lbsplit.fleet.store import StoreUnavailable

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
        from lbsplit.fleet.store import Etcd

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
