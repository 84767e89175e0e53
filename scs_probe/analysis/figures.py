"""Figure helpers: headless matplotlib, PNG (+ SVG) output, data URIs for self-contained HTML."""

from __future__ import annotations

import base64
from pathlib import Path

from matplotlib.ticker import Locator

from ..plotting import plt, save, sns

__all__ = ["data_uri", "integer_epochs", "legend_below", "plain_log_axis", "plt", "run_styles", "save", "seed_band",
           "shorten", "variant_palette"]


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


def plain_number(value) -> str:
    """A tick label: 0.5, 2, 40, 1e-4 (never '1.0e-04' nor '4.1 x 10^0')."""
    from .formatting import sig
    v = float(value)
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return sig(v, 2)
    mantissa, exponent = f"{v:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


# tick candidates within a decade, sparsest first: the first set that gives 3 ticks or more in view is used
_LOG_SUBS = ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0), tuple(range(1, 10)),
             tuple(x / 2 for x in range(2, 20)))


def _log_ticks(lo: float, hi: float, most: int = 7) -> list[float]:
    import math
    if not (lo > 0 and hi > lo and math.isfinite(hi)):
        return []
    fewest: list[float] = []
    for subs in _LOG_SUBS:
        ticks = [s * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                 for s in subs if lo * (1 - 1e-9) <= s * 10.0 ** e <= hi * (1 + 1e-9)]
        if len(ticks) > most:  # denser sets only add more: thin these to every k-th decade (or tick)
            step = math.ceil(len(ticks) / most)
            return ticks[::step] if not fewest else fewest
        fewest = ticks
        if len(ticks) >= 3:
            return ticks
    return fewest


class PlainLogLocator(Locator):
    """Ticks of a log axis at plain numbers (1, 2, 5, 10, ...; within one decade 2.5, 3, 3.5, ...), 3 to `most`
    of them whatever the range; computed when drawn, so later changes of the limits keep them right."""

    def __init__(self, most: int = 7):
        self.most = most

    def __call__(self):
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin, vmax):
        return _log_ticks(min(vmin, vmax), max(vmin, vmax), self.most)


def plain_log_axis(ax, axis: str = "y") -> None:
    """A log axis whose ticks read as plain numbers (0.5, 2, 40, 1e-4), 3 to 7 of them, labelled alike (major
    ticks only, one font size): never a single label, nor a stack of crowded ones."""
    from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log", nonpositive="mask")
    target.set_major_locator(PlainLogLocator())
    target.set_major_formatter(FuncFormatter(lambda v, _: plain_number(v)))
    target.set_minor_locator(NullLocator())
    target.set_minor_formatter(NullFormatter())


def shorten(text: str, most: int = 28) -> str:
    """A name cut in the middle to `most` characters ('layer1.0.conv1' stays, 'features.denseblock4...conv2'
    is cut), for titles and ticks of small panels."""
    text = str(text)
    if len(text) <= most:
        return text
    head = (most - 1) // 2
    return f"{text[:head]}\u2026{text[len(text) - (most - 1 - head):]}"


def seed_band(ax, x, curves, color, label: str, marker: str = "o", linestyle: str = "-", band: bool = True):
    """Curves of one variant (a row per seed, on the same x): one seed is a plain line; several are thin lines,
    their mean a thick one and the range over seeds a band, all in the variant's colour. Returns the mean's
    line (its legend entry)."""
    import numpy as np
    curves = np.atleast_2d(np.asarray(curves, dtype=float))
    if len(curves) == 1:
        return ax.plot(x, curves[0], color=color, lw=1.6, marker=marker, ms=3.5, linestyle=linestyle,
                       label=label)[0]
    for c in curves:
        ax.plot(x, c, color=color, lw=0.7, alpha=0.45, linestyle=linestyle, label="_nolegend_")
    if band:
        ax.fill_between(x, np.nanmin(curves, 0), np.nanmax(curves, 0), color=color, alpha=0.15, linewidth=0)
    return ax.plot(x, np.nanmean(curves, 0), color=color, lw=2.0, marker=marker, ms=3.5, linestyle=linestyle,
                   label=label)[0]


def legend_below(fig, handles, labels, ncol: int | None = None, fontsize: float = 8):
    """One legend for the whole figure, under its axes (constrained layout makes room): never over the data."""
    if not handles:
        return None
    ncol = ncol or min(len(labels), 2 if max(map(len, labels)) > 45 else 3)
    return fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=fontsize, frameon=False)
