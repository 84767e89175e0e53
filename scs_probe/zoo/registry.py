"""Architecture registry (timm-style), the zoo's ground floor: every list of architectures and of axis values (CLI
choices, docs, grids) is read from here, and every model spec is resolved here. Imports no torch.

- Architectures: scs-probe's own are declared in `builtin` (their builders imported when first built); others
  register with `@register_model`.
- Models from elsewhere: a spec `PREFIX:NAME` goes to the resolver registered for PREFIX (`register_resolver`);
  `builtin` plugs in `torchvision:`, `timm:` and every other `package.module:factory` (`zoo.external`).
- Trust: a resolver that imports code the spec names (package.module:factory) runs only for specs the user
  trusts (`trust_model_code`); otherwise `UntrustedModelCode`, with nothing imported. Specs read from files
  (checkpoints, a run's config.json) can thus name zoo, torchvision and timm models, nothing else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import OptionError, UntrustedModelCode
from .axes import AXES, EXTERNAL_AXES
from .builtin import ANY_MODULE, ARCHITECTURES, RESOLVERS

if TYPE_CHECKING:
    from torch import nn


def entry_point(ref: str) -> Callable:
    """'package.module:function' -> the function, imported now. Only for entry points that code registered
    (`builtin`, `register_model`, `register_resolver`), never for a spec read from a file."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: how to build it, which values each variant axis takes, its training preset, counts."""
    name: str
    builder: Callable[..., nn.Module] | str  # builder(variant) -> model, or "package.module:function" of one
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

    def build(self, variant, **kwargs) -> nn.Module:
        """builder(variant, **kwargs); a builder given as "package.module:function" is imported now."""
        builder = entry_point(self.builder) if isinstance(self.builder, str) else self.builder
        return builder(variant, **kwargs)


_REGISTRY: dict[str, ArchSpec] = {}


def register_model(name: str, builder: Callable | str | None = None, **spec):
    """Register architecture `name` (ArchSpec's other fields as keywords; `axes` gives every axis's values): as a
    decorator of `builder(variant) -> nn.Module`, or with `builder` given, as a function or as
    "package.module:function" (imported when first built: listing architectures then imports nothing)."""
    missing = [axis for axis in AXES if not spec.get("axes", {}).get(axis)]
    if missing:
        raise ValueError(f"register_model({name!r}): axes must give the values of every axis; missing "
                         f"{', '.join(missing)} (one value, e.g. 'norm': ('none',), where the model has no choice)")
    if ":" in name:
        raise ValueError(f"register_model({name!r}): a name with ':' is a model spec (register_resolver)")

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = ArchSpec(name=name, builder=fn, **spec)
        return fn
    return deco if builder is None else deco(builder)


def list_archs() -> list[str]:
    return list(_REGISTRY)


def axis_choices(axis: str) -> tuple:
    """Every value `axis` takes in some registered architecture (then in models from elsewhere), in order."""
    return tuple(dict.fromkeys([v for spec in _REGISTRY.values() for v in spec.axes[axis]] + list(EXTERNAL_AXES[axis])))


# ------------------------------------------------------------------------------------------- models from elsewhere

@dataclass(frozen=True)
class _Resolver:
    resolve: Callable[[str], ArchSpec] | str
    imports_code: bool


_RESOLVERS: dict[str, _Resolver] = {}
_RESOLVED: dict[str, ArchSpec] = {}


def register_resolver(prefix: str, resolve: Callable[[str], ArchSpec] | str, *, imports_code: bool) -> None:
    """Resolve specs `prefix:NAME` with `resolve(spec) -> ArchSpec` (a function, or "package.module:function"
    imported on first use); prefix `ANY_MODULE` ("*") takes every spec no other prefix claims. `imports_code`:
    whether it imports code that the spec names, so that only trusted specs reach it (`trust_model_code`); a
    resolver that looks names up in its library's own registry, as torchvision's and timm's do, does not."""
    if prefix in _RESOLVERS:
        raise ValueError(f"a resolver for {prefix!r} is registered twice")
    _RESOLVERS[prefix] = _Resolver(resolve, imports_code)


def _resolver(spec: str) -> _Resolver:
    return _RESOLVERS.get(spec.partition(":")[0]) or _RESOLVERS[ANY_MODULE]


def get_arch(name: str) -> ArchSpec:
    """A registered architecture, or a model from elsewhere named by a spec (torchvision:NAME, timm:NAME,
    package.module:factory), resolved by its prefix's resolver; one that imports code only for a trusted spec
    (else `UntrustedModelCode`, nothing imported)."""
    if not isinstance(name, str):
        raise OptionError("arch", f"{name!r} is not an architecture name")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        raise OptionError("arch", f"unknown value {name!r}; allowed: {', '.join(_REGISTRY)}")
    check_trusted(name)  # every time: the cache below may hold a spec resolved while it was trusted
    if name not in _RESOLVED:
        resolve = _resolver(name).resolve
        _RESOLVED[name] = (entry_point(resolve) if isinstance(resolve, str) else resolve)(name)
    return _RESOLVED[name]


# ------------------------------------------------------------------------------------------------------ trust

@dataclass(frozen=True)
class ModelCodeTrust:
    """Which model specs that name code to import (package.module:factory) may be imported: all, or those listed.
    Picklable: parallel sweeps and searches hand it to their workers."""
    all: bool = False
    specs: frozenset[str] = frozenset()

    def allows(self, spec: str) -> bool:
        return self.all or spec in self.specs

    def __or__(self, other: ModelCodeTrust) -> ModelCodeTrust:
        return ModelCodeTrust(self.all or other.all, self.specs | other.specs)


_TRUST = ModelCodeTrust()


def model_code_trust() -> ModelCodeTrust:
    """This process's trust in model code (nothing, until `trust_model_code`)."""
    return _TRUST


class trust_model_code:  # lower case: called as a function, also a context manager (as torch.set_grad_enabled)
    """Trust model code, in addition to what is trusted already: every spec (True), none (False), one (a spec
    string: the command line trusts the spec given as its model), several (strings, or a `ModelCodeTrust`).
    Takes effect at once, for this process and the workers of its parallel sweeps and searches; as a context
    manager, the previous trust returns on exit:

        with trust_model_code("mypackage.models:net"):
            model = build_model("mypackage.models:net")
    """

    def __init__(self, specs: bool | str | Iterable[str] | ModelCodeTrust = True):
        global _TRUST
        if isinstance(specs, ModelCodeTrust):
            added = specs
        elif isinstance(specs, bool):
            added = ModelCodeTrust(all=specs)
        else:
            added = ModelCodeTrust(specs=frozenset([specs] if isinstance(specs, str) else specs))
        self.previous = _TRUST
        _TRUST = _TRUST | added

    def __enter__(self) -> trust_model_code:
        return self

    def __exit__(self, *exc) -> None:
        global _TRUST
        _TRUST = self.previous


def needs_trust(spec) -> bool:
    """Whether resolving `spec` would import code that it names (a package.module:factory, or any other spec that
    no registered architecture or library resolver claims)."""
    return isinstance(spec, str) and spec not in _REGISTRY and ":" in spec and _resolver(spec).imports_code


def check_trusted(spec, source=None) -> None:
    """`UntrustedModelCode` (naming `source`, e.g. the file the spec was read from) where `spec` needs trust that
    the user did not give. Imports nothing."""
    if needs_trust(spec) and not _TRUST.allows(spec):
        raise UntrustedModelCode(spec, source)


def _register_builtin() -> None:
    for name, fields in ARCHITECTURES.items():
        register_model(name, **fields)
    for prefix, (resolve, imports_code) in RESOLVERS.items():
        register_resolver(prefix, resolve, imports_code=imports_code)


_register_builtin()
