"""The statistics behind the watchdog's verdicts from counted requests. Pure: numbers in, numbers out.

- `above`: is a failure rate (k of n) above its threshold? The exact binomial test at `confidence`
  (so chance alone breaches at most 1% of the time at 0.99, at any n); `rate_bounds` is Wilson's
  score interval, shown next to it.
- `worse_by`: is v2's rate worse than v1's by more than a margin? A one-sided z test of
  p2 - p1 > margin with Agresti and Caffo's adjustment (one failure and one success added to
  each side), which keeps its level at small counts and at rates of 0.
- `slower`: Mann-Whitney U (as Kayenta uses) of v2's latencies against v1's, from the two
  histograms: each bin is a group of tied values, with the tie correction of the variance.

The standard library's NormalDist gives the normal quantiles; nothing else is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

DEFAULT_CONFIDENCE = 0.99
_NORMAL = NormalDist()


def z_of(confidence: float) -> float:
    """The one-sided normal quantile: 2.326 at 0.99."""
    return _NORMAL.inv_cdf(confidence)


def upper_tail(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True)
class Test:
    """One test's result: does the evidence say v2 is worse, and how sure (the one-sided p-value)?"""

    name: str
    worse: bool
    p_value: float
    detail: str  # "v2 4.1% vs v1 2.0% + 2 pts" etc., for the check line

    def text(self) -> str:
        return f"{self.name} p={self.p_value:.2g}"


def rate_bounds(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval for k of n, each bound one-sided at `confidence` ((0, 1) for n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    z = z_of(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the first term from log-gamma, the next ones by their ratio, until
    they no longer count. Above the mean the terms shrink at least geometrically, so few are summed."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    log_first = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + \
        (n - k) * math.log1p(-p)
    if log_first < -700 and k > n * p:
        return 0.0  # below 1e-300: nothing a confidence setting can tell from zero
    odds = p / (1 - p)
    term = total = math.exp(log_first)
    j = k
    while j < n:
        term *= (n - j) / (j + 1) * odds
        total += term
        j += 1
        if j > n * p and term <= total * 1e-13:
            break
    return min(1.0, total)


def above(k: int, n: int, limit: float, confidence: float = DEFAULT_CONFIDENCE) -> Test:
    """Is the rate k/n above `limit` with `confidence`? The exact binomial test of rate <= limit, so a rate
    at its limit is called above it at most 1 - confidence of the time at any n; Wilson's interval is shown."""
    low, high = rate_bounds(k, n, confidence)
    p_value = 1.0 if n <= 0 or k <= n * limit else binomial_upper_tail(k, n, limit)
    pct = int(round(confidence * 100))
    return Test("binomial test", p_value < 1 - confidence, p_value,
                f"{k / n if n else 0:.2%} ({pct}% CI {low:.2%}-{high:.2%}) of {n}")


def worse_by(k2: int, n2: int, k1: int, n1: int, margin: float, confidence: float = DEFAULT_CONFIDENCE) -> Test:
    """Is v2's rate (k2 of n2) above v1's (k1 of n1) by more than `margin`, with `confidence`?"""
    p2, p1 = (k2 + 1) / (n2 + 2), (k1 + 1) / (n1 + 2)
    se = math.sqrt(p2 * (1 - p2) / (n2 + 2) + p1 * (1 - p1) / (n1 + 2))
    z = (p2 - p1 - margin) / se
    p_value = upper_tail(z)
    raw2, raw1 = (k2 / n2 if n2 else 0.0), (k1 / n1 if n1 else 0.0)
    return Test("two-proportion z test", p_value < 1 - confidence, p_value,
                f"v2 {raw2:.2%} of {n2} vs v1 {raw1:.2%} of {n1} (+{margin:.0%} margin)")


def slower(v2: dict[int, int], v1: dict[int, int], confidence: float = DEFAULT_CONFIDENCE) -> Test:
    """Mann-Whitney U of v2's latencies over v1's, from histograms {bin: count} with the same bins."""
    n2, n1 = sum(v2.values()), sum(v1.values())
    if not n1 or not n2:
        return Test("Mann-Whitney U", False, 1.0, "no latencies to compare")
    below = 0  # v1's counts in lower bins
    u = 0.0
    ties = 0.0
    for b in sorted(set(v2) | set(v1)):
        a, c = v1.get(b, 0), v2.get(b, 0)
        u += c * (below + a / 2)  # pairs where v2 is slower, ties half
        below += a
        t = a + c
        ties += t ** 3 - t
    total = n1 + n2
    mean = n1 * n2 / 2
    var = n1 * n2 / 12 * ((total + 1) - ties / (total * (total - 1))) if total > 1 else 0.0
    if var <= 0:
        return Test("Mann-Whitney U", False, 1.0, f"U={u:.0f} of {n1 * n2}; every latency in one bin")
    z = (u - mean - 0.5) / math.sqrt(var)
    p_value = upper_tail(z)
    return Test("Mann-Whitney U", p_value < 1 - confidence, p_value, f"U={u:.0f} of {n1 * n2}")
