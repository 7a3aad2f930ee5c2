"""mbt.analysis.stats against scipy (the t quantiles and interval) and a direct resampling (the bootstrap)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from mbt.analysis.stats import decide, mean_ci, paired_bootstrap, t_quantile_975


def test_t_quantiles_and_interval_equal_scipy():
    for df in range(1, 31):
        assert t_quantile_975(df) == pytest.approx(sps.t.ppf(0.975, df), abs=6e-5)
    assert t_quantile_975(200) == pytest.approx(sps.t.ppf(0.975, 200), abs=0.03)
    x = [0.812, 0.845, 0.79]
    m, lo, hi = mean_ci(x)
    ref = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert m == pytest.approx(np.mean(x)) and (lo, hi) == pytest.approx(ref, abs=1e-4)
    m1, lo1, hi1 = mean_ci([0.5])
    assert m1 == 0.5 and math.isnan(lo1) and math.isnan(hi1)
    with pytest.raises(ValueError):
        mean_ci([])


def test_bootstrap_equals_direct_resampling():
    """The weighted form (seed and clip counts) equals picking the rows and columns and averaging them."""
    rng = np.random.default_rng(3)
    a = (rng.random((3, 50)) < 0.8).astype(float)
    b = (rng.random((3, 50)) < 0.7).astype(float)
    got = paired_bootstrap(a, b, replicates=40, seed=11, chunk=40)
    draw = np.random.default_rng(11)
    seeds, clips = [], []
    for _ in range(40):  # each replicate: its seeds, then its clips
        seeds.append(draw.integers(0, 3, 3))
        clips.append(draw.integers(0, 50, 50))
    direct = np.array([(a - b)[s][:, c].mean() for s, c in zip(seeds, clips)])
    lo, hi = np.percentile(direct, [2.5, 97.5])
    assert (got.low, got.high) == pytest.approx((lo, hi), abs=1e-12)
    assert got.p_not_better == pytest.approx(np.mean(direct <= 0))
    assert got.difference == pytest.approx((a - b).mean())
    assert paired_bootstrap(a, b, replicates=40, seed=11, chunk=7) == paired_bootstrap(a, b, replicates=40, seed=11)


def test_bootstrap_spread_matches_the_standard_error():
    """One seed: the bootstrap's interval is mean -/+ 1.96 sd/sqrt(N) of the paired differences (large N)."""
    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.75).astype(float)
    b = np.where(rng.random(2000) < 0.8, a, 1 - a)  # correlated with a, as two models on one test set are
    c = paired_bootstrap(a, b, replicates=4000, seed=1)
    se = (a - b).std(ddof=1) / math.sqrt(a.size)
    assert (c.high - c.low) / 2 == pytest.approx(1.96 * se, rel=0.1)
    assert c.low < c.difference < c.high


def test_constant_difference_and_decisions():
    a = np.ones((3, 10))
    b = np.zeros((3, 10))
    c = paired_bootstrap(a, b, replicates=100)
    assert (c.difference, c.low, c.high, c.p_not_better) == (1.0, 1.0, 1.0, 0.0)
    assert decide(c) == "yes" and decide(paired_bootstrap(b, a, replicates=100)) == "no"
    rng = np.random.default_rng(0)
    x = (rng.random((3, 100)) < 0.5).astype(float)
    y = (rng.random((3, 100)) < 0.5).astype(float)
    assert decide(paired_bootstrap(x, x.copy(), replicates=100)) == "not resolved"  # equal: the interval is {0}
    assert decide(paired_bootstrap(x, y, replicates=500)) == "not resolved"
    with pytest.raises(ValueError):
        paired_bootstrap(np.ones((2, 3)), np.ones((3, 3)))
