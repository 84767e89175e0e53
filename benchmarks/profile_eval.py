"""Per-op profile of one evaluation forward (torch.no_grad, batch 256) of conv/relu/max and scs/none/maxabs:
where the time goes, as torch.profiler's table (self CPU time, top ops).

    python benchmarks/profile_eval.py [--arch rohrer100k] [--batch 256] [--rows 15] [--train]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scs_probe.cpu_memory import configure
from scs_probe.zoo import build_model

MEMORY = configure()  # freed memory kept, as `scs-probe` does (scs_probe/cpu_memory.py)

VARIANTS = {"conv": dict(layer="conv", activation="relu", pool="max"),
            "scs": dict(layer="scs", activation="none", pool="maxabs")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="rohrer100k")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--train", action="store_true", help="profile a training step (forward + backward) instead")
    args = ap.parse_args()
    norm = "bn" if args.arch.startswith("resnet") else "none"
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    for key, kw in VARIANTS.items():
        model = build_model(args.arch, norm=norm, **kw)

        def step(model=model):
            if args.train:
                model.train()
                F.cross_entropy(model(x), y).backward()
            else:
                model.eval()
                with torch.no_grad():
                    model(x)
        for _ in range(3):
            step()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        print(f"\n## {args.arch} {key} ({'train step' if args.train else 'eval forward'}, batch {args.batch}, "
              f"{torch.get_num_threads()} threads; 3 calls)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=50))


if __name__ == "__main__":
    main()
