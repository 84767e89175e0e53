"""Architecture registry (timm-style): each builder registers itself with `@register_model`; every list of
architectures and of axis values (CLI choices, docs, grids) is read from here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import nn

from ..errors import OptionError

if TYPE_CHECKING:
    from .variants import Variant


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: how to build it, which values each variant axis takes, its training preset, counts."""
    name: str
    builder: Callable[[Variant], nn.Module]
    family: str
    axes: dict                        # axis -> allowed values, first is the default-like one
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


def register_model(name: str, **spec):
    """Decorator: register `builder(variant) -> nn.Module` as architecture `name` (ArchSpec's other fields as
    keywords)."""
    from .variants import AXES
    missing = [axis for axis in AXES if not spec.get("axes", {}).get(axis)]
    if missing:
        raise ValueError(f"register_model({name!r}): axes must give the values of every axis; missing "
                         f"{', '.join(missing)} (one value, e.g. 'norm': ('none',), where the model has no choice)")

    def deco(builder):
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = ArchSpec(name=name, builder=builder, **spec)
        return builder
    return deco


def list_archs() -> list[str]:
    return list(_REGISTRY)


_EXTERNAL: dict[str, ArchSpec] = {}


def get_arch(name: str) -> ArchSpec:
    """A registered architecture, or a model from elsewhere named by a spec (`external`: torchvision:NAME, ...)."""
    from .external import external_spec, is_external
    if is_external(name):
        if name not in _EXTERNAL:
            _EXTERNAL[name] = external_spec(name)
        return _EXTERNAL[name]
    if name not in _REGISTRY:
        raise OptionError("arch", f"unknown value {name!r}; allowed: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def axis_choices(axis: str) -> tuple:
    """Every value `axis` takes in some registered architecture (then in models from elsewhere), in order."""
    from .external import EXTERNAL_AXES
    return tuple(dict.fromkeys([v for spec in _REGISTRY.values() for v in spec.axes[axis]] + list(EXTERNAL_AXES[axis])))
