"""The statistics verdicts rest on: intervals and tests on one sample (`intervals`), pooling over seeds
(`pooling`), claims as tests with margins (`hypotheses`), sample sizes at 80 % power (`power`), and the
simulation that shows the pooled interval's coverage (`coverage`)."""

from .hypotheses import CONTRADICTED, INCONCLUSIVE, NOT_TESTED, SUPPORTED, Hypothesis
from .intervals import (
    LEVEL,
    Interval,
    McNemar,
    binomial_interval,
    bootstrap_interval,
    mcnemar_exact,
    paired_difference,
    ratio_interval,
    t_interval,
)
from .pooling import ONE_SEED, Pooled, paired_mean, pool_paired, pool_seeds, ratio_difference
from .power import to_decide

__all__ = ["CONTRADICTED", "INCONCLUSIVE", "LEVEL", "NOT_TESTED", "ONE_SEED", "SUPPORTED", "Hypothesis",
           "Interval", "McNemar", "Pooled", "binomial_interval", "bootstrap_interval", "mcnemar_exact",
           "paired_difference", "paired_mean", "pool_paired", "pool_seeds", "ratio_difference", "ratio_interval",
           "t_interval",
           "to_decide"]
