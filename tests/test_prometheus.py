"""Prometheus as a health source: a real Prometheus (Debian's package) on loopback, scraping every second an
exporter the test controls (request counters that grow, with an error share it sets), and the real
`lbsplit watchdog` and gate against a real nginx."""

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler

import pytest

from conftest import end, run_cli
from fakes import _Server
from fleet_harness import etcd, fleet, percent_of  # noqa: F401 - fixtures
from lbsplit.watch.prometheus import value_of

ERROR_RATE = ('sum(rate(app_requests_total{version="v2",code=~"5.."}[{window}])) / '
              'sum(rate(app_requests_total{version="v2"}[{window}]))')


class Exporter:
    """/metrics with app_requests_total per version and code, growing 20 requests per 50 ms."""

    def __init__(self):
        self.error_share = 0.0
        self.counts = {("v1", "200"): 0, ("v1", "500"): 0, ("v2", "200"): 0, ("v2", "500"): 0}
        self.lock = threading.Lock()
        self.running = True
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with outer.lock:
                    lines = [f'app_requests_total{{version="{v}",code="{c}"}} {n}' for (v, c), n in outer.counts.items()]
                body = ("# TYPE app_requests_total counter\n" + "\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._grow, daemon=True).start()

    def _grow(self):
        while self.running:
            with self.lock:
                errors = round(20 * self.error_share)
                self.counts[("v2", "500")] += errors
                self.counts[("v2", "200")] += 20 - errors
                self.counts[("v1", "200")] += 20
            time.sleep(0.05)

    def close(self):
        self.running = False
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, root, target_port):
        if shutil.which("prometheus") is None:
            pytest.fail("prometheus is not installed; `make test` installs Debian's prometheus")
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                          f"  - job_name: app\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait(lambda: self.ask("sum(app_requests_total)") is not None, "the first scrapes")

    def ask(self, promql):
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?query={urllib.parse.quote(promql)}",
                                        timeout=2) as r:
                number, _ = value_of(json.loads(r.read()))
                return number
        except OSError:
            return None

    def wait(self, condition, what, timeout=30):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"Prometheus: {what} did not happen within {timeout}s")
            time.sleep(0.2)

    def stop(self):
        end(self.proc)


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    exporter = Exporter()
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), exporter.port)
    # rate() needs two samples in its window: wait for the query the tests use to answer at all
    server.wait(lambda: server.ask(ERROR_RATE.replace("{window}", "10s")) is not None, "two scrapes")
    yield server, exporter
    server.stop()
    exporter.close()


def health_section(url, extra_queries="", metrics="", failures=1, no_data="fail") -> str:
    return f'''
[health]
source = "prometheus"
failures_before_revert = {failures}
no_data = "{no_data}"

[[health.thresholds]]
up_to_percent = 100
window = 10

[health.prometheus]
url = "{url}"
timeout = 2

[health.prometheus.queries]
error_rate = '{ERROR_RATE}'
{extra_queries}
{metrics}'''


def configure(sb, url, extra_queries="", metrics="", failures=1, no_data="fail"):
    sb.write_config(whitelist=["test_user_001"], extra=health_section(url, extra_queries, metrics, failures, no_data))


def test_prometheus_answers_are_one_number_or_no_data_saying_why():
    vector = lambda *values: {"status": "success", "data": {"resultType": "vector", "result": [  # noqa: E731
        {"metric": {}, "value": [1.0, v]} for v in values]}}
    assert value_of(vector("0.25")) == (0.25, None)
    assert value_of({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}}) == (3.0, None)
    assert "empty result" in value_of(vector())[1]
    assert "2 series" in value_of(vector("1", "2"))[1]
    assert "NaN" in value_of(vector("NaN"))[1] and "+Inf" in value_of(vector("+Inf"))[1]
    assert "bad_data" in value_of({"status": "error", "errorType": "bad_data", "error": "parse error"})[1]
    assert value_of([1, 2])[0] is None and value_of({"status": "success", "data": {"resultType": "matrix"}})[0] is None


def test_healthy_v2_is_kept_and_errors_revert_naming_the_metric(sandbox, prom):
    server, exporter = prom
    exporter.error_share = 0.0
    configure(sandbox, server.url, failures=1)
    applied = run_cli(sandbox.config_path, "apply", "30")
    assert applied.returncode == 0, applied.stderr
    server.wait(lambda: server.ask(ERROR_RATE.replace("{window}", "10s")) == 0.0, "a healthy error rate")
    kept = run_cli(sandbox.config_path, "watchdog", "--once")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    checked = run_cli(sandbox.config_path, "check", "100")
    assert "[ok  ] error_rate: 0" in checked.stdout, checked.stdout  # the gate asks Prometheus too

    exporter.error_share = 0.5
    server.wait(lambda: (server.ask(ERROR_RATE.replace("{window}", "10s")) or 0) > 0.2, "errors in the window")
    reverted = run_cli(sandbox.config_path, "watchdog", "--once")
    assert reverted.returncode == 10, reverted.stdout + reverted.stderr
    last = json.loads(run_cli(sandbox.config_path, "history", "--json").stdout.splitlines()[-1])
    assert last["command"] == "watchdog revert" and "prometheus: v2 error_rate" in last["reason"], last
    assert set(sandbox.variants([f"user-{i}" for i in range(200)])) == {"v1"}
    exporter.error_share = 0.0


def test_empty_multi_series_and_a_stopped_prometheus_are_no_data_named_with_the_query(sandbox, prom, tmp_path):
    server, exporter = prom
    exporter.error_share = 0.0
    server.wait(lambda: server.ask(ERROR_RATE.replace("{window}", "10s")) == 0.0, "the window to be clean again")
    metrics = ('[[health.metrics]]\nname = "ai_failure_rate"\nquery = \'sum(rate(no_such_metric_total[{window}]))\'\n'
               'max = 0.05\n\n[[health.metrics]]\nname = "per_code"\nquery = \'app_requests_total{version="v2"}\'\n'
               'max = 1e12\n')
    configure(sandbox, server.url, metrics=metrics, failures=3, no_data="ignore")
    applied = run_cli(sandbox.config_path, "apply", "10")
    assert applied.returncode == 0, applied.stderr
    result = run_cli(sandbox.config_path, "watchdog", "--once")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    log = (sandbox.state_dir / "watchdog.log").read_text().splitlines()[-1]
    assert "ai_failure_rate empty result (no series matched) (query 'sum(rate(no_such_metric_total[{window}]))')" \
        in log, log
    assert "per_code 2 series, expected one number" in log, log
    assert "timeout_rate" not in log.split("[", 1)[-1]  # not queried: not judged

    stopped = Prometheus.__new__(Prometheus)
    stopped.url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: Prometheus is down
    configure(sandbox, stopped.url, failures=3, no_data="ignore")
    down = run_cli(sandbox.config_path, "watchdog", "--once")
    assert down.returncode == 0 and "Traceback" not in down.stderr, down.stderr
    log = (sandbox.state_dir / "watchdog.log").read_text().splitlines()[-1]
    assert "check=NO_DATA" in log and f"Prometheus at {stopped.url} cannot be reached" in log, log


def test_bad_prometheus_config_exits_2_naming_the_field(sandbox):
    for table, says in (('[health.prometheus]\nurl = "ftp://x"\n[health.prometheus.queries]\nerror_rate = "up"\n',
                         "health.prometheus.url"),
                        ('[health.prometheus]\nurl = "http://127.0.0.1:9"\n', "health.prometheus.queries"),
                        ('[health.prometheus]\nurl = "http://127.0.0.1:9"\n[health.prometheus.queries]\n'
                         'latency = "up"\n', "health.prometheus.queries.latency")):
        sandbox.write_config(extra=f'\n[health]\nsource = "prometheus"\n{table}')
        result = run_cli(sandbox.config_path, "apply", "10")
        assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_in_a_fleet_the_leading_watchdog_asks_prometheus_and_reverts_every_host(fleet, prom):
    server, exporter = prom
    exporter.error_share = 0.0
    for i in range(3):
        fleet.configure(i, health=health_section(server.url))
    try:
        assert fleet.cli(0, "apply", "30").returncode == 0
        server.wait(lambda: server.ask(ERROR_RATE.replace("{window}", "10s")) == 0.0, "a healthy error rate")
        kept = fleet.cli(1, "watchdog", "--once")
        assert kept.returncode == 0, kept.stdout + kept.stderr
        assert [percent_of(fleet.served(i)) for i in range(3)] == [30, 30, 30]

        exporter.error_share = 0.5
        server.wait(lambda: (server.ask(ERROR_RATE.replace("{window}", "10s")) or 0) > 0.2, "errors in the window")
        reverted = fleet.cli(1, "watchdog", "--once")
        assert reverted.returncode == 10, reverted.stdout + reverted.stderr
        assert "prometheus: v2 error_rate" in reverted.stdout + reverted.stderr, reverted.stdout + reverted.stderr
        assert [fleet.served(i)["v2"] for i in range(3)] == [False] * 3
        for sb in fleet.boxes:  # real requests through each load balancer
            assert set(sb.variants([f"user-{i}" for i in range(200)])) == {"v1"}
        entries = [json.loads(line) for line in fleet.cli(0, "history", "--json").stdout.splitlines()]
        assert entries[-1]["command"] == "revert" and "prometheus: v2 error_rate" in entries[-1]["reason"], entries[-1]
    finally:
        exporter.error_share = 0.0
