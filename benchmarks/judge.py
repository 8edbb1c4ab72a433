"""The judge's own benchmark: how often it reverts a healthy v2, and how fast it reverts a broken one.

Exact, not sampled: for each count of v2 errors k2 (over the range with any probability), the
real `judge.evaluate_log` fails the check for exactly the v1 error counts k1 below a boundary
(fewer v1 errors only make v2 look worse), which a binary search finds; the binomial
probabilities of both sides then give the check's failure probability q. The old
point-estimate rule (before the statistics) is evaluated the same way, side by side.

Per day: the 10% stage checks every 60 s over a 300 s window, so consecutive checks share most
of their requests and a failing window tends to fail the next checks too. The per-day figure
therefore counts each of the day's 288 disjoint windows as one chance to revert (one failing
window is taken to give `failures_before_revert` failures in a row): a conservative model. The
detection figure uses the opposite, also conservative, independence model: a regression is
counted as reverted within `failures_before_revert` checks with probability q ** r.
"""

from __future__ import annotations

import math

from lbsplit.config import HealthSettings
from lbsplit.model import DEFAULT_THRESHOLDS, Outcome
from lbsplit.watch import judge
from lbsplit.watch.logsource import VariantStats

BACKGROUNDS = (0.005, 0.02, 0.2)
V2_REQUESTS = (30, 100, 1000, 10_000)
EFFECTS = (1.0, 1.5, 2.0, 5.0)
V1_PER_V2 = 9  # the 10% stage: v1 serves nine requests for each of v2's
STAGE = DEFAULT_THRESHOLDS[0]  # 10%: error_rate <= 5%, window 300 s, a check every 60 s
FAILURES = 3  # failures_before_revert's default
MARGIN = 0.02  # baseline_error_margin's default
WINDOWS_PER_DAY = 86400 / STAGE.window


def _health() -> HealthSettings:
    return HealthSettings(url="", timeout=1, headers=(), bearer_token_file=None, bearer_token_env=None, fields=(),
                          no_data="ignore", failures_before_revert=FAILURES, on_breach="revert",
                          thresholds=DEFAULT_THRESHOLDS, log=None, prometheus_textfile=None, source="nginx_log",
                          access_log=None)


def _pmf_range(n: int, p: float) -> list[tuple[int, float]]:
    """(k, P(K = k)) for K ~ Binomial(n, p) over the range holding all but ~1e-15 of the mass."""
    if p <= 0:
        return [(0, 1.0)]
    if p >= 1:
        return [(n, 1.0)]
    sd = math.sqrt(n * p * (1 - p))
    low, high = max(0, int(n * p - 9 * sd - 5)), min(n, int(n * p + 9 * sd + 5))
    base, lp, lq = math.lgamma(n + 1), math.log(p), math.log1p(-p)
    return [(k, math.exp(base - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq))
            for k in range(low, high + 1)]


def _stats(requests: int, errors: int) -> VariantStats:
    s = VariantStats(requests=requests, errors=errors, time_sum=0.01 * requests)
    s.hist = {24: requests}  # every latency alike: only the error rules are measured
    return s


def new_rule(k2: int, n2: int, k1: int, n1: int, health: HealthSettings) -> bool:
    return judge.evaluate_log(_stats(n1, k1), _stats(n2, k2), STAGE, health).outcome == Outcome.FAIL


def old_rule(k2: int, n2: int, k1: int, n1: int, health: HealthSettings) -> bool:
    """The rule before the statistics: point estimates against the threshold and against v1 + margin."""
    if n2 < health.min_requests:
        return False  # "not enough data", as for the new rule (no_data = "ignore" here)
    r2, r1 = k2 / n2, k1 / n1
    threshold = r2 > STAGE.error_rate and not r1 > STAGE.error_rate
    return threshold or r2 > r1 + MARGIN


def fail_probability(rule, n2: int, p2: float, n1: int, p1: float, health: HealthSettings) -> float:
    v1 = _pmf_range(n1, p1)
    cdf, total = [], 0.0
    for _, p in v1:
        total += p
        cdf.append(total)
    q = 0.0
    for k2, a in _pmf_range(n2, p2):
        if a < 1e-18:
            continue
        lo, hi = 0, len(v1)  # the number of v1 counts (from the lowest) that fail the check
        while lo < hi:
            mid = (lo + hi) // 2
            if rule(k2, n2, v1[mid][0], n1, health):
                lo = mid + 1
            else:
                hi = mid
        if lo:
            q += a * cdf[lo - 1]
    return min(1.0, q)


CHECKS_PER_DAY = int(86400 / STAGE.check_every)


def per_day(q: float) -> float:
    """Conservative: each disjoint window of the day is one chance to revert."""
    return -math.expm1(WINDOWS_PER_DAY * math.log1p(-q)) if q < 1 else 1.0


def per_day_independent(q: float) -> float:
    """If checks were independent: P(a run of FAILURES failures among the day's checks), by the run-length chain."""
    if q <= 0:
        return 0.0
    state = [1.0] + [0.0] * (FAILURES - 1)  # P(current run length = i), no revert yet
    reverted = 0.0
    for _ in range(CHECKS_PER_DAY):
        new = [0.0] * FAILURES
        new[0] = sum(state) * (1 - q)
        for i in range(FAILURES - 1):
            new[i + 1] = state[i] * q
        reverted += state[FAILURES - 1] * q
        state = new
    return min(1.0, reverted)


def run() -> dict:
    health = _health()
    rows = []
    for background in BACKGROUNDS:
        for n2 in V2_REQUESTS:
            for effect in EFFECTS:
                p2 = min(1.0, background * effect)
                n1 = V1_PER_V2 * n2
                row = {"background": background, "v2_requests": n2, "effect": effect}
                for name, rule in (("new", new_rule), ("old", old_rule)):
                    q = fail_probability(rule, n2, p2, n1, background, health)
                    row[name] = {"per_check": q, "false_reverts_per_1000_days": 1000 * per_day(q),
                                 "independent_per_1000_days": 1000 * per_day_independent(q),
                                 "reverted_within_r": q ** FAILURES,
                                 "expected_checks": (1 - q ** FAILURES) / ((1 - q) * q ** FAILURES)
                                 if 0 < q < 1 else (FAILURES if q >= 1 else math.inf)}
                rows.append(row)
    healthy = [r for r in rows if r["effect"] == 1.0 and r["v2_requests"] >= 100]
    doubled = [r for r in rows if r["effect"] == 2.0 and r["v2_requests"] == 1000]
    return {
        "rows": rows, "failures_before_revert": FAILURES, "margin": MARGIN, "threshold": STAGE.error_rate,
        "windows_per_day": WINDOWS_PER_DAY, "v1_per_v2": V1_PER_V2,
        "goal_false": max(r["new"]["false_reverts_per_1000_days"] for r in healthy),
        "goal_false_old": max(r["old"]["false_reverts_per_1000_days"] for r in healthy),
        "goal_false_independent": max(r["new"]["independent_per_1000_days"] for r in healthy),
        "goal_false_independent_old": max(r["old"]["independent_per_1000_days"] for r in healthy),
        "checks_per_day": CHECKS_PER_DAY,
        "goal_detect": {str(r["background"]): r["new"]["reverted_within_r"] for r in doubled},
        "goal_detect_old": {str(r["background"]): r["old"]["reverted_within_r"] for r in doubled},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
