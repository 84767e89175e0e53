"""Each statistic against a case computed by hand."""

import math

import numpy as np
import pytest

from scs_probe.stats import (
    binomial_interval,
    bootstrap_interval,
    items_to_decide,
    mcnemar_exact,
    paired_difference,
    t_interval,
)


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


def test_paired_bootstrap_of_a_known_difference():
    rng = np.random.default_rng(0)
    a = rng.random(2000) < 0.5
    b = a.copy()
    flip = rng.choice(2000, 200, replace=False)  # b gets 200 items right that a got wrong
    a[flip], b[flip] = False, True
    d = paired_difference(a, b, n_boot=1000)
    assert d.estimate == pytest.approx(b.mean() - a.mean())
    assert d.lo > 0 and d.lo < d.estimate < d.hi and not d.covers(0)
    # pairing matters: the paired interval is narrower than one that treats the samples as independent
    unpaired = bootstrap_interval(lambda x: x.mean(), b.astype(float), n_boot=1000)
    assert d.hi - d.lo < 2 * (unpaired.hi - unpaired.lo)
    same = paired_difference(a, a, n_boot=200)
    assert same.estimate == 0 and same.lo == 0 == same.hi


def test_items_to_decide():
    from scs_probe.stats import Interval
    assert items_to_decide(Interval(0.01, -0.01, 0.03, "bootstrap", 100)) == 400  # half-width 0.02: 4x the items
    # a t interval over 2 seeds: scale its half-width by z / t(1) before projecting (12.7 would say 1,292 seeds)
    assert items_to_decide(t_interval([-0.01, 0.03])) == 31
    assert items_to_decide(Interval(0.9, 0.0, 1.0, "bootstrap", 8)) is None  # lopsided, not a sample-size matter
    assert items_to_decide(Interval(0.05, 0.01, 0.09, "t", 100)) is None  # already decided
    assert items_to_decide(Interval(0.0, -0.01, 0.01, "t", 100)) is None
    assert items_to_decide(Interval(0.1, math.nan, math.nan, "t", 1)) is None
