"""The five scs-gallery models (brohrer/scs-gallery): no input normalisation, no BatchNorm, Linear head."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..layers import PoolFusedSequential
from .blocks import activation, kernel_layer, pooling
from .registry import register_model
from .variants import Variant

ROHRER_AXES = {"layer": ("conv", "scs", "sdp"), "activation": ("relu", "none"), "pool": ("max", "maxabs"),
               "norm": ("none",), "image_size": (32,)}


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


_GALLERY = dict(family="rohrer", axes=ROHRER_AXES, epochs=800, augment="crop")


@register_model("rohrer25k", paper_name="Rohrer25K", params_scs=24_974, stated_params=25_214, batch_size=64,
                max_lr=0.05, source="scs-gallery cifar10_80_25214.py", label_smoothing=0.05,
                **{**_GALLERY, "augment": "affine"})
def rohrer25k(v: Variant) -> nn.Module:
    return _stack(v, [("conv1", 3, 80, 5, 0, 1), ("conv2", 80, 80, 3, 0, 80), ("conv3", 80, 40, 1, 0, 1),
                      ("conv4", 40, 40, 3, 0, 1)], {"conv1": 2, "conv3": 2, "conv4": 4}, 40)


@register_model("rohrer47k", paper_name="Rohrer47K", params_scs=47_653, stated_params=47_643, batch_size=64,
                max_lr=0.05, source="scs-gallery cifar10_80_47643.py", **_GALLERY)
def rohrer47k(v: Variant) -> nn.Module:
    return _stack(v, [("conv1", 3, 30, 5, 0, 1), ("conv2", 30, 30, 5, 1, 1), ("conv3", 30, 30, 5, 1, 1)],
                  {"conv1": 2, "conv2": 2, "conv3": 4}, 30)


@register_model("rohrer68k", paper_name="Rohrer68K", params_scs=68_029, stated_params=68_000, batch_size=128,
                max_lr=0.01, source="scs-gallery model_cifar10_18_4.py", **_GALLERY)
def rohrer68k(v: Variant) -> nn.Module:
    return _three_block(v, (24, 48, 96))


@register_model("rohrer100k", paper_name="Rohrer100K", params_scs=113_741, stated_params=100_000, batch_size=128,
                max_lr=0.05, source="scs-gallery model_cifar10_15_9.py", **_GALLERY)
def rohrer100k(v: Variant) -> nn.Module:
    return _three_block(v, (32, 64, 128))


@register_model("rohrer583k", paper_name="Rohrer583K", params_scs=629_933, stated_params=583_843, batch_size=128,
                max_lr=0.05, source="scs-gallery model_cifar10_12_9.py", **_GALLERY)
def rohrer583k(v: Variant) -> nn.Module:
    return _three_block(v, (80, 160, 320))
