"""Architecture registry and the `build_model` factory (timm-style: register once, build by name)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..layers import SHARPENED_LAYERS, SharpenedCosineSimilarity2d
from .variants import ACTIVATIONS, LAYERS, NORMS, PAPER_NAMES, POOLS, Variant, check_choice, product_grid


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: how to build it, which variant axes it has, its training preset and its counts."""
    name: str
    builder: Callable[[Variant], nn.Module]
    family: str
    axes: dict
    batch_size: int
    max_lr: float
    epochs: int
    augment: str = "crop"             # crop: RandomCrop(32, padding=4) + flip; affine: RandomAffine + flip
    label_smoothing: float = 0.0
    params_scs: int | None = None     # true count of the scs/none/maxabs variant (REFERENCE.md section 3)
    params_conv: int | None = None    # true count of the conv/relu variant (with BatchNorm where it has one)
    stated_params: int | None = None  # the count its source states (file name, paper)
    paper_name: str = ""
    source: str = ""
    study_grid_extra: tuple = field(default=())


_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    _REGISTRY[spec.name] = spec
    return spec


def list_archs() -> list[str]:
    return list(_REGISTRY)


def get_arch(name: str) -> ArchSpec:
    check_choice("arch", name, list(_REGISTRY))
    return _REGISTRY[name]


def make_variant(arch: str, layer: str = "scs", activation: str = "none", pool: str = "maxabs",
                 norm: str = "none", image_size: int = 32, fixed_p: float | None = None) -> Variant:
    """Validate the axes against what `arch` has. An architecture without pooling (resnet20) takes any pooling
    value and records 'none'."""
    spec = get_arch(arch)
    check_choice("layer", layer, LAYERS)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("pool", pool, POOLS)
    check_choice("norm", norm, NORMS)
    if spec.axes["pool"] == ("none",):
        pool = "none"
    for axis, value in (("pool", pool), ("norm", norm), ("image_size", image_size)):
        allowed = spec.axes[axis]
        if value not in allowed:
            raise ValueError(f"{arch} has no {axis} {value!r}; allowed: {', '.join(map(str, allowed))}")
    if fixed_p is not None and layer == "conv":
        raise ValueError("fixed_p applies to sharpened layers (layer scs or sdp), not conv")
    return Variant(arch, layer, activation, pool, norm, int(image_size), fixed_p)


def build_model(arch: str | Variant, layer: str = "scs", activation: str = "none", pool: str = "maxabs",
                norm: str = "none", image_size: int = 32, seed: int = 0, fixed_p: float | None = None,
                init: bool = True) -> nn.Module:
    """Build one variant of `arch`. Variants of one arch built with one seed share every initial tensor they
    have in common (kernels, biases, p, Linear head), as the study trains all variants from one set of weights."""
    v = arch if isinstance(arch, Variant) else make_variant(arch, layer, activation, pool, norm, image_size,
                                                            fixed_p)
    model = get_arch(v.arch).builder(v)
    model.variant = v
    if init:
        init_shared_(model, seed)
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


def variant_grid(arch: str, grid: str = "study") -> list[Variant]:
    """`full`: every combination of the arch's axes. `study`: the variants of the paper's tables for it."""
    spec = get_arch(arch)
    check_choice("grid", grid, ("study", "full"))
    if grid == "full":
        return product_grid(arch, spec.axes)
    from ..paper import paper_table
    rows = paper_table(spec.paper_name) if spec.paper_name else []
    found = {make_variant(arch, **{axis: PAPER_NAMES[axis][r[col]] for axis, col in
                                   (("layer", "layer"), ("activation", "activation"), ("pool", "pooling"),
                                    ("norm", "normalization"))},
                          image_size=int(r["image_size"].split("x")[0])) for r in rows}
    found |= {make_variant(arch, **extra) for extra in spec.study_grid_extra}
    return sorted(found, key=lambda v: (v.image_size, LAYERS.index(v.layer), v.activation, v.pool, v.norm))
