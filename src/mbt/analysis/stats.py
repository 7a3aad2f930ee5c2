"""Statistics for comparing trained models: a mean with its confidence interval over seeds, and a paired bootstrap
over seeds and test clips that decides whether one configuration beats another.

Both models of a comparison are trained with the same seeds and scored on the same test clips, so their per-clip
scores form two (seeds, clips) arrays whose difference is what is resampled: the seeds (the training runs) and the
clips (the test set) are drawn with replacement, jointly for both models, so the interval covers both sources of
variation, the one a reader would see on retraining and the one on a new test set.

    mean_ci([0.81, 0.84, 0.79])                   # (mean, low, high): Student's t over the seeds
    paired_bootstrap(a, b, seed=0)                # a, b: (S, N) per-clip correctness of two models
    decide(result, threshold=0.0)                 # 'yes' / 'no' / 'not resolved'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Two-sided 95% quantiles of Student's t, t_{0.975, df} for df = 1..30 (scipy.stats.t.ppf(0.975, df), rounded to
# 4 decimals; the tests compare them with scipy). Beyond 30 the normal quantile is within 0.05 of it.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
         2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the factor of a two-sided 95% interval from `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {df}")
    return _T975[df - 1] if df <= len(_T975) else _Z975


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` (one per seed) and its two-sided 95% Student-t interval,
    mean -/+ t_{0.975, n-1} * sd / sqrt(n). With one value the interval is (nan, nan): one run says nothing of the
    spread between runs."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci: no values")
    m = float(x.mean())
    if x.size == 1:
        return m, math.nan, math.nan
    half = t_quantile_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return m, m - half, m + half


@dataclass(frozen=True)
class Comparison:
    """The paired bootstrap of `a - b`: the observed mean difference, its 95% percentile interval, the share of
    bootstrap replicates at or below zero (a one-sided p-value for 'a beats b'), and the sample sizes."""

    difference: float
    low: float
    high: float
    p_not_better: float
    seeds: int
    clips: int
    replicates: int

    def as_dict(self) -> dict[str, float | int]:
        return {"difference": self.difference, "low": self.low, "high": self.high,
                "p_not_better": self.p_not_better, "seeds": self.seeds, "clips": self.clips,
                "replicates": self.replicates}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, replicates: int = 10000, seed: int = 0,
                     chunk: int = 500) -> Comparison:
    """Bootstrap the mean of `a - b` over seeds and clips.

    a, b: (S, N) scores of two models (e.g. 1.0 where a test clip is classified correctly), row s from training seed
    s of each model, column j the same test clip in both. Each replicate draws S seeds and N clips with replacement
    (the same draws for a and b: the comparison is paired) and takes the mean difference over the S x N cells it
    picked; the interval is the 2.5 and 97.5 percentiles of `replicates` such means. Deterministic for `seed`.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"paired_bootstrap wants two (seeds, clips) arrays of one shape, got {a.shape} and "
                         f"{b.shape}")
    d = a - b  # (S, N)
    S, N = d.shape
    rng = np.random.default_rng(seed)
    means = np.empty(replicates)
    for start in range(0, replicates, chunk):
        n = min(chunk, replicates - start)
        # counts of each seed and each clip in the replicate: the mean over the picked cells is w_s^T d w_c / (S N)
        # (each replicate draws its seeds, then its clips: the draws do not depend on `chunk`)
        ws, wc = np.empty((n, S)), np.empty((n, N))
        for i in range(n):
            ws[i] = np.bincount(rng.integers(0, S, S), minlength=S)
            wc[i] = np.bincount(rng.integers(0, N, N), minlength=N)
        means[start:start + n] = np.einsum("bs,sn,bn->b", ws, d, wc) / (S * N)
    low, high = np.percentile(means, [2.5, 97.5])
    return Comparison(float(d.mean()), float(low), float(high), float(np.mean(means <= 0.0)), S, N, replicates)


def decide(c: Comparison, threshold: float = 0.0) -> str:
    """'yes' when the whole interval of the difference lies above `threshold` (e.g. 0 for 'a beats b', -0.01 for
    'a is at most 1 point worse than b'), 'no' when it lies below, 'not resolved' when it straddles it."""
    if c.low > threshold:
        return "yes"
    if c.high < threshold:
        return "no"
    return "not resolved"
