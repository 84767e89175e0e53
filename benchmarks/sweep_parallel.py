"""Wall-clock of one sweep trained one run after another vs N runs at once (`--jobs N`, and Ray), in one run of
this script, on the same data; then the arithmetic of the full study's cost on 1, 8 and 16 GPUs.

    .venv/bin/python benchmarks/sweep_parallel.py --data-dir data [--jobs 2] [--ray] [--epochs 2]

Each timing is a fresh sweep directory: process start-up, data loading and SCS compilation count, as they do
for a user. The sequential sweep uses every thread in one process; `--jobs N` gives each run 1/N of them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
import torch

from scs_probe.cpu_memory import configure
from scs_probe.paper import published_row
from scs_probe.training import TrainOptions, select_variants, sweep
from scs_probe.training.executors import LocalExecutor, RayExecutor
from scs_probe.zoo import get_arch, list_archs, variant_grid

MEMORY = configure()  # freed memory kept, as `scs-probe` does (scs_probe/cpu_memory.py)


def timed_sweep(out: Path, options: TrainOptions, seeds, executor=None) -> float:
    variants = select_variants("rohrer100k", "study", ["rohrer100k-conv-relu-max", "rohrer100k-scs-none-maxabs"])
    t0 = time.perf_counter()
    sweep(variants, out, options, log=lambda *a: None, progress=False, seeds=seeds, executor=executor)
    return time.perf_counter() - t0


def makespan(seconds: list[float], gpus: int) -> float:
    """Longest-first onto the least-loaded GPU (what any run queue achieves within 4/3 of the optimum)."""
    loads = [0.0] * gpus
    for s in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += s
    return max(loads)


def study_cost() -> None:
    """Every variant of every architecture's study grid x its preset epochs x the study's published seconds per
    epoch (its 2022 GPUs; the initial experiment's tables where they have the variant, else the follow-up's; a
    variant without a published time takes its architecture's mean)."""
    runs, filled, left_out = [], 0, []
    for arch in list_archs():
        spec = get_arch(arch)
        rows = [(published_row(spec.paper_name, v.axes(), "initial") or published_row(spec.paper_name, v.axes()))
                if spec.paper_name else None for v in variant_grid(arch, "study")]
        known = [float(r["train_time_s"]) + float(r["eval_time_s"]) for r in rows if r and r["train_time_s"]]
        if not known:
            left_out.append(arch)
            continue
        for r in rows:
            if r and r["train_time_s"]:
                per_epoch = float(r["train_time_s"]) + float(r["eval_time_s"])
            else:
                filled += 1
                per_epoch = sum(known) / len(known)
            runs.append((arch, spec.epochs * per_epoch))
    total = sum(s for _, s in runs)
    print(f"\nThe study's grids: {len(runs)} runs ({filled} without a published time, given their architecture's "
          f"mean; {', '.join(left_out) or 'none'} left out: no published times), {total / 3600:,.0f} GPU-hours at "
          "the study's seconds per epoch (train + eval)")
    print("| GPUs | wall-clock (longest first) | ideal (total / GPUs) | longest run |")
    print("|---:|---:|---:|---:|")
    longest = max(s for _, s in runs)
    for gpus in (1, 8, 16):
        print(f"| {gpus} | {makespan([s for _, s in runs], gpus) / 3600:,.1f} h | {total / gpus / 3600:,.1f} h "
              f"| {longest / 3600:,.1f} h |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--ray", action="store_true", help="also time the Ray executor (a local instance)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit-train", type=int, default=5000)
    ap.add_argument("--seeds", default="0,1", help="each of conv/relu/max and scs/none/maxabs once per seed")
    ap.add_argument("--cost-only", action="store_true")
    args = ap.parse_args()
    if not args.cost_only:
        seeds = [int(s) for s in args.seeds.split(",")]
        options = TrainOptions(epochs=args.epochs, max_lr=0.01, limit_train=args.limit_train, limit_test=2000,
                               data_dir=args.data_dir, device="cpu")
        root = Path(tempfile.mkdtemp(prefix="scs-sweep-bench-"))
        try:
            print(f"rohrer100k conv/relu/max + scs/none/maxabs x seeds {seeds}: {2 * len(seeds)} runs of "
                  f"{args.epochs} epochs on {args.limit_train} images, {os.cpu_count()} CPUs, "
                  f"torch {torch.__version__}")
            seq = timed_sweep(root / "seq", options, seeds)
            par = timed_sweep(root / "jobs", options, seeds, LocalExecutor(jobs=args.jobs))
            print("| executor | wall-clock s | sequential / this |\n|---|---:|---:|")
            print(f"| sequential | {seq:.1f} | 1.00 |")
            print(f"| local --jobs {args.jobs} | {par:.1f} | {seq / par:.2f} |")
            if args.ray:
                ray_s = timed_sweep(root / "ray", options, seeds, RayExecutor(cpus_per_run=1))
                print(f"| ray, 1 CPU per run | {ray_s:.1f} | {seq / ray_s:.2f} |")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    study_cost()


if __name__ == "__main__":
    main()
