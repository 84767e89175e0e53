"""How often the 95 % interval over seeds holds a known true difference, by simulation: the evidence that
`pooling` keeps its promise (tests/test_stats.py checks every cell; benchmarks/coverage.py prints the table).

A simulated study: a test set of n images of 16 difficulty levels (model a right with probability 0.25 ... 0.75),
shared by every seed and both models; per seed, model b's gain is delta + u (u ~ N(0, tau^2)), larger on harder
images (averaging delta over the population); within a seed, a and b agree more often than chance (half of the
images draw one shared uniform for both). Each seed's paired difference and its image-level variance are drawn
from exact multinomial counts per difficulty level, so thousands of studies take a fraction of a second."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from .intervals import LEVEL, Interval
from .pooling import pool_arrays

LEVELS = np.linspace(0.25, 0.75, 16)            # model a's probability of being right, per difficulty level
GAIN = (1 - LEVELS) / (1 - LEVELS).mean()        # b's gain per level relative to delta: larger on harder images
TRUE_DELTA = 0.02
SHARED = 0.5                                     # fraction of images where a and b draw one uniform (pairing)
KS, TAUS, NS = (2, 3, 5, 10), (0.0, 0.01, 0.03, 0.05), (500, 2000, 10000)


@dataclass(frozen=True)
class Studies:
    effects: np.ndarray        # [studies, k]: each seed's paired accuracy difference b - a
    variances: np.ndarray      # [studies, k]: its image-level variance
    level_means: np.ndarray    # [studies, k, levels]: mean difference per difficulty level (for the old method)
    level_counts: np.ndarray   # [studies, levels]: test images per level


def simulate(n_studies: int, k: int, n_images: int, tau: float, delta: float = TRUE_DELTA,
             rng: np.random.Generator | None = None) -> Studies:
    rng = rng or np.random.default_rng(0)
    n_levels = len(LEVELS)
    counts = rng.multinomial(n_images, np.full(n_levels, 1 / n_levels), size=n_studies)   # [S, L]: one test set
    gain = delta + tau * rng.standard_normal((n_studies, k))                               # [S, k]
    pb = np.clip(LEVELS + gain[..., None] * GAIN, 0, 1)                                    # [S, k, L]
    pa = np.broadcast_to(LEVELS, pb.shape)
    only_b = SHARED * np.maximum(pb - pa, 0) + (1 - SHARED) * (1 - pa) * pb
    only_a = SHARED * np.maximum(pa - pb, 0) + (1 - SHARED) * pa * (1 - pb)
    p = np.stack([only_b, only_a, 1 - only_b - only_a], -1)
    drawn = rng.multinomial(np.broadcast_to(counts[:, None, :], pb.shape), p)              # [S, k, L, 3]
    plus, minus = drawn[..., 0], drawn[..., 1]
    mean = (plus.sum(-1) - minus.sum(-1)) / n_images
    second = (plus.sum(-1) + minus.sum(-1)) / n_images
    variance = (second - mean ** 2) / (n_images - 1)
    level_means = (plus - minus) / np.maximum(counts[:, None, :], 1)
    return Studies(mean, variance, level_means, counts)


def two_level_bootstrap(statistic: Callable[..., float], *matrices, n_boot: int = 2000, seed: int = 0,
                        level: float = LEVEL, method: str = "bootstrap over seeds and images") -> Interval:
    """The method `pooling` replaced, kept for the coverage table's comparison row: a percentile bootstrap of
    `statistic(*matrices)` for [seed, image] matrices, each resample drawing seeds and images with replacement.
    With 2 or 3 seeds there are only 3 or 10 distinct seed draws, so the spread between seeds barely enters."""
    arrays = [np.asarray(m, dtype=float) for m in matrices]
    n_seeds, n_images = arrays[0].shape
    estimate = float(statistic(*arrays))
    if n_images < 2:
        return Interval(estimate, math.nan, math.nan, method, n_images)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        s = rng.integers(0, n_seeds, n_seeds)
        i = rng.integers(0, n_images, n_images)
        boots[b] = statistic(*(a[s][:, i] for a in arrays))
    lo, hi = np.nanquantile(boots, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(estimate, float(lo), float(hi), method, n_images)


def two_level_bootstrap_arrays(studies: Studies, n_boot: int = 400, level: float = LEVEL,
                               rng: np.random.Generator | None = None):
    """`two_level_bootstrap` of the mean difference for every simulated study at once. The image draw, shared by
    the seeds, enters through the normal limit of a resampled mean: each seed's mean moves by a joint normal
    with the covariance of the per-image differences (across seeds: through the difficulty levels)."""
    rng = rng or np.random.default_rng(1)
    y, v = studies.effects, studies.variances
    n_studies, k = y.shape
    n = studies.level_counts.sum(-1)
    share = studies.level_counts / n[:, None]                                             # [S, L]
    centred = studies.level_means - y[..., None]                                          # [S, k, L]
    cov = np.einsum("sil,sjl,sl->sij", centred, centred, share) / n[:, None, None]        # between seeds
    idx = np.arange(k)
    cov[:, idx, idx] = v                                                                  # within: each seed's own
    chol = np.linalg.cholesky(cov + 1e-15 * np.eye(k))
    image_draw = np.einsum("sij,sbj->sbi", chol, rng.standard_normal((n_studies, n_boot, k)))
    seed_draw = rng.multinomial(k, np.full(k, 1 / k), size=(n_studies, n_boot))           # [S, B, k]
    boots = (seed_draw * (y[:, None, :] + image_draw)).sum(-1) / k
    lo, hi = np.quantile(boots, [0.5 - level / 2, 0.5 + level / 2], axis=1)
    return y.mean(-1), lo, hi


@dataclass(frozen=True)
class Cell:
    k: int
    tau: float
    n_images: int
    coverage: float            # share of studies whose interval holds the true difference
    half_width: float          # mean half-width
    oracle_half_width: float   # the interval that knows the variances: 1.96 x the estimate's true spread
    adhoc_coverage: float = math.nan   # the textbook max(1, q) correction with the t quantile
    adhoc_half_width: float = math.nan
    old_coverage: float = math.nan     # the replaced bootstrap over seeds and images
    old_half_width: float = math.nan

    @property
    def width_ratio(self) -> float:
        return self.half_width / self.oracle_half_width

    @property
    def adhoc_width_ratio(self) -> float:
        return self.adhoc_half_width / self.oracle_half_width


def coverage_cell(k: int, tau: float, n_images: int, n_studies: int = 4000, old_studies: int = 0,
                  seed: int = 0) -> Cell:
    """One cell of the table; `old_studies` > 0 adds the replaced bootstrap's coverage on that many studies."""
    rng = np.random.default_rng([seed, k, int(tau * 1000), n_images])
    studies = simulate(n_studies, k, n_images, tau, rng=rng)
    mean, lo, hi, _ = pool_arrays(studies.effects, studies.variances)
    _, alo, ahi, _ = pool_arrays(studies.effects, studies.variances, rule="adhoc")
    oracle = float(sps.norm.ppf(0.5 + LEVEL / 2) * mean.std())
    old = (math.nan, math.nan)
    if old_studies:
        sub = Studies(*(a[:old_studies] for a in (studies.effects, studies.variances, studies.level_means,
                                                   studies.level_counts)))
        _, olo, ohi = two_level_bootstrap_arrays(sub, rng=rng)
        old = (_covers(olo, ohi), float(np.mean((ohi - olo) / 2)))
    return Cell(k, tau, n_images, _covers(lo, hi), float(np.mean((hi - lo) / 2)), oracle, _covers(alo, ahi),
                float(np.mean((ahi - alo) / 2)), *old)


def _covers(lo, hi) -> float:
    return float(np.mean((lo <= TRUE_DELTA) & (TRUE_DELTA <= hi)))


def coverage_table(n_studies: int = 4000, old_studies: int = 0) -> list[Cell]:
    return [coverage_cell(k, tau, n, n_studies, old_studies) for k in KS for tau in TAUS for n in NS]
