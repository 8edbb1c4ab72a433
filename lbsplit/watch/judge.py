"""The judge: metrics in, a structured verdict out. Pure: no I/O, no clock, no network.

The watchdog's runner and the promotion gate both call it; neither compares a
threshold itself nor reads meaning out of a message string.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import CustomMetric, HealthSettings
from . import stats
from ..model import (CRON_PERIOD, DEFAULT_LEVELS, METRICS, RATE_METRICS, WATCH_GAP, Bound, Level, NoData, OnBreach,
                     Outcome, Stage, Thresholds)

ENDPOINT = "endpoint"
LOG = "log"
PROMETHEUS = "prometheus"
THRESHOLD = "threshold"
BASELINE = "v1"  # compared with v1 in the same window


@dataclass(frozen=True)
class Reading:
    """One metric compared with its limit: a breach when not `ok`."""

    metric: str
    value: float
    limit: float
    source: str  # ENDPOINT or LOG
    against: str = THRESHOLD  # THRESHOLD, or BASELINE (the limit is derived from v1's value)
    ok: bool = True
    level: Level = Level.P1
    bound: Bound = Bound.MAX
    evidence: str = ""  # from counted requests: the interval or test behind the verdict, and its p-value

    def text(self) -> str:
        where = {LOG: "log: v2 ", PROMETHEUS: "prometheus: v2 "}.get(self.source, "")
        beyond = self.value > self.limit if self.bound == Bound.MAX else self.value < self.limit
        if self.bound == Bound.MAX:
            relation = ">" if beyond else "<="
        else:
            relation = "<" if beyond else ">="
        basis = " (v1 + margin)" if self.against == BASELINE else ""
        level = "" if self.level == Level.P1 else f" [{self.level}]"
        unproven = " but not proven" if beyond and self.ok else ""
        evidence = f" ({self.evidence})" if self.evidence else ""
        return f"{where}{self.metric} {self.value:.4g} {relation} {self.limit:.4g}{basis}{unproven}{evidence}{level}"


@dataclass(frozen=True)
class Missing:
    """A metric (or a whole source) the judge could not use, and why."""

    source: str
    why: str
    metric: str | None = None
    level: Level = Level.P1

    def text(self) -> str:
        return f"{self.source}: {self.metric + ' ' if self.metric else ''}{self.why}"


@dataclass(frozen=True)
class Check:
    """One check of v2 against a stage's thresholds."""

    outcome: Outcome
    readings: tuple[Reading, ...]
    missing: tuple[Missing, ...]
    metrics: dict[str, float | None]
    policy: NoData
    notes: tuple[str, ...] = ()

    @property
    def breaches(self) -> tuple[Reading, ...]:
        return tuple(r for r in self.readings if not r.ok)

    def summary(self) -> str:
        """The breaches, missing data and notes in one line, for logs and history."""
        return "; ".join([r.text() for r in self.breaches] + [m.text() for m in self.missing] + list(self.notes))


@dataclass(frozen=True)
class Verdict:
    consecutive: int
    revert: bool


def usable(metric: str | None, value: object) -> tuple[float | None, str | None]:
    """A metric's value when it is a finite number in its valid range, else None and why.

    Built-in metrics are >= 0, rates at most 1; a custom metric (`metric` None) may be any finite number.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, "missing" if value is None else f"is not a number ({type(value).__name__})"
    try:
        number = float(value)
    except OverflowError:
        return None, "is too large to be a measurement"
    if not math.isfinite(number):
        return None, f"is not finite ({value})"
    if metric is None:
        return number, None
    if number < 0:
        return None, f"is negative ({number:g})"
    if metric in RATE_METRICS and number > 1:
        return None, f"is above 1 ({number:g}); rates are fractions 0..1 (scale it with health.scale)"
    return number, None


def extract(payload: object, fields: dict[str, str]) -> dict[str, object]:
    """Each metric's raw value by its dotted path, at top level or under "metrics" when the path is the bare name."""
    out: dict[str, object] = {}
    for metric, path in fields.items():
        candidates = [path] if "." in path or path != metric else [path, f"metrics.{path}"]
        value = None
        for candidate in candidates:
            node = payload
            for part in candidate.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                value = node
                break
        out[metric] = value
    return out


def _outcome(breaches: bool, missing: bool, policy: NoData, inconclusive: bool = False) -> Outcome:
    if breaches or (missing and policy == NoData.FAIL):
        return Outcome.FAIL
    if inconclusive:
        return Outcome.INCONCLUSIVE
    return Outcome.NO_DATA if missing else Outcome.PASS


def regrade(readings, missing, policy: NoData) -> Outcome:
    """The outcome of readings and missing data put together (a source that adds readings of its own)."""
    return _graded(list(readings), list(missing), policy)


def _graded(readings: list, missing: list, policy: NoData, inconclusive: bool = False) -> Outcome:
    """P1 breaches (and P1 data missing under no_data = fail) fail; P2 only alert; P3 only inform."""
    failing = policy == NoData.FAIL
    levels = {r.level for r in readings if not r.ok} | {m.level for m in missing if failing}
    if Level.P1 in levels:
        return Outcome.FAIL
    if Level.P2 in levels:
        return Outcome.ALERT
    if inconclusive:
        return Outcome.INCONCLUSIVE
    return Outcome.NO_DATA if any(m.level != Level.P3 for m in missing) else Outcome.PASS


def _scaled(value: object, scale: float) -> object:
    if scale == 1 or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    try:
        return value * scale
    except OverflowError:
        return math.inf


def evaluate(payload: object, error: str | None, thresholds: Thresholds, fields: dict[str, str],
             no_data: NoData, levels: dict[str, Level] | None = None, custom: tuple[CustomMetric, ...] = (),
             scales: dict[str, float] | None = None, hundredths: int = 0, source: str = ENDPOINT,
             whys: dict[str, str] | None = None, builtins: tuple[str, ...] = METRICS) -> Check:
    """Judge one answer of the health endpoint (`error`: why there is none) against the stage's rules.

    The four built-in metrics against the stage's thresholds, at their levels; custom metrics
    against their bounds for the stage (`hundredths`). Other sources of one number per metric
    (Prometheus) pass their numbers as `payload`, `source` to name them, and `whys` for the
    metrics they could not get, and `builtins` for the built-in metrics they measure at all.
    """
    whys = whys or {}
    levels = {**DEFAULT_LEVELS, **(levels or {})}
    scales = scales or {}
    names = [*METRICS, *(c.name for c in custom)]
    if error is not None:
        missing = [Missing(source, error)]
        return Check(_graded([], missing, no_data), (), tuple(missing), {m: None for m in names}, no_data)
    raw = extract(payload, {**fields, **{c.name: c.path for c in custom}})
    metrics: dict[str, float | None] = {}
    readings, missing = [], []
    for metric in builtins:
        value, why = usable(metric, _scaled(raw.get(metric), scales.get(metric, 1.0)))
        metrics[metric] = value
        if value is None:
            missing.append(Missing(source, whys.get(metric) or why or "missing", metric, levels[metric]))
            continue
        limit = thresholds.limit(metric)
        readings.append(Reading(metric, value, limit, source, ok=value <= limit, level=levels[metric]))
    for rule in custom:
        value, why = usable(None, _scaled(raw.get(rule.name), rule.scale))
        metrics[rule.name] = value
        if value is None:
            missing.append(Missing(source, whys.get(rule.name) or why or "missing", rule.name, rule.level))
            continue
        for bound, limit in rule.limits_for(hundredths):
            ok = value <= limit if bound == Bound.MAX else value >= limit
            readings.append(Reading(rule.name, value, limit, source, ok=ok, level=rule.level, bound=bound))
    return Check(_graded(readings, missing, no_data), tuple(readings), tuple(missing), metrics, no_data)




def evaluate_log(v1, v2, t: Thresholds, health: HealthSettings, problem: str | None = None) -> Check:
    """Judge v2 by what nginx saw: absolute thresholds, then against v1 in the same window.

    `v1` and `v2` are per-variant window stats (requests, error_rate, timeout_rate,
    avg_response_time, p95_response_time).
    """
    metrics = {
        "log_v2_requests": float(v2.requests), "log_v2_error_rate": v2.error_rate,
        "log_v2_timeout_rate": v2.timeout_rate, "log_v2_avg_response_time": v2.avg_response_time,
        "log_v2_p95_response_time": v2.p95_response_time, "log_v1_requests": float(v1.requests),
        "log_v1_error_rate": v1.error_rate, "log_v1_timeout_rate": v1.timeout_rate,
        "log_v1_p95_response_time": v1.p95_response_time,
    }
    policy = health.no_data
    levels = dict(health.levels)
    if problem or v2.requests < health.min_requests:
        why = problem or (f"not enough data: {v2.requests} v2 requests in the last {t.window:g}s "
                          f"(minimum {health.min_requests})")
        return Check(_outcome(False, True, policy), (), (Missing(LOG, why),), metrics, policy)
    readings, shared = [], []
    baseline = v1.requests >= health.min_requests
    confidence = health.confidence
    counted = {"error_rate": "errors", "timeout_rate": "timeouts"}
    for metric in ("error_rate", "timeout_rate", "avg_response_time"):
        value, limit = getattr(v2, metric), t.limit(metric)
        theirs = getattr(v1, metric)
        evidence, breached = "", value > limit
        if metric in counted:  # a rate from counted requests: breached only when its lower bound is above the limit
            test = stats.above(getattr(v2, counted[metric]), v2.requests, limit, confidence)
            evidence, breached = f"{test.detail}; {test.text()}", test.worse
            if breached and baseline and stats.above(getattr(v1, counted[metric]), v1.requests, limit, confidence).worse:
                shared.append(f"log: v1 fails as badly ({metric} v1 {theirs:g}, v2 {value:g}); not blaming v2")
                continue
        elif breached and baseline and theirs is not None and theirs > limit:
            shared.append(f"log: v1 fails as badly ({metric} v1 {theirs:g}, v2 {value:g}); not blaming v2")
            continue
        readings.append(Reading(metric, value, limit, LOG, ok=not breached, level=levels.get(metric, Level.P1),
                                evidence=evidence))
    if baseline:
        margin = health.baseline_error_margin
        test = stats.worse_by(v2.errors, v2.requests, v1.errors, v1.requests, margin, confidence)
        readings.append(Reading("error_rate", v2.error_rate, v1.error_rate + margin, LOG, BASELINE, ok=not test.worse,
                                evidence=f"{test.detail}; {test.text()}"))
        factor = health.baseline_latency_factor
        p2, p1 = v2.p95_response_time, v1.p95_response_time
        # The effect must be big enough (differences under 50 ms are histogram noise at these sizes) and v2's
        # latencies slower than v1's beyond chance (a rank test of the two windows' histograms).
        test = stats.slower(v2.hist, v1.hist, confidence)
        ok = not (p2 > p1 * factor and p2 - p1 > 0.05 and test.worse)
        readings.append(Reading("p95_response_time", p2, max(p1 * factor, p1 + 0.05), LOG, BASELINE, ok=ok,
                                level=levels.get("avg_response_time", Level.P2), evidence=test.text()))
    return Check(_graded(readings, [], policy, inconclusive=bool(shared)), tuple(readings), (), metrics, policy,
                 tuple(shared))


def combine(checks: list[Check]) -> Check:
    """Either source failing counts; otherwise any that could not judge makes the check not a pass."""
    if len(checks) == 1:
        return checks[0]
    outcomes = [c.outcome for c in checks]
    for outcome in (Outcome.FAIL, Outcome.ALERT, Outcome.INCONCLUSIVE, Outcome.NO_DATA):
        if outcome in outcomes:
            break
    else:
        outcome = Outcome.PASS
    metrics: dict = {}
    for c in checks:
        metrics.update(c.metrics)
    return Check(outcome, sum((c.readings for c in checks), ()), sum((c.missing for c in checks), ()), metrics,
                 checks[0].policy, sum((c.notes for c in checks), ()))


def decide(consecutive: int, check: Check, failures_before_revert: int,
           revert_levels: tuple[Level, ...] = (Level.P1,)) -> Verdict:
    """A pass (or a check that blames v1 as much) resets the count, a failure adds one, ignored no-data leaves it;
    N in a row revert.

    A P2-only breach (an alert) counts like a pass, unless P2 is among `revert_levels`.
    """
    if check.outcome == Outcome.ALERT and Level.P2 in revert_levels:
        check = Check(Outcome.FAIL, check.readings, check.missing, check.metrics, check.policy, check.notes)
    if check.outcome in (Outcome.PASS, Outcome.ALERT):
        return Verdict(0, False)
    if check.outcome == Outcome.INCONCLUSIVE:
        # It judged and found nothing to blame v2 for (v1 fails as badly): failures on either side of it
        # are not in a row.
        return Verdict(0, False)
    if check.outcome == Outcome.NO_DATA:
        return Verdict(consecutive, False)
    count = consecutive + 1
    return Verdict(count, count >= failures_before_revert)



def watched(generation: int, applied_at: float | None, outcome: Outcome, now: float, interval: float,
            previous: tuple[int | None, float, float | None]) -> tuple[int, float, float]:
    """The soak clock after one check: (generation, watched clean seconds, when this check ran).

    Only time between checks that judged v2 clean counts, and only across gaps of at most WATCH_GAP
    check intervals (a watchdog that stopped is nobody watching); a P1/P2 breach starts it again
    from zero, a check with no data adds nothing. `previous` is the last (generation, seconds, time).
    """
    generation_before, seconds, last_at = previous
    if generation_before != generation or last_at is None:
        seconds = 0.0
        last_at = applied_at if applied_at is not None and 0 <= now - applied_at <= interval else now
    if outcome in (Outcome.FAIL, Outcome.ALERT):
        return generation, 0.0, now
    gap = now - last_at
    if outcome in (Outcome.PASS, Outcome.INCONCLUSIVE) and 0 <= gap <= WATCH_GAP * interval:
        seconds += gap
    return generation, seconds, now


def breach_target(current: Stage, stages: tuple[int, ...], on_breach: OnBreach) -> Stage:
    """Where a breach sends traffic: v2 off, or the configured stage below the current one."""
    if on_breach == OnBreach.PREVIOUS:
        lower = [s for s in stages if s < current.hundredths]
        if lower:
            return Stage.at(max(lower))
    return Stage.off()


def cron_checks(check_every: float, period: float = CRON_PERIOD) -> int:
    """How many checks one cron run makes so that it ends before the next one starts."""
    return max(1, math.ceil(period / check_every))
