"""One self-contained HTML report for a directory of runs (figures embedded as data URIs; Jinja2, autoescaped).

Each analysis in `ANALYSES` is reused from DIR/analysis/<name>/ when its stored options and runs answer what is
asked, and run (again) otherwise."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import numpy as np

from .. import __version__
from ..errors import Busy, OptionError
from ..paper import experiments, published_row
from ..rundir import RunDir, RunsDir, StudyDir
from ..storage import atomic_write, read_csv, temp_dir
from ..training.sweep import summarize_variants
from ..zoo import get_arch
from .base import Analysis, AnalysisResult, Context
from .claims import evaluate_claims
from .compare import ComparisonAnalysis
from .figures import data_uri, integer_epochs, legend_below, plain_log_axis, plt, run_styles, save
from .formatting import FILTERS
from .metrics import SHOWN, arrow
from .norms import NormsAnalysis
from .provenance import near_chance, near_chance_threshold
from .robustness import RobustnessAnalysis
from .saliency import SaliencyAnalysis
from .sources import run_labels

ANALYSES: tuple[type[Analysis], ...] = (ComparisonAnalysis, SaliencyAnalysis, RobustnessAnalysis, NormsAnalysis)
# where nothing is stored yet, the report runs cheaper settings than the commands' defaults
REPORT_DEFAULTS = {"pgd": {"n_images": 200}}


def paper_match(row: dict, experiment: str | None = None) -> dict | None:
    """The study's published row for the same architecture and axes, from one experiment."""
    try:
        paper_name = get_arch(row["arch"]).paper_name
    except OptionError:
        return None
    return published_row(paper_name, row, experiment) if paper_name else None


def paper_experiment(rows: list[dict], asked: str | None = None) -> str:
    """The study's experiment whose tables cover most of these variants (one for the whole table: its first
    and follow-up runs were timed on different hardware)."""
    if asked:
        if asked not in experiments():
            raise OptionError("paper_experiment", f"unknown value {asked!r}; allowed: {', '.join(experiments())}")
        return asked
    return max(experiments(), key=lambda e: sum(paper_match(r, e) is not None for r in rows))


def training_curves(runs: list[RunDir], names, out: Path) -> Path:
    """Test accuracy and training loss per epoch: one colour per variant, its seeds as thin lines and their mean
    as a thick one."""
    styles = run_styles(names, [r.name for r in runs])
    color_of = {r.name: styles[n]["color"] for r, n in zip(runs, names)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    curves: dict[str, list] = {}
    means = False
    for run, name in zip(runs, names):
        h = run.read("history")
        if not h:
            continue
        ep = [int(r["epoch"]) for r in h]
        acc, loss = [float(r["test_acc"]) for r in h], [float(r["train_loss"]) for r in h]
        axes[0].plot(ep, acc, marker="o", ms=3, **styles[name])
        axes[1].plot(ep, loss, marker="o", ms=3, **styles[name])
        curves.setdefault(run.name, []).append((ep, acc, loss))
    for variant, seeds in curves.items():
        common = sorted(set.intersection(*(set(ep) for ep, _, _ in seeds)))
        if len(seeds) < 2 or not common:
            continue
        for ax, k in ((axes[0], 1), (axes[1], 2)):
            ax.plot(common, [np.mean([s[k][s[0].index(e)] for s in seeds]) for e in common], color=color_of[variant],
                    lw=2.4)
        means = True
    axes[0].set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy")
    axes[1].set(xlabel="epoch", ylabel="train loss", title="Training loss")
    losses = [float(r["train_loss"]) for run in runs for r in run.read("history")]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 10:
        plain_log_axis(axes[1])  # a first epoch many times the rest would flatten every later one
    if means:
        fig.suptitle("thin: each seed; thick: mean over seeds", fontsize=9)
    legend_below(fig, *axes[0].get_legend_handles_labels(), fontsize=7)  # under the axes and their labels
    integer_epochs(*axes)
    return save(fig, out, "training_curves", svg=False)


def gather(analysis: type[Analysis], runs: list[RunDir], out: Path, asked: dict, context: Context) -> AnalysisResult:
    """The stored result when it answers `asked` for these runs; else run it, from the stored options (or the
    report's defaults) with `asked` on top. The caller holds the directory's report lock (`build_report`)."""
    recover(out)
    why = analysis.staleness(out, runs, asked, context)
    if not why:
        return analysis.load(out)
    stored = analysis.stored_config(out)
    base = stored[0] if stored else analysis.Config(**REPORT_DEFAULTS.get(analysis.name, {}))
    config = replace(base, **asked)
    context.log(f"report: running {analysis.name} on {len(runs)} runs ({why})")
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = temp_dir(out.parent, prefix=f".{out.name}.new-")  # its own name, whoever else writes
    try:
        analysis(config).run(runs, fresh, context)
        swap_in(fresh, out)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return analysis.load(out)


def swap_in(fresh: Path, out: Path) -> None:
    """Replace the folder `out` by the complete folder `fresh`: the old one is renamed aside, the new one renamed
    in, then the old one deleted. Interrupted at any point, `out` (or, between the two renames, its old copy,
    which `recover` puts back) holds a whole analysis, never half of one."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(fresh, out)
    shutil.rmtree(old, ignore_errors=True)


def recover(out: Path) -> None:
    """Put back an analysis left aside by a `swap_in` that was interrupted between its two renames, and drop the
    leftovers of interrupted recomputations (under the report lock: no other report is writing them now)."""
    if not out.parent.is_dir():
        return
    leftovers = sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if leftovers and not out.exists():
        os.replace(leftovers.pop(), out)
    for path in [*leftovers, *out.parent.glob(f".{out.name}.new-*")]:
        shutil.rmtree(path, ignore_errors=True)


def warnings_for(rows: list[dict]) -> list[str]:
    """What a reader must know before trusting a row: unfinished, diverged or untrained variants, and runs whose
    compiled SCS backend fell back to eager."""
    out = []
    for r in rows:
        if "fallback" in str(r.get("backend", "")):
            out.append(f"{r['variant']} (seed {r['seed']}) ran its SCS layers on the {r['backend']}: its seconds "
                       "time that, not the compiled kernels")
        if r["status"] != "finished":
            out.append(f"{r['variant']} (seed {r['seed']}) is {r['status']}: shown, left out of every verdict")
        elif near_chance(r):
            out.append(f"{r['variant']} (seed {r['seed']}) stayed near chance ({float(r['test_acc']):.1%}, below "
                       f"{near_chance_threshold(r['num_classes']):.1%}: 1.5 / classes): its training settings (max "
                       f"LR {r['max_lr']}) may not suit it")
    return out


def _count(values) -> str:
    values = sorted({int(v) for v in values if v not in ("", None)})
    return " / ".join(f"{v:,}" for v in values) if values else "?"


def image_sources(rows: list[dict], configs: dict) -> dict[str, str]:
    """Per table of the report, the images its numbers come from (the split and how many)."""
    val = [r for r in rows if r.get("n_val", "") != ""]
    test = f"the test split ({_count(r.get('n_test') for r in rows)} images per run)"
    runs = (f"test accuracy: {test}; validation accuracy and the best epoch: the validation split "
            f"({_count(r['n_val'] for r in val)} training images held out, stratified, the same for every run); best: "
            "the test accuracy at the epoch of best validation accuracy" if val else
            f"test accuracy: {test}; no validation split (--val-split), so no best epoch is chosen")
    if val and len(val) < len(rows):
        runs += f" ({len(rows) - len(val)} runs without a validation split have none)"
    sal, pgd = configs.get("saliency"), configs.get("pgd")
    return {
        "runs": runs,
        "comparisons": f"{test}: every run's predictions on the same test images",
        "saliency": ("the test split" if not sal else f"test-split images {', '.join(map(str, sal.indices))}"
                     if sal.indices else f"{sal.n_images} images of the test split, drawn with seed {sal.seed}"),
        "pgd": f"the first {pgd.n_images} images of the test split" if pgd else "the test split",
        "tune": "objective and pruning: validation accuracy on training images held out (n_val per trial); test "
                "accuracy: the test split, reported beside it and never used to choose",
    }


def study_summary(study: StudyDir, root: Path) -> dict:
    """What the report shows of one fixed-p search: trial counts by state, the best complete trial, the range of
    p tried, the settings the trials shared, its figure, and a warning where every trial stayed near chance."""
    from ..training.tune import near_chance_warning
    rows = study.read_trials()
    done = [r for r in rows if r["state"] == "complete" and r.get("val_acc", "") != ""]
    best = max(done, key=lambda r: float(r["val_acc"]), default=None)  # chosen on validation, as tune chose
    config = study.trial(int(best["number"])).read_config() if best else {}
    options = config.get("options", {})
    ps = [float(r["p"]) for r in rows if r["p"] != ""]
    return {"name": str(study.path.relative_to(root)) if study.path != root else study.path.name,
            "counts": {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "fail")},
            "best": best, "p_lo": min(ps, default=""), "p_hi": max(ps, default=""),
            "settings": {k: options.get(k, "cifar10" if k == "dataset" else None)
                         for k in ("arch", "layer", "activation", "pool", "dataset", "epochs", "max_lr", "batch_size",
                                   "limit_train")} if options else {},
            "rows": sorted(done, key=lambda r: float(r["p"])),
            "warning": near_chance_warning(rows, study.path).removeprefix("warning: "),
            "figure": data_uri(study.figure_path) if study.figure_path.is_file() else None}


def render_report(**context) -> str:
    """The HTML of report.html.j2 (autoescaped; numbers through `formatting`'s filters; each metric's arrow
    from its own direction)."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("scs_probe", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined)
    env.filters.update(FILTERS)
    return env.get_template("report.html.j2").render(arrows={m.name: arrow(m) for m in SHOWN}, **context)


def build_report(directory, out_html=None, asked: dict[str, dict] | None = None,
                 context: Context | None = None, experiment: str | None = None) -> Path:
    """Gather (or compute) every analysis of the runs in `directory` and render one HTML file. `asked`: per
    analysis name, the options the caller wants (e.g. {"pgd": {"eps": (0, 4/255)}}); `experiment`: the study's
    experiment whose published numbers stand beside ours (default: the one covering most variants)."""
    context = context or Context()
    asked = {"compare": {"pairs": None}, **(asked or {})}  # the study's pairs, whatever `compare` stored last
    unknown = set(asked) - {a.name for a in ANALYSES}
    if unknown:
        raise OptionError("asked", f"unknown analysis {sorted(unknown)[0]!r}")
    runs_dir = RunsDir(directory)
    runs = runs_dir.runs()
    lock = runs_dir.report_lock()
    try:
        taken = lock.acquire()
    except OSError as e:  # a file system without locks: reports on one folder must not overlap
        context.log(f"report: warning: cannot lock {runs_dir.path} ({e.strerror or e}); run one report at a time")
        taken = True
    if not taken:
        raise Busy(runs_dir.path, "having its analyses and report written", runs_dir.report_writer())
    try:
        return _build_report(runs_dir, runs, out_html, asked, context, experiment)
    finally:
        lock.release()


def _build_report(runs_dir: RunsDir, runs: list[RunDir], out_html, asked: dict, context: Context,
                  experiment: str | None) -> Path:
    out_html = Path(out_html) if out_html else runs_dir.report_path
    rows = [r.summary() for r in runs]
    names = run_labels(runs)  # the labels every other figure and table of the report uses
    experiment = paper_experiment(rows, experiment)
    for r in rows:
        r["paper"] = paper_match(r, experiment)
    variants = summarize_variants(rows)
    for v in variants:
        v["paper"] = paper_match(v, experiment)

    figures = {"training": data_uri(training_curves(runs, names, runs_dir.analysis_dir()))}
    results = {a.name: gather(a, runs, runs_dir.analysis_dir(a.name), asked.get(a.name, {}), context)
               for a in ANALYSES}
    for result in results.values():
        figures.update({stem: data_uri(path) for stem, path in result.figures.items()})
    claims = evaluate_claims(runs, runs_dir.analysis_dir("saliency"), runs_dir.analysis_dir("pgd"))
    checks_path = runs_dir.analysis_dir("pgd") / "masking_checks.csv"
    rand_path = runs_dir.analysis_dir("saliency") / "randomisation.csv"
    configs = {a.name: (a.stored_config(runs_dir.analysis_dir(a.name)) or (None,))[0] for a in ANALYSES}
    data = runs[0].read_config().get("data", {})

    html = render_report(
        title=f"scs-probe report: {runs_dir.path.name}", directory=str(runs_dir.path), rows=rows, variants=variants,
        several_seeds=any(v["finished"] > 1 for v in variants), experiment=experiment,
        warnings=warnings_for(rows), claims=[c.to_dict() for c in claims], data=data,
        comparisons=results["compare"].summary, saliency=results["saliency"].summary,
        randomisation=[r for r in (read_csv(rand_path) if rand_path.is_file() else []) if r["stage"] == "all"],
        pgd=results["pgd"].summary, checks=read_csv(checks_path) if checks_path.is_file() else [],
        norms=results["norms"].summary, studies=[study_summary(st, runs_dir.path) for st in runs_dir.studies()],
        configs=configs, sources=image_sources(rows, configs), figures=figures, version=__version__,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    atomic_write(out_html, html)
    return out_html
