"""How numbers read in the report: accuracies and intervals to 3 decimals, p-values to 2 significant digits,
other measurements to 3 significant digits. Values come from CSV files as strings as often as from code as
floats; anything that is not a number (blank cells, names) passes through unchanged."""

from __future__ import annotations

import math

import numpy as np


def _number(value):
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def fixed(value, digits: int = 3) -> str:
    """0.09049999999999997 -> '0.090'."""
    x = _number(value)
    if x is None:
        return "" if value is None else str(value)
    return "" if math.isnan(x) else f"{x:.{digits}f}"


def signed(value, digits: int = 3) -> str:
    """A difference: '+0.040'."""
    x = _number(value)
    return fixed(value, digits) if x is None or math.isnan(x) else f"{x:+.{digits}f}"


def pvalue(value) -> str:
    """1.7677346087294403e-60 -> '1.8e-60', 0.0312 -> '0.031'."""
    x = _number(value)
    if x is None or math.isnan(x):
        return fixed(value)
    return f"{x:.2g}"


def sig(value, digits: int = 3) -> str:
    """Seconds, norms, learning rates: 3 significant digits, never an exponent of 10 for ordinary sizes."""
    x = _number(value)
    if x is None or math.isnan(x):
        return fixed(value)
    if x == 0 or 1e-3 <= abs(x) < 1e6:
        return np.format_float_positional(x, precision=digits, fractional=False, trim="-")
    return f"{x:.{digits - 1}e}"


def percent(value, digits: int = 1) -> str:
    x = _number(value)
    return fixed(value) if x is None or math.isnan(x) else f"{x:.{digits}%}"


FILTERS = {"fixed": fixed, "signed": signed, "pvalue": pvalue, "sig": sig, "percent": percent}
