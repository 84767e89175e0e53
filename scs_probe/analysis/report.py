"""One self-contained HTML report for a directory of runs (figures embedded as data URIs; Jinja2, autoescaped).

Each analysis in `ANALYSES` is reused from DIR/analysis/<name>/ when its stored options and runs answer what is
asked, and run (again) otherwise."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import jinja2

from .. import __version__
from ..errors import OptionError
from ..paper import published_row
from ..rundir import RunDir, RunsDir
from ..storage import atomic_write
from ..zoo import get_arch
from .base import Analysis, AnalysisResult, Context
from .figures import data_uri, integer_epochs, plt, save, variant_palette
from .norms import NormsAnalysis
from .robustness import RobustnessAnalysis
from .saliency import SaliencyAnalysis

ANALYSES: tuple[type[Analysis], ...] = (SaliencyAnalysis, RobustnessAnalysis, NormsAnalysis)
# where nothing is stored yet, the report runs cheaper settings than the commands' defaults
REPORT_DEFAULTS = {"pgd": {"n_images": 200}}


def paper_match(row: dict) -> dict | None:
    """The study's published row for the same architecture and axes (the latest table that has it)."""
    try:
        paper_name = get_arch(row["arch"]).paper_name
    except OptionError:
        return None
    return published_row(paper_name, row) if paper_name else None


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
    axes[0].legend(fontsize=7)
    integer_epochs(*axes)
    return save(fig, out, "training_curves", svg=False)


def gather(analysis: type[Analysis], runs: list[RunDir], out: Path, asked: dict, context: Context) -> AnalysisResult:
    """The stored result when it answers `asked` for these runs; else run it, from the stored options (or the
    report's defaults) with `asked` on top."""
    if analysis.up_to_date(out, runs, asked) is not None:
        return analysis.load(out)
    stored = analysis.stored_config(out)
    base = stored[0] if stored else analysis.Config(**REPORT_DEFAULTS.get(analysis.name, {}))
    why = "options or runs changed" if stored else "none stored"
    context.log(f"report: running {analysis.name} on {len(runs)} models ({why})")
    return analysis(replace(base, **asked)).run(runs, out, context)


def build_report(directory, out_html=None, asked: dict[str, dict] | None = None,
                 context: Context | None = None) -> Path:
    """Gather (or compute) every analysis of the runs in `directory` and render one HTML file. `asked`: per
    analysis name, the options the caller wants (e.g. {"pgd": {"eps": (0, 4/255)}})."""
    context = context or Context()
    asked = asked or {}
    unknown = set(asked) - {a.name for a in ANALYSES}
    if unknown:
        raise OptionError("asked", f"unknown analysis {sorted(unknown)[0]!r}")
    runs_dir = RunsDir(directory)
    runs = runs_dir.runs()
    out_html = Path(out_html) if out_html else runs_dir.report_path
    rows = [r.summary() for r in runs]
    names = [r["variant"] for r in rows]
    for r in rows:
        r["paper"] = paper_match(r)

    figures = {"training": data_uri(training_curves(runs, names, runs_dir.analysis_dir()))}
    results = {a.name: gather(a, runs, runs_dir.analysis_dir(a.name), asked.get(a.name, {}), context)
               for a in ANALYSES}
    for result in results.values():
        figures.update({stem: data_uri(path) for stem, path in result.figures.items()})

    env = jinja2.Environment(loader=jinja2.PackageLoader("scs_probe", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined)
    html = env.get_template("report.html.j2").render(
        title=f"scs-probe report: {runs_dir.path.name}", directory=str(runs_dir.path), rows=rows,
        saliency=results["saliency"].summary, pgd=results["pgd"].summary, norms=results["norms"].summary,
        figures=figures, version=__version__, generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    atomic_write(out_html, html)
    return out_html
