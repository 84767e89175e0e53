"""SCS/conv in CPU time (time.process_time, 1 thread), interleaved: a training step (forward + backward) and an
eval forward of one batch, for rohrer100k and resnet18 at 32 px. CPU time does not count the time other
processes hold the cores, so on a shared, loaded machine it ranks changes where wall-clock ratios scatter.

    python benchmarks/cpu_time.py [rohrer100k none] [resnet18 bn] [repeats]
"""

import os
import statistics
import sys
import time

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
import torch
import torch.nn.functional as F

from scs_probe.cpu_memory import configure
from scs_probe.zoo import build_model

MEMORY = configure()  # freed memory kept, as `scs-probe` does (scs_probe/cpu_memory.py)


def main(arch="rohrer100k", norm="none", repeats=5):
    torch.set_num_threads(1)
    x, y = torch.rand(128, 3, 32, 32), torch.randint(0, 10, (128,))
    fns = {}
    for key, kw in (("conv", dict(layer="conv", activation="relu", pool="max")),
                    ("scs", dict(layer="scs", activation="none", pool="maxabs"))):
        torch.manual_seed(0)
        m = build_model(arch, norm=norm, **kw)

        def train(m=m):
            m.train()
            F.cross_entropy(m(x), y).backward()

        def ev(m=m):
            m.eval()
            with torch.no_grad():
                m(x)
        fns[key + "_train"], fns[key + "_eval"] = train, ev
    for f in fns.values():
        f()
        f()
    t = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.process_time()
            f()
            t[k].append(time.process_time() - t0)
    med = {k: statistics.median(v) for k, v in t.items()}
    out = [arch]
    for phase in ("train", "eval"):
        r = [a / b for a, b in zip(t[f"scs_{phase}"], t[f"conv_{phase}"])]
        out.append(f"conv {phase} {med[f'conv_{phase}'] * 1e3:.0f} ms, SCS/conv {statistics.median(r):.2f} "
                   f"[{min(r):.2f}-{max(r):.2f}]")
    print("; ".join(out), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], int(a[2]) if len(a) > 2 else 5) if len(a) >= 2 else [main(*c) for c in
                                                                         (("rohrer100k", "none"), ("resnet18", "bn"))]
