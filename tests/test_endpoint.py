"""The health probe against a real endpoint on loopback: each fault, headers and token, redaction, a gzip bomb."""

import gzip
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fakes import HEALTHY
from lbsplit.watch.endpoint import probe, redact


class _Bomb(BaseHTTPRequestHandler):
    body = gzip.compress(b"\0" * (200 << 20), compresslevel=9)  # 200 MiB of zeros in ~200 KiB

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        try:
            self.wfile.write(self.body)
        except OSError:
            pass


def test_a_gzip_bomb_is_cut_off_at_the_cap_of_decoded_bytes():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Bomb)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # VmHWM: this process's own peak (ru_maxrss would include the parent's at fork time)
        code = ("import re; from lbsplit.watch.endpoint import probe; "
                f"s = probe('http://127.0.0.1:{server.server_address[1]}/h', 10, {{}}); "
                "print(s.error); print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        error, rss_kib = out.stdout.split("\n")[:2]
        assert error == "answer larger than 1048576 bytes", out.stderr
        assert int(rss_kib) < 100 * 1024  # KiB: far below the 200 MiB the answer unpacks to
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode, error", [
    ("status:500", "HTTP 500"), ("status:404", "HTTP 404"), ("garbage", "answer is not JSON"),
    ("hang", "no answer within 1s"), ("drip", "no answer within 1s"),
])
def test_probe_reports_each_endpoint_fault(endpoint, mode, error):
    endpoint.mode = mode
    got = probe(endpoint.url, 1.0, {})
    assert got.payload is None and got.error == error


def test_probe_reads_json_and_sends_headers_and_token(endpoint):
    endpoint.mode = "nested"
    got = probe(endpoint.url, 2.0, {"Authorization": "Bearer s3cret", "X-Env": "prod"})
    assert got.error is None and got.payload["metrics"] == HEALTHY
    assert endpoint.seen_headers[-1]["Authorization"] == "Bearer s3cret"


def test_probe_refused():
    from lbsplit.demo.sandbox import free_port

    assert probe(f"http://127.0.0.1:{free_port()}/h", 1.0, {}).error == "connection refused"


def test_redact_drops_credentials():
    assert redact("http://user:pw@127.0.0.1:8080/hook?token=x") == "http://127.0.0.1:8080/hook"
