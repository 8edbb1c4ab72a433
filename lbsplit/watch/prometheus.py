"""Prometheus as a health source: one PromQL query per metric, each answer one number for v2 (and for v1).

An empty result, NaN or an infinity, several series, a Prometheus error or no answer in time: no
data for that metric, named with the query's first 60 characters. Credentials are read from their
files per request and never printed. `{window}` in a query becomes the stage's window ("300s").
"""

from __future__ import annotations

import json
import math

from ..config import HealthSettings, PrometheusSettings
from ..model import Thresholds
from ..validate import redact
from . import endpoint, judge

QUERY_PATH = "/api/v1/query"
MAX_ANSWER = 1 << 20  # bytes: one number needs far less; a runaway vector is refused, not parsed


def _auth(prom: PrometheusSettings) -> tuple[dict[str, str], tuple[str, str] | None]:
    headers, basic = {}, None
    if prom.bearer_token_file is not None:
        headers["Authorization"] = "Bearer " + prom.bearer_token_file.read_text(encoding="utf-8").strip()
    if prom.basic_auth_user is not None and prom.basic_auth_password_file is not None:
        basic = (prom.basic_auth_user, prom.basic_auth_password_file.read_text(encoding="utf-8").strip())
    return headers, basic


def value_of(answer: object) -> tuple[float | None, str | None]:
    """The one number of a Prometheus query answer (its JSON), or None and why."""
    if not isinstance(answer, dict):
        return None, "the answer is not a Prometheus API answer"
    if answer.get("status") != "success":
        return None, f"Prometheus said {answer.get('errorType', 'error')}: {str(answer.get('error', ''))[:120]}"
    data = answer.get("data")
    if not isinstance(data, dict):
        return None, "the answer has no data"
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        sample = result
    elif kind == "vector" and isinstance(result, list):
        if not result:
            return None, "empty result (no series matched)"
        if len(result) > 1:
            return None, f"{len(result)} series, expected one number (aggregate it, e.g. sum(...))"
        sample = result[0].get("value") if isinstance(result[0], dict) else None
    else:
        return None, f"a {kind} result, expected one number (an instant vector of one series, or a scalar)"
    if not isinstance(sample, list) or len(sample) != 2:
        return None, "the sample is malformed"
    try:
        number = float(sample[1])
    except (TypeError, ValueError):
        return None, f"the value {str(sample[1])[:20]!r} is not a number"
    if not math.isfinite(number):
        return None, f"is {sample[1]} (a division by zero: no requests in the window?)"
    return number, None


def query(prom: PrometheusSettings, promql: str, window: float) -> tuple[float | None, str | None]:
    """Ask Prometheus one instant query; (number, None) or (None, why, with the query's first 60 characters)."""
    import requests  # here, not at the top: apply and revert never pay for importing it

    text = promql.replace("{window}", f"{int(round(window))}s")
    where = f"(query {promql[:60]!r})"
    try:
        headers, basic = _auth(prom)
    except OSError as e:
        return None, f"cannot read its credentials: {e.strerror} {where}"

    def ask():
        with requests.get(prom.url + QUERY_PATH, params={"query": text}, headers=headers, auth=basic,
                          timeout=(prom.timeout, prom.timeout), stream=True, allow_redirects=False,
                          verify=str(prom.ca_file) if prom.ca_file else True) as r:
            body = r.raw.read(MAX_ANSWER + 1, decode_content=True)
            return r.status_code, body

    try:
        status, body = endpoint.bounded(ask, prom.timeout)
    except TimeoutError:
        return None, f"Prometheus at {redact(prom.url)} did not answer within {prom.timeout:g}s {where}"
    except requests.RequestException as e:
        return None, f"Prometheus at {redact(prom.url)} cannot be reached ({type(e).__name__}) {where}"
    if len(body) > MAX_ANSWER:
        return None, f"the answer is larger than {MAX_ANSWER} bytes {where}"
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, f"HTTP {status}, not a Prometheus answer {where}"
    number, why = value_of(answer)
    return (number, None) if why is None else (None, f"{why} {where}")


def check(health: HealthSettings, thresholds: Thresholds, hundredths: int, ask=query) -> judge.Check:
    """Every query, judged like the endpoint's answer: built-in metrics against the stage's thresholds,
    custom metrics against their bounds, and, where [health.prometheus.baseline] has v1's query, v2 against v1."""
    prom = health.prometheus
    values, whys = {}, {}
    for metric, promql in prom.queries:
        values[metric], why = ask(prom, promql, thresholds.window)
        if why:
            whys[metric] = why
    for rule in health.custom:
        if rule.name not in values:
            whys[rule.name] = "has no query = in its [[health.metrics]] entry"
    measured = tuple(m for m in judge.METRICS if m in values)  # a built-in metric with no query is not judged
    result = judge.evaluate(values, None, thresholds, {m: m for m in judge.METRICS}, health.no_data,
                            dict(health.levels), tuple(c for c in health.custom), {}, hundredths,
                            source=judge.PROMETHEUS, whys=whys, builtins=measured)
    baseline = []
    for metric, promql in prom.baseline:
        theirs, why = ask(prom, promql, thresholds.window)
        ours = values.get(metric)
        if theirs is None or ours is None:
            continue  # v2's own reading already says why when it is missing
        if metric == "avg_response_time":
            limit = theirs * health.baseline_latency_factor
        else:
            limit = theirs + health.baseline_error_margin
        baseline.append(judge.Reading(metric, ours, limit, judge.PROMETHEUS, judge.BASELINE, ok=ours <= limit,
                                      level=dict(health.levels).get(metric, judge.Level.P1)))
    if not baseline:
        return result
    readings = result.readings + tuple(baseline)
    return judge.Check(judge.regrade(readings, result.missing, health.no_data), readings, result.missing,
                       result.metrics, result.policy, result.notes)
