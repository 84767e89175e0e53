"""Variants: one point on the study's axes (layer x activation x pooling x normalisation x image size)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..serialization import DictSerializable

LAYERS = ("conv", "scs", "sdp")
ACTIVATIONS = ("relu", "none")
POOLS = ("max", "maxabs", "none")
NORMS = ("bn", "none")

# How the paper's tables spell each axis value.
PAPER_NAMES = {
    "layer": {"Conv2d": "conv", "SCS": "scs", "SharpenedSDP": "sdp"},
    "activation": {"ReLU": "relu", "None": "none"},
    "pool": {"MaxPool2d": "max", "MaxAbsPool2d": "maxabs"},
    "norm": {"BatchNorm2d": "bn", "None": "none"},
}


@dataclass(frozen=True, order=True)
class Variant(DictSerializable):
    arch: str
    layer: str = "scs"
    activation: str = "none"
    pool: str = "maxabs"
    norm: str = "none"
    image_size: int = 32
    fixed_p: float | None = None

    @property
    def name(self) -> str:
        """Directory-safe name, e.g. rohrer100k-scs-none-maxabs or resnet18-conv-relu-max-bn-224px."""
        parts = [self.arch, self.layer, self.activation]
        if self.pool != "none":
            parts.append(self.pool)
        if self.norm != "none":
            parts.append(self.norm)
        if self.image_size != 32:
            parts.append(f"{self.image_size}px")
        if self.fixed_p is not None:
            parts.append(f"p{self.fixed_p:g}")
        return "-".join(parts)



def check_choice(axis: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {axis} {value!r}; allowed: {', '.join(map(str, allowed))}")


def product_grid(arch: str, axes: dict) -> list[Variant]:
    keys = ("layer", "activation", "pool", "norm", "image_size")
    return [Variant(arch, *combo) for combo in itertools.product(*(axes[k] for k in keys))]
