"""Figure helpers: headless matplotlib, PNG (+ SVG) output, data URIs for self-contained HTML."""

from __future__ import annotations

import base64
from pathlib import Path

from ..plotting import plt, save, sns

__all__ = ["data_uri", "integer_epochs", "plt", "save", "variant_palette"]


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
