"""Pooling a paired effect over seeds. Each seed is a study with its own estimate and image-level standard
error; seeds are pooled by random effects (Paule-Mandel tau^2) and the interval is the wider of the
Hartung-Knapp-Sidik-Jonkman interval (t, k - 1 df) and the normal random-effects one (Jackson et al. 2017).

Why this variant: HKSJ alone is falsely narrow when a few seeds happen to agree; the ad hoc max(1, q) correction
(Röver, Knapp, Friede 2015) fixes that with the t quantile, which at 5 seeds and no spread between them costs
1.6x the width an interval knowing the variances needs. Taking the wider of HKSJ and the normal interval keeps
the image noise in (two agreeing seeds get at least the image-level width), holds 95 % coverage in every cell of
`coverage.coverage_table` and stays within 1.4x of that oracle (benchmarks/README.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from .intervals import LEVEL, Interval

ONE_SEED = "1 seed cannot separate the architecture from the seed"


@dataclass(frozen=True)
class Pooled:
    """A pooled effect: its interval, and the noise it rests on (what `power` projects from)."""

    interval: Interval
    k: int              # seeds
    n_images: int       # images each seed's estimate rests on (the smallest)
    tau2: float         # between-seed variance (Paule-Mandel; nan for 1 seed)
    within: float       # mean variance of one seed's estimate from its images
    effects: tuple = ()  # per-seed estimates, for tables and forest plots

    @property
    def one_seed(self) -> bool:
        return self.k < 2


def paired_mean(values) -> tuple[float, float]:
    """Mean of per-image paired values (e.g. b correct - a correct) and the variance of that mean."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else math.nan, math.nan
    return float(x.mean()), float(x.var(ddof=1) / len(x))


def ratio_difference(num_b, den_b, num_a, den_a) -> tuple[float, float]:
    """mean(num_b) / mean(den_b) - mean(num_a) / mean(den_a) on the same images (e.g. robust over clean
    accuracy) and its variance by the delta method: each image's influence on the two ratios, paired."""
    nb, db, na, da = (np.asarray(v, dtype=float) for v in (num_b, den_b, num_a, den_a))
    mb, ma = max(db.mean(), 1e-12), max(da.mean(), 1e-12)
    rb, ra = nb.mean() / mb, na.mean() / ma
    influence = (nb - rb * db) / mb - (na - ra * da) / ma
    return float(rb - ra), paired_mean(influence)[1]


def _floor(variances: np.ndarray) -> np.ndarray:
    """An image-level variance of 0 (every image agrees) would give a seed infinite weight: floor it at one
    discordant image's worth."""
    return np.maximum(variances, 1e-12)


def paule_mandel(effects, variances, atol: float = 1e-5, maxiter: int = 50) -> np.ndarray:
    """Paule-Mandel tau^2 of every row of [..., k] arrays: the iteration statsmodels' `combine_effects` runs
    (DerSimonian and Kacker 2007), vectorised."""
    y, v = np.asarray(effects, dtype=float), np.asarray(variances, dtype=float)
    k = y.shape[-1]
    tau2 = np.zeros(y.shape[:-1])
    active = np.ones(y.shape[:-1], dtype=bool)
    for _ in range(maxiter):
        w = 1 / (v + tau2[..., None])
        resid2 = (y - ((w * y).sum(-1) / w.sum(-1))[..., None]) ** 2
        ee = (w * resid2).sum(-1) - (k - 1)
        tau2 = np.where(active & (ee < 0), 0.0, tau2)
        active &= (ee >= 0) & (np.abs(ee) > atol)
        if not active.any():
            break
        tau2 = np.where(active, tau2 + ee / np.maximum((w ** 2 * resid2).sum(-1), 1e-300), tau2)
    return tau2


def pool_arrays(effects, variances, level: float = LEVEL, rule: str = "wider"):
    """The pooled estimate, lower and upper bound and tau^2 for every row of [..., k] arrays at once (the
    coverage simulation's path; `pool_seeds` computes the same through statsmodels, a test checks they agree).
    rule "adhoc": the textbook max(1, q) correction instead (t quantile on the larger variance), for comparison."""
    y, v = np.asarray(effects, dtype=float), _floor(np.asarray(variances, dtype=float))
    k = y.shape[-1]
    tau2 = paule_mandel(y, v)
    w = 1 / (v + tau2[..., None])
    mean = (w * y).sum(-1) / w.sum(-1)
    var_re = 1 / w.sum(-1)
    var_hksj = (w * (y - mean[..., None]) ** 2).sum(-1) / ((k - 1) * w.sum(-1))
    t = sps.t.ppf(0.5 + level / 2, k - 1)
    if rule == "adhoc":
        half = t * np.sqrt(np.maximum(var_hksj, var_re))
    else:
        half = np.maximum(t * np.sqrt(var_hksj), sps.norm.ppf(0.5 + level / 2) * np.sqrt(var_re))
    return mean, mean - half, mean + half, tau2


def method_name(k: int, n_images: int, unit: str = "images") -> str:
    if k < 2:
        return f"{unit[:-1]}-level only: {ONE_SEED} ({n_images:,} {unit})"
    return f"random effects over {k} seeds (HKSJ t {k - 1} df or normal, the wider; {n_images:,} {unit} each)"


def pool_seeds(effects, variances, n_images: int, level: float = LEVEL, unit: str = "images") -> Pooled:
    """Pool per-seed estimates with their image-level variances. One seed: its own normal interval over test
    images, labelled as such (nothing is known of the spread between seeds)."""
    y = np.asarray(effects, dtype=float)
    v = _floor(np.asarray(variances, dtype=float))
    k = len(y)
    method = method_name(k, n_images, unit)
    if k == 0:
        return Pooled(Interval(math.nan, math.nan, math.nan, method, 0), 0, n_images, math.nan, math.nan)
    if k == 1:
        half = float(sps.norm.ppf(0.5 + level / 2) * math.sqrt(v[0])) if math.isfinite(v[0]) else math.nan
        return Pooled(Interval(float(y[0]), y[0] - half, y[0] + half, method, n_images), 1, n_images, math.nan,
                      float(v[0]), (float(y[0]),))
    from statsmodels.stats.meta_analysis import combine_effects
    with np.errstate(divide="ignore", invalid="ignore"):  # its I^2 divides by q, 0 when the seeds agree
        res = combine_effects(y, v, method_re="iterated", use_t=True, alpha=1 - level)
    _, _, _, hksj = res.conf_int(use_t=True)
    _, normal, _, _ = res.conf_int(use_t=False)
    lo, hi = min(hksj[0], normal[0]), max(hksj[1], normal[1])
    return Pooled(Interval(float(res.mean_effect_re), float(lo), float(hi), method, k), k, n_images,
                  float(res.tau2), float(v.mean()), tuple(float(e) for e in y))


def pool_paired(diffs_by_seed) -> Pooled:
    """Pool per-image paired values given per seed (a list of 1-D arrays, one per seed, on the same images)."""
    stats = [paired_mean(d) for d in diffs_by_seed]
    n = min((len(d) for d in diffs_by_seed), default=0)
    return pool_seeds([m for m, _ in stats], [v for _, v in stats], n)
