"""The `scs-probe` command line. Thin: each command parses options and calls the library.

Every expected failure (bad option, missing or foreign checkpoint, missing data, diverged run) ends in one line
on stderr and a non-zero exit code: 2 for usage errors, 1 for bad files and failed runs, 130 when interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import click

from .zoo.variants import ACTIVATIONS, LAYERS, NORMS, POOLS

ARCHS = ("rohrer25k", "rohrer47k", "rohrer68k", "rohrer100k", "rohrer583k", "resnet18", "resnet20")


class Failure(click.ClickException):
    """A run-time failure reported as one line with exit code 1."""
    exit_code = 1


def _fail_on(*errors):
    """Turn the library's expected exceptions into one-line CLI failures."""
    import functools

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except errors as e:
                raise Failure(str(e)) from None
        return inner
    return wrap


def _validated(make):
    """Build options; a ValueError (an unknown or impossible variant) is a usage error."""
    try:
        return make()
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _known_errors():
    from .data import DataError
    from .training.runs import NoRunsError
    from .training import CheckpointError, TrainingDiverged, TrainingError
    return DataError, NoRunsError, CheckpointError, TrainingDiverged, TrainingError


def _explicit(ctx: click.Context) -> set[str]:
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="scs-probe")
@click.option("--kernels", type=click.Choice(["auto", "eager", "compiled"]), envvar="SCS_PROBE_KERNELS",
              default="auto", show_default=True,
              help="How sharpened layers run their elementwise work: fused by TorchInductor (compiled; auto: for "
                   "large batches) or as eager torch ops. Env: SCS_PROBE_KERNELS.")
def cli(kernels):
    """Does Sharpened Cosine Similarity beat convolution? Train the study's variants and compare them."""
    from .layers import set_kernels
    set_kernels(kernels)


# ------------------------------------------------------------------------------------------------ training

def variant_options(fn):
    """The variant axes shared by train and the analyses that build models."""
    opts = [
        click.option("--arch", type=click.Choice(ARCHS), default="rohrer100k", show_default=True),
        click.option("--layer", type=click.Choice(LAYERS), default="scs", show_default=True),
        click.option("--activation", type=click.Choice(ACTIVATIONS), default="none", show_default=True),
        click.option("--pool", type=click.Choice(POOLS), default="maxabs", show_default=True),
        click.option("--norm", type=click.Choice(NORMS), default="none", show_default=True),
        click.option("--image-size", type=click.Choice(["32", "224"]), default="32", show_default=True),
        click.option("--fixed-p", type=click.FloatRange(min=0.1), default=None,
                     help="Fix every sharpened layer's p to this value (1: plain cosine similarity)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def training_options(fn):
    """Options shared by train and sweep."""
    opts = [
        click.option("--epochs", type=click.IntRange(min=1), default=None,
                     help="Default: the architecture's preset (800 gallery, 200 ResNets)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: the preset."),
        click.option("--max-lr", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="OneCycleLR peak; default: the preset."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Initial weights (shared by all variants) and data order."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto",
                     show_default=True),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None, envvar="SCS_PROBE_DATA",
                     help="Folder holding cifar-10-batches-py [env SCS_PROBE_DATA; default ./data, downloaded]."),
        click.option("--limit-train", type=click.IntRange(min=1), default=None, help="Use the first N images."),
        click.option("--limit-test", type=click.IntRange(min=1), default=None, help="Use the first N images."),
        click.option("--norms-every-batch", is_flag=True, help="Also record weight/grad norms per mini-batch."),
        click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="DataLoader worker processes."),
        click.option("--amp", is_flag=True, help="bfloat16 autocast where the device supports it."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@cli.command()
@variant_options
@training_options
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory [./runs/<variant>].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--init-from", type=click.Path(), default=None,
              help="Start from the weights of another checkpoint of this architecture (matching shapes).")
@click.pass_context
def train(ctx, quiet, resume, **kw):
    """Train one variant; writes checkpoint.pt, config.json, history.csv, norms.csv, exponents.csv."""
    from .training import TrainOptions, train as run_train
    kw["image_size"] = int(kw["image_size"])
    options = TrainOptions(**kw)
    _validated(options.resolved)  # an unknown or impossible variant is a usage error

    @_fail_on(*_known_errors())
    def go():
        explicit = _explicit(ctx) - {"quiet", "resume"}
        result = run_train(options, resume=resume, explicit=explicit, progress=not quiet)
        click.echo(f"done: {result['variant_name']} ({result.get('epochs_done')} epochs) in {options.run_dir()}")
    go()


@cli.command()
@click.option("--arch", type=click.Choice(ARCHS), default="rohrer100k", show_default=True)
@click.option("--grid", type=click.Choice(["study", "full"]), default="study", show_default=True,
              help="study: the variants of the paper's table; full: every combination of the axes.")
@click.option("--only", default=None, metavar="PATTERNS",
              help="Comma-separated variant names or globs (e.g. '*-scs-*') to restrict the grid to.")
@training_options
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Sweep directory [./sweeps/<arch>].")
def sweep(arch, grid, only, quiet, out, **kw):
    """Train every variant of a grid into OUT/<variant>/ and write OUT/summary.csv."""
    from .training import TrainOptions, select_variants, sweep as run_sweep
    base = _validated(lambda: TrainOptions(arch=arch, **kw).resolved())
    patterns = [p.strip() for p in only.split(",") if p.strip()] if only else None
    variants = _validated(lambda: select_variants(arch, grid, patterns))

    @_fail_on(*_known_errors())
    def go():
        out_dir = Path(out or Path("sweeps") / arch)
        rows = run_sweep(variants, out_dir, base, progress=not quiet)
        _print_table(rows, ("variant", "test_acc", "train_seconds_mean", "eval_seconds_mean", "params", "status"))
        click.echo(f"summary: {out_dir / 'summary.csv'}")
    go()


def _print_table(rows: list[dict], columns) -> None:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))


@cli.command()
@click.option("--arch", type=click.Choice(ARCHS), default=None, help="Only this architecture.")
def zoo(arch):
    """List architectures, their variant axes and the parameter count of every variant."""
    import torch

    from .zoo import build_model, count_params, get_arch, list_archs, variant_grid
    for name in [arch] if arch else list_archs():
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
            click.echo(f"    {v.name:<36} {n:>12,}")


@cli.command()
@click.argument("ckpt", type=click.Path())
def inspect(ckpt):
    """Print a checkpoint's variant, epochs, accuracy and options (nothing in it is executed)."""
    from .training.checkpoint import CheckpointError, load_checkpoint
    try:
        c = load_checkpoint(ckpt)
    except CheckpointError as e:
        raise Failure(str(e)) from None
    from .zoo import Variant
    v = Variant.from_dict(c["variant"])
    o, hist = c.get("options", {}), c.get("history", [])
    click.echo(f"variant:   {v.name}")
    click.echo(f"axes:      layer={v.layer} activation={v.activation} pool={v.pool} norm={v.norm} "
               f"image_size={v.image_size}" + (f" fixed_p={v.fixed_p}" if v.fixed_p is not None else ""))
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
    click.echo("options:   " + " ".join(f"{k}={val}" for k, val in o.items() if val not in (None, False)))
    if c.get("data"):
        click.echo("data:      " + " ".join(f"{k}={val}" for k, val in c["data"].items()))
    if c.get("versions"):
        click.echo("versions:  " + " ".join(f"{k}={val}" for k, val in c["versions"].items()))


# ------------------------------------------------------------------------------------------------ analyses

def model_sources(fn):
    """--ckpt (repeatable) and/or --sweep DIR, plus device and data options."""
    opts = [
        click.option("--ckpt", "ckpts", multiple=True, type=click.Path(),
                     help="A checkpoint (or run directory); repeat for several."),
        click.option("--sweep", "sweep_dir", type=click.Path(), default=None,
                     help="A directory whose subdirectories are runs."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None, envvar="SCS_PROBE_DATA",
                     help="Folder holding cifar-10-batches-py [env SCS_PROBE_DATA; default ./data]."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto",
                     show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _sources(ckpts, sweep_dir):
    """Checkpoint paths from --ckpt/--sweep; exactly what the user named, or a one-line error."""
    from .analysis.sources import checkpoint_paths
    if not ckpts and not sweep_dir:
        raise click.UsageError("name the models: --ckpt CKPT (repeatable) or --sweep DIR")
    return checkpoint_paths(ckpts, sweep_dir)


def _default_out(out, sweep_dir, name):
    return Path(out) if out else (Path(sweep_dir) / "analysis" / name if sweep_dir else Path("analysis") / name)


@cli.command()
@model_sources
@click.option("--n-images", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--indices", default=None, help="Comma-separated test-set indices (instead of a random draw).")
@click.option("--classes", default=None, help="Draw only from these classes (names or 0-9, comma-separated).")
@click.option("--target", type=click.Choice(["label", "pred"]), default="label", show_default=True,
              help="Explain the true label's logit or the predicted one's.")
@click.option("--per-image-scale", is_flag=True, help="Scale each image's maps on their own (default: one scale).")
@click.option("--deletion-steps", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder [SWEEP/analysis/saliency or ./analysis/saliency].")
def saliency(ckpts, sweep_dir, data_dir, device, seed, n_images, indices, classes, target, per_image_scale,
             deletion_steps, out):
    """Vanilla-gradient saliency maps of the same test images across models, with sparseness, complexity and
    deletion curves."""
    from .analysis import analyze_saliency
    from .analysis.sources import parse_classes, parse_indices
    from .training import resolve_device
    idx = _validated(lambda: parse_indices(indices))
    cls = _validated(lambda: parse_classes(classes))

    @_fail_on(*_known_errors())
    def go():
        dest = _default_out(out, sweep_dir, "saliency")
        info = analyze_saliency(_sources(ckpts, sweep_dir), data_dir, dest, n_images, idx, cls, target, seed,
                                per_image_scale, deletion_steps, resolve_device(device))
        _print_table(info["summary"], ("model", "n", "sparseness_mean", "complexity_mean", "deletion_auc",
                                       "accuracy"))
        click.echo(f"outputs: {dest}")
    _validated(go)


@cli.command()
@model_sources
@click.option("--eps-range", default=None, metavar="START:STOP:NUM",
              help="NUM evenly spaced eps from START to STOP; fractions allowed (0:8/255:5).")
@click.option("--eps", "eps_list", default=None, help="Explicit comma-separated eps values (e.g. 0,2/255,8/255).")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--alpha", default=None, help="PGD step size (absolute; default 2.5 * eps / steps).")
@click.option("--restarts", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--n-images", type=click.IntRange(min=1), default=500, show_default=True,
              help="The first N test images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--attack", "attacks", type=click.Choice(["pgd", "square"]), multiple=True, default=("pgd",),
              show_default=True, help="Repeat to add Square (gradient-free) beside PGD.")
@click.option("--n-queries", type=click.IntRange(min=1), default=1000, show_default=True, help="Square's budget.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder [SWEEP/analysis/pgd or ./analysis/pgd].")
def pgd(ckpts, sweep_dir, data_dir, device, seed, eps_range, eps_list, steps, alpha, restarts, n_images,
        batch_size, attacks, n_queries, out):
    """Robust accuracy under PGD (L-inf) over a range of eps, one curve per model, with the area under it."""
    from .analysis import analyze_robustness, parse_eps_list, parse_eps_range
    from .analysis.robustness import parse_eps_value
    from .training import resolve_device
    if (eps_range is None) == (eps_list is None):
        raise click.UsageError("give exactly one of --eps-range START:STOP:NUM and --eps LIST")
    eps_values = _validated(lambda: parse_eps_range(eps_range) if eps_range else parse_eps_list(eps_list))
    alpha_value = _validated(lambda: parse_eps_value(alpha)) if alpha is not None else None

    @_fail_on(*_known_errors())
    def go():
        dest = _default_out(out, sweep_dir, "pgd")
        info = analyze_robustness(_sources(ckpts, sweep_dir), data_dir, dest, eps_values, tuple(attacks), n_images,
                                  steps, alpha_value, restarts, batch_size, seed, n_queries, resolve_device(device))
        _print_table(info["summary"], ("model", "attack", "auc", "clean_acc", "eps_max", "acc_at_eps_max"))
        click.echo(f"outputs: {dest}")
    _validated(go)


@cli.command()
@click.argument("run_dirs", nargs=-1, type=click.Path())
@click.option("--sweep", "sweep_dir", type=click.Path(), default=None, help="A directory whose subdirectories are runs.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder [SWEEP/analysis/norms or ./analysis/norms].")
def norms(run_dirs, sweep_dir, out):
    """Weight and gradient L2 norms per layer over epochs (and batches), and the learned p per kernel."""
    from .analysis import run_norms
    from .training.runs import find_runs
    if not run_dirs and not sweep_dir:
        raise click.UsageError("name runs: RUN_DIR ... or --sweep DIR")

    @_fail_on(*_known_errors(), FileNotFoundError)
    def go():
        dirs = [Path(d) for d in run_dirs] + (find_runs(sweep_dir) if sweep_dir else [])
        for d in dirs:
            if not (d / "norms.csv").is_file():
                raise FileNotFoundError(f"{d} is not a run directory (no norms.csv)")
        dest = _default_out(out, sweep_dir, "norms")
        info = run_norms(dirs, dest)
        _print_table(info["summary"].round(4).to_dict("records"),
                     ("run", "layer", "weight_l2_first", "weight_l2_last", "grad_l2_mean", "p_mean_last"))
        click.echo(f"outputs: {dest}")
    go()


@cli.command()
@click.argument("directory", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="HTML file [DIR/report.html].")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, envvar="SCS_PROBE_DATA",
              help="For analyses that are missing [env SCS_PROBE_DATA; default ./data].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--pgd-images", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--eps-range", default="0:8/255:5", show_default=True, metavar="START:STOP:NUM")
def report(directory, out, data_dir, device, pgd_images, eps_range):
    """One self-contained HTML report of a directory of runs; runs the analyses that are missing."""
    from .analysis import parse_eps_range
    from .analysis.report import build_report
    from .training import resolve_device
    eps_values = _validated(lambda: parse_eps_range(eps_range))

    @_fail_on(*_known_errors())
    def go():
        path = build_report(directory, out, data_dir, resolve_device(device), pgd_images=pgd_images,
                            eps_values=eps_values, log=lambda m: click.echo(m, err=True))
        click.echo(f"report: {path}")
    go()


# ------------------------------------------------------------------------------------------------ entry point

def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    # Large CPU tensors on transparent huge pages: without this, every fresh activation costs thousands of page
    # faults, which on a VM can take longer than the elementwise pass that fills it. Set it to 0 to opt out.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    warnings.showwarning = _one_line_warnings
    # TorchInductor's C++ build notes, on a CUDA build of torch without a GPU, that it found no CUDA runtime
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        rv = cli.main(args=argv, prog_name="scs-probe", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("scs-probe: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("\nscs-probe: interrupted; the last checkpoint is intact (continue with --resume)", err=True)
        return 130
    except click.ClickException as e:
        msg = " ".join(e.format_message().split())
        click.echo(f"scs-probe: error: {msg}", err=True)
        return e.exit_code
