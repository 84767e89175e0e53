"""One self-contained HTML report for a directory of runs (figures embedded as data URIs; Jinja2, autoescaped)."""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

import jinja2

from .. import __version__
from ..paper import paper_table
from ..training.runs import find_runs, read_history, summarize_run
from ..zoo import get_arch
from ..zoo.variants import PAPER_NAMES
from .figures import data_uri, integer_epochs, plt, save, variant_palette

_REVERSE = {axis: {v: k for k, v in names.items()} for axis, names in PAPER_NAMES.items()}


def paper_match(row: dict) -> dict | None:
    """The study's published row for the same architecture and axes (the latest table that has it)."""
    try:
        arch = get_arch(row["arch"]).paper_name
    except ValueError:
        return None
    want = {"layer": _REVERSE["layer"].get(row["layer"]), "activation": _REVERSE["activation"].get(row["activation"]),
            "pooling": _REVERSE["pool"].get(row["pool"]), "normalization": _REVERSE["norm"].get(row["norm"]),
            "image_size": f"{row['image_size']}x{row['image_size']}"}
    hits = [r for r in paper_table(arch) if all(r[k] == v for k, v in want.items())]
    return hits[-1] if hits else None


def training_curves(run_dirs, names, out: Path) -> Path:
    pal = variant_palette(names)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for d, name in zip(run_dirs, names):
        h = read_history(d)
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


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def build_report(directory, out_html=None, data_dir=None, device="cpu", saliency_images: int = 8,
                 pgd_images: int = 200, eps_values=None, pgd_steps: int = 10, log=print) -> Path:
    """Gather (or compute, when missing) every analysis of the runs in `directory` and render one HTML file."""
    from .norms import run_norms
    from .robustness import analyze_robustness, parse_eps_range
    from .saliency import analyze_saliency

    directory = Path(directory)
    runs = find_runs(directory)
    out_html = Path(out_html) if out_html else directory / "report.html"
    adir = directory / "analysis"
    rows = [summarize_run(r) for r in runs]
    names = [r["variant"] for r in rows]
    for r in rows:
        r["paper"] = paper_match(r)

    figures = {"training": data_uri(training_curves(runs, names, adir))}
    ckpts = [r / "checkpoint.pt" for r in runs]

    sal_dir = adir / "saliency"
    if not (sal_dir / "saliency_summary.csv").is_file() or not (sal_dir / "saliency.png").is_file():
        log(f"report: running saliency on {len(ckpts)} models")
        analyze_saliency(ckpts, data_dir, sal_dir, n_images=saliency_images, device=device)
    saliency = _read_csv(sal_dir / "saliency_summary.csv")
    figures["saliency"] = data_uri(sal_dir / "saliency.png")
    figures["deletion"] = data_uri(sal_dir / "deletion.png")

    pgd_dir = adir / "pgd"
    if not (pgd_dir / "pgd_summary.csv").is_file() or not (pgd_dir / "pgd.png").is_file():
        log(f"report: running PGD on {len(ckpts)} models")
        analyze_robustness(ckpts, data_dir, pgd_dir, eps_values or parse_eps_range("0:8/255:5"),
                           n_images=pgd_images, steps=pgd_steps, device=device)
    pgd = _read_csv(pgd_dir / "pgd_summary.csv")
    figures["pgd"] = data_uri(pgd_dir / "pgd.png")

    norms_dir = adir / "norms"
    if not (norms_dir / "norms.png").is_file():
        run_norms(runs, norms_dir)
    for key in ("norms", "norms_per_batch", "exponents"):
        if (norms_dir / f"{key}.png").is_file():
            figures[key] = data_uri(norms_dir / f"{key}.png")
    norms_summary = _read_csv(norms_dir / "norms_summary.csv") if (norms_dir / "norms_summary.csv").is_file() else []

    env = jinja2.Environment(loader=jinja2.PackageLoader("scs_probe", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined)
    html = env.get_template("report.html.j2").render(
        title=f"scs-probe report: {directory.name}", directory=str(directory), rows=rows, saliency=saliency,
        pgd=pgd, norms=norms_summary, figures=figures, version=__version__,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    from ..training.checkpoint import atomic_write
    atomic_write(out_html, lambda f: f.write(html.encode()))
    return out_html
