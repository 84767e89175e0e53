"""The five scs-gallery models (brohrer/scs-gallery): no input normalisation, no BatchNorm, Linear head. Their
names, axes, presets and counts are declared in `builtin`, which names these builders."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..layers import PoolFusedSequential
from .blocks import activation, kernel_layer, pooling
from .variants import Variant


def _stack(v: Variant, convs, pools, head_in: int) -> nn.Sequential:
    """convs: (name, in, out, k, padding, groups); pools: {after conv name: pool kernel}. Each block is
    kernel layer -> pooling (where it has one) -> activation."""
    mods, n_pools = OrderedDict(), 0
    for i, (name, cin, cout, k, pad, groups) in enumerate(convs, 1):
        mods[name] = kernel_layer(v.layer, cin, cout, k, padding=pad, groups=groups, fixed_p=v.fixed_p)
        # pool before the activation: after a ReLU every value is >= 0 and max-abs pooling would equal max
        # pooling; the study's ReLU + MaxAbsPool2d collapse (Tables 1, 3-7) needs this order
        if name in pools:
            n_pools += 1
            mods[f"pool{n_pools}"] = pooling(v.pool, pools[name], ceil_mode=True)
        mods[f"act{i}"] = activation(v.activation)
    mods["flatten"] = nn.Flatten()
    mods["fc"] = nn.Linear(head_in, 10)
    return PoolFusedSequential(mods)


def _three_block(v: Variant, channels) -> nn.Module:
    c1, c2, c3 = channels
    return _stack(v, [("conv1", 3, c1, 3, 0, 1), ("conv2", c1, c2, 3, 1, 1), ("conv3", c2, c3, 3, 1, 1)],
                  {"conv1": 2, "conv2": 2, "conv3": 2}, c3 * 4 * 4)


def rohrer25k(v: Variant) -> nn.Module:
    return _stack(v, [("conv1", 3, 80, 5, 0, 1), ("conv2", 80, 80, 3, 0, 80), ("conv3", 80, 40, 1, 0, 1),
                      ("conv4", 40, 40, 3, 0, 1)], {"conv1": 2, "conv3": 2, "conv4": 4}, 40)


def rohrer47k(v: Variant) -> nn.Module:
    return _stack(v, [("conv1", 3, 30, 5, 0, 1), ("conv2", 30, 30, 5, 1, 1), ("conv3", 30, 30, 5, 1, 1)],
                  {"conv1": 2, "conv2": 2, "conv3": 4}, 30)


def rohrer68k(v: Variant) -> nn.Module:
    return _three_block(v, (24, 48, 96))


def rohrer100k(v: Variant) -> nn.Module:
    return _three_block(v, (32, 64, 128))


def rohrer583k(v: Variant) -> nn.Module:
    return _three_block(v, (80, 160, 320))
