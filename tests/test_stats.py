"""Each statistic against a case computed by hand; the pooled interval's coverage by simulation."""

import math

import numpy as np
import pytest

from scs_probe.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    ONE_SEED,
    SUPPORTED,
    Hypothesis,
    Interval,
    binomial_interval,
    mcnemar_exact,
    paired_difference,
    pool_seeds,
    ratio_difference,
    ratio_interval,
    t_interval,
    to_decide,
)
from scs_probe.stats.coverage import (
    LEVELS,
    Studies,
    coverage_cell,
    coverage_table,
    two_level_bootstrap,
    two_level_bootstrap_arrays,
)
from scs_probe.stats.pooling import pool_arrays
from scs_probe.stats.power import images_needed, seeds_needed


def test_t_interval_by_hand():
    # mean 2, sd 1, n 3: half-width t_{0.975, 2} * 1 / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    ci = t_interval([1.0, 2.0, 3.0])
    assert ci.estimate == 2.0 and ci.lo == pytest.approx(2 - 2.484138, abs=1e-5)
    assert ci.hi == pytest.approx(2 + 2.484138, abs=1e-5) and ci.method == "t"
    one = t_interval([0.5])
    assert one.estimate == 0.5 and not one.defined and one.covers(0)


def test_binomial_interval_by_hand():
    # Clopper-Pearson for 0 of 10: [0, 1 - 0.025 ** (1 / 10)] = [0, 0.308497]
    ci = binomial_interval(0, 10)
    assert ci.estimate == 0 and ci.lo == 0 and ci.hi == pytest.approx(0.308497, abs=1e-6)
    ci = binomial_interval(10, 10)
    assert ci.hi == 1 and ci.lo == pytest.approx(0.025 ** 0.1, abs=1e-6)


def test_mcnemar_by_hand():
    # a right / b wrong on 1 item, b right / a wrong on 6: p = 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * 8 / 128
    a = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 0], dtype=bool)
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    m = mcnemar_exact(a, b)
    assert (m.only_a, m.only_b) == (1, 6) and m.p_value == pytest.approx(16 / 128)
    assert mcnemar_exact(a, a).p_value == 1.0


def test_paired_bootstrap_uses_the_pairing():
    """b is a with 200 of 2,000 images flipped to right: the paired interval's half-width is 1.96 x the SD of the
    per-image differences / sqrt(n) (0.0131); resampling a and b apart would give 1.96 x sqrt(var a + var b) /
    sqrt(n) (about 0.031), which this bound rejects."""
    rng = np.random.default_rng(0)
    a = rng.random(2000) < 0.5
    b = a.copy()
    flip = rng.choice(np.flatnonzero(~a), 200, replace=False)
    b[flip] = True
    d = paired_difference(a, b, n_boot=2000)
    assert d.estimate == pytest.approx(0.1)
    paired_half = 1.96 * (b.astype(float) - a).std(ddof=1) / math.sqrt(2000)
    assert (d.hi - d.lo) / 2 == pytest.approx(paired_half, rel=0.12)
    same = paired_difference(a, a, n_boot=200)
    assert same.estimate == 0 and same.lo == 0 == same.hi


def test_ratio_intervals_by_hand():
    # sum 3 / sum 6 = 0.5; influence (num - 0.5 den) / mean den = [0, 0.5, -0.5] / 2: sd 0.25, se 0.25 / sqrt(3)
    ci = ratio_interval([1.0, 2.0, 0.0], [2.0, 3.0, 1.0])
    assert ci.estimate == 0.5 and ci.hi - 0.5 == pytest.approx(1.959964 * 0.25 / math.sqrt(3), rel=1e-5)
    # a mean of per-image ratios would be (0.5 + 0.667 + 0) / 3 = 0.389: not what is asked
    est, var = ratio_difference([1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1])
    # b: 2/3, a: 1/4; influences b: ([1,1,0,0] - 2/3 [1,1,1,0]) / 0.75, a: ([1,0,0,0] - 1/4) / 1
    infl = (np.array([1, 1, 0, 0]) - 2 / 3 * np.array([1, 1, 1, 0])) / 0.75 - (np.array([1, 0, 0, 0]) - 0.25)
    assert est == pytest.approx(2 / 3 - 1 / 4) and var == pytest.approx(infl.var(ddof=1) / 4)


def test_pool_two_seeds_that_disagree_by_hand():
    """+0.02 and +0.06, each with image variance 1e-4 (2,000 images): Paule-Mandel solves
    sum (y - mean)^2 / (v + tau2) = k - 1, i.e. 8e-4 / (1e-4 + tau2) = 1, tau2 = 7e-4; the pooled variance is
    (v + tau2) / 2 = 4e-4 (se 0.02), HKSJ's is the same; t with 1 df: 12.706 x 0.02 = 0.2541."""
    p = pool_seeds([0.02, 0.06], [1e-4, 1e-4], 2000)
    assert p.tau2 == pytest.approx(7e-4, rel=1e-4) and p.k == 2
    assert p.interval.estimate == pytest.approx(0.04)
    assert (p.interval.lo, p.interval.hi) == pytest.approx((0.04 - 0.25412, 0.04 + 0.25412), abs=2e-5)
    assert p.interval.covers(0) and p.effects == (0.02, 0.06)


def test_pool_two_seeds_that_agree_keeps_the_image_noise():
    """Two equal estimates: tau2 = 0 and HKSJ's variance is 0 (the old t interval's false certainty); the
    normal random-effects interval keeps what the images allow: 1.96 x sqrt(1e-4 / 2) = 0.01386."""
    p = pool_seeds([0.03, 0.03], [1e-4, 1e-4], 2000)
    assert p.tau2 == 0
    assert (p.interval.lo, p.interval.hi) == pytest.approx((0.03 - 0.013859, 0.03 + 0.013859), abs=1e-6)


def test_pool_arrays_is_pool_seeds():
    """The coverage simulation's vectorised pool computes what statsmodels computes, seed by seed."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        k = int(rng.integers(2, 9))
        y, v = rng.normal(0.03, 0.03, k), rng.uniform(1e-5, 5e-4, k)
        p = pool_seeds(y, v, 1000)
        mean, lo, hi, tau2 = pool_arrays(y[None], v[None])
        assert [p.interval.estimate, p.interval.lo, p.interval.hi, p.tau2] == pytest.approx(
            [mean[0], lo[0], hi[0], tau2[0]], rel=1e-7, abs=1e-12)


def test_one_seed_is_labelled_image_level():
    p = pool_seeds([0.05], [1e-4], 2000)
    assert p.one_seed and ONE_SEED in p.interval.method and "image-level" in p.interval.method
    assert (p.interval.lo, p.interval.hi) == pytest.approx((0.05 - 0.0196, 0.05 + 0.0196), abs=1e-5)


@pytest.mark.parametrize("side,interval,expected", [
    ("below", (0.004, 0.001, 0.009), SUPPORTED),        # wholly below +0.01 although above 0
    ("below", (0.02, 0.011, 0.03), CONTRADICTED),
    ("below", (0.01, 0.002, 0.012), INCONCLUSIVE),
    ("below", (0.01, 0.01, 0.02), INCONCLUSIVE),        # touching the margin decides nothing
    ("above", (0.02, 0.011, 0.03), SUPPORTED),
    ("above", (-0.02, -0.03, 0.009), CONTRADICTED),
    ("above", (0.01, 0.0, 0.02), INCONCLUSIVE),
    ("above", (0.5, math.nan, math.nan), INCONCLUSIVE),
])
def test_hypothesis_verdicts(side, interval, expected):
    h = Hypothesis("accuracy SCS - conv", side, 0.01, "points")
    assert h.verdict(Interval(*interval, "t", 3)) == expected
    assert h.describe() == f"accuracy SCS - conv {'<' if side == 'below' else '>'} +0.010 (1.0 points)"


def test_power_by_hand():
    # tau2 0, one seed's variance 1e-4, effect 0.01: k with (t_.975 + t_.8)^2 / k <= 1 at k - 1 df:
    # k = 9: (2.306 + 0.889)^2 = 10.2 > 9; k = 10: (2.262 + 0.883)^2 = 9.89 <= 10
    assert seeds_needed(0.01, 0.0, 1e-4) == 10
    # k = 5, effect 0.02, image variance 0.2: (2.776 + 0.941)^2 = 13.82; room 5 * 4e-4 / 13.82 = 1.447e-4
    assert images_needed(0.02, 5, 0.0, 0.2) == pytest.approx(1382, rel=2e-3)
    assert images_needed(0.02, 5, 1e-3, 0.2) == math.inf      # the seeds' spread alone is too wide for 5 seeds


def test_to_decide_names_the_source_to_add():
    h = Hypothesis("accuracy SCS - conv", "below", 0.01, "points")
    # image noise dominates (seeds agree): a bigger test set decides it
    agree = pool_seeds([-0.01, -0.01, -0.01], [4e-4, 4e-4, 4e-4], 500)
    text = to_decide(agree, h, 10000)
    assert text.startswith("add test images: about") and "of the test split's 10,000 (at 3 seeds)" in text
    # the same, when the test split holds no more images
    assert to_decide(agree, h, 500).startswith("cannot be decided with this test set (500 images at 3 seeds)")
    # seeds spread widely: no number of images suffices
    spread = pool_seeds([-0.05, 0.05, 0.0], [1e-5, 1e-5, 1e-5], 2000)
    assert to_decide(spread, h, 10000).startswith("cannot be decided with this test set")
    assert "seeds" in to_decide(spread, h, 10000)
    one = pool_seeds([0.0], [1e-4], 2000)
    assert to_decide(one, h, 10000).startswith(ONE_SEED)
    assert to_decide(pool_seeds([0.01, 0.01], [1e-4] * 2, 100), h, 1000).startswith("the estimate sits on")


def test_pooled_interval_covers_in_every_cell():
    """95 % nominal, >= 93 % in every cell of k seeds x spread tau x test images (4,000 studies a cell: the
    Monte Carlo error is 0.35 points), and useful: at 5 seeds, no spread, 2,000 images, within 1.5x of the
    interval that knows the variances."""
    cells = coverage_table(n_studies=4000)
    low = [c for c in cells if c.coverage < 0.93]
    assert not low, low
    (cell,) = [c for c in cells if (c.k, c.tau, c.n_images) == (5, 0.0, 2000)]
    assert cell.width_ratio < 1.5, cell
    assert cell.adhoc_width_ratio > 1.5  # why not the textbook max(1, q) correction: 1.6x at this cell


def test_the_replaced_bootstrap_undercovers_with_few_seeds():
    """Why it was replaced: resampling 2 seeds and the images together misses a spread between seeds of 0.03
    (10,000 images) in about a quarter of studies."""
    cell = coverage_cell(2, 0.03, 10000, n_studies=600, old_studies=600)
    assert cell.old_coverage < 0.85 < cell.coverage, cell


def test_replaced_bootstrap_arrays_follow_the_loop():
    """The vectorised old method (normal limit of the image draw) against the loop it stands for, on one study
    given per image: seeds 0 and 1 of 3,000 images."""
    rng = np.random.default_rng(4)
    level = rng.integers(0, 16, 3000)
    pa = LEVELS[level]
    a = rng.random((2, 3000)) < pa
    b = rng.random((2, 3000)) < np.clip(pa + np.array([[0.0], [0.06]]), 0, 1)
    d = b.astype(float) - a
    loop = two_level_bootstrap(lambda x: x.mean(), d, n_boot=3000)
    counts = np.bincount(level, minlength=16)
    level_means = np.stack([np.bincount(level, weights=row, minlength=16) / np.maximum(counts, 1) for row in d])
    studies = Studies(d.mean(1)[None], (d.var(1, ddof=1) / 3000)[None], level_means[None], counts[None])
    _, lo, hi = two_level_bootstrap_arrays(studies, n_boot=3000)
    assert (lo[0], hi[0]) == pytest.approx((loop.lo, loop.hi), abs=0.004)
