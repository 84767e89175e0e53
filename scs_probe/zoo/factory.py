"""`build_model`: one variant, initialised so that all variants of an architecture share their initial tensors."""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from ..layers import SHARPENED_LAYERS, SharpenedCosineSimilarity2d
from .blocks import Normalize, resize_head
from .registry import get_arch
from .variants import Variant


def build_model(variant: Variant | str, *, seed: int = 0, init: bool = True, num_classes: int = 10,
                normalization: tuple | None = None, **axes) -> nn.Module:
    """Build one variant: a `Variant`, or an architecture name with its axes as keywords
    (`build_model("rohrer100k", layer="conv", activation="relu")`). Variants of one arch built with one seed share
    every initial tensor they have in common (kernels, biases, p, Linear head), as the study trains all variants
    from one set of weights. `num_classes` sizes the head (the zoo's last Linear); `normalization` (mean, std)
    sets the per-channel input normalisation of models that have one (default CIFAR-10's). The model carries its
    variant as `model.variant`."""
    if isinstance(variant, Variant) and axes:
        raise TypeError("build_model takes a Variant or an architecture name with axes, not both")
    v = variant if isinstance(variant, Variant) else Variant(variant, **axes)
    spec = get_arch(v.arch)
    if spec.family == "external":  # its own init under `seed`; sharpened layers take its conv kernels
        model = spec.build(v, seed=seed, num_classes=num_classes)
    else:
        model = spec.build(v)
        resize_head(model, num_classes)  # the zoo's heads have 10 outputs
        if init:
            init_shared_(model, seed)
    if normalization is not None:
        for m in model.modules():
            if isinstance(m, Normalize):
                m.mean.copy_(torch.tensor(normalization[0]).view_as(m.mean))
                m.std.copy_(torch.tensor(normalization[1]).view_as(m.std))
    model.variant = v
    return model


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@torch.no_grad()
def init_shared_(model: nn.Module, seed: int) -> nn.Module:
    """Initialise every tensor from a generator keyed by (seed, tensor name): the values do not depend on the
    variant or on construction order. Kernels and biases follow Conv2d's / Linear's defaults
    (uniform, bound 1/sqrt(fan_in)); p is uniform in the layer's p_init; q = 1e-3; BatchNorm 1 / 0."""
    for prefix, m in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(m, (nn.Conv2d, nn.Linear) + SHARPENED_LAYERS):
            bound = 1.0 / math.sqrt(m.weight[0].numel())
            m.weight.uniform_(-bound, bound, generator=_generator(seed, dot + "weight"))
            if getattr(m, "bias", None) is not None:
                m.bias.uniform_(-bound, bound, generator=_generator(seed, dot + "bias"))
            if isinstance(m, SHARPENED_LAYERS) and m.fixed_p is None:
                m.p.uniform_(*m.p_init, generator=_generator(seed, dot + "p"))
            if isinstance(m, SharpenedCosineSimilarity2d):
                m.reset_q()
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
