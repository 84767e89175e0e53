"""Figure helpers: headless matplotlib, PNG (+ SVG) output, data URIs for self-contained HTML."""

from __future__ import annotations

import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import seaborn as sns

from ..storage import atomic_write

sns.set_theme(style="whitegrid", context="notebook")


def save(fig, out_dir: Path, stem: str, svg: bool = True) -> Path:
    """Write stem.png (and stem.svg) atomically, close the figure."""
    out_dir = Path(out_dir)
    png = atomic_write(out_dir / f"{stem}.png", lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    if svg:
        atomic_write(out_dir / f"{stem}.svg", lambda f: fig.savefig(f, format="svg", bbox_inches="tight"))
    plt.close(fig)
    return png


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode()


def variant_palette(names) -> dict:
    colors = sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))
    return dict(zip(names, colors))


def integer_epochs(*axes) -> None:
    """Epoch axes tick at whole epochs."""
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
