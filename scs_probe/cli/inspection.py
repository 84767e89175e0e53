"""Commands that look without training: the zoo's architectures and counts (`zoo`), a checkpoint (`inspect`)."""

from __future__ import annotations

import click

from ..schema import printable
from .options import MODEL_OPTION, arch_option, check_model_spec, command, trust_option
from .types import GivenPath


@command()
@arch_option(default=None, help_text="Only this architecture.")
@MODEL_OPTION
def zoo(arch, model):
    """List architectures, their variant axes and the parameter count of every variant."""
    import torch

    from ..zoo import build_model, count_params, get_arch, list_archs, variant_grid
    if model:
        check_model_spec(model, click.get_current_context())
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


@command()
@click.argument("ckpt", type=GivenPath())
@trust_option
def inspect(ckpt):
    """Print a checkpoint's variant, epochs, accuracy and options (nothing in it is executed)."""
    from ..checkpoint import checkpoint_variant
    from ..rundir import RunDir, best_epoch
    run = RunDir.of(ckpt)
    c = run.load_checkpoint()
    v = checkpoint_variant(c, run.checkpoint_path)
    o, hist = c.get("options", {}), c.get("history", [])
    click.echo(f"variant:   {v.name}")
    click.echo("axes:      " + " ".join(f"{k}={val}" for k, val in v.axes().items())
               + (f" fixed_p={v.fixed_p}" if v.fixed_p is not None else ""))
    status, note = c.get("status", "unknown"), ""
    if status == "running":  # the checkpoint's word: whether a process trains it now, the run's lock tells
        trainer = run.trainer()
        if trainer is None:
            status, note = "interrupted", " (resumes from here: train --resume, or its sweep run again)"
        else:
            note = " (trained now by " + (f"pid {trainer['pid']} on {trainer.get('host', '?')}"
                                          if trainer.get("pid") else "another process") + ")"
    click.echo(f"status:    {printable(status)}, epoch {c['epoch']} of {printable(o.get('epochs', '?'))}"
               f"{printable(note)}")
    if c.get("diverged"):
        click.echo(f"diverged:  {printable(c['diverged'].get('reason'))}")
    if hist:
        best = best_epoch(hist)  # on validation: a best chosen on the test split would overstate it
        last = hist[-1]
        val = f"validation {float(last['val_acc']):.2%}, " if last.get("val_acc") not in (None, "") else ""
        click.echo(f"accuracy:  {val}test {float(last['test_acc']):.2%}, train {float(last['train_acc']):.2%}")
        click.echo(f"best:      epoch {best['epoch']} on validation ({float(best['val_acc']):.2%}; test "
                   f"{float(best['test_acc']):.2%} then)" if best else
                   "best:      - (no validation split: a best epoch chosen on the test split is not shown)")
        secs = [float(r["train_seconds"]) for r in hist]
        click.echo(f"seconds:   {sum(secs) / len(secs):.1f} train per epoch, "
                   f"{sum(float(r['eval_seconds']) for r in hist) / len(hist):.1f} eval")
    click.echo(f"params:    {c.get('params', '?'):,}" if isinstance(c.get("params"), int) else "params:    ?")
    shown = {k: val for k, val in o.items() if val is not None and val is not False}
    click.echo("options:   " + _pairs(shown))
    if c.get("data"):
        click.echo("data:      " + _pairs(c["data"]))
    if c.get("environment"):
        click.echo("ran on:    " + _pairs(c["environment"]))
    if c.get("versions"):
        click.echo("versions:  " + _pairs(c["versions"]))


def _pairs(record: dict) -> str:
    """key=value pairs of a checkpoint's record, escaped (a crafted value must not drive the terminal)."""
    return " ".join(f"{printable(k, 60)}={printable(val)}" for k, val in record.items())
