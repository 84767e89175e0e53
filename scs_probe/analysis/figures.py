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


def run_styles(labels, variants) -> dict:
    """Line style per run label: one colour per variant, not per run. Where a variant has several runs (seeds)
    each is a thin line and only the first carries the legend entry, '<variant> (N seeds)'."""
    from collections import Counter
    counts = Counter(variants)
    pal = variant_palette(list(counts))
    out, seen = {}, set()
    for label, variant in zip(labels, variants):
        several = counts[variant] > 1
        legend = f"{variant} ({counts[variant]} seeds)" if several else variant
        out[label] = {"color": pal[variant], "lw": 0.9 if several else 1.4, "alpha": 0.7 if several else 1.0,
                      "label": "_nolegend_" if variant in seen else legend}
        seen.add(variant)
    return out


def plain_log_axis(ax, axis: str = "y") -> None:
    """A log axis whose ticks read as plain numbers (0.5, 2, 40), not '4.1 x 10^0'; within one decade the
    minor ticks are labelled too (else the axis could hold a single label or none)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from .formatting import sig
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    plain = FuncFormatter(lambda v, _: sig(v, 2))
    target.set_major_formatter(plain)
    target.set_minor_formatter(plain if lo > 0 and hi / lo < 10 else NullFormatter())
