"""Sweeps: every variant of a list trained in turn into DIR/<variant>/, with DIR/summary.csv."""

from __future__ import annotations

import fnmatch
from dataclasses import replace

import numpy as np

from ..errors import CheckpointError, OptionError, TrainingDiverged
from ..rundir import RunsDir
from ..stats import t_interval
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


def run_name(variant: Variant, seed: int | None) -> str:
    """<variant>, or <variant>-seed<N> when the sweep runs several seeds (`seeds` given)."""
    return variant.name if seed is None else f"{variant.name}-seed{seed}"


SUMMARIZED = ("test_acc", "best_test_acc", "train_seconds_mean", "eval_seconds_mean")


def summarize_variants(rows: list[dict]) -> list[dict]:
    """Per variant, over its finished runs (one per seed): mean, standard deviation and a 95 % Student-t
    interval of final and best test accuracy and of seconds per epoch. Runs still training or diverged are
    counted apart and left out of the statistics."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        done = [r for r in mine if r["status"] == "finished" and r["test_acc"] != ""]
        row = {"variant": variant, **{k: mine[0][k] for k in ("arch", "layer", "activation", "pool", "norm",
                                                             "image_size")},
               "runs": len(mine), "finished": len(done), "seeds": " ".join(str(r["seed"]) for r in done)}
        for key in SUMMARIZED:
            ci = t_interval([float(r[key]) for r in done])
            if ci.defined:  # accuracies live in [0, 1], seconds above 0
                ci = type(ci)(ci.estimate, max(ci.lo, 0.0), min(ci.hi, 1.0) if "acc" in key else ci.hi, ci.method,
                              ci.n)
            sd = float(np.std([float(r[key]) for r in done], ddof=1)) if len(done) > 1 else ""
            row |= {f"{key}_mean": round(ci.estimate, 6) if done else "",
                    f"{key}_sd": round(sd, 6) if sd != "" else "",
                    f"{key}_ci_lo": round(ci.lo, 6) if ci.defined else "",
                    f"{key}_ci_hi": round(ci.hi, 6) if ci.defined else ""}
        row["interval"] = "95% Student t over seeds"
        out.append(row)
    return out


def sweep(variants: list[Variant], out, base: TrainOptions, log=print, progress: bool = True,
          seeds: list[int] | None = None, explicit: set[str] | None = None) -> list[dict]:
    """Train each variant (once per seed of `seeds`, else once with base.seed) in turn: skip finished and
    diverged runs, resume unfinished ones, keep going past a run that diverges. Returns the summary rows (also
    written to out/summary.csv, with per-variant statistics in out/variant_summary.csv, after every run)."""
    runs = RunsDir(out)
    jobs = [(v, s) for s in (list(dict.fromkeys(seeds)) if seeds else [None]) for v in variants]
    rows = []
    for i, (v, seed) in enumerate(jobs, 1):
        name = run_name(v, seed)
        run = runs.run(name)
        try:
            status = run.status
        except CheckpointError as e:
            log(f"[{i}/{len(jobs)}] {name}: unreadable checkpoint, skipped ({e})")
            continue
        if status in ("finished", "diverged"):
            log(f"[{i}/{len(jobs)}] {name}: {status}, skipped")
        else:
            log(f"[{i}/{len(jobs)}] {name}" + (": resuming" if status else ""))
            options = replace(base, variant=v, out=str(run.path), seed=base.seed if seed is None else seed)
            try:
                train(options, resume=status is not None, progress=progress, log=log, explicit=explicit)
            except TrainingDiverged as e:
                log(f"warning: {e}")
        rows.append(run.summary())
        runs.write_summary(rows)
        runs.write_variant_summary(summarize_variants(rows))
    return rows
