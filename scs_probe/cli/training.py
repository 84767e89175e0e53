"""Commands that train: one run (`train`), a grid of variants (`sweep`), and the fixed-p search (`tune`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..zoo import GRIDS
from .options import (
    EXECUTOR_FLAGS,
    MAX_P,
    MODEL_OPTION,
    arch_dir,
    arch_option,
    check_model_spec,
    command,
    executor_options,
    explicit,
    print_table,
    training_options,
    trust_option,
    variant_options,
)
from .types import SEED_MAX, GivenPath, IndexList, Name, OutPath, PatternList, PositiveRange


@command()
@variant_options
@training_options
@click.option("--out", type=OutPath(file_okay=False), default=None, help="Run directory [./runs/<variant>].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--init-from", type=GivenPath(), default=None,
              help="Start from the weights of another checkpoint of this architecture (matching shapes).")
@trust_option
@click.pass_context
def train(ctx, variant, quiet, resume, **kw):
    """Train one variant; writes checkpoint.pt, config.json, history.csv, norms.csv, exponents.csv."""
    from ..training import TrainOptions
    from ..training import train as run_train
    options = TrainOptions(variant=variant, **kw)
    result = run_train(options, resume=resume, explicit=explicit(ctx) - {"quiet", "resume"}, progress=not quiet)
    n = result.get("epochs_done")
    click.echo(f"done: {result['variant_name']} ({n} epoch{'' if n == 1 else 's'}) in {options.run_dir()}")


@command()
@arch_option()
@MODEL_OPTION
@click.option("--grid", type=click.Choice(GRIDS), default=GRIDS[0], show_default=True,
              help="study: the variants of the paper's table; full: every combination of the axes.")
@click.option("--only", type=PatternList(), default=None,
              help="Comma-separated variant names or globs (e.g. '*-scs-*') to restrict the grid to.")
@click.option("--seeds", type=IndexList(), default=None,
              help="Comma-separated seeds: every variant once per seed, into OUT/<variant>-seed<N>/ "
                   "(default: once, with --seed, into OUT/<variant>/).")
@training_options
@click.option("--out", type=OutPath(file_okay=False), default=None,
              help="Sweep directory [./sweeps/<arch>]; with Ray on a cluster, storage every node sees.")
@executor_options
@trust_option
def sweep(arch, model, grid, only, seeds, quiet, out, executor, **kw):
    """Train every variant of a grid into OUT/<variant>/ and write OUT/summary.csv: one after another, N at once
    (--jobs N), or as tasks on a Ray cluster (--executor ray)."""
    from ..rundir import RunsDir
    from ..training import TrainOptions, select_variants
    from ..training import sweep as run_sweep
    from ..zoo import Variant
    if model:
        check_model_spec(model, click.get_current_context())
    arch = model or arch
    base = TrainOptions(variant=Variant(arch), **kw)
    variants = select_variants(arch, grid, list(only) if only else None)
    out_dir = Path(out or Path("sweeps") / arch_dir(arch))
    rows = run_sweep(variants, out_dir, base, progress=not quiet, seeds=list(seeds) if seeds else None,
                     explicit=explicit(click.get_current_context()) - EXECUTOR_FLAGS, executor=executor)
    print_table(rows, ("variant", "seed", "test_acc", "train_seconds_mean", "eval_seconds_mean", "params", "status"))
    click.echo(f"summary: {RunsDir(out_dir).summary_path}")


@command()
@variant_options
@click.option("--n-trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Complete or pruned trials the study should hold (run again to continue a study).")
@click.option("--p-range", type=PositiveRange(max=MAX_P), default="0.5:4", show_default=True,
              help="Fixed p drawn from LOW:HIGH on a log scale.")
@click.option("--search", type=PatternList(), default="p", show_default=True,
              help="p, or p,max_lr to search the learning rate too (--lr-range).")
@click.option("--lr-range", type=PositiveRange(max=10), default="0.001:0.1", show_default=True)
@click.option("--pruner", type=click.Choice(["median", "halving", "none"]), default="median", show_default=True,
              help="Stops unpromising trials from their per-epoch validation accuracy.")
@click.option("--storage", type=Name(), default=None,
              help="Optuna storage URL [sqlite:///OUT/study.db]; a PostgreSQL URL lets several tune processes share "
                   "one study.")
@click.option("--study-name", type=Name(), default="scs-fixed-p", show_default=True,
              help="The study in --storage to create or continue.")
@click.option("--tune-seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True,
              help="TPE sampler seed.")
@training_options
@click.option("--out", type=OutPath(file_okay=False), default=None, help="Study directory [./tune/<arch>].")
@executor_options
@trust_option
def tune(variant, n_trials, p_range, search, lr_range, pruner, storage, study_name, tune_seed, quiet, out, executor,
         **kw):
    """Search a fixed p for SCS (the study's Optuna search), choosing and pruning on validation accuracy (a split
    of the training images, --val-split): trials under OUT/trials/<n>/, OUT/trials.csv, OUT/tune.png, the best
    trial and its test accuracy on stdout."""
    from ..rundir import StudyDir
    from ..training import TrainOptions
    from ..training.tune import TuneConfig, near_chance_warning, trial_rows
    from ..training.tune import tune as run_tune
    config = TuneConfig(n_trials=n_trials, p_range=p_range, lr_range=lr_range, search=tuple(search),
                        pruner=pruner, storage=storage, study_name=study_name, seed=tune_seed)
    base = TrainOptions(variant=variant, **kw)
    out_dir = Path(out or Path("tune") / arch_dir(variant.arch))
    study = run_tune(base, out_dir, config, progress=not quiet, executor=executor)
    rows = trial_rows(study)
    print_table(rows, ("number", "p", "max_lr", "state", "val_acc", "test_acc", "epochs"))
    try:
        best = study.best_trial
        test = best.user_attrs.get("test_acc")
        click.echo(f"best: trial {best.number}, " + ", ".join(f"{k}={v:.4g}" for k, v in best.params.items())
                   + f", validation accuracy {best.value:.4f} on {best.user_attrs.get('n_val', '?')} held-out "
                     "training images (chosen on it); test accuracy "
                   + (f"{test:.4f}" if test is not None else "?") + " (reported, not used to choose) "
                   + f"({StudyDir(out_dir).trial(best.number)})")
    except ValueError:
        click.echo("best: no trial completed")
    warning = near_chance_warning(rows, out_dir)
    if warning:
        click.echo(warning)
    click.echo(f"trials: {StudyDir(out_dir).trials_path}")
