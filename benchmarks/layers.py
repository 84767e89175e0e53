"""Forward+backward time and activation memory of SCS and SharpenedSDP vs Conv2d + ReLU, layer by layer.

Shapes: the layers of rohrer100k and resnet18 (32 px) at batch 128, and one resnet18 layer at 224 px.
Prints, per shape, ratios to Conv2d + ReLU measured side by side in one run; 'naive' is the straightforward
autograd formulation (two convolutions + elementwise ops), the baseline the fused function replaces.
A second table times rohrer100k's blocks as the zoo runs them: SCS + MaxAbsPool2d (fused by
PoolFusedSequential) against Conv2d + MaxPool2d + ReLU, forward+backward and forward alone (evaluation).

    python benchmarks/layers.py [--device cuda] [--repeats 7]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, machine, parse_args, peak_cuda_bytes, saved_tensor_bytes

from scs_probe.layers import MaxAbsPool2d, PoolFusedSequential, SharpenedCosineSimilarity2d, SharpenedSDP2d
from scs_probe.layers.reference import scs_naive_autograd

# name, batch, in, out, kernel, stride, padding, input size
SHAPES = [
    ("rohrer100k.conv1", 128, 3, 32, 3, 1, 0, 32),
    ("rohrer100k.conv2", 128, 32, 64, 3, 1, 1, 15),
    ("rohrer100k.conv3", 128, 64, 128, 3, 1, 1, 8),
    ("resnet18.conv1", 128, 3, 64, 7, 2, 3, 32),
    ("resnet18.layer1", 128, 64, 64, 3, 1, 1, 8),
    ("resnet18.layer2", 128, 128, 128, 3, 1, 1, 4),
    ("resnet18.layer2.down", 128, 64, 128, 1, 2, 0, 8),
    ("resnet18.layer3", 128, 256, 256, 3, 1, 1, 2),
    ("resnet18.layer4", 128, 512, 512, 3, 1, 1, 1),
    ("resnet18@224.layer1", 32, 64, 64, 3, 1, 1, 56),
]


TARGET_WIDE, TARGET_STEM = 1.25, 2.0  # issue 18: forward+backward vs Conv2d + ReLU; stems: 3 input channels


def verdict(ratio: float, in_channels: int) -> str:
    target = TARGET_STEM if in_channels <= 3 else TARGET_WIDE
    return f"{'PASS' if ratio <= target else 'FAIL'} (<= {target})"


def main():
    args = parse_args(__doc__.splitlines()[0])
    dev = args.device
    print(f"# {machine(dev)}")
    print(f"{'layer':<22}{'conv+relu ms':>13}{'scs':>7}{'sdp':>7}{'naive':>7}{'mem scs':>9}{'mem sdp':>9}"
          f"  target (SCS)")
    for name, b, cin, cout, k, s, p, hw in SHAPES:
        torch.manual_seed(0)
        x = torch.rand(b, cin, hw, hw, device=dev, requires_grad=cin > 3)  # first layers need no input grad
        conv = nn.Conv2d(cin, cout, k, s, p).to(dev)
        scs = SharpenedCosineSimilarity2d(cin, cout, k, s, p).to(dev)
        sdp = SharpenedSDP2d(cin, cout, k, s, p).to(dev)
        relu = nn.ReLU(inplace=True)
        steps = {
            "conv": lambda: relu(conv(x)).sum().backward(),
            "scs": lambda: scs(x).sum().backward(),
            "sdp": lambda: sdp(x).sum().backward(),
            "naive": lambda: scs_naive_autograd(x, scs.weight, scs.effective_p(), scs.effective_q(), s, p)
            .sum().backward(),
        }
        t = interleaved_medians(steps, dev, args.repeats)
        mem = {}
        for key in ("conv", "scs", "sdp"):
            peak = peak_cuda_bytes(steps[key], dev)
            mem[key] = peak if peak is not None else saved_tensor_bytes(steps[key])
        print(f"{name:<22}{t['conv'] * 1e3:>13.2f}{t['scs'] / t['conv']:>7.2f}{t['sdp'] / t['conv']:>7.2f}"
              f"{t['naive'] / t['conv']:>7.2f}{mem['scs'] / mem['conv']:>9.2f}{mem['sdp'] / mem['conv']:>9.2f}"
              f"  {verdict(t['scs'] / t['conv'], cin)}")
    kind = "peak CUDA memory of the step" if dev.startswith("cuda") else "bytes saved for backward"
    print(f"# ratios to Conv2d + ReLU (time: median of {args.repeats} interleaved rounds; mem: {kind})")
    blocks(args)


def blocks(args):
    dev = args.device
    print(f"\n{'block (+ pool 2)':<22}{'conv ms':>9}{'scs':>7}{'conv eval ms':>14}{'scs eval':>10}{'mem scs':>9}")
    for name, b, cin, cout, k, s, p, hw in SHAPES[:3]:
        torch.manual_seed(0)
        x = torch.rand(b, cin, hw, hw, device=dev, requires_grad=cin > 3)
        conv = nn.Sequential(nn.Conv2d(cin, cout, k, s, p), nn.MaxPool2d(2, ceil_mode=True), nn.ReLU(True)).to(dev)
        scs = PoolFusedSequential(SharpenedCosineSimilarity2d(cin, cout, k, s, p),
                                  MaxAbsPool2d(2, ceil_mode=True)).to(dev)

        def infer(m):
            with torch.no_grad():
                m(x)
        steps = {"conv": lambda: conv(x).sum().backward(), "scs": lambda: scs(x).sum().backward(),
                 "conv_eval": lambda: infer(conv), "scs_eval": lambda: infer(scs)}
        t = interleaved_medians(steps, dev, args.repeats)
        mem = {}
        for key in ("conv", "scs"):
            peak = peak_cuda_bytes(steps[key], dev)
            mem[key] = peak if peak is not None else saved_tensor_bytes(steps[key])
        print(f"{name:<22}{t['conv'] * 1e3:>9.2f}{t['scs'] / t['conv']:>7.2f}{t['conv_eval'] * 1e3:>14.2f}"
              f"{t['scs_eval'] / t['conv_eval']:>10.2f}{mem['scs'] / mem['conv']:>9.2f}")


if __name__ == "__main__":
    main()
