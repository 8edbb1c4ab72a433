"""`lbsplit dashboard` against a real sandbox nginx at 30%, read in Debian's headless Chromium.

The page is loaded by a real browser and its DOM read back: the stage, the charts (v2 and v1 lines
and the limit, from the watchdog's real checks of the access log), the history and the checklist.
Every request that could change something is refused while the dashboard is read-only, and the
real traffic is unchanged afterwards; with --allow-actions its revert is the real `lbsplit revert`.
"""

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import end, run_cli, share
from lbsplit.demo.sandbox import free_port
from lbsplit.watch import memory
from lbsplit.web import page

IDS = [f"user-{i}" for i in range(300)]


class DashboardProcess:
    """`lbsplit dashboard` as its own process on a free loopback port."""

    def __init__(self, config: Path, *args: str):
        self.port = free_port()
        argv = [sys.executable, "-m", "lbsplit", "--config", str(config), "dashboard",
                "--listen", f"127.0.0.1:{self.port}", "--refresh", "0", *args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dashboard exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                if self.request("GET", "/api/status")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the dashboard did not answer within 20 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def request(self, method: str, path: str, body: str | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace"), dict(response.getheaders())
        finally:
            conn.close()

    def stop(self) -> None:
        end(self.proc)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def at_30(tmp_path_factory, nginx_bin):
    """A sandbox at 30% whose watchdog has checked the access log a few times, with v1 and v2 traffic."""
    from conftest import REPO
    from lbsplit.demo.sandbox import Sandbox

    sb = Sandbox(tmp_path_factory.mktemp("dashboard") / "sb", binary=nginx_bin, nginx_dir=REPO / "nginx")
    sb.write_config(whitelist=["test_user_001"],
                    extra=f'\n[health]\nsource = "nginx_log"\naccess_log = "{sb.front.prefix}/lbsplit-access.log"\n'
                          'min_requests = 20\nno_data = "ignore"\n')
    assert run_cli(sb.config_path, "init").returncode == 0
    sb.start()
    try:
        for percent in ("10", "30"):
            done = run_cli(sb.config_path, "apply", percent, "--reason", f"dashboard test {percent}")
            assert done.returncode == 0, done.stderr
            for _ in range(2):
                sb.variants(IDS)
                done = run_cli(sb.config_path, "watchdog", "--once")
                assert done.returncode == 0, done.stderr
        yield sb
    finally:
        sb.stop()


@pytest.fixture(scope="module")
def board(at_30):
    d = DashboardProcess(at_30.config_path)
    yield d
    d.stop()


def test_api_status_is_status_json_plus_the_recent_checks(at_30, board):
    code, body, headers = board.request("GET", "/api/status")
    assert code == 200 and headers["Content-Type"] == "application/json"
    data = json.loads(body)
    status = json.loads(run_cli(at_30.config_path, "status", "--json").stdout)
    for key in ("percent", "generation", "serving", "mode", "v2_enabled"):
        assert data[key] == status[key], key
    assert data["percent"] == 30 and data["serving"] is True
    assert len(data["checks"]) == 4
    last = data["checks"][-1]
    assert last["stage"] == 3000 and last["outcome"] == "pass"
    assert last["metrics"]["log_v2_requests"] > 0 and last["metrics"]["log_v1_requests"] > 0
    assert last["limits"]["error_rate"] == pytest.approx(0.04)  # the plan's limit at 30%


def test_every_change_is_refused_while_read_only(at_30, board):
    generation = json.loads(board.request("GET", "/api/status")[1])["generation"]
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/", "/api/revert", "/api/promote", "/api/status"):
            code, body, headers = board.request(method, path, body="token=x&reason=y",
                                                headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert code == 405, (method, path, code)
            assert headers.get("Allow") == "GET, HEAD" and "read-only" in body
    after = json.loads(board.request("GET", "/api/status")[1])
    assert (after["generation"], after["percent"]) == (generation, 30)
    assert 0.2 < share(at_30, IDS) < 0.4  # real requests: still about 30% on v2


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Debian's chromium is not installed; `make test` installs it")
    return found


def browser(url: str, tmp_path: Path, *what: str) -> subprocess.CompletedProcess:
    """Debian's Chromium, headless, with the flags a closed network needs, on a fresh profile."""
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1800",
            *what, url]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(tmp_path)})


def test_a_real_browser_renders_the_stage_the_charts_and_the_history(board, tmp_path):
    done = browser(board.url, tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    stage = re.search(r'<span id="stage"[^>]*>([^<]*)</span>', dom)
    assert stage and "30% of users" in stage.group(1), dom[:2000]
    assert re.search(r'<span id="serving" class="ok">yes</span>', dom)
    for chart in ("error-rate", "timeout-rate", "latency"):
        figure = re.search(rf'<figure id="chart-{chart}" data-points="(\d+)">(.*?)</figure>', dom, re.S)
        assert figure, chart
        assert int(figure.group(1)) == 4, chart
        svg = figure.group(2)
        assert '<polyline class="series-v2"' in svg and '<polyline class="series-v1"' in svg, chart
        # The latency limit bounds the endpoint's average; this sandbox's p95 comes from the log, judged against v1.
        assert ('<polyline class="threshold"' in svg) == (chart != "latency"), chart
    history = re.search(r'<section id="history">(.*?)</section>', dom, re.S).group(1)
    assert history.count('<tr class="event apply">') == 2 and "dashboard test 30" in history
    checklist = re.search(r'<section id="checklist">(.*?)</section>', dom, re.S).group(1)
    assert "Promotion checklist for 100%" in checklist and "watchdog" in checklist
    assert 'id="actions"' not in dom  # read-only: no buttons
    shot = Path(os.environ.get("LBSPLIT_SCREENSHOT", tmp_path / "dashboard.png"))
    done = browser(board.url, tmp_path, f"--screenshot={shot}")
    assert done.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a page with text and charts, not a blank one


def test_with_actions_a_wrong_token_is_refused_and_the_revert_button_reverts(at_30, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token-0123456789\n")
    short = tmp_path / "short"
    short.write_text("abc")
    refused = run_cli(at_30.config_path, "dashboard", "--allow-actions", "--token-file", str(short))
    assert refused.returncode == 2 and "--token-file:" in refused.stderr and "Traceback" not in refused.stderr
    refused = run_cli(at_30.config_path, "dashboard", "--allow-actions")
    assert refused.returncode == 2 and "--token-file" in refused.stderr
    d = DashboardProcess(at_30.config_path, "--allow-actions", "--token-file", str(token))
    try:
        code, body, _ = d.request("GET", "/")
        assert code == 200 and 'action="/api/revert"' in body and 'action="/api/promote"' in body
        assert "s3cret" not in body  # the token is never on the page
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        code, _, _ = d.request("POST", "/api/revert", body="token=wrong&reason=x", headers=form)
        assert code == 403
        assert 0.2 < share(at_30, IDS) < 0.4
        code, body, _ = d.request("POST", "/api/revert", body="token=s3cret-token-0123456789&reason=test+button",
                                  headers={**form, "Accept": "application/json"})
        answer = json.loads(body)
        assert code == 200 and answer["exit_code"] == 0, answer
        assert share(at_30, IDS) == 0  # every real request on v1
        last = json.loads(run_cli(at_30.config_path, "history", "--json").stdout.splitlines()[-1])
        assert last["command"] == "revert" and last["reason"] == "dashboard (127.0.0.1): test button"
        status = json.loads(d.request("GET", "/api/status")[1])
        assert status["v2_enabled"] is False and status["serving"] is True
    finally:
        d.stop()


def test_bad_listen_is_one_line_exit_2(at_30):
    done = run_cli(at_30.config_path, "dashboard", "--listen", "nowhere")
    assert done.returncode == 2 and done.stderr.strip().startswith("lbsplit: --listen:")


# ---------------------------------------------------------------- pure parts, fast

def test_fleet_members_are_one_row_each_with_what_they_serve():
    status = {"generation": 4, "v2_enabled": True, "percent": 30, "serving": True}
    fleet = {"desired": {"id": 7, "target": "30%", "phase": "committed"},
             "hosts": [{"host": "lb-1", "reachable": True, "stage": 3000, "generation": 4, "served": True},
                       {"host": "lb-2", "reachable": False, "stage": 1000, "generation": 3, "served": False,
                        "error": "unreachable"}]}
    text = page.render({"status": status, "fleet": fleet, "checks": [], "events": [], "gate": None})
    rows = re.findall(r'<tr class="member">(.*?)</tr>', text)
    assert len(rows) == 2
    assert ">lb-1<" in rows[0] and ">30%<" in rows[0] and 'class="ok">yes' in rows[0]
    assert ">lb-2<" in rows[1] and "UNREACHABLE" in rows[1] and ">10%<" in rows[1]


def test_the_page_escapes_what_it_shows():
    history = [{"time": "2026-12-01T10:00:00+00:00", "user": "<b>x</b>", "command": "apply 30", "from": "10%",
                "to": "30%", "reason": "<script>alert(1)</script>"}]
    events = page.events_of(history, [], lambda iso: 1.0)
    text = page.render({"status": {"generation": None}, "checks": [], "events": events, "gate": None})
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;" in text and "&lt;b&gt;" in text


def test_check_records_are_kept_bounded(tmp_path, monkeypatch):
    path = tmp_path / "checks.jsonl"
    monkeypatch.setattr(memory, "CHECKS_MAX_BYTES", 4000)
    monkeypatch.setattr(memory, "CHECKS_KEEP", 10)
    for i in range(200):
        memory.append_check(path, {"at": float(i), "metrics": {"error_rate": 0.01}, "outcome": "pass"})
    assert path.stat().st_size <= 4000 + 200
    kept = memory.recent_checks(path)
    assert kept[-1]["at"] == 199.0 and len(kept) < 200
    path.write_bytes(path.read_bytes() + b'{"torn\n')
    assert memory.recent_checks(path)[-1]["at"] == 199.0
