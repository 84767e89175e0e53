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

from .. import __version__
from ..errors import OptionError
from ..paper import experiments, published_row
from ..rundir import RunDir, RunsDir, StudyDir
from ..storage import atomic_write, read_csv
from ..training.sweep import summarize_variants
from ..zoo import get_arch
from .base import Analysis, AnalysisResult, Context
from .claims import NEAR_CHANCE, evaluate_claims
from .compare import ComparisonAnalysis
from .figures import data_uri, integer_epochs, plt, save, variant_palette
from .norms import NormsAnalysis
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
    pal = variant_palette(names)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run, name in zip(runs, names):
        h = run.read("history")
        if not h:
            continue
        ep = [int(r["epoch"]) for r in h]
        axes[0].plot(ep, [float(r["test_acc"]) for r in h], marker="o", ms=3, color=pal[name], label=name)
        axes[1].plot(ep, [float(r["train_loss"]) for r in h], marker="o", ms=3, color=pal[name], label=name)
    axes[0].set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy")
    axes[1].set(xlabel="epoch", ylabel="train loss", title="Training loss")
    losses = [float(r["train_loss"]) for run in runs for r in run.read("history")]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 10:
        axes[1].set_yscale("log")  # a first epoch many times the rest would flatten every later one
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize=7,
               bbox_to_anchor=(0.5, -0.04 - 0.035 * ((len(labels) - 1) // 3)))  # below the axes, off the data
    integer_epochs(*axes)
    return save(fig, out, "training_curves", svg=False)


def gather(analysis: type[Analysis], runs: list[RunDir], out: Path, asked: dict, context: Context) -> AnalysisResult:
    """The stored result when it answers `asked` for these runs; else run it, from the stored options (or the
    report's defaults) with `asked` on top."""
    recover(out)
    why = analysis.staleness(out, runs, asked)
    if not why:
        return analysis.load(out)
    stored = analysis.stored_config(out)
    base = stored[0] if stored else analysis.Config(**REPORT_DEFAULTS.get(analysis.name, {}))
    config = replace(base, **asked)
    context.log(f"report: running {analysis.name} on {len(runs)} runs ({why})")
    fresh = out.parent / f".{out.name}.new-{os.getpid()}"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
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
    leftovers of interrupted recomputations."""
    if not out.parent.is_dir():
        return
    leftovers = sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if leftovers and not out.exists():
        os.replace(leftovers.pop(), out)
    for path in [*leftovers, *out.parent.glob(f".{out.name}.new-*")]:
        shutil.rmtree(path, ignore_errors=True)


def warnings_for(rows: list[dict]) -> list[str]:
    """What a reader must know before trusting a row: unfinished, diverged or untrained variants."""
    out = []
    for r in rows:
        if r["status"] != "finished":
            out.append(f"{r['variant']} (seed {r['seed']}) is {r['status']}: shown, left out of every verdict")
        elif r["test_acc"] != "" and float(r["test_acc"]) < NEAR_CHANCE:
            out.append(f"{r['variant']} (seed {r['seed']}) stayed near chance ({float(r['test_acc']):.1%}): "
                       f"its training settings (max LR {r['max_lr']}) may not suit it")
    return out


def study_summary(study: StudyDir, root: Path) -> dict:
    """What the report shows of one fixed-p search: trial counts by state, the best complete trial, the range of
    p tried, the settings the trials shared, and its figure."""
    rows = study.read_trials()
    done = [r for r in rows if r["state"] == "complete" and r["final_test_acc"] != ""]
    best = max(done, key=lambda r: float(r["final_test_acc"]), default=None)
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
            "figure": data_uri(study.figure_path) if study.figure_path.is_file() else None}


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

    env = jinja2.Environment(loader=jinja2.PackageLoader("scs_probe", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined)
    html = env.get_template("report.html.j2").render(
        title=f"scs-probe report: {runs_dir.path.name}", directory=str(runs_dir.path), rows=rows, variants=variants,
        several_seeds=any(v["finished"] > 1 for v in variants), experiment=experiment,
        warnings=warnings_for(rows), claims=[c.to_dict() for c in claims], data=data,
        comparisons=results["compare"].summary, saliency=results["saliency"].summary,
        randomisation=[r for r in (read_csv(rand_path) if rand_path.is_file() else []) if r["stage"] == "all"],
        pgd=results["pgd"].summary, checks=read_csv(checks_path) if checks_path.is_file() else [],
        norms=results["norms"].summary, studies=[study_summary(st, runs_dir.path) for st in runs_dir.studies()],
        configs=configs, figures=figures, version=__version__,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    atomic_write(out_html, html)
    return out_html
