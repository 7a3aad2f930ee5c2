"""mbt.analysis.stats against scipy (the t quantiles and intervals) and a simulation (the error rate of the paired
comparison with 3 seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from mbt.analysis.stats import decide, mean_ci, paired_difference, t_quantile_975


def test_t_quantiles_and_interval_equal_scipy():
    for df in list(range(1, 31)) + [31, 35, 40, 60, 120, 1000]:
        assert t_quantile_975(df) == pytest.approx(sps.t.ppf(0.975, df), abs=2e-4), df
    assert t_quantile_975(math.inf) == pytest.approx(sps.norm.ppf(0.975))
    x = [0.812, 0.845, 0.79]
    m, lo, hi = mean_ci(x)
    ref = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert m == pytest.approx(np.mean(x)) and (lo, hi) == pytest.approx(ref, abs=1e-4)
    m1, lo1, hi1 = mean_ci([0.5])
    assert m1 == 0.5 and math.isnan(lo1) and math.isnan(hi1)
    with pytest.raises(ValueError):
        mean_ci([])


def test_seed_term_alone_is_the_t_interval_of_the_per_seed_differences():
    """Differences constant within each seed (no clip-to-clip spread): the interval is scipy's t interval over the
    per-seed differences."""
    per_seed = np.array([0.02, 0.05, -0.01])
    a = np.zeros((3, 40)) + per_seed[:, None]
    c = paired_difference(a, np.zeros_like(a))
    ref = sps.t.interval(0.95, 2, loc=per_seed.mean(), scale=sps.sem(per_seed))
    assert (c.low, c.high) == pytest.approx(ref, abs=1e-4) and c.se_clips == 0.0


def test_one_seed_is_the_normal_interval_of_the_paired_clip_differences():
    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.75).astype(float)
    b = np.where(rng.random(2000) < 0.8, a, 1 - a)
    c = paired_difference(a, b)
    d = a - b
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert c.difference == pytest.approx(d.mean())
    assert (c.low, c.high) == pytest.approx((d.mean() - 1.959964 * se, d.mean() + 1.959964 * se))
    assert (c.seeds, c.clips, c.se_seeds) == (1, 2000, 0.0)


def test_equal_models_are_rarely_told_apart_with_three_seeds():
    """Two configurations of equal quality, 3 seeds each, with a seed effect (sd 3 points) and shared clip
    difficulty: about 5% of the comparisons may be decided (a bootstrap over the seeds decides 16-28%)."""
    rng = np.random.default_rng(1)
    decided = 0
    trials = 1000
    for _ in range(trials):
        easy = rng.random(500)  # clip difficulty, shared by both models
        def runs():
            skill = 0.7 + rng.normal(0, 0.03, size=(3, 1))  # one training run per seed
            return (rng.random((3, 500)) < np.clip(skill + 0.3 * (easy - 0.5), 0, 1)).astype(float)
        decided += decide(paired_difference(runs(), runs())) != "not resolved"
    assert decided / trials <= 0.075


def test_decisions_and_shapes():
    a = np.ones((3, 10))
    b = np.zeros((3, 10))
    c = paired_difference(a, b)
    assert (c.difference, c.low, c.high) == (1.0, 1.0, 1.0)
    assert decide(c) == "yes" and decide(paired_difference(b, a)) == "no"
    assert decide(c, threshold=1.5) == "no"
    x = (np.random.default_rng(0).random((3, 100)) < 0.5).astype(float)
    assert decide(paired_difference(x, x.copy())) == "not resolved"  # equal: the interval is {0}
    with pytest.raises(ValueError):
        paired_difference(np.ones((2, 3)), np.ones((3, 3)))
