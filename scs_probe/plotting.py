"""Headless matplotlib and atomic figure files: what every figure of the package (analyses, the tuning study)
stands on."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import seaborn as sns

from .storage import atomic_write

sns.set_theme(style="whitegrid", context="notebook")
__all__ = ["plt", "save", "sns"]


def save(fig, out_dir: Path, stem: str, svg: bool = True) -> Path:
    """Write stem.png (and stem.svg) atomically, close the figure."""
    out_dir = Path(out_dir)
    png = atomic_write(out_dir / f"{stem}.png", lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    if svg:
        atomic_write(out_dir / f"{stem}.svg", lambda f: fig.savefig(f, format="svg", bbox_inches="tight"))
    plt.close(fig)
    return png
