"""Sweeps: every variant of a grid trained in turn into DIR/<variant>/, with DIR/summary.csv."""

from __future__ import annotations

import csv
import fnmatch
import io
from dataclasses import replace
from pathlib import Path

from .runs import SUMMARY_FIELDS, summarize_run
from ..zoo import Variant, variant_grid
from .checkpoint import CHECKPOINT_NAME, CheckpointError, atomic_write, load_checkpoint
from .trainer import TrainingDiverged, TrainOptions, train


def write_summary(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(Path(out) / "summary.csv", lambda f: f.write(buf.getvalue().encode()))


def select_variants(arch: str, grid: str, only: list[str] | None = None) -> list[Variant]:
    """The grid's variants, restricted to names matching any of the `only` globs."""
    variants = variant_grid(arch, grid)
    if only:
        variants = [v for v in variants if any(fnmatch.fnmatchcase(v.name, pat) for pat in only)]
        if not variants:
            raise ValueError(f"--only {','.join(only)} matches no variant of the {arch} {grid} grid")
    return variants


def sweep(variants: list[Variant], out, base: TrainOptions, log=print, progress: bool = True) -> list[dict]:
    """Train each variant in turn: skip finished and diverged runs, resume unfinished ones, keep going past a
    run that diverges. Returns the summary rows (also written to out/summary.csv after every variant)."""
    out = Path(out)
    rows = []
    for i, v in enumerate(variants, 1):
        run_dir = out / v.name
        status = None
        if (run_dir / CHECKPOINT_NAME).exists():
            try:
                status = load_checkpoint(run_dir / CHECKPOINT_NAME).get("status")
            except CheckpointError as e:
                log(f"[{i}/{len(variants)}] {v.name}: unreadable checkpoint, skipped ({e})")
                continue
        if status in ("finished", "diverged"):
            log(f"[{i}/{len(variants)}] {v.name}: {status}, skipped")
        else:
            log(f"[{i}/{len(variants)}] {v.name}" + (": resuming" if status else ""))
            opts = replace(base, arch=v.arch, layer=v.layer, activation=v.activation, pool=v.pool, norm=v.norm,
                           image_size=v.image_size, fixed_p=v.fixed_p, out=str(run_dir))
            try:
                train(opts, resume=status is not None, progress=progress, log=log)
            except TrainingDiverged as e:
                log(f"warning: {e}")
        rows.append(summarize_run(run_dir))
        write_summary(out, rows)
    return rows
