"""Options shared by several commands (the variant, training knobs, executors, model sources), the command class
that applies `--backend`, and small output helpers.

Everything here imports without torch: choices come from the zoo's torch-free catalogue, and the library's values
are made inside the commands, which import torch when they run."""

from __future__ import annotations

import functools
import importlib.util

import click

from ..choices import DATA_ENV, DEFAULT_ARCH, DEVICES, WORKERS_MAX
from ..schema import escape_controls
from ..zoo import AXES, Variant, axis_choices, list_archs, trust_model_code
from .types import SEED_MAX, FiniteFloatRange, GivenPath, Name, OutPath

BACKENDS = ("auto", "eager", "compiled")
BACKEND_ENV = "SCS_PROBE_BACKEND"
# Library option names whose flag is not simply --option-name.
FLAGS = {"eps": "--eps-range/--eps", "attacks": "--attack", "pairs": "--pair"}
EXECUTOR_FLAGS = {"executor", "jobs", "address", "cpus_per_run", "gpus_per_run", "max_retries"}


def flag(option: str) -> str:
    return FLAGS.get(option, "--" + option.replace("_", "-"))


class ProbeCommand(click.Command):
    """A command that, once its options parsed (so --help never imports torch), applies the group's --backend."""

    def invoke(self, ctx):
        backend = (ctx.find_root().obj or {}).get("backend")
        from ..layers import get_backend, set_backend  # torch: only when a command runs
        try:
            set_backend(backend) if backend is not None else get_backend()
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        return super().invoke(ctx)


def command(**kwargs):
    return click.command(cls=ProbeCommand, **kwargs)


def stack(*opts):
    """Apply click options in the order listed (as they appear in --help)."""
    def deco(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return deco


MODEL_OPTION = click.option(
    "--model", type=Name(), default=None, metavar="SPEC",
    help="A model from outside the zoo instead of --arch: torchvision:NAME, timm:NAME or package.module:factory, "
         "converted to SCS by --layer/--activation keep|none/--pool keep|maxabs.")
MAX_P = 100.0  # a larger exponent sends every |cos|^p to 0 or 1 in float32; 1e39 is not even a float32
FIXED_P = FiniteFloatRange(min=0.1, max=MAX_P)


def _axis_default(axis: str) -> str:
    return str(Variant.__dataclass_fields__[axis].default)


def arch_option(default: str | None = DEFAULT_ARCH, help_text: str | None = None):
    return click.option("--arch", type=click.Choice(list_archs()), default=default, show_default=default is not None,
                        help=help_text)


def variant_options(fn):
    """--arch and one flag per variant axis (choices from the registry), passed on as one `variant`."""
    axes = [click.option(f"--{axis.replace('_', '-')}", type=click.Choice([str(v) for v in axis_choices(axis)]),
                         default=_axis_default(axis), show_default=True) for axis in AXES]

    @stack(arch_option(), MODEL_OPTION, *axes,
           click.option("--fixed-p", type=FIXED_P, default=None,
                        help="Fix every sharpened layer's p to this value (1: plain cosine similarity)."))
    @functools.wraps(fn)
    def inner(*args, arch, model, fixed_p, **kwargs):
        values = {axis: kwargs.pop(axis) for axis in AXES}
        values["image_size"] = int(values["image_size"])
        if model:
            ctx = click.get_current_context()
            check_model_spec(model, ctx)
            for axis in ("activation", "pool"):  # a converted model keeps its own unless asked
                if ctx.get_parameter_source(axis) == click.core.ParameterSource.DEFAULT:
                    values[axis] = "keep"
        return fn(*args, variant=Variant(model or arch, **values, fixed_p=fixed_p), **kwargs)
    return inner


def check_model_spec(model: str, ctx: click.Context) -> None:
    """A --model spec given on the command line: well formed, and trusted (the user named its code)."""
    if ctx.get_parameter_source("arch") not in (click.core.ParameterSource.DEFAULT, None):
        raise click.UsageError("give --arch (a zoo model) or --model (one from elsewhere), not both")
    if ":" not in model:
        raise click.UsageError(f"--model: {model!r} is not a model spec: torchvision:NAME, timm:NAME or "
                               "package.module:factory (zoo models: --arch)")
    trust_model_code(model)


def _trust_all(ctx, param, value):
    if value:
        trust_model_code(True)


trust_option = click.option(
    "--trust-model-code", is_flag=True, expose_value=False, callback=_trust_all,
    help="Import the model code (package.module:factory) that checkpoints and run directories name. Off: only zoo "
         "architectures and torchvision:/timm: models are built from them.")


def device_option():
    return click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                        help="auto: CUDA, then MPS, then CPU.")


def test_dataset_option():
    return click.option("--dataset", type=Name(), default=None, metavar="NAME",
                        help="Test images from this data set [the one the runs were trained on].")


def data_dir_option(help_text: str = "Folder holding the data sets in torchvision's layout"):
    return click.option("--data-dir", type=GivenPath(file_okay=False), default=None,
                        help=f"{help_text} [env {DATA_ENV}; default ./data, downloaded there if missing].")


def out_option(name: str):
    return click.option("--out", type=OutPath(file_okay=False), default=None,
                        help=f"Output folder [SWEEP/analysis/{name} or ./analysis/{name}].")


def _check_tensorboard(ctx, param, value: bool) -> bool:
    """--tensorboard without the package: a usage error before anything trains (found without importing it)."""
    if value and importlib.util.find_spec("tensorboard") is None:
        raise click.UsageError("--tensorboard needs the tensorboard package: pip install 'scs-probe[tensorboard]'")
    return value


training_options = stack(
    click.option("--epochs", type=click.IntRange(min=1), default=None,
                 help="Default: the architecture's preset (800 gallery, 200 ResNets)."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: the preset."),
    click.option("--max-lr", type=FiniteFloatRange(min=0, min_open=True, max=10), default=None,
                 help="OneCycleLR peak; default: the preset."),
    click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True,
                 help="Initial weights (shared by all variants) and data order."),
    device_option(),
    click.option("--dataset", type=Name(), default="cifar10", show_default=True, metavar="NAME",
                 help="cifar10, cifar100, svhn, mnist, fashion-mnist or imagefolder:DIR (DIR/train, DIR/val); "
                      "grayscale sets are repeated to three channels, images resized to the variant's size."),
    data_dir_option(),
    click.option("--val-split", type=click.IntRange(min=1), default=None, metavar="N",
                 help="Hold N training images out for validation: stratified by class, drawn with a split seed of "
                      "its own (the same images for every variant and seed); history gains val_loss and val_acc, "
                      "and the best epoch is the best on it [train, sweep: none; tune: 10% of the training images, "
                      "at most 5,000]."),
    click.option("--limit-train", type=click.IntRange(min=1), default=None,
                 help="Use the first N training images (of those left after --val-split)."),
    click.option("--limit-test", type=click.IntRange(min=1), default=None, help="Use the first N test images."),
    click.option("--norms-every-batch", is_flag=True, help="Also record weight/grad norms per mini-batch."),
    click.option("--workers", type=click.IntRange(0, WORKERS_MAX), default=0, show_default=True,
                 help="DataLoader worker processes."),
    click.option("--amp", is_flag=True, help="bfloat16 autocast where the device supports it."),
    click.option("--tensorboard/--no-tensorboard", default=False, callback=_check_tensorboard,
                 help="Also log each epoch for TensorBoard into RUN_DIR/tensorboard/ (tensorboard --logdir OUT; "
                      "needs the tensorboard extra)."),
    click.option("--compile", is_flag=True,
                 help="torch.compile the whole model, conv and SCS alike (compiled before the first epoch's clock)."),
    click.option("--channels-last", is_flag=True, help="Model and batches in channels_last memory format."),
    click.option("--quiet", is_flag=True, help="No progress bars (they are off anyway when stderr is not a "
                                               "terminal)."),
)


def executor_options(fn):
    """--executor, --jobs and Ray's options, passed on as one `executor` (see training.executors)."""
    @stack(
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: worker processes on this machine; ray: one Ray task per run."),
        click.option("--jobs", type=click.IntRange(min=1), default=None,
                     help="Runs at once [local: 1, each with its share of CPU threads and one GPU where there are "
                          "GPUs; ray: as many as the cluster's resources allow]."),
        click.option("--address", type=Name(), default=None,
                     help="Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT [start a local Ray instance]."),
        click.option("--cpus-per-run", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Ray CPUs per run, also its torch threads [1]."),
        click.option("--gpus-per-run", type=click.FloatRange(min=0), default=None,
                     help="Ray GPUs per run [1 where the cluster has GPUs, else 0]."),
        click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True,
                     help="Ray retries of a run whose worker died; it resumes from its last checkpoint."))
    @functools.wraps(fn)
    def inner(*args, executor, jobs, address, cpus_per_run, gpus_per_run, max_retries, **kwargs):
        from ..training.executors import make_executor  # torch: only when the command runs
        return fn(*args, executor=make_executor(executor, jobs, address, cpus_per_run, gpus_per_run, max_retries),
                  **kwargs)
    return inner


model_sources = stack(
    click.option("--ckpt", "ckpts", multiple=True, type=GivenPath(),
                 help="A checkpoint (or run directory); repeat for several."),
    click.option("--sweep", "sweep_dir", type=GivenPath(), default=None,
                 help="A directory whose subdirectories are runs."),
    data_dir_option(),
    test_dataset_option(),
    click.option("--model", type=Name(), default=None, metavar="SPEC",
                 help="The --ckpt files are plain state dicts of this model (torchvision:NAME, timm:NAME, "
                      "package.module:factory; plain or converted to SCS/SDP, as its keys tell)."),
    click.option("--activation", "model_activation", type=click.Choice(["keep", "none"]), default="keep",
                 show_default=True, help="With --model: the state dicts' model had its activations removed (none)."),
    click.option("--pool", "model_pool", type=click.Choice(["keep", "maxabs"]), default="keep", show_default=True,
                 help="With --model: its max pooling was made max-abs."),
    device_option(),
)


def explicit(ctx: click.Context) -> set[str]:
    """The options the user gave (not defaults)."""
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)}


def arch_dir(arch: str) -> str:
    """An architecture (or model spec: torchvision:resnet18) as a folder name."""
    return arch.replace(":", "-")


def print_table(rows: list[dict], columns) -> None:
    def fmt(v):  # a tiny non-zero value (a McNemar p of 7e-12) keeps its digits instead of reading 0.0000
        if not isinstance(v, float):
            return str(v)
        return f"{v:.2g}" if 0 < abs(v) < 5e-5 else f"{v:.4f}"
    cells = [[escape_controls(fmt(r.get(c, ""))) for c in columns] for r in rows]  # names from files: escaped
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))
