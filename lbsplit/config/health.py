"""The [health] section: the source, thresholds per stage, custom metrics, Prometheus queries, levels.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import ConfigError
from ..model import DEFAULT_LEVELS, DEFAULT_THRESHOLDS, METRICS, RATE_METRICS, THRESHOLD_TIMING, Level, NoData, OnBreach, parse_percent, Source, Thresholds
from ..validate import header_problem
from .settings import CustomMetric, HealthSettings, PrometheusSettings, default_of
from .values import bounds, choice, finite_number, http_url, level_of, path_of, positive_scale


def load_health(base: Path, table: dict, state_dir: Path) -> HealthSettings:
    default_source = Source.ENDPOINT if "url" in table or "access_log" not in table else Source.NGINX_LOG
    source = choice(table.get("source", default_source), Source, "health.source")
    if source in (Source.NGINX_LOG, Source.BOTH) and "access_log" not in table:
        raise ConfigError("health.access_log: missing; give the log written with `access_log PATH lbsplit;` in nginx")
    if source == Source.PROMETHEUS and "prometheus" not in table:
        raise ConfigError("health.prometheus: missing; give [health.prometheus] with url and [health.prometheus.queries]")
    if source in (Source.ENDPOINT, Source.BOTH) and "url" not in table:
        raise ConfigError("health.url: missing; give v2's health endpoint, e.g. url = \"http://10.0.1.1:5000/api/v2/monitoring/health\"")
    min_requests = table.get("min_requests", default_of(HealthSettings, "min_requests"))
    if not 1 <= min_requests <= 10_000_000:
        raise ConfigError("health.min_requests: give a whole number of requests from 1 up")
    margin = float(table.get("baseline_error_margin", default_of(HealthSettings, "baseline_error_margin")))
    factor = float(table.get("baseline_latency_factor", default_of(HealthSettings, "baseline_latency_factor")))
    confidence = float(table.get("confidence", default_of(HealthSettings, "confidence")))
    if not 0.5 <= confidence < 1:  # also refuses NaN
        raise ConfigError("health.confidence: give a probability from 0.5 up to but not 1, e.g. 0.99")
    if not math.isfinite(factor):
        raise ConfigError("health.baseline_latency_factor: give a finite factor of at least 1, e.g. 1.5")
    if not 0 <= margin <= 1:
        raise ConfigError("health.baseline_error_margin: give a fraction, e.g. 0.02 for 2 points")
    if factor < 1:
        raise ConfigError("health.baseline_latency_factor: give a factor of at least 1, e.g. 1.5")
    timeout = float(table.get("timeout", 5))
    if not 0 < timeout <= 60:
        raise ConfigError("health.timeout: give seconds between 0 and 60")
    no_data = choice(table.get("no_data", NoData.FAIL), NoData, "health.no_data",
                      "(fail: count as a failed check; ignore: neither pass nor fail)")
    failures = table.get("failures_before_revert", 3)
    if not 1 <= failures <= 100:
        raise ConfigError("health.failures_before_revert: give a whole number from 1 to 100")
    on_breach = choice(table.get("on_breach", OnBreach.REVERT), OnBreach, "health.on_breach",
                        "(revert: v2 off; previous: the stage before)")
    fields = {m: m for m in METRICS}
    fields.update(table.get("fields", {}))
    thresholds = _thresholds(table.get("thresholds", []))
    return HealthSettings(
        url=http_url(table["url"], "health.url") if "url" in table else "",
        timeout=timeout,
        headers=_headers(table.get("headers", {})),
        bearer_token_file=path_of(base, table.get("bearer_token_file")),
        bearer_token_env=table.get("bearer_token_env") or None,
        fields=tuple(sorted(fields.items())),
        no_data=no_data,
        failures_before_revert=failures,
        on_breach=on_breach,
        thresholds=thresholds,
        log=path_of(base, table.get("log")) or state_dir / "watchdog.log",
        prometheus_textfile=path_of(base, table.get("prometheus_textfile")),
        source=source,
        access_log=path_of(base, table.get("access_log")),
        min_requests=min_requests,
        baseline_error_margin=margin,
        baseline_latency_factor=factor,
        confidence=confidence,
        levels=tuple({**DEFAULT_LEVELS, **{m: level_of(v, f"health.levels.{m}")
                                           for m, v in table.get("levels", {}).items()}}.items()),
        scales=tuple((m, positive_scale(v, f"health.scale.{m}")) for m, v in sorted(table.get("scale", {}).items())),
        custom=_custom_metrics(table.get("metrics", [])),
        revert_levels=_revert_levels(table.get("revert_levels", ["P1"])),
        prometheus=_prometheus(base, table["prometheus"], table.get("metrics", []))
        if source == Source.PROMETHEUS else None,
    )


def _thresholds(rows: list) -> tuple[Thresholds, ...]:
    if not rows:
        return DEFAULT_THRESHOLDS
    out = []
    for i, row in enumerate(rows):
        name = f"health.thresholds[{i}]"
        if "up_to_percent" not in row:
            raise ConfigError(f"{name}.up_to_percent: missing; say which stages this row covers, e.g. up_to_percent = 30")
        up_to = parse_percent(str(row["up_to_percent"]), f"{name}.up_to_percent")
        # Unset fields take the plan's default for the same stage.
        base = next((d for d in DEFAULT_THRESHOLDS if up_to <= d.up_to_hundredths), DEFAULT_THRESHOLDS[-1])
        values = {}
        for key in (*METRICS, *THRESHOLD_TIMING):
            value = float(row.get(key, getattr(base, key)))
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name}.{key}: {value:g} is not a usable limit; give a finite number >= 0")
            if key in RATE_METRICS and value > 1:
                raise ConfigError(f"{name}.{key}: {value:g} is above 1; rates are fractions, e.g. 0.05 for 5%")
            if key in ("check_every", "window") and not 1 <= value <= 3600:
                raise ConfigError(f"{name}.{key}: {value:g} is out of range; give seconds from 1 to 3600")
            values[key] = value
        out.append(Thresholds(up_to_hundredths=up_to, **values))
    if [r.up_to_hundredths for r in out] != sorted({r.up_to_hundredths for r in out}):
        raise ConfigError("health.thresholds: list rows by increasing up_to_percent, each once")
    if out[-1].up_to_hundredths != 10000:
        raise ConfigError("health.thresholds: the last row must have up_to_percent = 100")
    return tuple(out)


def _custom_metrics(rows: list) -> tuple[CustomMetric, ...]:
    out, seen = [], set(METRICS)
    for i, row in enumerate(rows):
        name = f"health.metrics[{i}]"
        metric = row.get("name")
        if not isinstance(metric, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", metric):
            raise ConfigError(f"{name}.name: give the metric a name of letters, digits and _, e.g. ai_failure_rate")
        if metric in seen:
            raise ConfigError(f"{name}.name: {metric} is defined twice (or is a built-in metric: set its limits in "
                              "[[health.thresholds]] and its level in [health.levels])")
        seen.add(metric)
        path = row.get("path", metric)
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", path):
            raise ConfigError(f"{name}.path: {path!r} is not a dotted path such as data.ai.failure_rate")
        limits = bounds({k: v for k, v in row.items() if k in ("max", "min")}, name)
        by_stage = []
        for key, value in row.get("stages", {}).items():
            if not isinstance(value, dict):
                raise ConfigError(f"{name}.stages.{key}: expected a table such as {{ max = 0.05 }}")
            by_stage.append((parse_percent(str(key), f"{name}.stages"), bounds(value, f"{name}.stages.{key}")))
        if not limits and not by_stage:
            raise ConfigError(f"{name}: give max and/or min (the healthy range), e.g. max = 0.05")
        scale = finite_number(row.get("scale", 1), f"{name}.scale")
        if scale <= 0:
            raise ConfigError(f"{name}.scale: give a positive multiplier, e.g. 0.01 for an answer in percent")
        out.append(CustomMetric(metric, path, level_of(row.get("level", Level.P2), f"{name}.level"), scale, limits,
                                tuple(sorted(by_stage))))
    return tuple(out)


_PROMQL_MAX = 4000


def _prometheus(base: Path, table: dict, custom_rows: list) -> PrometheusSettings:
    url = http_url(table.get("url", ""), "health.prometheus.url").rstrip("/")
    timeout = table.get("timeout", default_of(PrometheusSettings, "timeout"))
    if isinstance(timeout, bool) or not 0 < float(timeout) <= 60:
        raise ConfigError("health.prometheus.timeout: give seconds between 0 and 60")
    queries = {}
    for metric, query in table.get("queries", {}).items():
        if metric not in METRICS:
            raise ConfigError(f"health.prometheus.queries.{metric}: not a built-in metric ({', '.join(METRICS)}); "
                              "give a custom metric its query in its [[health.metrics]] entry")
        queries[metric] = _promql(query, f"health.prometheus.queries.{metric}")
    for i, row in enumerate(custom_rows):
        if "query" in row:
            queries[row["name"]] = _promql(row["query"], f"health.metrics[{i}].query")
    if not queries:
        raise ConfigError("health.prometheus.queries: give at least one PromQL query, e.g. "
                          "error_rate = 'sum(rate(http_requests_total{version=\"v2\",code=~\"5..\"}[{window}])) / "
                          "sum(rate(http_requests_total{version=\"v2\"}[{window}]))'")
    baseline = {}
    for metric, query in table.get("baseline", {}).items():
        if metric not in ("error_rate", "timeout_rate", "avg_response_time"):
            raise ConfigError(f"health.prometheus.baseline.{metric}: only error_rate, timeout_rate and "
                              "avg_response_time are compared with v1")
        baseline[metric] = _promql(query, f"health.prometheus.baseline.{metric}")
    user = table.get("basic_auth_user")
    password = path_of(base, table.get("basic_auth_password_file"))
    if (user is None) != (password is None):
        raise ConfigError("health.prometheus.basic_auth_user: give it together with basic_auth_password_file")
    return PrometheusSettings(url, float(timeout), path_of(base, table.get("bearer_token_file")), user, password,
                              path_of(base, table.get("ca_file")), tuple(sorted(queries.items())),
                              tuple(sorted(baseline.items())))


def _promql(query: object, field_name: str) -> str:
    if not isinstance(query, str) or not query.strip() or len(query) > _PROMQL_MAX or any(
            ord(c) < 32 and c not in "\t\n" for c in query):
        raise ConfigError(f"{field_name}: give one PromQL expression (at most {_PROMQL_MAX} characters)")
    return query.strip()


def _revert_levels(values: list) -> tuple[Level, ...]:
    levels = tuple(level_of(v, f"health.revert_levels[{i}]") for i, v in enumerate(values))
    if Level.P1 not in levels:
        raise ConfigError('health.revert_levels: must include "P1" (a P1 breach always counts toward a revert)')
    return levels


def _headers(table: dict) -> tuple[tuple[str, str], ...]:
    for name, value in table.items():
        problem = header_problem(name, value)
        if problem:
            raise ConfigError(f"health.headers.{name}: {problem}; give one line of printable text")
    return tuple(sorted(table.items()))
