"""Intervals and tests on one sample: t intervals, exact binomial intervals, percentile bootstrap intervals
(paired where both sides saw the same test images), exact McNemar tests. Every interval is 95 % unless asked
otherwise and says which kind it is. Pooling over seeds lives in `pooling`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as sps

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float
    method: str        # "t", "exact binomial", "bootstrap", "paired bootstrap" (+ level in `describe`)
    n: int

    def covers(self, value: float = 0.0) -> bool:
        """True where the interval holds `value`, or where there is no interval (n too small)."""
        return not (self.lo > value or self.hi < value)

    @property
    def defined(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def clipped(self, lo: float, hi: float) -> Interval:
        """The interval cut to the feasible range [lo, hi] (a difference of accuracies lies in [-1, 1]), never
        silently: a bound that reached beyond it is cut and the method says so (`describe` shows it)."""
        if not self.defined or (self.lo >= lo and self.hi <= hi):
            return self
        return replace(self, lo=max(self.lo, lo), hi=min(self.hi, hi),
                       method=f"{self.method}; {clip_note(lo, hi)}")

    def describe(self, fmt: str = ".3f") -> str:
        if not self.defined:
            return f"{self.estimate:{fmt}} (no interval, n={self.n})"
        return f"{self.estimate:{fmt}} [{self.lo:{fmt}}, {self.hi:{fmt}}] ({self.method}, n={self.n})"


def clip_note(lo: float, hi: float) -> str:
    """What a cut interval says of itself: 'clipped to the feasible [-1, 1]'."""
    return f"clipped to the feasible [{lo:g}, {hi:g}]"


def t_interval(values, level: float = LEVEL) -> Interval:
    """Mean and Student-t interval of independent values (e.g. one per seed); NaN bounds for fewer than 2."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return Interval(mean, math.nan, math.nan, "t", n)
    half = float(sps.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, "t", n)


def binomial_interval(k: int, n: int, level: float = LEVEL) -> Interval:
    """Proportion k / n with its exact (Clopper-Pearson) interval."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, "exact binomial", 0)
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return Interval(k / n, float(ci.low), float(ci.high), "exact binomial", n)


def bootstrap_interval(statistic: Callable[[np.ndarray], float], *samples, n_boot: int = 2000, seed: int = 0,
                       level: float = LEVEL, method: str = "bootstrap") -> Interval:
    """Percentile bootstrap of `statistic(*samples)`, resampling the rows (axis 0) of every sample together, so
    samples measured on the same items stay paired."""
    arrays = [np.asarray(s) for s in samples]
    n = len(arrays[0])
    estimate = float(statistic(*arrays))
    if n < 2:
        return Interval(estimate, math.nan, math.nan, method, n)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = np.array([statistic(*(a[i] for a in arrays)) for i in idx], dtype=float)
    lo, hi = np.nanquantile(boots, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(estimate, float(lo), float(hi), method, n)


def paired_difference(correct_a, correct_b, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Accuracy of b minus accuracy of a on the same items, with a paired bootstrap interval."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    return bootstrap_interval(lambda x, y: y.mean() - x.mean(), a, b, n_boot=n_boot, seed=seed,
                              method="paired bootstrap")


@dataclass(frozen=True)
class McNemar:
    only_a: int        # items a got right and b wrong
    only_b: int        # items b got right and a wrong
    p_value: float     # exact two-sided: binomial test of only_b against only_a + only_b at 1/2


def mcnemar_exact(correct_a, correct_b) -> McNemar:
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    p = 1.0 if only_a + only_b == 0 else float(sps.binomtest(only_b, only_a + only_b, 0.5).pvalue)
    return McNemar(only_a, only_b, p)


def ratio_interval(numerator, denominator, level: float = LEVEL) -> Interval:
    """sum(numerator) / sum(denominator) over paired items (a ratio of means, which a few items with tiny
    denominators cannot blow up as a mean of ratios can), with a delta-method normal interval."""
    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    n = len(num)
    if n == 0 or den.sum() <= 0:
        return Interval(math.nan, math.nan, math.nan, "ratio of means", n)
    ratio = float(num.sum() / den.sum())
    if n < 2:
        return Interval(ratio, math.nan, math.nan, "ratio of means", n)
    influence = (num - ratio * den) / den.mean()
    half = float(sps.norm.ppf(0.5 + level / 2) * influence.std(ddof=1) / math.sqrt(n))
    return Interval(ratio, ratio - half, ratio + half, "ratio of means (delta method)", n)
