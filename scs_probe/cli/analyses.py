"""Commands that analyse trained runs: saliency, robustness under attack (`pgd`), paired comparisons, weight
norms, and the HTML report that gathers them."""

from __future__ import annotations

from pathlib import Path

import click

from ..schema import escape_controls
from ..zoo import trust_model_code
from .options import (
    command,
    data_dir_option,
    device_option,
    model_sources,
    out_option,
    print_table,
    test_dataset_option,
    trust_option,
)
from .types import (
    SEED_MAX,
    ClassList,
    EpsList,
    EpsRange,
    EpsValue,
    GivenPath,
    IndexList,
    OutPath,
    PatternList,
    blocking_file,
)

ATTACKS = ["pgd", "square", "autoattack"]


def _runs(ckpts, sweep_dir, model=None, dataset=None, activation="keep", pool="keep"):
    from ..analysis import resolve_runs
    if not ckpts and not sweep_dir:
        raise click.UsageError("name the models: --ckpt CKPT (repeatable) or --sweep DIR")
    if model and not ckpts:
        raise click.UsageError("--model names the model of the --ckpt state dicts: give --ckpt FILE")
    if not model and (activation, pool) != ("keep", "keep"):
        raise click.UsageError("--activation and --pool describe --model state dicts: give --model SPEC")
    if model:
        trust_model_code(model)  # named by the user
    return resolve_runs(ckpts, sweep_dir, model, dataset, activation, pool)


def _run_analysis(analysis, runs, out, sweep_dir, data_dir=None, device="auto", dataset=None):
    from ..analysis import Context
    from ..rundir import RunsDir
    from ..training import resolve_device
    dest = Path(out) if out else RunsDir(sweep_dir or ".").analysis_dir(analysis.name)
    _check_out(dest)
    context = Context(data_dir=data_dir, dataset=dataset, device=resolve_device(device))
    result = analysis.run(runs, dest, context)
    return result, dest


def _check_out(path, what: str = "folder") -> None:
    """Before any work: an output that cannot be written (a file where a folder must be) is one line."""
    blocker = blocking_file(path)
    if blocker is not None or (what == "folder" and Path(path).is_file()):
        raise click.UsageError(f"cannot write to {path}: {blocker or path} is a file, not a folder")


def _eps(eps_range, eps_list, required: bool):
    if eps_range is not None and eps_list is not None or (required and eps_range is None and eps_list is None):
        raise click.UsageError("give exactly one of --eps-range START:STOP:NUM and --eps LIST")
    return eps_range if eps_range is not None else eps_list


@command()
@model_sources
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True, help="Draws the images.")
@click.option("--n-images", type=click.IntRange(min=1), default=100, show_default=True,
              help="Images the metrics average over (the grid shows --grid-images of them).")
@click.option("--grid-images", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--sanity/--no-sanity", default=True, show_default=True,
              help="Model-parameter randomisation check (Adebayo et al. 2018) on --sanity-images images.")
@click.option("--sanity-images", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--indices", type=IndexList(), default=None,
              help="Comma-separated test-set indices (instead of a random draw).")
@click.option("--classes", type=ClassList(), default=None,
              help="Draw only from these classes (the data set's names or indices, comma-separated).")
@click.option("--target", type=click.Choice(["label", "pred"]), default="label", show_default=True,
              help="Explain the true label's logit or the predicted one's.")
@click.option("--per-image-scale", is_flag=True, help="Scale each image's maps on their own (default: one scale).")
@click.option("--deletion-steps", type=click.IntRange(min=1), default=10, show_default=True)
@out_option("saliency")
@trust_option
def saliency(ckpts, sweep_dir, data_dir, dataset, model, model_activation, model_pool, device, out, **config):
    """Vanilla-gradient saliency maps of the same test images across models, with sparseness, complexity and
    deletion curves."""
    from ..analysis import SaliencyAnalysis
    analysis = SaliencyAnalysis(**config)
    runs = _runs(ckpts, sweep_dir, model, dataset, model_activation, model_pool)
    result, dest = _run_analysis(analysis, runs, out, sweep_dir, data_dir, device, dataset)
    print_table(result.summary, ("model", "n", "sparseness_mean", "sparseness_lo", "sparseness_hi",
                                  "complexity_mean", "deletion_auc_norm_mean", "accuracy", "rand_spearman",
                                  "rand_flag"))
    click.echo(f"outputs: {dest}")


@command()
@model_sources
@click.option("--eps-range", type=EpsRange(), default=None,
              help="NUM evenly spaced eps from START to STOP; fractions allowed [default: 0:8/255:5].")
@click.option("--eps", "eps_list", type=EpsList(), default=None,
              help="Explicit comma-separated eps values (e.g. 0,2/255,8/255).")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--alpha", type=EpsValue(), default=None, help="PGD step size (absolute; default 2.5 * eps / steps).")
@click.option("--restarts", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--n-images", type=click.IntRange(min=1), default=500, show_default=True,
              help="The first N test images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--attack", "attacks", type=click.Choice(ATTACKS), multiple=True,
              default=("pgd",), show_default=True,
              help="Repeat to add Square (gradient-free) or AutoAttack (APGD-CE, APGD-T, FAB-T, Square) beside PGD.")
@click.option("--n-queries", type=click.IntRange(min=1), default=1000, show_default=True, help="Square's budget.")
@click.option("--aa-steps", type=click.IntRange(min=1), default=100, show_default=True,
              help="AutoAttack's APGD/APGD-T/FAB-T iterations (100: the original standard version).")
@click.option("--aa-queries", type=click.IntRange(min=1), default=5000, show_default=True,
              help="AutoAttack's Square queries (5,000: standard).")
@click.option("--checks/--no-checks", default=True, show_default=True,
              help="Gradient-masking checks: eps 0.5, Square vs PGD, 2x steps and restarts, transfer from the "
                   "conv twin (masking_checks.csv).")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True, help="Attack randomness.")
@out_option("pgd")
@trust_option
def pgd(ckpts, sweep_dir, data_dir, dataset, model, model_activation, model_pool, device, eps_range, eps_list, out,
        **config):
    """Robust accuracy under PGD (L-inf) over a range of eps, one curve per model, with the area under it."""
    from ..analysis import RobustnessAnalysis
    eps = _eps(eps_range, eps_list, required=False)
    analysis = RobustnessAnalysis(**({} if eps is None else {"eps": eps}), **config)
    runs = _runs(ckpts, sweep_dir, model, dataset, model_activation, model_pool)
    result, dest = _run_analysis(analysis, runs, out, sweep_dir, data_dir, device, dataset)
    print_table(result.summary, ("model", "attack", "auc", "auc_lo", "auc_hi", "auc_rel", "clean_acc",
                                  "acc_at_eps_max", "masking_flags"))
    click.echo(f"outputs: {dest}")


@command()
@click.argument("directory", type=GivenPath())
@click.option("--pair", "pairs", multiple=True, type=PatternList(), metavar="A,B",
              help="Two variant names (b minus a); repeat for several [default: conv vs SCS at the study's "
                   "settings, for every architecture present].")
@click.option("--n-boot", type=click.IntRange(min=100, max=100_000), default=2000, show_default=True)
@out_option("compare")
@trust_option
def compare(directory, pairs, n_boot, out):
    """Paired accuracy differences between variants on the same test images: bootstrap interval and exact
    McNemar test per seed; over seeds, the per-seed differences pooled by random effects (HKSJ interval)."""
    from ..analysis import ComparisonAnalysis
    from ..errors import NoRunsError
    from ..rundir import RunsDir
    if any(len(p) != 2 for p in pairs):
        raise click.UsageError("--pair takes two variant names: A,B")
    analysis = ComparisonAnalysis(pairs=tuple(pairs) if pairs else None, n_boot=n_boot)
    runs = RunsDir(directory).runs()
    result, dest = _run_analysis(analysis, runs, out, directory)
    if not result.summary:  # an empty table is never the answer without its reason
        raise NoRunsError(_empty_comparison(runs, analysis.config.pairs))
    print_table(result.summary, ("a", "b", "seed", "seeds", "n", "acc_a", "acc_b", "diff", "lo", "hi", "tau",
                                 "mcnemar_p", "within_noise"))
    click.echo("seeds: the seeds a row rests on; n: test images of each seed; lo, hi: 95% interval of diff (b - a); "
               "tau: the spread of diff between seeds (seed all)")
    _warn_near_chance(runs, result.summary)
    for r in result.summary:
        if "clipped" in str(r.get("interval", "")):
            click.echo(escape_controls(f"{r['b']} - {r['a']} (seed {r['seed']}): interval "
                                       f"{r['interval'].split('; ')[-1]} (it reached beyond what a difference of "
                                       "accuracies can be)"))
    click.echo(f"outputs: {dest}")


def _warn_near_chance(runs, rows) -> None:
    """Say where a compared run stayed near chance: such a run did not train, and a 'significant' difference to
    it says nothing about the architectures (the report's claims leave those seeds out)."""
    from ..analysis.provenance import near_chance
    compared = {r.get(side) for r in rows for side in ("a", "b")}
    low = sorted({f"{row['variant']} seed {row['seed']} ({float(row['test_acc']):.3f})"
                  for row in (r.summary() for r in runs) if row.get("variant") in compared and near_chance(row)})
    if low:
        click.echo(escape_controls(f"warning: near chance (test accuracy below 1.5 / classes), did not train: "
                                   f"{'; '.join(low)}; their differences say nothing about the architectures"))


def _empty_comparison(runs, pairs) -> str:
    """Why `compare` found nothing to compare: no conv/SCS pair at the study's settings (one variant only, or
    runs of different data sets), a study pair whose runs were trained on different copies of the data (left out),
    or no seed at which both variants of a pair finished."""
    from ..analysis.compare import pair_data_difference, study_pairs, variant_axes
    axes = {r.name: variant_axes(r) for r in runs}
    variants = ", ".join(sorted(axes))
    asked, pairs = pairs, pairs or study_pairs(runs)
    if not pairs:
        datasets = sorted({v["dataset"] for v in axes.values()})
        why = (f"its runs are of different data sets ({', '.join(datasets)}), and a pair needs one"
               if len(datasets) > 1 else "it holds no conv (ReLU, max pooling) and SCS (no activation, max-abs "
               "pooling) variant of one architecture")
        return f"nothing to compare: {why}; variants: {variants}; name two with --pair A,B"
    finished = {r.name: set() for r in runs}
    for r in runs:
        if r.read_config().get("status") == "finished":
            finished[r.name].add(r.seed)
    for a, b in pairs:
        if not finished[a] or not finished[b]:
            return f"nothing to compare: --pair {a},{b}: no finished run of {a if not finished[a] else b}"
    for a, b in pairs if asked is None else ():  # a study pair on two copies of the data is left out
        differ = pair_data_difference(runs, a, b)
        if differ:
            return f"nothing to compare: {b} vs {a}: its runs were {differ}; compare runs trained on one copy"
    a, b = pairs[0]
    return f"nothing to compare: --pair {a},{b}: no seed at which both finished"


@command()
@click.argument("run_dirs", nargs=-1, type=GivenPath())
@click.option("--sweep", "sweep_dir", type=GivenPath(), default=None,
              help="A directory whose subdirectories are runs.")
@out_option("norms")
@trust_option
def norms(run_dirs, sweep_dir, out):
    """Weight and gradient L2 norms per layer over epochs (and batches), and the learned p per kernel."""
    from ..analysis import NormsAnalysis
    from ..rundir import RunDir, RunsDir
    if not run_dirs and not sweep_dir:
        raise click.UsageError("name runs: RUN_DIR ... or --sweep DIR")
    runs = [RunDir.of(d) for d in run_dirs] + (RunsDir(sweep_dir).runs() if sweep_dir else [])
    result, dest = _run_analysis(NormsAnalysis(), runs, out, sweep_dir)
    print_table([{k: ("" if v != v else round(v, 4)) if isinstance(v, float) else v for k, v in r.items()}
                 for r in result.summary],  # nan: no p (a conv layer or the head)
                ("run", "layer", "weight_l2_first", "weight_l2_last", "grad_l2_mean", "p_mean_last"))
    click.echo(f"outputs: {dest}")


@command()
@click.argument("directory", type=GivenPath())
@click.option("--out", type=OutPath(dir_okay=False), default=None, help="HTML file [DIR/report.html].")
@data_dir_option("For analyses that are (re)run")
@test_dataset_option()
@device_option()
@click.option("--saliency-images", type=click.IntRange(min=1), default=None,
              help="Images the saliency metrics average over [stored analysis', else 100].")
@click.option("--pgd-images", type=click.IntRange(min=1), default=None,
              help="Images attacked [stored analysis', else 200].")
@click.option("--eps-range", type=EpsRange(), default=None, help="[stored analysis', else 0:8/255:5].")
@click.option("--eps", "eps_list", type=EpsList(), default=None, help="Explicit eps values instead of a range.")
@click.option("--attack", "attacks", type=click.Choice(ATTACKS), multiple=True,
              help="Attacks of the robustness analysis [stored analysis', else pgd].")
@click.option("--paper-experiment", type=click.Choice(["initial", "followup"]), default=None,
              help="The study's experiment whose numbers stand beside ours [the one covering most variants].")
@trust_option
def report(directory, out, data_dir, dataset, device, saliency_images, pgd_images, eps_range, eps_list, attacks,
           paper_experiment):
    """One self-contained HTML report of a directory of runs. Analyses stored in DIR/analysis/ are reused when
    they cover the same runs and the options given here; the others are (re)run."""
    from ..analysis import Context, RobustnessAnalysis, SaliencyAnalysis, build_report
    from ..rundir import RunsDir
    from ..training import resolve_device
    eps = _eps(eps_range, eps_list, required=False)
    _check_out(RunsDir(directory).analysis_dir())  # where the analyses are (re)run and their figures drawn
    _check_out(out or RunsDir(directory).report_path, "file")
    asked = {"saliency": {"n_images": saliency_images},
             "pgd": {"n_images": pgd_images, "eps": eps, "attacks": tuple(attacks) or None}}
    asked = {name: {k: v for k, v in opts.items() if v is not None} for name, opts in asked.items()}
    for analysis in (SaliencyAnalysis, RobustnessAnalysis):  # an eps of 2 is refused now, not after other analyses
        analysis(**asked[analysis.name])
    context = Context(data_dir=data_dir, dataset=dataset, device=resolve_device(device),
                      log=lambda m: click.echo(escape_controls(m, keep_lines=True), err=True))
    click.echo(f"report: {build_report(directory, out, asked, context, paper_experiment)}")


