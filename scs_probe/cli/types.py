"""Command-line value types: text -> the library's values (eps lists, index lists, class lists). A text that
does not parse is a usage error naming its flag, as click's own types give."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from pathlib import Path

import click
import numpy as np

from ..choices import SEED_MAX


def parse_eps_value(text: str) -> float:
    """'0.03', '8/255' -> float (range checks belong to the analysis' config)."""
    t = text.strip()
    try:
        value = float(Fraction(t)) if "/" in t else float(t)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"bad value {text!r}: use a number or a fraction like 8/255") from None
    if not np.isfinite(value):
        raise ValueError(f"bad value {text!r}: not finite")
    return value


EPS_NUM_MAX = 1000  # eps values of one --eps-range: each is a full attack of every model


def _blank(value) -> bool:
    return isinstance(value, str) and not value.strip()


class _Parsed(click.ParamType):
    """A click type from a `parse(text)` that raises ValueError with a message."""

    def parse(self, text: str):
        raise NotImplementedError

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class EpsValue(_Parsed):
    name = "eps"

    def parse(self, text):
        return parse_eps_value(text)


class EpsRange(_Parsed):
    """'START:STOP:NUM' -> NUM evenly spaced values from START to STOP inclusive (numpy.linspace)."""
    name = "START:STOP:NUM"

    def parse(self, text):
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"takes START:STOP:NUM, got {text!r}")
        start, stop = parse_eps_value(parts[0]), parse_eps_value(parts[1])
        try:
            num = int(parts[2])
        except ValueError:
            raise ValueError(f"NUM must be an integer, got {parts[2]!r}") from None
        if not 1 <= num <= EPS_NUM_MAX:
            raise ValueError(f"NUM must be from 1 to {EPS_NUM_MAX}, got {num}")
        if stop < start:
            raise ValueError(f"STOP ({parts[1]}) is below START ({parts[0]})")
        if stop == start and num > 1:
            raise ValueError(f"START and STOP are equal: {num} values would be one eps {num} times")
        return tuple(float(v) for v in np.linspace(start, stop, num))


class EpsList(_Parsed):
    """'0,2/255,8/255' -> sorted unique values."""
    name = "LIST"

    def parse(self, text):
        values = [parse_eps_value(t) for t in text.split(",") if t.strip()]
        if not values:
            raise ValueError("needs at least one value")
        return tuple(sorted(set(values)))


class IndexList(_Parsed):
    """'3,1,7' -> (3, 1, 7), in the given order; a repeat is refused (an image would count twice in a mean)."""
    name = "INDICES"

    def parse(self, text):
        try:
            idx = tuple(int(t) for t in text.split(",") if t.strip())
        except ValueError:
            raise ValueError(f"takes comma-separated integers, got {text!r}") from None
        if not idx or any(i < 0 or i > SEED_MAX for i in idx):
            raise ValueError(f"takes integers from 0 to {SEED_MAX}, got {text!r}")
        twice = sorted(i for i, n in Counter(idx).items() if n > 1)
        if twice:
            raise ValueError(f"names {', '.join(map(str, twice))} more than once")
        return idx


class ClassList(_Parsed):
    """'cat,dog' or '3,5' -> class indices (int) and names (str), names resolved against the data set's classes
    when the images are drawn."""
    name = "CLASSES"

    def parse(self, text):
        out = [int(t) if t.isdigit() else t.lower() for t in (t.strip() for t in text.split(",")) if t]
        if not out:
            raise ValueError("names no class")
        return tuple(out)


class PositiveRange(_Parsed):
    """'LOW:HIGH' -> (low, high) floats with 0 < LOW < HIGH <= `max`: a search range whose ends a float32 model
    can use (inf, or 1e300, would overflow inside the search)."""
    name = "LOW:HIGH"

    def __init__(self, max: float):
        self.max = max

    def parse(self, text):
        parts = text.split(":")
        if len(parts) != 2:
            raise ValueError(f"takes LOW:HIGH, got {text!r}")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"takes two numbers LOW:HIGH, got {text!r}") from None
        if not (0 < low < high <= self.max):
            raise ValueError(f"needs 0 < LOW < HIGH <= {self.max:g}, got {text!r}")
        return low, high


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange that also refuses nan and inf (which every comparison of a range lets through or
    reports as out of range with a confusing bound)."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return value


class PatternList(_Parsed):
    """'a,b*' -> ('a', 'b*')."""
    name = "PATTERNS"

    def parse(self, text):
        patterns = tuple(p.strip() for p in text.split(",") if p.strip())
        if not patterns:  # an empty --only "$VAR" must not widen to the whole grid
            raise ValueError(f"names nothing: {text!r}")
        return patterns


def blocking_file(path) -> Path | None:
    """The first folder above `path` that exists but is a file: nothing can be written there."""
    return next((q for q in Path(path).parents if q.exists() and not q.is_dir()), None)


class Name(click.ParamType):
    """Text that names something (a study, a model spec, a data set, a storage URL): empty or blank is refused, as
    the code reading it would take it for not given and fall back to the default without a word."""
    name = "TEXT"

    def convert(self, value, param, ctx):
        if _blank(value):
            self.fail("is empty", param, ctx)
        return value


class GivenPath(click.Path):
    """click's Path, refusing an empty or blank value: Path('') is the current folder, and the code reading an
    empty option takes it for not given (the default output, data folder or weights) without a word."""

    def convert(self, value, param, ctx):
        if _blank(value):
            self.fail("is empty: name a path", param, ctx)
        return super().convert(value, param, ctx)


class OutPath(GivenPath):
    """A path for an output, refused at parse time (before any training or analysis) when empty or a folder above
    it is a file: the error would otherwise come after all the work, as a traceback."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        blocker = blocking_file(value)
        if blocker is not None:
            self.fail(f"{str(value)!r} lies under {str(blocker)!r}, which is a file, not a folder", param, ctx)
        return value
