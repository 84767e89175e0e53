"""Variants: one point on the study's axes (layer x activation x pooling x normalisation x image size), the one
value that names a model everywhere: training options, checkpoints, sweeps, the CLI."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..errors import OptionError
from ..paper import paper_axes, paper_table
from ..serialization import DictSerializable
from .axes import AXES, GRIDS
from .registry import axis_choices, get_arch


@dataclass(frozen=True, order=True)
class Variant(DictSerializable):
    """Validated against the registry when made: an unknown value, or one the architecture does not have, is an
    `OptionError`. An architecture without pooling (resnet20) takes any pooling value and records 'none'."""
    arch: str
    layer: str = "scs"
    activation: str = "none"
    pool: str = "maxabs"
    norm: str = "none"
    image_size: int = 32
    fixed_p: float | None = None

    def __post_init__(self):
        spec = get_arch(self.arch)
        if spec.axes["pool"] == ("none",):
            object.__setattr__(self, "pool", "none")
        if spec.family == "external":  # a model from elsewhere keeps its own normalisation layers
            if self.norm not in ("none", "keep"):
                raise OptionError("norm", f"does not apply to {self.arch}: a model from elsewhere keeps its own "
                                          "normalisation layers")
            object.__setattr__(self, "norm", "keep")
        if isinstance(self.image_size, str) and self.image_size.isdigit():
            object.__setattr__(self, "image_size", int(self.image_size))
        for axis in AXES:
            value, allowed = getattr(self, axis), spec.axes[axis]
            if value not in allowed:
                known = axis_choices(axis)
                what = f"{self.arch} has no {axis} {value!r}" if value in known else f"unknown value {value!r}"
                raise OptionError(axis, f"{what}; allowed: {', '.join(map(str, allowed))}")
        if self.fixed_p is not None:
            if self.layer == "conv":
                raise OptionError("fixed_p", "applies to sharpened layers (layer scs or sdp), not conv")
            object.__setattr__(self, "fixed_p", float(self.fixed_p))

    @property
    def name(self) -> str:
        """Directory-safe name, e.g. rohrer100k-scs-none-maxabs, resnet18-conv-relu-max-bn-224px or
        torchvision-resnet18-scs-none-maxabs (a model from elsewhere)."""
        parts = [self.arch.replace(":", "-"), self.layer, self.activation]
        if self.pool != "none":
            parts.append(self.pool)
        if self.norm not in ("none", "keep"):
            parts.append(self.norm)
        if self.image_size != 32:
            parts.append(f"{self.image_size}px")
        if self.fixed_p is not None:
            parts.append(f"p{self.fixed_p:g}")
        return "-".join(parts)

    def axes(self) -> dict:
        return {axis: getattr(self, axis) for axis in AXES}


def variant_grid(arch: str, grid: str = "study") -> list[Variant]:
    """`full`: every combination of the arch's axes. `study`: the variants of the paper's tables for it (and
    the arch's `study_grid_extra`)."""
    spec = get_arch(arch)
    if grid == "full":
        return [Variant(arch, **dict(zip(AXES, combo))) for combo in itertools.product(*(spec.axes[a] for a in AXES))]
    if grid != "study":
        raise OptionError("grid", f"unknown value {grid!r}; allowed: {', '.join(GRIDS)}")
    found = {Variant(arch, **paper_axes(r)) for r in (paper_table(spec.paper_name) if spec.paper_name else [])}
    found |= {Variant(arch, **extra) for extra in spec.study_grid_extra}
    if not found:
        raise OptionError("grid", f"{arch} has no study grid (the study did not train it); use the full grid")
    layers = spec.axes["layer"]
    return sorted(found, key=lambda v: (v.image_size, layers.index(v.layer), v.activation, v.pool, v.norm))

