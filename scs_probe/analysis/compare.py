"""Paired comparisons of two variants on the same test images: the accuracy difference with a paired bootstrap
interval and an exact McNemar test per seed, and over seeds a random-effects pool of the per-seed paired
differences (`stats.pooling`) where several seeds exist."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import OptionError, RecordError
from ..rundir import RunDir
from ..stats import ONE_SEED, Pooled, mcnemar_exact, paired_difference, pool_paired
from ..storage import write_csv
from .base import Analysis, AnalysisConfig, AnalysisResult, Context
from .provenance import data_difference


@dataclass(frozen=True)
class CompareConfig(AnalysisConfig):
    pairs: tuple | None = None        # ((variant a, variant b), ...); None: conv vs SCS at the study's settings
    n_boot: int = 2000
    seed: int = 0

    def validate(self) -> None:
        if self.pairs is not None:
            object.__setattr__(self, "pairs", tuple(tuple(p) for p in self.pairs))
            self.require("pairs", all(len(p) == 2 for p in self.pairs), "each pair names two variants")
            same = [a for a, b in self.pairs if a == b]
            self.require("pairs", not same, f"{same[0] if same else ''} paired with itself: name two variants")
            twice = [p for p in self.pairs if self.pairs.count(p) > 1]
            self.require("pairs", not twice, f"{','.join(twice[0]) if twice else ''} given twice")
        self.require("n_boot", self.n_boot >= 100, f"must be >= 100, got {self.n_boot}")


def variant_axes(run: RunDir) -> dict:
    """The run's variant, with the data set it was trained on (runs from before data sets were recorded:
    CIFAR-10): a pair compares test images of one data set."""
    config = run.read_config()
    return {**config.get("variant", {}), "dataset": config.get("options", {}).get("dataset", "cifar10")}


def study_pairs(runs: list[RunDir]) -> list[tuple[str, str]]:
    """Conv (ReLU, max pooling; a converted model's own activations and pooling) against SCS (no activation,
    max-abs pooling) with the same architecture, normalisation and image size: the comparison the study's
    claims are about."""
    by_name = {r.name: variant_axes(r) for r in runs}
    pairs = []
    for name, v in by_name.items():
        if v.get("layer") != "scs" or v.get("activation") != "none" or v.get("pool") not in ("maxabs", "none"):
            continue
        for other, w in by_name.items():
            if (w.get("layer") == "conv" and w.get("activation") in ("relu", "keep")
                    and w.get("pool") in ("max", "none", "keep")
                    and all(w.get(k) == v.get(k) for k in ("arch", "norm", "image_size", "dataset"))
                    and w.get("fixed_p") is None and v.get("fixed_p") is None):
                pairs.append((other, name))
    return sorted(set(pairs))


def _predictions_by_seed(runs: list[RunDir], name: str) -> dict[int, tuple[RunDir, dict]]:
    """seed -> (run, predictions) of the finished runs of variant `name`: one run per seed (two folders holding
    the same variant and seed, a copied run say, are refused: which one counts would be an accident of names)."""
    out = {}
    for run in runs:
        if run.name != name or run.read_config().get("status") != "finished":
            continue
        p = run.read_predictions()  # a short, empty or malformed file: RecordError
        if p is None:  # never a seed dropped without a word
            raise RecordError(f"{run.path}: a finished run without {RunDir.PREDICTIONS} (trained before scs-probe "
                              "recorded per-image predictions, or the file was lost): retrain it or leave it out")
        if run.seed in out:
            raise RecordError(f"{out[run.seed][0].path} and {run.path} are both {name} at seed {run.seed}: keep one "
                              "(a copied or retrained run) in the folder")
        out[run.seed] = (run, p)
    return out


def paired_correct(runs: list[RunDir], a: str, b: str) -> dict:
    """seed -> (test indices, a correct, b correct) on the images both finished runs of that seed saw."""
    ca, cb = _predictions_by_seed(runs, a), _predictions_by_seed(runs, b)
    out = {}
    for s in sorted(set(ca) & set(cb), key=str):
        (run_a, p), (run_b, q) = ca[s], cb[s]
        differ = data_difference([run_a, run_b])
        if differ:  # same labels are not the same images: a paired difference needs one test set
            raise RecordError(f"{run_a.path} and {run_b.path} were {differ}: they were not evaluated on the same "
                              "test set; compare runs trained on one copy")
        common, pa, pb = np.intersect1d(p["index"], q["index"], return_indices=True)
        differ = int(np.sum(p["label"][pa] != q["label"][pb]))
        if differ:  # another copy of the data, or a foreign file: a "paired" difference would be meaningless
            raise RecordError(f"{run_a.path} and {run_b.path} disagree on the labels of {differ} of their "
                              f"{len(common)} common test images: they were not evaluated on the same test set")
        out[s] = (common, p["pred"][pa] == p["label"][pa], q["pred"][pb] == q["label"][pb])
    return out


def pair_data_difference(runs: list[RunDir], a: str, b: str, seeds=None) -> str:
    """`data_difference` of the finished runs of variants a and b (those of `seeds`, where given): '' where they
    were trained on one copy of the data."""
    return data_difference([r for name in (a, b) for r in runs if r.name == name and (seeds is None or r.seed in seeds)
                            and r.read_config().get("status") == "finished"])


def accuracy_pool(runs: list[RunDir], a: str, b: str) -> Pooled | None:
    """Accuracy of b minus a pooled over seeds (each seed: its paired difference and image-level variance);
    None where no seed has predictions of both."""
    pairs = paired_correct(runs, a, b)
    if not pairs:
        return None
    differ = pair_data_difference(runs, a, b, seeds=pairs)  # the runs paired above
    if differ:  # each seed on one copy, the seeds on two: a pooled difference would mix test sets
        raise RecordError(f"the seeds of {a} and {b} were {differ}: a difference pooled over them would mix test "
                          "sets")
    pooled = pool_paired([rb.astype(float) - ra.astype(float) for _, ra, rb in pairs.values()])
    # a difference of accuracies lies in [-1, 1]; the t interval over a few spread seeds can reach beyond it
    return replace(pooled, interval=pooled.interval.clipped(-1.0, 1.0))


# comparisons.csv's columns (`compare`'s rows), written as the header of an empty table too: one without tau and
# seeds would read as stored by an older scs-probe (stale) at every report
COLUMNS = ["a", "b", "seed", "seeds", "n", "acc_a", "acc_b", "diff", "lo", "hi", "tau", "interval", "only_a", "only_b",
           "mcnemar_p", "within_noise"]


def compare(runs: list[RunDir], a: str, b: str, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Rows for b minus a: one per seed both have, and one pooled over seeds ('all') where there are several.
    seeds: how many seeds the row rests on; n: the test images of each seed (for 'all': the fewest of any
    seed); tau: the spread between seeds (random effects; 'all' only); interval: its kind, and whether it was
    clipped to the feasible [-1, 1]."""
    pairs = paired_correct(runs, a, b)
    rows = []
    label = "95% paired bootstrap over this seed's test images" + (f" ({ONE_SEED})" if len(pairs) == 1 else "")
    for s, (common, ra, rb) in pairs.items():
        d, m = paired_difference(ra, rb, n_boot=n_boot, seed=seed), mcnemar_exact(ra, rb)
        rows.append({"a": a, "b": b, "seed": s, "seeds": 1, "n": len(common), "acc_a": ra.mean(), "acc_b": rb.mean(),
                     "diff": d.estimate, "lo": d.lo, "hi": d.hi, "tau": "", "interval": label,
                     "only_a": m.only_a, "only_b": m.only_b, "mcnemar_p": m.p_value,
                     "within_noise": d.covers(0) or m.p_value >= 0.05})  # the exact test must agree
    if len(pairs) > 1:
        p = accuracy_pool(runs, a, b)
        rows.append({"a": a, "b": b, "seed": "all", "seeds": p.k, "n": p.n_images,
                     "acc_a": float(np.mean([ra.mean() for _, ra, _ in pairs.values()])),
                     "acc_b": float(np.mean([rb.mean() for _, _, rb in pairs.values()])),
                     "diff": p.interval.estimate, "lo": p.interval.lo, "hi": p.interval.hi,
                     "tau": float(np.sqrt(p.tau2)), "interval": f"95% {p.interval.method}",
                     "only_a": "", "only_b": "", "mcnemar_p": "", "within_noise": p.interval.covers(0)})
    return rows


def plot_comparisons(rows: list[dict], out: Path):
    from .figures import plt, save
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.4))
    labels = [f"{r['b']} - {r['a']} (seed {r['seed']})" + (" [clipped to -1, 1]" if "clipped" in r["interval"] else "")
              for r in rows]
    for i, r in enumerate(rows):
        color = "tab:gray" if r["within_noise"] else ("tab:green" if r["diff"] > 0 else "tab:red")
        ax.errorbar(r["diff"], i, xerr=[[r["diff"] - r["lo"]], [r["hi"] - r["diff"]]], fmt="o", color=color,
                    capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy difference (b - a), 95% interval")
    ax.set_title("Paired comparisons (grey: within noise; seed all: pooled over seeds)", fontsize=10)
    return save(fig, out, "comparisons")


class ComparisonAnalysis(Analysis):
    """`scs-probe compare`: comparisons.csv (one row per pair and seed, plus 'all' over seeds) and
    comparisons.png, from the per-image test predictions every run records. A study pair (no `pairs` given) whose
    runs were trained on different copies of the data is left out with a warning, so the report still renders
    (its claims say why); a pair asked for is refused (RecordError)."""

    name = "compare"
    Config = CompareConfig
    summary_file = "comparisons.csv"
    figure_stems = ("comparisons",)
    reads_predictions = True
    # tau: seeds pooled by random effects; seeds: n counts images in every row (it once held the seeds of 'all')
    stored_columns = {"comparisons.csv": ("tau", "seeds")}

    def _run(self, runs, out: Path, context: Context) -> AnalysisResult:
        pairs = self.config.pairs if self.config.pairs is not None else study_pairs(runs)
        names = {r.name for r in runs}
        unknown = [n for pair in pairs for n in pair if n not in names]
        if unknown:
            raise OptionError("pairs", f"no run of variant {unknown[0]!r} here; variants: {', '.join(sorted(names))}")
        datasets = {r.name: variant_axes(r)["dataset"] for r in runs}
        for a, b in pairs:
            if datasets[a] != datasets[b]:
                raise OptionError("pairs", f"{a} was trained on {datasets[a]} and {b} on {datasets[b]}: a paired "
                                           "comparison needs the same test images")
        rows = []
        for a, b in pairs:
            differ = "" if self.config.pairs is not None else pair_data_difference(runs, a, b)
            if differ:  # a study pair, not one asked for: the rest of the report stands (its claims say why)
                context.log(f"warning: {b} vs {a} not compared: {differ}")
                continue
            rows += compare(runs, a, b, self.config.n_boot, self.config.seed)
        write_csv(out / self.summary_file, rows or [], list(rows[0]) if rows else COLUMNS,
                  float_format=".6g")
        figures = {"comparisons": plot_comparisons(rows, out)} if rows else {}
        return AnalysisResult(self.name, out, rows, figures)
