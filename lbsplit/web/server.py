"""`lbsplit dashboard`: the rollout as a web page, served by the standard library's HTTP server.

Read-only unless started with --allow-actions and a token file: then POST /api/revert and
/api/promote run the real `lbsplit revert` and `lbsplit promote` commands (the same transaction,
its own process: the crash-safe signal handling needs a main thread). Every other request that
could change something is refused (405; 403 for a wrong token).
"""

from __future__ import annotations

import hmac
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..app import commands
from ..app.local import live_next
from ..config import Settings
from ..errors import ConfigError, LbsplitError
from ..rollout.state import StateStore
from ..stamps import epoch
from ..watch import gate, planview
from ..watch.memory import recent_checks
from . import page

CHECKS_SHOWN = 300  # points per chart
API_CHECKS = 100  # recent checks in /api/status
GATE_CACHE_S = 15.0  # the checklist probes v2's health: at most once per this many seconds
MAX_BODY = 4096
ACTION_TIMEOUT = 120.0


class Dashboard:
    """What the page shows, gathered fresh on each request (the config re-read too)."""

    def __init__(self, load_settings, config_path: Path | None, refresh: int, token: str | None):
        self.load_settings = load_settings  # () -> Settings, as `status` reads it (for_revert)
        self.config_path = config_path
        self.refresh = refresh
        self.token = token  # None: read-only
        self._gate: tuple[float, str, dict | None] | None = None
        self._gate_lock = threading.Lock()

    @property
    def actions(self) -> bool:
        return self.token is not None

    def status(self, settings: Settings) -> tuple[dict, dict | None]:
        """(this host's status, the fleet's status or None)."""

        fleet = None
        if settings.fleet is not None:
            try:
                fleet = commands.fleet_status(settings, False)
            except LbsplitError as e:
                fleet = {"error": str(e), "hosts": []}
            fleet = {k: v for k, v in fleet.items() if k != "lines"}
        return planview.full_status(settings), fleet

    def checks(self, settings: Settings, limit: int) -> list[dict]:

        return recent_checks(StateStore(settings.state_dir).checks_path, limit)

    def gate(self, settings: Settings) -> dict | None:
        """The promotion checklist for the next stage, cached for GATE_CACHE_S."""

        target = live_next(settings)
        key = target.describe() if target else ""
        with self._gate_lock:
            if self._gate and self._gate[1] == key and time.monotonic() - self._gate[0] < GATE_CACHE_S:
                return self._gate[2]
            if target is None:
                value = None
            else:
                try:
                    items = gate.preview(settings, target)
                    value = {"stage": target.describe(), "refuses": gate.refuses(items),
                             "items": [{"name": i.name, "ok": i.ok, "detail": i.detail, "blocking": i.blocking}
                                       for i in items],
                             "note": "The revert config's nginx -t is left to `lbsplit check` and `promote`."}
                except LbsplitError as e:
                    value = {"stage": target.describe(), "refuses": True,
                             "items": [{"name": "checklist", "ok": False, "detail": str(e), "blocking": True}]}
            self._gate = (time.monotonic(), key, value)
            return value

    def api_status(self) -> dict:
        settings = self.load_settings()
        local, fleet = self.status(settings)
        out = dict(fleet) if fleet is not None else dict(local)
        if fleet is not None:
            out["this_host"] = local
        out["checks"] = self.checks(settings, API_CHECKS)
        return out

    def page(self) -> str:

        settings = self.load_settings()
        local, fleet = self.status(settings)
        checks = self.checks(settings, CHECKS_SHOWN)
        try:
            history, _ = commands.history(settings, False)
        except LbsplitError:
            history, _ = commands.history(settings, True)
        return page.render({
            "status": local, "plan": local["plan"], "fleet": fleet,
            "checks": checks, "events": page.events_of(history, checks, epoch), "gate": self.gate(settings),
            "actions": self.actions, "refresh": self.refresh, "now": time.time(),
            "config": str(self.config_path or ""),
        })

    def act(self, what: str, reason: str, client: str) -> tuple[int, str]:
        """Run `lbsplit revert` or `lbsplit promote` as its own process; (exit code, what it printed)."""
        argv = [sys.executable, "-m", "lbsplit"]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        why = f"dashboard ({client})" + (f": {reason}" if reason else "")
        argv += [what, "--reason", why]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=ACTION_TIMEOUT,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return 124, f"lbsplit {what} did not finish within {ACTION_TIMEOUT:.0f}s"
        return done.returncode, (done.stdout + done.stderr).strip()

    def token_ok(self, given: str | None) -> bool:
        return self.token is not None and given is not None and hmac.compare_digest(
            given.encode("utf-8", "replace"), self.token.encode("utf-8"))


def handler_for(board: Dashboard):
    class Handler(BaseHTTPRequestHandler):
        server_version = "lbsplit-dashboard"
        sys_version = ""

        def log_message(self, *args):  # quiet: the dashboard is not an access log
            pass

        def _send(self, code: int, body: str | bytes, kind: str, extra: dict | None = None) -> None:
            data = body.encode("utf-8") if isinstance(body, str) else body
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy",
                             "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                             "img-src 'self'; form-action 'self'; frame-ancestors 'none'")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _json(self, code: int, value: object) -> None:
            self._send(code, json.dumps(value, indent=2, default=str) + "\n", "application/json")

        def _guarded(self, fn) -> None:
            try:
                fn()
            except LbsplitError as e:  # a config that no longer loads: say so on the page, keep serving
                self._send(500, f"lbsplit: {e}\n", "text/plain; charset=utf-8")

        def do_GET(self):
            path = urllib.parse.urlsplit(self.path).path
            if path == "/":
                self._guarded(lambda: self._send(200, board.page(), "text/html; charset=utf-8"))
            elif path == "/api/status":
                self._guarded(lambda: self._json(200, board.api_status()))
            elif path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
            else:
                self._send(404, "not found: the dashboard serves / and /api/status\n", "text/plain; charset=utf-8")

        do_HEAD = do_GET

        def _refuse(self) -> None:
            self._send(405, "read-only: start `lbsplit dashboard --allow-actions --token-file F` for actions\n",
                       "text/plain; charset=utf-8", {"Allow": "GET, HEAD"})

        do_PUT = do_DELETE = do_PATCH = _refuse

        def do_POST(self):
            path = urllib.parse.urlsplit(self.path).path
            if not board.actions or path not in ("/api/revert", "/api/promote"):
                return self._refuse()
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                return self._send(413, "request body too large\n", "text/plain; charset=utf-8")
            form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            given = self.headers.get("X-Lbsplit-Token") or (form.get("token") or [None])[0]
            if not board.token_ok(given):
                return self._send(403, "wrong or missing token\n", "text/plain; charset=utf-8")
            reason = " ".join((form.get("reason") or [""])[0].split())[:200]
            what = path.rsplit("/", 1)[1]
            code, output = board.act(what, reason, self.client_address[0])
            if "application/json" in (self.headers.get("Accept") or ""):
                return self._json(200 if code == 0 else 409, {"command": what, "exit_code": code, "output": output})
            body = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>lbsplit {page.escape(what)}</title>"
                    f"</head><body><h1>lbsplit {page.escape(what)}: exit {code}</h1><pre id=\"output\">"
                    f"{page.escape(output)}</pre><p><a href=\"/\">back to the dashboard</a></p></body></html>")
            self._send(200 if code == 0 else 409, body, "text/html; charset=utf-8")

    return Handler


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ConfigError(f"--listen: {value!r} must be address:port, e.g. 127.0.0.1:8089")
    return host, int(port)


def read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--token-file: cannot read {path} ({getattr(e, 'strerror', None) or e}); "
                          "give a file holding the token the buttons must send") from None
    if len(token) < 16:
        raise ConfigError(f"--token-file: {path} holds {len(token)} characters; a token needs at least 16 "
                          "(e.g. `openssl rand -hex 16 > FILE`)")
    return token


def serve(board: Dashboard, listen: str, ready=None) -> None:
    """Serve until interrupted (SIGINT/SIGTERM end it)."""
    host, port = parse_listen(listen)
    server_class = _Server6 if ":" in host else ThreadingHTTPServer
    try:
        server = server_class((host, port), handler_for(board))
    except OSError as e:
        raise ConfigError(f"--listen: cannot listen on {listen} ({e.strerror}); pick a free address:port") from None
    server.daemon_threads = True
    if ready is not None:
        ready(server.server_address)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
