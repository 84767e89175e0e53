"""Models from outside the zoo, named by a spec string that a checkpoint records (never a pickled module):

    torchvision:NAME        torchvision.models.get_model(NAME, weights=None, num_classes=...)
    timm:NAME               timm.create_model(NAME, pretrained=False, num_classes=...)
    package.module:factory  factory(num_classes=...) where it takes num_classes, else factory()

Each is an architecture like the zoo's (`get_arch(spec)`), whose variants are `scs_probe.convert` applied to it:
layer conv (the model as it is), scs, sdp; activation keep or none; pool keep or maxabs. The model takes [0, 1]
images and normalises them itself (`Normalized`), as the zoo's ResNets do. All variants of one seed start from
the same tensors: the model is built under that seed and the sharpened layers take its conv kernels.
"""

from __future__ import annotations

import importlib
import inspect
import re

import torch
from torch import nn

from ..errors import OptionError
from .blocks import Normalized, resize_head

EXTERNAL_AXES = {"layer": ("conv", "scs", "sdp"), "activation": ("keep", "none"), "pool": ("keep", "maxabs"),
                 "norm": ("keep",), "image_size": (32, 224)}
# the study's comparison for a model from elsewhere: the model as it is, its SCS twin without activations and
# with max-abs pooling, and the SCS twin that keeps the model's activations and pooling
STUDY_GRID = ({"layer": "conv", "activation": "keep", "pool": "keep"},
              {"layer": "scs", "activation": "none", "pool": "maxabs"},
              {"layer": "scs", "activation": "keep", "pool": "keep"})
_SPEC = re.compile(r"^(torchvision|timm):([A-Za-z0-9_.]+)$|^([A-Za-z_][\w.]*):([A-Za-z_]\w*)$")


def is_external(name: str) -> bool:
    return ":" in str(name)


def _factory(spec: str):
    m = _SPEC.match(spec)
    if not m:
        raise OptionError("model", f"{spec!r} is not a model spec: torchvision:NAME, timm:NAME or "
                                   "package.module:factory")
    if m.group(1) == "torchvision":
        import torchvision
        name = m.group(2)
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise OptionError("model", f"torchvision has no classification model {name!r} (torchvision."
                                       "models.list_models() lists them)")
        return lambda **kw: torchvision.models.get_model(name, weights=None, **kw)
    if m.group(1) == "timm":
        try:
            import timm
        except ImportError:
            raise OptionError("model", f"{spec} needs timm: pip install timm") from None
        if m.group(2) not in timm.list_models():
            raise OptionError("model", f"timm has no model {m.group(2)!r}")
        return lambda **kw: timm.create_model(m.group(2), pretrained=False, **kw)
    module, attr = m.group(3), m.group(4)
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise OptionError("model", f"cannot import {attr} from {module} ({type(e).__name__}: {e})") from None
    if not callable(factory):
        raise OptionError("model", f"{spec} is not callable")
    return factory


def external_spec(spec: str):
    """The ArchSpec of a model spec (checked: the factory must exist). Presets: ResNet18's (batch 128, max LR
    0.01, 200 epochs, random crop + flip)."""
    from .registry import ArchSpec
    _factory(spec)
    return ArchSpec(name=spec, builder=lambda v, seed=0, num_classes=10: build_external(spec, v, num_classes, seed),
                    family="external",
                    axes=EXTERNAL_AXES, batch_size=128, max_lr=0.01, epochs=200, source=f"{spec}, converted",
                    study_grid_extra=STUDY_GRID)


def build_external(spec: str, variant, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """The model `spec` for `variant` (see the module docstring), built under `seed`."""
    from ..conversion import convert
    factory = _factory(spec)
    try:
        takes_classes = "num_classes" in inspect.signature(factory).parameters or spec.startswith(("torchvision:",
                                                                                                  "timm:"))
    except (TypeError, ValueError):
        takes_classes = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            net = factory(num_classes=num_classes) if takes_classes else factory()
        except Exception as e:  # the user's code: its failure is theirs to read, in one line
            raise OptionError("model", f"{spec} failed to build ({type(e).__name__}: "
                                       f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
        if not isinstance(net, nn.Module):
            raise OptionError("model", f"{spec} returned a {type(net).__name__}, not an nn.Module")
        if not takes_classes and not resize_head(net, num_classes):
            raise OptionError("model", f"{spec} takes no num_classes and has no nn.Linear head to resize to "
                                       f"{num_classes} classes")
        report = None
        if variant.layer != "conv" or variant.pool != "keep" or variant.activation != "keep":
            net, report = convert(net, layer="keep" if variant.layer == "conv" else variant.layer,
                                  activation=variant.activation, pool=variant.pool, copy_weights=True, inplace=True,
                                  fixed_p=variant.fixed_p)
            if variant.layer != "conv" and not report.replaced:
                raise OptionError("layer", f"{spec} has no nn.Conv2d to turn into {variant.layer}")
    model = Normalized(net)
    model.conversion = report  # what convert did, for the training log
    return model
