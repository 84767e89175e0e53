"""Models from outside the zoo, named by a spec string that a checkpoint records (never a pickled module). The
registry resolves each spec with the resolver `builtin` registers for its prefix:

    torchvision:NAME        torchvision.models.get_model(NAME, weights=None, num_classes=...), NAME in list_models
    timm:NAME               timm.create_model(NAME, pretrained=False, num_classes=...), NAME in list_models
    package.module:factory  factory(num_classes=...) where it takes num_classes, else factory(); only for a spec
                            the user trusts (`trust_model_code`: the command line trusts the spec it is given)

Each is an architecture like the zoo's (`get_arch(spec)`), whose variants are `scs_probe.convert` applied to it:
layer conv (the model as it is), scs, sdp; activation keep or none; pool keep or maxabs. The model takes [0, 1]
images and normalises them itself (`Normalized`), as the zoo's ResNets do. All variants of one seed start from
the same tensors: the model is built under that seed and the sharpened layers take its conv kernels.

A factory's module is imported from sys.path without the current directory, which Python puts there for
`python -m`, `-c` and its prompt (the `scs-probe` command never has it): a module lying beside a folder of runs is
not imported by accident. PYTHONPATH=. makes the current directory searched.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import sys

import torch
import torchvision
from torch import nn

from ..conversion import convert
from ..errors import OptionError
from .axes import EXTERNAL_AXES, EXTERNAL_STUDY_GRID
from .blocks import Normalized, resize_head
from .registry import ArchSpec

_LIBRARY_NAME = re.compile(r"^(torchvision|timm):([A-Za-z0-9_.]+)$")
_FACTORY = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)$")
_FORMS = "torchvision:NAME, timm:NAME or package.module:factory"


def _library_name(spec: str) -> str:
    m = _LIBRARY_NAME.match(spec)
    if not m:
        raise OptionError("model", f"{spec!r} is not a model spec: {_FORMS}")
    return m.group(2)


def torchvision_arch(spec: str) -> ArchSpec:
    """torchvision:NAME: a classification model of torchvision's registry."""
    name = _library_name(spec)
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise OptionError("model", f"torchvision has no classification model {name!r} (torchvision.models."
                                   "list_models() lists them)")
    return _arch(spec, lambda **kw: torchvision.models.get_model(name, weights=None, **kw), takes_classes=True)


def timm_arch(spec: str) -> ArchSpec:
    """timm:NAME: a model of timm's registry."""
    name = _library_name(spec)
    try:
        import timm  # lazy: optional, and slow to import (only a timm: spec needs it)
    except ImportError:
        raise OptionError("model", f"{spec} needs timm: pip install timm") from None
    if name not in timm.list_models():
        raise OptionError("model", f"timm has no model {name!r}")
    return _arch(spec, lambda **kw: timm.create_model(name, pretrained=False, **kw), takes_classes=True)


def factory_arch(spec: str) -> ArchSpec:
    """package.module:factory (the registry lets only trusted specs reach here)."""
    m = _FACTORY.match(spec)
    if not m:
        raise OptionError("model", f"{spec!r} is not a model spec: {_FORMS}")
    module, attr = m.groups()
    try:
        factory = getattr(_import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise OptionError("model", f"cannot import {attr} from {module} ({type(e).__name__}: {e}; the current "
                                   "directory is searched only where PYTHONPATH names it)") from None
    if not callable(factory):
        raise OptionError("model", f"{spec} is not callable")
    try:
        takes_classes = "num_classes" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_classes = False
    return _arch(spec, factory, takes_classes)


def _import_module(module: str):
    """importlib.import_module without sys.path's entries for the current directory ('' or its path), unless
    $PYTHONPATH names it."""
    cwd = os.getcwd()
    named = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    hidden = [] if cwd in named else [(i, p) for i, p in enumerate(sys.path)
                                      if isinstance(p, str) and os.path.abspath(p or os.curdir) == cwd]
    for i, _ in reversed(hidden):
        del sys.path[i]
    try:
        return importlib.import_module(module)
    finally:
        for i, p in hidden:
            sys.path.insert(i, p)


def _arch(spec: str, factory, takes_classes: bool) -> ArchSpec:
    """The ArchSpec of a model from elsewhere. Presets: ResNet18's (batch 128, max LR 0.01, 200 epochs, random
    crop + flip)."""
    return ArchSpec(name=spec, builder=functools.partial(build_external, spec, factory, takes_classes),
                    family="external", axes=EXTERNAL_AXES, batch_size=128, max_lr=0.01, epochs=200,
                    source=f"{spec}, converted", study_grid_extra=EXTERNAL_STUDY_GRID)


def build_external(spec: str, factory, takes_classes: bool, variant, num_classes: int = 10, seed: int = 0
                   ) -> nn.Module:
    """factory's model for `variant` (see the module docstring), built under `seed`."""
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
