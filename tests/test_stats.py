"""The statistics behind verdicts from counted requests, held to independent computations (pure)."""

import math
import random

import pytest

from lbsplit.watch import stats


def binom_pmf(n, p):
    """Binomial probabilities, computed here from log-gamma terms (not by the code under test)."""
    if p in (0.0, 1.0):
        return [1.0 if k == round(n * p) else 0.0 for k in range(n + 1)]
    logs = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
            + (n - k) * math.log1p(-p) for k in range(n + 1)]
    return [math.exp(x) for x in logs]


def test_wilson_bounds_match_the_textbook_values():
    # 6 of 100 at 95% two-sided (each bound one-sided at 97.5%): 2.78% to 12.49% (Wilson 1927; Newcombe 1998)
    low, high = stats.rate_bounds(6, 100, 0.975)
    assert abs(low - 0.0278) < 1e-4 and abs(high - 0.1248) < 1e-4
    assert stats.rate_bounds(0, 0) == (0.0, 1.0)
    low, high = stats.rate_bounds(0, 50, 0.99)
    assert low == 0.0 and 0.09 < high < 0.1


@pytest.mark.parametrize("n,rate", [(30, 0.05), (100, 0.05), (1000, 0.05), (100, 0.02)])
def test_the_threshold_test_is_wrong_at_most_as_often_as_its_confidence_allows(n, rate):
    assert abs(stats.binomial_upper_tail(3, 10, 0.5) - sum(binom_pmf(10, 0.5)[3:])) < 1e-12
    """A rate exactly at its limit is called above it with probability at most 1%, computed exactly."""
    pmf = binom_pmf(n, rate)
    size = sum(p for k, p in enumerate(pmf) if stats.above(k, n, rate, 0.99).worse)
    assert size <= 0.01, size


@pytest.mark.parametrize("n2,n1,rate,margin", [(100, 900, 0.02, 0.02), (130, 300, 0.2, 0.02), (1000, 9000, 0.005, 0.0),
                                               (30, 270, 0.2, 0.0), (100, 100, 0.5, 0.0)])
def test_the_two_proportion_test_keeps_its_level_exactly(n2, n1, rate, margin):
    """v2 worse than v1 by exactly the margin (the boundary of 'not worse'): rejected at most ~1% of the time,
    summed exactly over both binomials."""
    p2 = min(1.0, rate + margin)
    pmf2, pmf1 = binom_pmf(n2, p2), binom_pmf(n1, rate)
    size = 0.0
    for k2, a in enumerate(pmf2):
        if a < 1e-12:
            continue
        for k1, b in enumerate(pmf1):
            if b > 1e-12 and stats.worse_by(k2, n2, k1, n1, margin, 0.99).worse:
                size += a * b
    assert size <= 0.015, size


def test_the_two_proportion_test_finds_a_doubling_at_a_thousand_requests():
    pmf2, pmf1 = binom_pmf(1000, 0.4), binom_pmf(9000, 0.2)
    found = sum(a * b for k2, a in enumerate(pmf2) if a > 1e-12 for k1, b in enumerate(pmf1)
                if b > 1e-12 and stats.worse_by(k2, 1000, k1, 9000, 0.02, 0.99).worse)
    assert found > 0.999


def brute_u(xs2, xs1):
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in xs2 for b in xs1)


def test_mann_whitney_u_from_histograms_equals_the_pairwise_count():
    rng = random.Random(3)
    for _ in range(20):
        h2 = {b: rng.randint(0, 5) for b in range(rng.randint(1, 8))}
        h1 = {b: rng.randint(0, 5) for b in range(rng.randint(1, 8))}
        h2, h1 = {b: n for b, n in h2.items() if n}, {b: n for b, n in h1.items() if n}
        if not h2 or not h1:
            continue
        xs2 = [b for b, n in h2.items() for _ in range(n)]
        xs1 = [b for b, n in h1.items() for _ in range(n)]
        test = stats.slower(h2, h1)
        assert test.detail.startswith(f"U={brute_u(xs2, xs1):.0f} of {len(xs1) * len(xs2)}")


def test_mann_whitney_says_slower_only_when_it_is():
    same = stats.slower({10: 50, 11: 50}, {10: 500, 11: 500})
    assert not same.worse and 0.3 < same.p_value < 0.7
    slow = stats.slower({10: 20, 20: 80}, {10: 900, 11: 100})
    assert slow.worse and slow.p_value < 1e-6
    assert not stats.slower({}, {1: 3}).worse and not stats.slower({5: 10}, {5: 10}).worse
