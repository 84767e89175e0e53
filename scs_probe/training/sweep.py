"""Sweeps: every variant of a list trained in turn into DIR/<variant>/, with DIR/summary.csv."""

from __future__ import annotations

import fnmatch
from dataclasses import replace

from ..errors import CheckpointError, OptionError, TrainingDiverged
from ..rundir import RunsDir
from ..zoo import Variant, variant_grid
from .options import TrainOptions
from .trainer import train


def select_variants(arch: str, grid: str, only: list[str] | None = None) -> list[Variant]:
    """The grid's variants, restricted to names matching any of the `only` globs."""
    variants = variant_grid(arch, grid)
    if only:
        variants = [v for v in variants if any(fnmatch.fnmatchcase(v.name, pat) for pat in only)]
        if not variants:
            raise OptionError("only", f"{','.join(only)} matches no variant of the {arch} {grid} grid")
    return variants


def sweep(variants: list[Variant], out, base: TrainOptions, log=print, progress: bool = True) -> list[dict]:
    """Train each variant in turn: skip finished and diverged runs, resume unfinished ones, keep going past a
    run that diverges. Returns the summary rows (also written to out/summary.csv after every variant)."""
    runs = RunsDir(out)
    rows = []
    for i, v in enumerate(variants, 1):
        run = runs.run(v.name)
        try:
            status = run.status
        except CheckpointError as e:
            log(f"[{i}/{len(variants)}] {v.name}: unreadable checkpoint, skipped ({e})")
            continue
        if status in ("finished", "diverged"):
            log(f"[{i}/{len(variants)}] {v.name}: {status}, skipped")
        else:
            log(f"[{i}/{len(variants)}] {v.name}" + (": resuming" if status else ""))
            try:
                train(replace(base, variant=v, out=str(run.path)), resume=status is not None, progress=progress,
                      log=log)
            except TrainingDiverged as e:
                log(f"warning: {e}")
        rows.append(run.summary())
        runs.write_summary(rows)
    return rows
