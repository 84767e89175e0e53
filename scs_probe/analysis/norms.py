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


def plot_norms(norms: pd.DataFrame, out: Path):
    """Per-epoch weight (top row) and gradient (bottom row) norms as small multiples: a panel per layer, a line
    per run, the legend below the panels."""
    from .figures import integer_epochs, plain_log_axis, plt, run_styles, save
    per_epoch = norms[norms["batch"].isna() | (norms["batch"] == "")]
    layers = _shown_layers(list(dict.fromkeys(per_epoch["layer"])))
    runs = list(dict.fromkeys(per_epoch["run"]))
    variant_of = dict(zip(per_epoch["run"], per_epoch["variant"]))
    styles = run_styles(runs, [variant_of[r] for r in runs])
    fig, axes = plt.subplots(2, len(layers), figsize=(2.9 * len(layers) + 0.8, 5.6), squeeze=False)
    for row, kind in enumerate(("weight", "grad")):
        for col, layer in enumerate(layers):
            ax = axes[row, col]
            d = per_epoch[(per_epoch["kind"] == kind) & (per_epoch["layer"] == layer)]
            for run in runs:
                r = d[d["run"] == run].sort_values("epoch")
                ax.plot(r["epoch"], r["l2"], marker="o", ms=2.5, **styles[run])
            plain_log_axis(ax)
            ax.set_title(f"{layer}: {kind}" + (" (mean over batches)" if kind == "grad" else ""), fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("epoch" if row == 1 else "", fontsize=8)
            integer_epochs(ax)
        axes[row, 0].set_ylabel(f"{kind} L2 norm", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7,
               bbox_to_anchor=(0.5, -0.03 - 0.03 * ((len(labels) - 1) // 4)))
    fig.tight_layout()
    return save(fig, out, "norms")


def plot_batch_norms(norms: pd.DataFrame, out: Path):
    """Per-mini-batch norms where recorded (TrainOptions.norms_every_batch), against the global step."""
    import seaborn as sns

    from .figures import plain_log_axis, plt, save
    d = norms[norms["batch"].notna() & (norms["batch"] != "")].copy()
    if d.empty:
        return None
    d["batch"] = d["batch"].astype(int)
    per_epoch = d.groupby(["run", "epoch"])["batch"].max().add(1).groupby(level=0).cumsum()
    offsets = per_epoch.groupby(level=0).shift(fill_value=0)
    d["step"] = d["batch"] + [offsets.loc[(r, e)] for r, e in zip(d["run"], d["epoch"])]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind in zip(axes, ("weight", "grad")):
        sns.lineplot(data=d[d["kind"] == kind], x="step", y="l2", hue="layer",
                     style="run" if d["run"].nunique() > 1 else None, ax=ax, linewidth=0.8)
        plain_log_axis(ax)
        ax.set_title(f"{kind} L2 norm per mini-batch")
        ax.legend(fontsize=6)
    return save(fig, out, "norms_per_batch")


def plot_exponents(exps: pd.DataFrame, out: Path):
    """p per kernel over epochs: the first sharpened layer's kernels one line each, later layers mean +- sd."""
    import seaborn as sns

    from .figures import integer_epochs, plt, save
    if exps.empty:
        return None
    runs = list(dict.fromkeys(exps["run"]))
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.6 * len(runs)), squeeze=False)
    for i, run in enumerate(runs):
        e = exps[exps["run"] == run]
        first = e["layer"].iloc[0]
        d = e[e["layer"] == first]
        sns.lineplot(data=d, x="epoch", y="p", units="channel", estimator=None, ax=axes[i, 0], linewidth=0.7,
                     alpha=0.7, color="tab:blue")
        axes[i, 0].set_title(f"{run}: p of each kernel of {first}", fontsize=9)
        sns.lineplot(data=e, x="epoch", y="p", hue="layer", errorbar="sd", ax=axes[i, 1])
        axes[i, 1].set_title(f"{run}: p per layer (mean, sd band)", fontsize=9)
        integer_epochs(axes[i, 0], axes[i, 1])
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
