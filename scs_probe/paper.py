"""The study's published results (Wu et al. 2022, Tables 1-8), shipped with the package, and how its tables
spell each variant axis."""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources

# paper spelling -> axis value, per axis (and the paper's column for it)
PAPER_NAMES = {
    "layer": ("layer", {"Conv2d": "conv", "SCS": "scs", "SharpenedSDP": "sdp"}),
    "activation": ("activation", {"ReLU": "relu", "None": "none"}),
    "pool": ("pooling", {"MaxPool2d": "max", "MaxAbsPool2d": "maxabs"}),
    "norm": ("normalization", {"BatchNorm2d": "bn", "None": "none"}),
}


@lru_cache(maxsize=1)
def paper_rows() -> tuple[dict, ...]:
    with resources.files("scs_probe.resources").joinpath("paper_tables.csv").open() as f:
        return tuple(csv.DictReader(f))


def paper_table(architecture: str) -> list[dict]:
    """Rows of every table for one architecture as the paper names it (e.g. 'Rohrer100K', 'ResNet18')."""
    return [r for r in paper_rows() if r["architecture"] == architecture]


def paper_axes(row: dict) -> dict:
    """A published row's variant axes in scs-probe's values."""
    axes = {axis: names[row[column]] for axis, (column, names) in PAPER_NAMES.items()}
    return {**axes, "image_size": int(row["image_size"].split("x")[0])}


def published_row(architecture: str, axes: dict, experiment: str | None = None) -> dict | None:
    """The study's row for the same architecture (paper name) and axes, from `experiment` ('initial' or
    'followup') where given, else the latest table that has it."""
    want = {k: axes[k] for k in (*PAPER_NAMES, "image_size")}
    hits = [r for r in paper_table(architecture) if paper_axes(r) == want
            and (experiment is None or r["experiment"] == experiment)]
    return hits[-1] if hits else None


def experiments() -> tuple[str, ...]:
    return tuple(dict.fromkeys(r["experiment"] for r in paper_rows()))
