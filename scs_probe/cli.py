"""The `scs-probe` command line. Thin: each command turns flags into the library's values and calls it.

The library raises typed errors (`scs_probe.errors`) that speak of options and files; `main` maps each to one
line on stderr naming the flag, and an exit code: 2 for usage errors, 1 for bad files and failed runs, 130 when
interrupted.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path

import click

from . import errors
from .cli_types import ClassList, EpsList, EpsRange, EpsValue, IndexList, PatternList, PositiveRange
from .data import DATA_ENV
from .rundir import RunDir, RunsDir, StudyDir
from .training.options import DEVICES, TrainOptions
from .zoo import AXES, GRIDS, Variant, axis_choices, list_archs

# Library option names whose flag is not simply --option-name.
FLAGS = {"eps": "--eps-range/--eps", "attacks": "--attack"}
DEFAULT_VARIANT = TrainOptions().variant


def flag(option: str) -> str:
    return FLAGS.get(option, "--" + option.replace("_", "-"))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="scs-probe")
@click.option("--backend", type=click.Choice(["auto", "eager", "compiled"], case_sensitive=False), default=None,
              help="How sharpened layers run their elementwise work: fused by TorchInductor (compiled; auto: for "
                   "large batches) or as eager torch ops [env SCS_PROBE_BACKEND; default auto].")
def cli(backend):
    """Does Sharpened Cosine Similarity beat convolution? Train the study's variants and compare them."""
    from .layers import get_backend, set_backend
    if backend is not None:
        set_backend(backend)
    else:
        try:
            get_backend()  # a bad $SCS_PROBE_BACKEND is a usage error now, not a traceback mid-run
        except ValueError as e:
            raise click.UsageError(str(e)) from None


def _options(*opts):
    """Apply click options in the order listed (as they appear in --help)."""
    def deco(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return deco


MODEL_OPTION = click.option(
    "--model", default=None, metavar="SPEC",
    help="A model from outside the zoo instead of --arch: torchvision:NAME, timm:NAME or package.module:factory, "
         "converted to SCS by --layer/--activation keep|none/--pool keep|maxabs.")


def variant_options(fn):
    """--arch and one flag per variant axis (choices from the registry), passed on as one `variant`."""
    axes = [click.option(f"--{axis.replace('_', '-')}", type=click.Choice([str(v) for v in axis_choices(axis)]),
                         default=str(getattr(DEFAULT_VARIANT, axis)), show_default=True) for axis in AXES]

    @_options(click.option("--arch", type=click.Choice(list_archs()), default=DEFAULT_VARIANT.arch,
                           show_default=True), MODEL_OPTION, *axes,
              click.option("--fixed-p", type=click.FloatRange(min=0.1), default=None,
                           help="Fix every sharpened layer's p to this value (1: plain cosine similarity)."))
    @functools.wraps(fn)
    def inner(*args, arch, model, fixed_p, **kwargs):
        values = {axis: kwargs.pop(axis) for axis in AXES}
        values["image_size"] = int(values["image_size"])
        if model:
            ctx = click.get_current_context()
            _check_model_spec(model, ctx)
            for axis in ("activation", "pool"):  # a converted model keeps its own unless asked
                if ctx.get_parameter_source(axis) == click.core.ParameterSource.DEFAULT:
                    values[axis] = "keep"
        return fn(*args, variant=Variant(model or arch, **values, fixed_p=fixed_p), **kwargs)
    return inner


def _check_model_spec(model: str, ctx: click.Context) -> None:
    if ctx.get_parameter_source("arch") not in (click.core.ParameterSource.DEFAULT, None):
        raise click.UsageError("give --arch (a zoo model) or --model (one from elsewhere), not both")
    if ":" not in model:
        raise click.UsageError(f"--model: {model!r} is not a model spec: torchvision:NAME, timm:NAME or "
                               "package.module:factory (zoo models: --arch)")



def _device_option():
    return click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                        help="auto: CUDA, then MPS, then CPU.")


def _test_dataset_option():
    return click.option("--dataset", default=None, metavar="NAME",
                        help="Test images from this data set [the one the runs were trained on].")


def _arch_dir(arch: str) -> str:
    """An architecture (or model spec: torchvision:resnet18) as a folder name."""
    return arch.replace(":", "-")


def _data_dir_option(help_text: str):
    return click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                        help=f"{help_text} [env {DATA_ENV}; default ./data, downloaded there if missing].")


training_options = _options(
    click.option("--epochs", type=click.IntRange(min=1), default=None,
                 help="Default: the architecture's preset (800 gallery, 200 ResNets)."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: the preset."),
    click.option("--max-lr", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="OneCycleLR peak; default: the preset."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Initial weights (shared by all variants) and data order."),
    _device_option(),
    click.option("--dataset", default="cifar10", show_default=True, metavar="NAME",
                 help="cifar10, cifar100, svhn, mnist, fashion-mnist or imagefolder:DIR (DIR/train, DIR/val); "
                      "grayscale sets are repeated to three channels, images resized to the variant's size."),
    _data_dir_option("Folder holding the data sets in torchvision's layout"),
    click.option("--limit-train", type=click.IntRange(min=1), default=None, help="Use the first N images."),
    click.option("--limit-test", type=click.IntRange(min=1), default=None, help="Use the first N images."),
    click.option("--norms-every-batch", is_flag=True, help="Also record weight/grad norms per mini-batch."),
    click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                 help="DataLoader worker processes."),
    click.option("--amp", is_flag=True, help="bfloat16 autocast where the device supports it."),
    click.option("--quiet", is_flag=True, help="No progress bars (they are off anyway when stderr is not a "
                                               "terminal)."),
)


EXECUTOR_FLAGS = {"executor", "jobs", "address", "cpus_per_run", "gpus_per_run", "max_retries"}


def executor_options(fn):
    """--executor, --jobs and Ray's options, passed on as one `executor` (see training.executors)."""
    @_options(
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: worker processes on this machine; ray: one Ray task per run."),
        click.option("--jobs", type=click.IntRange(min=1), default=None,
                     help="Runs at once [local: 1, each with its share of CPU threads and one GPU where there are "
                          "GPUs; ray: as many as the cluster's resources allow]."),
        click.option("--address", default=None,
                     help="Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT [start a local Ray instance]."),
        click.option("--cpus-per-run", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Ray CPUs per run, also its torch threads [1]."),
        click.option("--gpus-per-run", type=click.FloatRange(min=0), default=None,
                     help="Ray GPUs per run [1 where the cluster has GPUs, else 0]."),
        click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True,
                     help="Ray retries of a run whose worker died; it resumes from its last checkpoint."))
    @functools.wraps(fn)
    def inner(*args, executor, jobs, address, cpus_per_run, gpus_per_run, max_retries, **kwargs):
        from .training.executors import make_executor
        return fn(*args, executor=make_executor(executor, jobs, address, cpus_per_run, gpus_per_run, max_retries),
                  **kwargs)
    return inner


def _explicit(ctx: click.Context) -> set[str]:
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)}


def _print_table(rows: list[dict], columns) -> None:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))


# ------------------------------------------------------------------------------------------------ training

@cli.command()
@variant_options
@training_options
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory [./runs/<variant>].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--init-from", type=click.Path(), default=None,
              help="Start from the weights of another checkpoint of this architecture (matching shapes).")
@click.pass_context
def train(ctx, variant, quiet, resume, **kw):
    """Train one variant; writes checkpoint.pt, config.json, history.csv, norms.csv, exponents.csv."""
    from .training import train as run_train
    options = TrainOptions(variant=variant, **kw)
    result = run_train(options, resume=resume, explicit=_explicit(ctx) - {"quiet", "resume"}, progress=not quiet)
    n = result.get("epochs_done")
    click.echo(f"done: {result['variant_name']} ({n} epoch{'' if n == 1 else 's'}) in {options.run_dir()}")


@cli.command()
@click.option("--arch", type=click.Choice(list_archs()), default=DEFAULT_VARIANT.arch, show_default=True)
@MODEL_OPTION
@click.option("--grid", type=click.Choice(GRIDS), default=GRIDS[0], show_default=True,
              help="study: the variants of the paper's table; full: every combination of the axes.")
@click.option("--only", type=PatternList(), default=None,
              help="Comma-separated variant names or globs (e.g. '*-scs-*') to restrict the grid to.")
@click.option("--seeds", type=IndexList(), default=None,
              help="Comma-separated seeds: every variant once per seed, into OUT/<variant>-seed<N>/ "
                   "(default: once, with --seed, into OUT/<variant>/).")
@training_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Sweep directory [./sweeps/<arch>]; with Ray on a cluster, storage every node sees.")
@executor_options
def sweep(arch, model, grid, only, seeds, quiet, out, executor, **kw):
    """Train every variant of a grid into OUT/<variant>/ and write OUT/summary.csv: one after another, N at once
    (--jobs N), or as tasks on a Ray cluster (--executor ray)."""
    from .training import select_variants
    from .training import sweep as run_sweep
    if model:
        _check_model_spec(model, click.get_current_context())
    arch = model or arch
    base = TrainOptions(variant=Variant(arch), **kw)
    variants = select_variants(arch, grid, list(only) if only else None)
    out_dir = Path(out or Path("sweeps") / _arch_dir(arch))
    rows = run_sweep(variants, out_dir, base, progress=not quiet, seeds=list(seeds) if seeds else None,
                     explicit=_explicit(click.get_current_context()) - EXECUTOR_FLAGS, executor=executor)
    _print_table(rows, ("variant", "seed", "test_acc", "train_seconds_mean", "eval_seconds_mean", "params", "status"))
    click.echo(f"summary: {RunsDir(out_dir).summary_path}")


@cli.command()
@variant_options
@click.option("--n-trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Complete or pruned trials the study should hold (run again to continue a study).")
@click.option("--p-range", type=PositiveRange(), default="0.5:4", show_default=True,
              help="Fixed p drawn from LOW:HIGH on a log scale.")
@click.option("--search", type=PatternList(), default="p", show_default=True,
              help="p, or p,max_lr to search the learning rate too (--lr-range).")
@click.option("--lr-range", type=PositiveRange(), default="0.001:0.1", show_default=True)
@click.option("--pruner", type=click.Choice(["median", "halving", "none"]), default="median", show_default=True,
              help="Stops unpromising trials from their per-epoch test accuracy.")
@click.option("--storage", default=None, help="Optuna storage URL [sqlite:///OUT/study.db]; a PostgreSQL URL "
                                                "lets several tune processes share one study.")
@click.option("--study-name", default="scs-fixed-p", show_default=True)
@click.option("--tune-seed", type=int, default=0, show_default=True, help="TPE sampler seed.")
@training_options
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Study directory [./tune/<arch>].")
@executor_options
def tune(variant, n_trials, p_range, search, lr_range, pruner, storage, study_name, tune_seed, quiet, out, executor,
         **kw):
    """Search a fixed p for SCS (the study's Optuna search): trials under OUT/trials/<n>/, OUT/trials.csv,
    OUT/tune.png, the best trial on stdout."""
    from .tune import TuneConfig
    from .tune import tune as run_tune
    config = TuneConfig(n_trials=n_trials, p_range=p_range, lr_range=lr_range, search=tuple(search),
                        pruner=pruner, storage=storage, study_name=study_name, seed=tune_seed)
    base = TrainOptions(variant=variant, **kw)
    out_dir = Path(out or Path("tune") / _arch_dir(variant.arch))
    study = run_tune(base, out_dir, config, progress=not quiet, executor=executor)
    from .tune import trial_rows
    _print_table(trial_rows(study), ("number", "p", "max_lr", "state", "final_test_acc", "epochs"))
    try:
        best = study.best_trial
        click.echo(f"best: trial {best.number}, " + ", ".join(f"{k}={v:.4g}" for k, v in best.params.items())
                   + f", test accuracy {best.value:.4f} ({StudyDir(out_dir).trial(best.number)})")
    except ValueError:
        click.echo("best: no trial completed")
    click.echo(f"trials: {StudyDir(out_dir).trials_path}")


@cli.command()
@click.option("--arch", type=click.Choice(list_archs()), default=None, help="Only this architecture.")
@MODEL_OPTION
def zoo(arch, model):
    """List architectures, their variant axes and the parameter count of every variant."""
    import torch

    from .zoo import build_model, count_params, get_arch, variant_grid
    if model:
        _check_model_spec(model, click.get_current_context())
    for name in [model] if model else [arch] if arch else list_archs():
        spec = get_arch(name)
        click.echo(f"{name}  ({spec.source}; preset: batch {spec.batch_size}, max_lr {spec.max_lr}, "
                   f"{spec.epochs} epochs, {spec.augment} augmentation)")
        axes = ", ".join(f"{k} {'|'.join(map(str, v))}" for k, v in spec.axes.items())
        click.echo(f"  axes: {axes}")
        stated = f"{spec.stated_params:,}" if spec.stated_params else "-"
        click.echo(f"  stated parameter count: {stated}")
        for v in variant_grid(name, "full"):
            if v.image_size != spec.axes["image_size"][0]:
                continue  # image size does not change the parameter count
            with torch.device("meta"):
                n = count_params(build_model(v, init=False))
            click.echo(f"    {v.name:<48} {n:>12,}")


@cli.command()
@click.argument("ckpt", type=click.Path())
def inspect(ckpt):
    """Print a checkpoint's variant, epochs, accuracy and options (nothing in it is executed)."""
    from .checkpoint import checkpoint_variant
    run = RunDir.of(ckpt)
    c = run.load_checkpoint()
    v = checkpoint_variant(c, run.checkpoint_path)
    o, hist = c.get("options", {}), c.get("history", [])
    click.echo(f"variant:   {v.name}")
    click.echo("axes:      " + " ".join(f"{k}={val}" for k, val in v.axes().items())
               + (f" fixed_p={v.fixed_p}" if v.fixed_p is not None else ""))
    click.echo(f"status:    {c.get('status', 'unknown')}, epoch {c['epoch']} of {o.get('epochs', '?')}")
    if c.get("diverged"):
        click.echo(f"diverged:  {c['diverged'].get('reason')}")
    if hist:
        best = max(float(r["test_acc"]) for r in hist)
        click.echo(f"accuracy:  test {float(hist[-1]['test_acc']):.2%} (best {best:.2%}), "
                   f"train {float(hist[-1]['train_acc']):.2%}")
        secs = [float(r["train_seconds"]) for r in hist]
        click.echo(f"seconds:   {sum(secs) / len(secs):.1f} train per epoch, "
                   f"{sum(float(r['eval_seconds']) for r in hist) / len(hist):.1f} eval")
    click.echo(f"params:    {c.get('params', '?'):,}" if isinstance(c.get("params"), int) else "params:    ?")
    shown = {k: val for k, val in o.items() if val is not None and val is not False}
    click.echo("options:   " + " ".join(f"{k}={val}" for k, val in shown.items()))
    if c.get("data"):
        click.echo("data:      " + " ".join(f"{k}={val}" for k, val in c["data"].items()))
    if c.get("versions"):
        click.echo("versions:  " + " ".join(f"{k}={val}" for k, val in c["versions"].items()))


# ------------------------------------------------------------------------------------------------ analyses

model_sources = _options(
    click.option("--ckpt", "ckpts", multiple=True, type=click.Path(),
                 help="A checkpoint (or run directory); repeat for several."),
    click.option("--sweep", "sweep_dir", type=click.Path(), default=None,
                 help="A directory whose subdirectories are runs."),
    _data_dir_option("Folder holding the data sets in torchvision's layout"),
    _test_dataset_option(),
    click.option("--model", default=None, metavar="SPEC",
                 help="The --ckpt files are plain state dicts of this model (torchvision:NAME, timm:NAME, "
                      "package.module:factory; plain or converted to SCS/SDP, as its keys tell)."),
    click.option("--activation", "model_activation", type=click.Choice(["keep", "none"]), default="keep",
                 show_default=True, help="With --model: the state dicts' model had its activations removed (none)."),
    click.option("--pool", "model_pool", type=click.Choice(["keep", "maxabs"]), default="keep", show_default=True,
                 help="With --model: its max pooling was made max-abs."),
    _device_option(),
)


def _runs(ckpts, sweep_dir, model=None, dataset=None, activation="keep", pool="keep"):
    from .analysis import resolve_runs
    if not ckpts and not sweep_dir:
        raise click.UsageError("name the models: --ckpt CKPT (repeatable) or --sweep DIR")
    if model and not ckpts:
        raise click.UsageError("--model names the model of the --ckpt state dicts: give --ckpt FILE")
    if not model and (activation, pool) != ("keep", "keep"):
        raise click.UsageError("--activation and --pool describe --model state dicts: give --model SPEC")
    return resolve_runs(ckpts, sweep_dir, model, dataset, activation, pool)


def _run_analysis(analysis, runs, out, sweep_dir, data_dir=None, device="auto", dataset=None):
    from .analysis import Context
    from .training import resolve_device
    dest = Path(out) if out else RunsDir(sweep_dir or ".").analysis_dir(analysis.name)
    context = Context(data_dir=data_dir, dataset=dataset, device=resolve_device(device))
    result = analysis.run(runs, dest, context)
    return result, dest


def _out_option(name: str):
    return click.option("--out", type=click.Path(file_okay=False), default=None,
                        help=f"Output folder [SWEEP/analysis/{name} or ./analysis/{name}].")


@cli.command()
@model_sources
@click.option("--seed", type=int, default=0, show_default=True, help="Draws the images.")
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
@_out_option("saliency")
def saliency(ckpts, sweep_dir, data_dir, dataset, model, model_activation, model_pool, device, out, **config):
    """Vanilla-gradient saliency maps of the same test images across models, with sparseness, complexity and
    deletion curves."""
    from .analysis import SaliencyAnalysis
    analysis = SaliencyAnalysis(**config)
    runs = _runs(ckpts, sweep_dir, model, dataset, model_activation, model_pool)
    result, dest = _run_analysis(analysis, runs, out, sweep_dir, data_dir, device, dataset)
    _print_table(result.summary, ("model", "n", "sparseness_mean", "sparseness_lo", "sparseness_hi",
                                  "complexity_mean", "deletion_auc_norm_mean", "accuracy", "rand_spearman",
                                  "rand_flag"))
    click.echo(f"outputs: {dest}")


def _eps(eps_range, eps_list, required: bool):
    if eps_range is not None and eps_list is not None or (required and eps_range is None and eps_list is None):
        raise click.UsageError("give exactly one of --eps-range START:STOP:NUM and --eps LIST")
    return eps_range if eps_range is not None else eps_list


@cli.command()
@model_sources
@click.option("--eps-range", type=EpsRange(), default=None,
              help="NUM evenly spaced eps from START to STOP; fractions allowed (0:8/255:5).")
@click.option("--eps", "eps_list", type=EpsList(), default=None,
              help="Explicit comma-separated eps values (e.g. 0,2/255,8/255).")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--alpha", type=EpsValue(), default=None, help="PGD step size (absolute; default 2.5 * eps / steps).")
@click.option("--restarts", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--n-images", type=click.IntRange(min=1), default=500, show_default=True,
              help="The first N test images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--attack", "attacks", type=click.Choice(["pgd", "square", "autoattack"]), multiple=True,
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
@click.option("--seed", type=int, default=0, show_default=True, help="Attack randomness.")
@_out_option("pgd")
def pgd(ckpts, sweep_dir, data_dir, dataset, model, model_activation, model_pool, device, eps_range, eps_list, out,
        **config):
    """Robust accuracy under PGD (L-inf) over a range of eps, one curve per model, with the area under it."""
    from .analysis import RobustnessAnalysis
    analysis = RobustnessAnalysis(eps=_eps(eps_range, eps_list, required=True), **config)
    runs = _runs(ckpts, sweep_dir, model, dataset, model_activation, model_pool)
    result, dest = _run_analysis(analysis, runs, out, sweep_dir, data_dir, device, dataset)
    _print_table(result.summary, ("model", "attack", "auc", "auc_lo", "auc_hi", "auc_rel", "clean_acc",
                                  "acc_at_eps_max", "masking_flags"))
    click.echo(f"outputs: {dest}")


@cli.command()
@click.argument("directory", type=click.Path())
@click.option("--pair", "pairs", multiple=True, type=PatternList(), metavar="A,B",
              help="Two variant names (b minus a); repeat for several [default: conv vs SCS at the study's "
                   "settings, for every architecture present].")
@click.option("--n-boot", type=click.IntRange(min=100), default=2000, show_default=True)
@_out_option("compare")
def compare(directory, pairs, n_boot, out):
    """Paired accuracy differences between variants on the same test images: bootstrap interval and exact
    McNemar test per seed, a bootstrap over seeds and images."""
    from .analysis import ComparisonAnalysis
    if any(len(p) != 2 for p in pairs):
        raise click.UsageError("--pair takes two variant names: A,B")
    analysis = ComparisonAnalysis(pairs=tuple(pairs) if pairs else None, n_boot=n_boot)
    result, dest = _run_analysis(analysis, RunsDir(directory).runs(), out, directory)
    _print_table(result.summary, ("a", "b", "seed", "n", "acc_a", "acc_b", "diff", "lo", "hi", "mcnemar_p",
                                  "within_noise"))
    click.echo(f"outputs: {dest}")


@cli.command()
@click.argument("run_dirs", nargs=-1, type=click.Path())
@click.option("--sweep", "sweep_dir", type=click.Path(), default=None,
              help="A directory whose subdirectories are runs.")
@_out_option("norms")
def norms(run_dirs, sweep_dir, out):
    """Weight and gradient L2 norms per layer over epochs (and batches), and the learned p per kernel."""
    from .analysis import NormsAnalysis
    if not run_dirs and not sweep_dir:
        raise click.UsageError("name runs: RUN_DIR ... or --sweep DIR")
    runs = [RunDir.of(d) for d in run_dirs] + (RunsDir(sweep_dir).runs() if sweep_dir else [])
    result, dest = _run_analysis(NormsAnalysis(), runs, out, sweep_dir)
    _print_table([{k: ("" if v != v else round(v, 4)) if isinstance(v, float) else v for k, v in r.items()}
                  for r in result.summary],  # nan: no p (a conv layer or the head)
                 ("run", "layer", "weight_l2_first", "weight_l2_last", "grad_l2_mean", "p_mean_last"))
    click.echo(f"outputs: {dest}")


@cli.command()
@click.argument("directory", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="HTML file [DIR/report.html].")
@_data_dir_option("For analyses that are (re)run")
@_test_dataset_option()
@_device_option()
@click.option("--saliency-images", type=click.IntRange(min=1), default=None,
              help="Images the saliency metrics average over [stored analysis', else 100].")
@click.option("--pgd-images", type=click.IntRange(min=1), default=None,
              help="Images attacked [stored analysis', else 200].")
@click.option("--eps-range", type=EpsRange(), default=None, help="[stored analysis', else 0:8/255:5].")
@click.option("--eps", "eps_list", type=EpsList(), default=None, help="Explicit eps values instead of a range.")
@click.option("--attack", "attacks", type=click.Choice(["pgd", "square", "autoattack"]), multiple=True,
              help="Attacks of the robustness analysis [stored analysis', else pgd].")
@click.option("--paper-experiment", type=click.Choice(["initial", "followup"]), default=None,
              help="The study's experiment whose numbers stand beside ours [the one covering most variants].")
def report(directory, out, data_dir, dataset, device, saliency_images, pgd_images, eps_range, eps_list, attacks,
           paper_experiment):
    """One self-contained HTML report of a directory of runs. Analyses stored in DIR/analysis/ are reused when
    they cover the same runs and the options given here; the others are (re)run."""
    from .analysis import Context, build_report
    from .training import resolve_device
    eps = _eps(eps_range, eps_list, required=False)
    asked = {"saliency": {"n_images": saliency_images},
             "pgd": {"n_images": pgd_images, "eps": eps, "attacks": tuple(attacks) or None}}
    asked = {name: {k: v for k, v in opts.items() if v is not None} for name, opts in asked.items()}
    context = Context(data_dir=data_dir, dataset=dataset, device=resolve_device(device),
                      log=lambda m: click.echo(m, err=True))
    click.echo(f"report: {build_report(directory, out, asked, context, paper_experiment)}")


# ------------------------------------------------------------------------------------------------ entry point

def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def _message(e: errors.ScsProbeError) -> str:
    """The library's message, with the flags that act on it."""
    if isinstance(e, errors.RunExistsError):
        return f"{e}; pass --resume to continue it or choose another --out"
    if isinstance(e, errors.ResumeConflict):
        return f"{e} ({flag(e.option)})"
    if isinstance(e, errors.DataError) and e.missing:
        return f"{e}; pass --data-dir DIR"
    return str(e)


def main(argv=None) -> int:
    # Large CPU tensors on transparent huge pages: without this, every fresh activation costs thousands of page
    # faults, which on a VM can take longer than the elementwise pass that fills it. Set it to 0 to opt out.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    warnings.showwarning = _one_line_warnings
    try:
        rv = cli.main(args=argv, prog_name="scs-probe", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo("\nscs-probe: interrupted; checkpoints are intact (train continues with --resume, sweep and tune "
                   "when run again)", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"scs-probe: error: {' '.join(e.format_message().split())}", err=True)
        return e.exit_code
    except errors.OptionError as e:
        click.echo(f"scs-probe: error: {flag(e.option)}: {' '.join(e.message.split())}", err=True)
        return 2
    except errors.DeviceUnavailable as e:
        click.echo(f"scs-probe: error: --device: {e}", err=True)
        return 2
    except errors.ResumeConflict as e:  # an option that cannot change on resume: a usage error
        click.echo(f"scs-probe: error: {' '.join(_message(e).split())}", err=True)
        return 2
    except errors.ScsProbeError as e:
        click.echo(f"scs-probe: error: {' '.join(_message(e).split())}", err=True)
        return 1
