"""The rows a run records about its model each epoch: weight and gradient L2 norms per layer, exponents p."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import SHARPENED_LAYERS


def tracked_layers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(layer name, kernel/matrix weight) for every layer with a weight of 2 or more dimensions."""
    return [(name, m.weight) for name, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2]


def sharpened_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SHARPENED_LAYERS)]


def weight_norm_rows(epoch: int, layers, batch="") -> list[dict]:
    norms = torch.stack(torch._foreach_norm([w.detach().float() for _, w in layers])).tolist() if layers else []
    return [{"epoch": epoch, "batch": batch, "layer": name, "kind": "weight", "l2": f"{v:.6g}"}
            for (name, _), v in zip(layers, norms)]


def exponent_rows(epoch: int, model: nn.Module) -> list[dict]:
    rows = []
    for name, m in sharpened_layers(model):
        for ch, p in enumerate(m.effective_p().detach().float().cpu().tolist()):
            rows.append({"epoch": epoch, "layer": name, "channel": ch, "p": f"{p:.6g}"})
    return rows

