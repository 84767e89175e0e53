"""What would decide an inconclusive verdict, at 80 % power: more seeds or more test images. Both noise
sources count: the pooled estimate's variance is (tau^2 + sigma^2 / n) / k for k seeds of n images each, so
images alone can never beat the spread between seeds, and seeds alone cannot beat an image noise that each
seed repeats. The t quantiles are those of the pooled interval (k - 1 degrees of freedom)."""

from __future__ import annotations

import math

from scipy import stats as sps

from .hypotheses import Hypothesis
from .intervals import LEVEL
from .pooling import ONE_SEED, Pooled

POWER = 0.8
MAX_SEEDS = 1000


def _factor(k: int, level: float, power: float) -> float:
    """(t_{level} + t_{power})^2 at k - 1 degrees of freedom: the variance multiplier 80 % power needs."""
    df = max(k - 1, 1)
    return (sps.t.ppf(0.5 + level / 2, df) + sps.t.ppf(power, df)) ** 2


def seeds_needed(effect: float, tau2: float, image_var: float, level: float = LEVEL,
                 power: float = POWER) -> int | None:
    """Smallest k with power to tell `effect` from the margin when each seed's estimate has variance
    tau2 + image_var; None beyond MAX_SEEDS."""
    per_seed = tau2 + image_var
    for k in range(2, MAX_SEEDS + 1):
        if _factor(k, level, power) * per_seed / k <= effect ** 2:
            return k
    return None


def images_needed(effect: float, k: int, tau2: float, sigma2: float, level: float = LEVEL,
                  power: float = POWER) -> float:
    """Images per seed that give k seeds that power (inf where the spread between seeds alone forbids it);
    sigma2: variance of one image's paired value."""
    room = k * effect ** 2 / _factor(k, level, power) - tau2
    return math.inf if room <= 0 else sigma2 / room


def to_decide(pooled: Pooled, hypothesis: Hypothesis, images_available: int | None = None,
              level: float = LEVEL, power: float = POWER, images: str = "test images") -> str:
    """Which source to add, and about how much. images_available: the test split's size (None: the quantity
    has no images to add, e.g. seconds per epoch); images: what the images are to the analysis (saliency
    images, attacked images: the setting a user raises)."""
    est = pooled.interval.estimate
    effect = abs(est - hypothesis.margin)
    if not math.isfinite(effect) or not math.isfinite(pooled.within):
        return "needs an estimate with its noise"
    if effect == 0:
        return "the estimate sits on the margin: no sample size decides it"
    n = max(pooled.n_images, 1)
    tau2 = 0.0 if pooled.one_seed else max(pooled.tau2, 0.0)
    k_more = seeds_needed(effect, tau2, pooled.within, level, power)
    seeds = f"about {k_more:,} in all" if k_more else f"more than {MAX_SEEDS:,}"
    if pooled.one_seed:
        return (f"{ONE_SEED}: add seeds ({seeds} at {power:.0%} power if seeds spread no more than the "
                f"{n:,} images do)")
    if images_available is None:
        return f"add seeds: {seeds} ({power:.0%} power)"
    needed = images_needed(effect, pooled.k, tau2, pooled.within * n, level, power)
    if needed > images_available:
        return (f"cannot be decided with this test set ({images_available:,} images at {pooled.k} seeds): "
                f"add seeds, {seeds} ({power:.0%} power)")
    return (f"add {images}: about {max(math.ceil(needed), n + 1):,} of the test split's {images_available:,} (at "
            f"{pooled.k} seeds), or seeds: {seeds} at these {n:,} images ({power:.0%} power)")
