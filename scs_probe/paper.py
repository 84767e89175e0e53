"""The study's published results (Wu et al. 2022, Tables 1-8), shipped with the package."""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def paper_rows() -> tuple[dict, ...]:
    with resources.files("scs_probe.resources").joinpath("paper_tables.csv").open() as f:
        return tuple(csv.DictReader(f))


def paper_table(architecture: str) -> list[dict]:
    """Rows of every table for one architecture as the paper names it (e.g. 'Rohrer100K', 'ResNet18')."""
    return [r for r in paper_rows() if r["architecture"] == architecture]
