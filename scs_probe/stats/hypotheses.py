"""A claim as a test with a margin: it holds on one side of the margin. Supported when the whole interval lies
on the claim's side, contradicted when the whole interval lies beyond it, inconclusive otherwise."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .intervals import Interval

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED = "supported", "contradicted", "inconclusive", "not tested"
UNITS = ("points", "log ratio", "value")


@dataclass(frozen=True)
class Hypothesis:
    quantity: str        # what the interval estimates, e.g. "accuracy SCS - conv"
    side: str            # "below" or "above": where the claim holds relative to the margin
    margin: float
    unit: str = "value"  # how the margin reads: accuracy points, a ratio (of a log-scale estimate), a value

    def __post_init__(self):
        if self.side not in ("below", "above") or self.unit not in UNITS:
            raise ValueError(f"side must be below/above and unit one of {UNITS}, got {self.side!r}, {self.unit!r}")

    def show(self, value: float) -> str:
        if self.unit == "points":  # in the evidence's unit (a fraction), with the points it means
            return f"{value:+.3f} ({abs(value) * 100:.1f} points)"
        if self.unit == "log ratio":  # estimated on the log scale, read as a ratio
            return f"{math.exp(value):.2f}x"
        return f"{value:+.3f}"

    def describe(self) -> str:
        """The hypothesis as the table shows it, e.g. 'accuracy SCS - conv < +0.010 (1.0 points)'."""
        return f"{self.quantity} {'<' if self.side == 'below' else '>'} {self.show(self.margin)}"

    def verdict(self, ci: Interval) -> str:
        if not ci.defined:
            return INCONCLUSIVE
        below, above = ci.hi < self.margin, ci.lo > self.margin
        if self.side == "above":
            below, above = above, below
        return SUPPORTED if below else CONTRADICTED if above else INCONCLUSIVE
