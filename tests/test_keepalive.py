"""Upstreams as production nginx has them: keep-alive connections and a balancing method, on real nginx.

A test backend counts the TCP connections it accepts: with upstreams.keepalive, 300 requests through
lbsplit reuse a handful; without it (the same test, the same backend) each request opens its own."""

import threading
from http.server import BaseHTTPRequestHandler

import pytest

from conftest import run_cli
from fakes import _Server


class CountingBackend:
    """An HTTP/1.1 backend answering "v1" that counts the connections it accepts."""

    def __init__(self):
        self.connections = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK wait

            def log_message(self, *args):
                pass

            def do_GET(self):
                body = b"v1\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(_Server):
            def process_request(self, request, client_address):
                with lock:
                    outer.connections += 1
                super().process_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("keepalive", [0, 8])
def test_keepalive_reuses_backend_connections(sandbox, keepalive):
    backend = CountingBackend()
    try:
        extra = f"keepalive = {keepalive}\n" if keepalive else ""
        text = sandbox.config_path.read_text().replace(
            f'v1 = ["127.0.0.1:{sandbox.v1_port}"]', f'v1 = ["127.0.0.1:{backend.port}"]\n{extra}'
            'method = "least_conn"')
        sandbox.config_path.write_text(text)
        result = run_cli(sandbox.config_path, "apply", "10")
        assert result.returncode == 0, result.stderr
        live = (sandbox.output_dir / "lbsplit.conf").read_text()
        assert ("keepalive 8;" in live) == bool(keepalive) and "least_conn;" in live
        ids = [f"user-{i}" for i in range(400)]
        variants = sandbox.variants(ids)
        to_v1 = variants.count("v1")
        assert to_v1 > 300
        if keepalive:
            # two workers, at most 8 idle connections each (a burst may open a few more, then close them)
            assert backend.connections <= 24, backend.connections
        else:
            assert backend.connections >= to_v1 - 5, (backend.connections, to_v1)
        reverted = run_cli(sandbox.config_path, "revert")
        assert reverted.returncode == 0 and (("keepalive 8;" in (sandbox.output_dir / "lbsplit.conf").read_text())
                                              == bool(keepalive))
    finally:
        backend.close()


@pytest.mark.parametrize("field,value,says", [
    ("keepalive", "-1", "upstreams.keepalive: give a whole number"),
    ("keepalive", '"32"', "upstreams.keepalive: expected int"),
    ("method", '"ip_hash"', "upstreams.method: 'ip_hash' is not one of"),
    ("method", '"hash $foo; return 500"', "upstreams.method"),
    ("keepalive_timeout", '"60 s"', "upstreams.keepalive_timeout: write an nginx time"),
])
def test_bad_upstream_options_exit_2_naming_the_field_and_revert_still_works(sandbox, field, value, says):
    assert run_cli(sandbox.config_path, "apply", "10").returncode == 0
    before = (sandbox.output_dir / "lbsplit.conf").read_bytes()
    text = sandbox.config_path.read_text().replace(
        f'v1 = ["127.0.0.1:{sandbox.v1_port}"]', f'v1 = ["127.0.0.1:{sandbox.v1_port}"]\n{field} = {value}'
        + ("\nkeepalive = 4" if field == "keepalive_timeout" else ""))
    sandbox.config_path.write_text(text)
    result = run_cli(sandbox.config_path, "apply", "30")
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (sandbox.output_dir / "lbsplit.conf").read_bytes() == before
    reverted = run_cli(sandbox.config_path, "revert")
    assert reverted.returncode == 0, reverted.stderr
    assert set(sandbox.variants([f"user-{i}" for i in range(100)])) == {"v1"}


def test_keepalive_without_http11_in_the_site_is_warned_once_per_layout(sandbox):
    conf = sandbox.front.conf
    conf.write_text(conf.read_text().replace(f"include {sandbox.nginx_dir}/lbsplit-proxy.conf;",
                                             "proxy_pass http://$lbsplit_upstream;"))
    sandbox.front.stop()
    sandbox.front.start(wait_port=sandbox.port)
    text = sandbox.config_path.read_text().replace(f'v1 = ["127.0.0.1:{sandbox.v1_port}"]',
                                                   f'v1 = ["127.0.0.1:{sandbox.v1_port}"]\nkeepalive = 8')
    sandbox.config_path.write_text(text)
    first = run_cli(sandbox.config_path, "apply", "10")
    assert first.returncode == 0 and "WARNING: upstreams.keepalive = 8, but no location" in first.stdout, first.stdout
    assert "lbsplit snippet proxy" in first.stdout
    again = run_cli(sandbox.config_path, "apply", "30")
    assert again.returncode == 0 and "WARNING: upstreams.keepalive" not in again.stdout  # the layout was checked
