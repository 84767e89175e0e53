"""Any PyTorch model to its sharpened twin: swap every nn.Conv2d for SCS (or SDP, or p = 1 cosine similarity) of
the same geometry, optionally max-pooling for max-abs pooling and activation modules for identities, in the
manner of torch's and timm's module-swapping helpers (`convert_sync_batchnorm`, `freeze_batch_norm_2d`).

What cannot be swapped is listed, never silently left: conv biases (SCS has none: they are dropped), convs with
a non-zero padding mode or a padding='same' the sharpened layers cannot match (stride 2, or an even kernel that
Conv2d pads more on one side; left as convolutions), and activations called functionally inside a `forward` (found
by tracing it with torch.fx where it traces), which no module swap can remove.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import re
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from .errors import OptionError
from .layers import CosineSimilarity2d, MaxAbsPool2d, SharpenedCosineSimilarity2d, SharpenedSDP2d
from .layers.functional import conv_padding

LAYERS = {"scs": SharpenedCosineSimilarity2d, "sdp": SharpenedSDP2d, "cosine": CosineSimilarity2d}
# The nonlinearities between layers that activation="none" removes. Sigmoid-like modules (nn.Sigmoid,
# nn.Hardsigmoid, nn.Tanh) usually gate (squeeze-excitation's scale, attention): removing them would change what
# the block computes, not drop an activation, so they stay and the report lists them.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
               nn.Hardswish, nn.Hardtanh, nn.Softplus)
GATES = (nn.Sigmoid, nn.Hardsigmoid, nn.Tanh)
FUNCTIONAL_ACTIVATIONS = {torch.relu, torch.relu_, torch.nn.functional.relu, torch.nn.functional.relu6,
                          torch.nn.functional.gelu, torch.nn.functional.silu, torch.nn.functional.leaky_relu,
                          torch.nn.functional.elu, torch.nn.functional.hardswish, torch.nn.functional.mish,
                          torch.sigmoid, torch.tanh, torch.nn.functional.hardtanh}


@dataclass
class ConversionReport:
    """What `convert` did, module by module (names as `named_modules` gives them)."""

    replaced: list[str] = field(default_factory=list)          # convs now sharpened layers
    copied: list[str] = field(default_factory=list)            # ... whose kernels were carried over
    dropped_biases: list[str] = field(default_factory=list)    # conv biases SCS has no place for
    skipped: dict[str, str] = field(default_factory=dict)      # convs left as they are, and why
    pools: list[str] = field(default_factory=list)             # MaxPool2d now MaxAbsPool2d
    removed_activations: list[str] = field(default_factory=list)  # "name (type)"
    kept_gates: list[str] = field(default_factory=list)           # sigmoid-like modules left (activation="none")
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # the converted model

    @functools.cached_property
    def _found(self) -> list[str] | None:
        return None if self.model is None else _functional_activations(self.model)

    @property
    def functional_activations(self) -> list[str]:
        """F.relu(...) & co. called inside a forward, which no module swap removes (traced with torch.fx when
        first asked: building a model does not pay for the trace)."""
        return self._found or []

    @property
    def traced(self) -> bool:
        """False where the forward could not be traced for `functional_activations`."""
        return self._found is not None

    def summary(self) -> str:
        lines = [f"{len(self.replaced)} Conv2d replaced" + (f" ({len(self.copied)} with their kernels)"
                                                            if self.copied else "")]
        if self.dropped_biases:
            lines.append(f"{len(self.dropped_biases)} conv biases dropped (sharpened layers have none): "
                         + ", ".join(self.dropped_biases[:5]) + (" ..." if len(self.dropped_biases) > 5 else ""))
        lines += [f"left as Conv2d: {name} ({why})" for name, why in self.skipped.items()]
        if self.pools:
            lines.append(f"{len(self.pools)} MaxPool2d -> MaxAbsPool2d")
        if self.removed_activations:
            lines.append(f"{len(self.removed_activations)} activation modules removed: "
                         + ", ".join(self.removed_activations[:8])
                         + (" ..." if len(self.removed_activations) > 8 else ""))
        if self.kept_gates:
            lines.append(f"{len(self.kept_gates)} gating modules kept (they scale features, e.g. squeeze-excitation): "
                         + ", ".join(self.kept_gates[:8]) + (" ..." if len(self.kept_gates) > 8 else ""))

        if self.functional_activations:
            lines.append("functional activations that stay (called inside forward): "
                         + ", ".join(self.functional_activations))
        if not self.traced:
            lines.append("forward could not be traced: functional activations, if any, are not listed")
        return "\n".join(lines)


class Converted(NamedTuple):
    model: nn.Module
    report: ConversionReport


def _selected(name: str, include, exclude) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude))


def _sharpened_twin(conv: nn.Conv2d, layer: str, copy_weights: bool, fixed_p: float | None):
    kwargs = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  device=conv.weight.device, dtype=conv.weight.dtype)
    if fixed_p is not None and layer != "cosine":
        kwargs["fixed_p"] = fixed_p
    new = LAYERS[layer](conv.in_channels, conv.out_channels, conv.kernel_size, **kwargs)
    if copy_weights:
        with torch.no_grad():
            new.weight.copy_(conv.weight)
    return new


def _functional_activations(model: nn.Module) -> list[str] | None:
    """Activation functions called inside forward (as 'module: function'), or None where fx cannot trace it."""
    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):  # sharpened layers and pools are opaque, as nn's layers are
            return isinstance(m, tuple(LAYERS.values())[:2] + (MaxAbsPool2d,)) or super().is_leaf_module(m, qualname)

    tracer = Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(model)
    except Exception:  # data-dependent control flow and the like: fx's own limits
        return None
    found = []
    for node in graph.nodes:
        if node.op == "call_function" and node.target in FUNCTIONAL_ACTIVATIONS:
            call = f"{getattr(node.target, '__module__', '') or ''}.{node.target.__name__}".lstrip(".")
        elif node.op == "call_method" and node.target in ("relu", "relu_", "sigmoid", "tanh"):
            call = f"Tensor.{node.target}"
        else:
            continue
        found.append(f"{call} ({_where(node.stack_trace)})" if node.stack_trace else call)
    return found


def _where(stack_trace: str) -> str:
    """'file.py:12 in forward' from the innermost frame of an fx node's stack trace outside torch."""
    frames = [f for f in re.findall(r'File "([^"]+)", line (\d+), in (\w+)', stack_trace)
              if "/torch/" not in f[0]]  # fx's own frames
    if not frames:
        return "in forward"
    path, line, fn = frames[-1]
    return f"{path.rsplit('/', 1)[-1]}:{line} in {fn}"


def convert(model: nn.Module, layer: str = "scs", activation: str = "keep", pool: str = "keep",
            copy_weights: bool = False, include=None, exclude=None, fixed_p: float | None = None,
            inplace: bool = False) -> Converted:
    """Return `model` with every nn.Conv2d (whose name matches `include` globs and not `exclude` ones) replaced
    by the sharpened layer `layer` ('scs', 'sdp', 'cosine' for p = 1; 'keep' leaves them) of the same channels,
    kernel, stride, padding, dilation and groups; `pool='maxabs'` swaps nn.MaxPool2d for MaxAbsPool2d,
    `activation='none'` activation modules for nn.Identity. `copy_weights` carries the conv kernels over (the study's
    init-from-conv experiment); otherwise the new kernels get Conv2d's default init. A copy is converted
    unless `inplace`. Returns (model, report)."""
    if layer not in (*LAYERS, "keep"):
        raise OptionError("layer", f"unknown value {layer!r}; allowed: {', '.join(LAYERS)}, keep")
    if activation not in ("keep", "none"):
        raise OptionError("activation", f"unknown value {activation!r}; allowed: keep, none")
    if pool not in ("keep", "maxabs"):
        raise OptionError("pool", f"unknown value {pool!r}; allowed: keep, maxabs")
    model = model if inplace else copy.deepcopy(model)
    report = ConversionReport()
    swaps = []
    for name, module in model.named_modules():
        if not name or not _selected(name, include, exclude):
            continue
        if isinstance(module, nn.Conv2d) and type(module) is not nn.Conv2d:
            report.skipped[name] = f"{type(module).__name__}, a Conv2d subclass whose forward may differ"
        elif type(module) is nn.Conv2d and layer != "keep":
            if module.padding_mode != "zeros":
                report.skipped[name] = f"padding_mode {module.padding_mode!r}"
                continue
            try:  # 'valid', and 'same' where it pads both sides alike, as the sharpened layers do; only the
                # padding's refusal is a skip (any other ValueError, e.g. a fixed_p out of range, is the caller's)
                conv_padding(module.padding, module.kernel_size, module.stride, module.dilation)
            except ValueError as e:
                report.skipped[name] = f"padding {module.padding!r}: {e}"
                continue
            swaps.append((name, _sharpened_twin(module, layer, copy_weights, fixed_p)))
            report.replaced.append(name)
            if copy_weights:
                report.copied.append(name)
            if module.bias is not None:
                report.dropped_biases.append(name)
        elif pool == "maxabs" and type(module) is nn.MaxPool2d:
            if module.return_indices:
                report.skipped[name] = "MaxPool2d with return_indices"
                continue
            swaps.append((name, MaxAbsPool2d(module.kernel_size, module.stride, module.padding, module.dilation,
                                             ceil_mode=module.ceil_mode)))
            report.pools.append(name)
        elif activation == "none" and isinstance(module, ACTIVATIONS):
            swaps.append((name, nn.Identity()))
            report.removed_activations.append(f"{name} ({type(module).__name__})")
        elif activation == "none" and isinstance(module, GATES):
            report.kept_gates.append(f"{name} ({type(module).__name__})")

    for name, new in swaps:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    report.model = model
    return Converted(model, report)
