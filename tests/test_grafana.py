"""docs/examples/grafana-lbsplit.json queries only what lbsplit writes to its Prometheus textfile."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

from lbsplit.config import load
from lbsplit.model import METRICS
from lbsplit.watch import judge
from lbsplit.watch.memory import WatchdogState, prometheus_text

DASHBOARD = Path(__file__).parent.parent / "docs" / "examples" / "grafana-lbsplit.json"


def written(tmp_path) -> tuple[set[str], set[str]]:
    """(metric names of the textfile, values of its metric label), from the code that writes them."""
    (tmp_path / "lbsplit.toml").write_text(
        '[upstreams]\nv1 = ["a:1"]\nv2 = ["b:1"]\n[health]\nsource = "both"\nurl = "http://127.0.0.1:1/h"\n'
        'access_log = "/tmp/none.log"\n')
    health = load(tmp_path / "lbsplit.toml").health
    stats = SimpleNamespace(requests=500, error_rate=0.01, timeout_rate=0.0, avg_response_time=0.01,
                            p95_response_time=0.02, errors=5, timeouts=0, hist={})
    thresholds = health.thresholds_for(3000)
    log_metrics = judge.evaluate_log(stats, stats, thresholds, health).metrics
    wd = WatchdogState(last_metrics={**{m: 0.1 for m in METRICS}, **log_metrics})
    text = prometheus_text(30, 4, wd, thresholds)
    names = set(re.findall(r"^(lbsplit_[a-z0-9_]+)", text, re.MULTILINE))
    labels = set(re.findall(r'metric="([^"]+)"', text))
    return names, labels


def test_every_query_names_a_metric_and_a_label_value_lbsplit_writes(tmp_path):
    names, labels = written(tmp_path)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    queried = {n for e in exprs for n in re.findall(r"\blbsplit_[a-z0-9_]+", e)}
    assert queried and queried <= names, queried - names
    asked = set()
    for e in exprs:
        for op, value in re.findall(r'metric(=~?)"([^"]+)"', e):
            asked |= set(value.split("|")) if op == "=~" else {value}
    assert asked and asked <= labels, asked - labels
    # Both sides of v2 against v1 are charted for every rate and the latency.
    assert {"log_v2_error_rate", "log_v1_error_rate", "log_v2_timeout_rate", "log_v1_timeout_rate",
            "log_v2_p95_response_time", "log_v1_p95_response_time"} <= asked


def test_the_dashboard_is_one_grafana_import():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "lbsplit-rollout" and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    for p in dashboard["panels"]:
        assert p["datasource"]["uid"] == "${datasource}" and all('instance=~"$instance"' in t["expr"]
                                                                 for t in p["targets"]), p["title"]
