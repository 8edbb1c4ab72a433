"""Real HTTP servers on loopback for the tests: a v2 health endpoint with switchable faults, a webhook receiver."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEALTHY = {"error_rate": 0.01, "timeout_rate": 0.002, "dead_letter_growth": 1, "avg_response_time": 2.5}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # nginx opens up to 60 connections at once in the timeout test; 5 drops SYNs


class HealthEndpoint:
    """GET /health answers according to `mode`: healthy, nested, breach:<metric>=<value>, status:<code>,
    hang, garbage, missing:<metric>, drip."""

    def __init__(self):
        self.mode = "healthy"
        self.requests = 0
        self.seen_headers = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests += 1
                outer.seen_headers.append(dict(self.headers))
                mode = outer.mode
                body = dict(HEALTHY)
                if mode == "hang":
                    time.sleep(5)
                    return self._send(200, json.dumps(body).encode())
                if mode == "drip":
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    for _ in range(50):
                        try:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                        except OSError:
                            return
                        time.sleep(0.2)
                    return
                if mode.startswith("raw:"):
                    return self._send(200, mode[4:].encode())
                if mode == "garbage":
                    return self._send(200, b"<html>oops</html>")
                if mode.startswith("status:"):
                    return self._send(int(mode.split(":")[1]), b'{"error": "down"}')
                if mode.startswith("breach:"):
                    metric, value = mode.split(":", 1)[1].split("=")
                    body[metric] = float(value)
                if mode.startswith("missing:"):
                    body.pop(mode.split(":", 1)[1])
                if mode == "nested":
                    body = {"status": "ok", "metrics": body}
                self._send(200, json.dumps(body).encode())

            def _send(self, code, data):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/health"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class WebhookReceiver:
    """Collects JSON POSTs; `status` sets the answer code, `delay` makes it slow."""

    def __init__(self, status=200, delay=0.0):
        self.received = []
        self.status = status
        self.delay = delay
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                outer.received.append(json.loads(self.rfile.read(length)))
                time.sleep(outer.delay)
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class FlakyBackend:
    """A v2 backend on loopback that answers "v2", except every `fail_every`-th request (500) and every
    `slow_every`-th request (sleeps `slow_seconds`, past nginx's proxy_read_timeout)."""

    def __init__(self, body=b"v2\n", fail_every=0, slow_every=0, slow_seconds=3.0):
        self.fail_every, self.slow_every, self.slow_seconds = fail_every, slow_every, slow_seconds
        self.count = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with outer.lock:
                    outer.count += 1
                    n = outer.count
                if outer.slow_every and n % outer.slow_every == 0:
                    time.sleep(outer.slow_seconds)
                code = 500 if outer.fail_every and n % outer.fail_every == 0 else 200
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # nginx gave up on us (proxy_read_timeout)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
