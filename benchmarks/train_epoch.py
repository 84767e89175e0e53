"""Seconds per training epoch and per evaluation pass: scs/none vs conv/relu variants, on a fixed number of
batches of random CIFAR-sized data, with Adam + OneCycleLR steps as in `scs-probe train`.

    python benchmarks/train_epoch.py [--device cuda] [--batches 20] [--repeats 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, machine, parse_args, peak_cuda_bytes, saved_tensor_bytes

from scs_probe.zoo import build_model

CASES = [  # arch, norm, batches on CPU (GPU: --batches)
    ("rohrer100k", "none", 20),
    ("resnet18", "bn", 6),
]


def main():
    args = parse_args(__doc__.splitlines()[0], lambda ap: (ap.add_argument("--batches", type=int, default=None),
                                                           ap.add_argument("--amp", action="store_true"),
                                                           ap.add_argument("--channels-last", action="store_true")))
    dev = args.device
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    print(f"# {machine(dev)}" + (", bf16 autocast" if args.amp else "")
          + (", channels_last" if args.channels_last else ""))
    print(f"{'arch':<12}{'batches':>8}{'conv train s':>14}{'scs/conv train':>16}{'conv eval s':>13}"
          f"{'scs/conv eval':>15}{'mem scs/conv':>14}")
    for arch, norm, n_cpu in CASES:
        n = args.batches or (n_cpu if dev == "cpu" else 100)
        torch.manual_seed(0)
        data = [(torch.rand(128, 3, 32, 32, device=dev).contiguous(memory_format=fmt),
                 torch.randint(0, 10, (128,), device=dev)) for _ in range(n)]
        runs, mems = {}, {}
        for key, kw in (("conv", dict(layer="conv", activation="relu", pool="max")),
                        ("scs", dict(layer="scs", activation="none", pool="maxabs"))):
            model = build_model(arch, norm=norm, **kw).to(dev, memory_format=fmt)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=10_000)

            def step(x, y, model=model, opt=opt, sched=sched):
                with torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=args.amp):
                    loss = F.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()

            def epoch(model=model, step=step):
                model.train()
                for x, y in data:
                    step(x, y)

            @torch.no_grad()
            def evaluate(model=model):
                model.eval()
                for x, _ in data:
                    with torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=args.amp):
                        model(x)

            runs[f"{key}_train"], runs[f"{key}_eval"] = epoch, evaluate
            x0, y0 = data[0]
            model.train()
            peak = peak_cuda_bytes(lambda: step(x0, y0), dev)
            mems[key] = peak if peak is not None else saved_tensor_bytes(
                lambda: F.cross_entropy(model(x0), y0).backward())
        t = interleaved_medians(runs, dev, args.repeats, warmup=1)
        print(f"{arch:<12}{n:>8}{t['conv_train']:>14.2f}{t['scs_train'] / t['conv_train']:>16.2f}"
              f"{t['conv_eval']:>13.2f}{t['scs_eval'] / t['conv_eval']:>15.2f}{mems['scs'] / mems['conv']:>14.2f}")
    print(f"# median of {args.repeats} interleaved rounds; mem: "
          + ("peak CUDA memory of a training step" if dev.startswith("cuda") else "bytes saved for backward"))


if __name__ == "__main__":
    main()
