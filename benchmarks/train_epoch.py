"""Seconds per training epoch and per evaluation pass, and memory: scs/none/maxabs vs conv/relu/max of rohrer100k
(no norm) and resnet18 at 32 px (BatchNorm), on a fixed number of batches of random CIFAR-sized data, with Adam +
OneCycleLR steps as in `scs-probe train`. Each speed mode (default, --compile, --channels-last) is timed in its
own interleaved rounds; ratios are per round (conv and SCS ran back to back), reported as median [min-max].

    python benchmarks/train_epoch.py [--device cuda] [--batches N] [--repeats 7] [--modes default,compile,channels_last]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_times, machine, parse_args, peak_cuda_bytes, ratio_spread, saved_tensor_bytes

from scs_probe.training.trainer import speed_options
from scs_probe.zoo import build_model

CASES = [  # arch, norm, batches on CPU (GPU: 100 unless --batches)
    ("rohrer100k", "none", 20),
    ("resnet18", "bn", 6),
]
VARIANTS = {"conv": dict(layer="conv", activation="relu", pool="max"),
            "scs": dict(layer="scs", activation="none", pool="maxabs")}
MODES = {"default": {}, "compile": {"compile": True}, "channels_last": {"channels_last": True}}
TARGETS = {"train": 1.15, "eval": 1.0}  # issue 18: SCS/conv


def _fmt(spread) -> str:
    med, lo, hi = spread
    return f"{med:.2f} [{lo:.2f}-{hi:.2f}]"


def main():
    args = parse_args(__doc__.splitlines()[0], lambda ap: (
        ap.add_argument("--batches", type=int, default=None),
        ap.add_argument("--amp", action="store_true", help="bfloat16 autocast"),
        ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))))
    dev = args.device
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    print(f"# {machine(dev)}" + (", bf16 autocast" if args.amp else ""))
    head = (f"{'arch':<11}{'mode':<14}{'batches':>8}{'conv train s':>13}{'SCS/conv train':>21}{'conv eval s':>12}"
            f"{'SCS/conv eval':>21}{'mem SCS/conv':>13}  targets (train<=1.15, eval<=1.0)")
    print(head)
    for arch, norm, n_cpu in CASES:
        n = args.batches or (n_cpu if dev == "cpu" else 100)
        torch.manual_seed(0)
        data = [(torch.rand(128, 3, 32, 32, device=dev), torch.randint(0, 10, (128,), device=dev)) for _ in range(n)]
        for mode in modes:
            runs, mems = {}, {}
            for key, kw in VARIANTS.items():
                torch.manual_seed(0)
                model = build_model(arch, norm=norm, **kw).to(dev)
                net = speed_options(model, **MODES[mode])
                opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=10_000)

                def step(x, y, net=net, opt=opt, sched=sched):
                    with torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=args.amp):
                        loss = F.cross_entropy(net(x).float(), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()

                def epoch(net=net, step=step):
                    net.train()
                    for x, y in data:
                        step(x, y)

                @torch.no_grad()
                def evaluate(net=net):
                    net.eval()
                    for x, _ in data:
                        with torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=args.amp):
                            net(x)

                runs[f"{key}_train"], runs[f"{key}_eval"] = epoch, evaluate
                x0, y0 = data[0]
                net.train()
                step(x0, y0)  # compiles (SCS backend, --compile) outside the clock
                peak = peak_cuda_bytes(lambda: step(x0, y0), dev)
                mems[key] = peak if peak is not None else saved_tensor_bytes(
                    lambda: F.cross_entropy(net(x0), y0).backward())
            t = interleaved_times(runs, dev, args.repeats, warmup=1)
            tr = ratio_spread(t["scs_train"], t["conv_train"])
            ev = ratio_spread(t["scs_eval"], t["conv_eval"])
            verdict = " ".join(f"{k} {'PASS' if s[0] <= TARGETS[k] else 'FAIL'}" for k, s in (("train", tr),
                                                                                            ("eval", ev)))
            med = {k: sorted(v)[len(v) // 2] for k, v in t.items()}
            print(f"{arch:<11}{mode:<14}{n:>8}{med['conv_train']:>13.2f}{_fmt(tr):>21}{med['conv_eval']:>12.2f}"
                  f"{_fmt(ev):>21}{mems['scs'] / mems['conv']:>13.2f}  {verdict}", flush=True)
    print(f"# {args.repeats} interleaved rounds per mode; ratios: median [min-max] of per-round SCS/conv; seconds: "
          "medians; mem: " + ("peak CUDA memory of a training step" if dev.startswith("cuda")
                              else "bytes saved for backward by one training step"))


if __name__ == "__main__":
    main()
