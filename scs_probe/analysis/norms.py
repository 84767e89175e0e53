"""Weight/gradient L2 norms per layer and learned exponents p, from the records `scs-probe train` writes."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import NoRunsError, RecordError
from ..rundir import RECORDS, RunDir
from ..storage import atomic_write
from .base import Analysis, AnalysisConfig, AnalysisResult, Context


@dataclass(frozen=True)
class NormsConfig(AnalysisConfig):
    """No options: the figures show every record the runs hold."""


def load_records(runs: list[RunDir]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """norms and exponents of every run, with a `run` column."""
    from .sources import run_labels
    norms, exps = [], []
    for run, name in zip(runs, run_labels(runs)):
        if not run.has_record("norms"):
            raise NoRunsError(f"{run.path} is not a run directory (no norms record)")
        n = _frame(run, "norms", {"epoch": int, "l2": float, "batch": "string"})
        if n.empty:  # training records the norms before its first epoch: the file was cut or emptied
            raise RecordError(f"{run.record_path('norms')}: holds no norms (a run records them from epoch 0: the "
                              "file was cut or emptied)")
        n["batch"] = n["batch"].replace("", pd.NA)
        norms.append(n.assign(run=name, variant=run.name))
        e = _frame(run, "exponents", {"epoch": int, "channel": int, "p": float})
        if not e.empty:
            exps.append(e.assign(run=name))
    norms = pd.concat(norms, ignore_index=True)
    exps = pd.concat(exps, ignore_index=True) if exps else pd.DataFrame(columns=["epoch", "layer", "channel", "p",
                                                                                  "run"])
    return norms, exps


def _frame(run: RunDir, record: str, types: dict) -> pd.DataFrame:
    """A record as a typed frame; one cut mid-line or holding other than numbers where numbers belong (an integer
    batch, where given) is a RecordError naming it, not a traceback from pandas."""
    try:
        rows = run.read(record)
        if any(None in r or None in r.values() for r in rows):  # a line cut short (pandas would make it nan)
            raise ValueError("fields missing or extra")
        frame = pd.DataFrame(rows, columns=RECORDS[record]).astype(types)
        if "batch" in frame:
            frame["batch"].replace("", pd.NA).dropna().astype(int)
    except (OSError, csv.Error, TypeError, ValueError) as e:
        raise RecordError(f"{run.record_path(record)}: unreadable or malformed (a row cut or not numbers: "
                          f"{type(e).__name__})") from None
    return frame


MAX_PANELS = 6  # layers shown as small multiples (evenly spaced from first to last where a model has more)


def _shown_layers(layers: list[str]) -> list[str]:
    if len(layers) <= MAX_PANELS:
        return layers
    return [layers[round(k * (len(layers) - 1) / (MAX_PANELS - 1))] for k in range(MAX_PANELS)]


def _variant_curves(d: pd.DataFrame, x: str, runs: list[str]):
    """(x values, [run, x] array of l2, nan where a run lacks that x) for the runs given."""
    table = d.pivot_table(index="run", columns=x, values="l2", aggfunc="mean").reindex(runs)
    return table.columns.to_numpy(), table.to_numpy(dtype=float)


def _mark_zeros(ax, x, curves, color, small: bool = False) -> bool:
    """A norm of exactly 0 (no gradient: dead units) has no place on a log axis: a triangle on the bottom edge
    says where it is (small: many x, as mini-batches are). Returns whether there was one."""
    import numpy as np
    zero = np.asarray(curves == 0).any(axis=0)
    if zero.any():
        ax.plot(np.asarray(x)[zero], [0.0] * int(zero.sum()), linestyle="none", marker="v", ms=3 if small else 6,
                mew=0, color=color, transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)
    return bool(zero.any())


def _norm_grid(d: pd.DataFrame, x: str, out: Path, stem: str, title: str, per_run: bool):
    """Weight (top row) and gradient (bottom row) norms, a column per layer (at most MAX_PANELS), one colour
    per variant; per_run: every run a thin line (mini-batches), else each variant's seeds as thin lines with
    their mean and range."""
    import numpy as np

    from .figures import integer_epochs, legend_below, plain_log_axis, plt, save, seed_band, shorten, variant_palette
    layers = _shown_layers(list(dict.fromkeys(d["layer"])))
    runs = list(dict.fromkeys(d["run"]))
    variant_of = dict(zip(d["run"], d["variant"]))
    variants = list(dict.fromkeys(variant_of[r] for r in runs))
    pal = variant_palette(variants)
    width = max(2.5 * len(layers) + 0.9, 6.0)
    fig, axes = plt.subplots(2, len(layers), figsize=(width, 5.2), squeeze=False, sharex="col",
                             layout="constrained")
    handles, zeros = {}, False
    for row, kind in enumerate(("weight", "grad")):
        for col, layer in enumerate(layers):
            ax = axes[row, col]
            sel = d[(d["kind"] == kind) & (d["layer"] == layer)]
            for variant in variants:
                mine = [r for r in runs if variant_of[r] == variant and r in set(sel["run"])]
                if not mine:
                    continue
                xs, curves = _variant_curves(sel, x, mine)
                label = f"{variant} ({len(mine)} seeds: mean, band = range)" if len(mine) > 1 and not per_run \
                    else variant
                if per_run:
                    for c in curves:
                        line = ax.plot(xs, np.where(c > 0, c, np.nan), color=pal[variant], lw=0.6, alpha=0.7,
                                       label=label)[0]
                else:
                    line = seed_band(ax, xs, np.where(curves > 0, curves, np.nan), pal[variant], label)
                handles.setdefault(label, line)
                zeros |= _mark_zeros(ax, xs, curves, pal[variant], small=per_run)
            plain_log_axis(ax)
            ax.tick_params(which="both", labelsize=7)
            if row == 0:
                ax.set_title(shorten(layer, 24), fontsize=9)
            if row == 1:
                ax.set_xlabel(x if x != "step" else "mini-batch (global step)", fontsize=8)
                if x == "epoch":
                    integer_epochs(ax)
    axes[0, 0].set_ylabel("weight L2 norm", fontsize=8)
    axes[1, 0].set_ylabel("grad L2 norm" + ("\n(mean over the epoch's batches)" if x == "epoch" else ""), fontsize=8)
    zero_note = ("; \u25bc on the bottom edge: a norm of 0 (no gradient"
                 + ("" if per_run else "; left out of the mean") + ")")
    fig.suptitle(title + (zero_note if zeros else ""), fontsize=10)
    legend_below(fig, list(handles.values()), list(handles))
    return save(fig, out, stem)


def plot_norms(norms: pd.DataFrame, out: Path):
    """Per-epoch weight (top row) and gradient (bottom row) norms as small multiples: a column per layer, a
    colour per variant (its seeds thin, their mean thick, the range a band), the legend below the panels."""
    per_epoch = norms[norms["batch"].isna() | (norms["batch"] == "")]
    shown = len(_shown_layers(list(dict.fromkeys(per_epoch["layer"]))))
    layers = per_epoch["layer"].nunique()
    return _norm_grid(per_epoch, "epoch", out, "norms", "L2 norms per epoch (log scale)"
                      + (f"; {shown} of {layers} layers, evenly spaced" if shown < layers else ""), per_run=False)


def plot_batch_norms(norms: pd.DataFrame, out: Path):
    """Per-mini-batch norms where recorded (TrainOptions.norms_every_batch), against the global step: the same
    grid as `plot_norms`, every run a thin line."""
    d = norms[norms["batch"].notna() & (norms["batch"] != "")].copy()
    if d.empty:
        return None
    d["batch"] = d["batch"].astype(int)
    per_epoch = d.groupby(["run", "epoch"])["batch"].max().add(1).groupby(level=0).cumsum()
    offsets = per_epoch.groupby(level=0).shift(fill_value=0)
    d["step"] = d["batch"] + [offsets.loc[(r, e)] for r, e in zip(d["run"], d["epoch"])]
    return _norm_grid(d, "step", out, "norms_per_batch", "L2 norms per mini-batch (log scale; each run a line)",
                      per_run=True)


def plot_exponents(exps: pd.DataFrame, out: Path):
    """p per kernel over epochs, a row per run: the first sharpened layer's kernels one line each (left), every
    sharpened layer's mean +- sd over its kernels (right, layers side by side at each epoch)."""
    import numpy as np

    from .figures import integer_epochs, legend_below, plt, save, shorten
    if exps.empty:
        return None
    runs = list(dict.fromkeys(exps["run"]))
    layers = list(dict.fromkeys(exps["layer"]))
    colors = dict(zip(layers, plt.get_cmap("viridis")(np.linspace(0, 0.85, len(layers)))))
    fig, axes = plt.subplots(len(runs), 2, figsize=(10, 2.7 * len(runs) + 0.9), squeeze=False, sharey=True,
                             layout="constrained")
    handles = {}
    for i, run in enumerate(runs):
        e = exps[exps["run"] == run]
        first = e["layer"].iloc[0]
        kernels = e[e["layer"] == first].pivot_table(index="epoch", columns="channel", values="p")
        axes[i, 0].plot(kernels.index, kernels.to_numpy(), color="tab:blue", lw=0.6, alpha=0.45)
        axes[i, 0].set_title(f"{shorten(first, 20)}: p of each of its {kernels.shape[1]} kernels", fontsize=8)
        mine = [layer for layer in layers if layer in set(e["layer"])]
        width = 0.5 / max(len(mine), 1)
        for k, layer in enumerate(mine):
            stats = e[e["layer"] == layer].groupby("epoch")["p"].agg(["mean", "std"])
            x = stats.index.to_numpy() + (k - (len(mine) - 1) / 2) * width
            h = axes[i, 1].errorbar(x, stats["mean"], yerr=stats["std"].fillna(0), color=colors[layer], marker="o",
                                    ms=3.5, lw=1.2, capsize=2, elinewidth=0.8)
            handles.setdefault(shorten(layer, 24), h)
        axes[i, 1].set_title("p per layer: mean \u00b1 sd over its kernels", fontsize=8)
        axes[i, 0].set_ylabel(f"{shorten(run, 34)}\np", fontsize=8)
        for ax in axes[i]:
            ax.tick_params(labelsize=7)
            integer_epochs(ax)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    fig.suptitle("Learned exponents p of the sharpened layers", fontsize=10)
    legend_below(fig, list(handles.values()), [f"layer {name}" for name in handles],
                 ncol=min(len(handles), 6))
    return save(fig, out, "exponents")


def summary(norms: pd.DataFrame, exps: pd.DataFrame) -> pd.DataFrame:
    """Per run and layer: first and last per-epoch weight norm and mean grad norm, and final mean p."""
    per_epoch = norms[norms["batch"].isna() | (norms["batch"] == "")]
    rows = []
    for (run, layer), d in per_epoch.groupby(["run", "layer"], sort=False):
        w = d[d["kind"] == "weight"].sort_values("epoch")
        g = d[d["kind"] == "grad"]
        p = exps[(exps["run"] == run) & (exps["layer"] == layer)]
        last_p = p[p["epoch"] == p["epoch"].max()]["p"].mean() if not p.empty else float("nan")
        rows.append({"run": run, "layer": layer, "weight_l2_first": w["l2"].iloc[0], "weight_l2_last": w["l2"].iloc[-1],
                     "grad_l2_mean": g["l2"].mean() if not g.empty else float("nan"), "p_mean_last": last_p})
    return pd.DataFrame(rows).round(6)


class NormsAnalysis(Analysis):
    """`scs-probe norms`: per-layer weight and gradient L2 norms over epochs (and mini-batches where recorded),
    the learned p per kernel; norms.png, norms_per_batch.png, exponents.png and norms_summary.csv."""

    name = "norms"
    Config = NormsConfig
    summary_file = "norms_summary.csv"
    figure_stems = ("norms", "norms_per_batch", "exponents")

    def _run(self, runs, out: Path, context: Context) -> AnalysisResult:
        norms, exps = load_records(runs)
        figs = {"norms": plot_norms(norms, out), "norms_per_batch": plot_batch_norms(norms, out),
                "exponents": plot_exponents(exps, out)}
        table = summary(norms, exps)
        atomic_write(out / self.summary_file, table.to_csv(index=False))
        return AnalysisResult(self.name, out, table.to_dict("records"),
                              {k: v for k, v in figs.items() if v is not None})
