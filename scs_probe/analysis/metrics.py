"""Explanation-quality metrics that need no model calls (Quantus-style: each knows which direction is better)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    doc: str


SPARSENESS = Metric("sparseness", True, "Gini index of |map|: 0 for a uniform map, -> 1 when one pixel holds it all")
COMPLEXITY = Metric("complexity", False, "entropy of |map| / sum |map| (nats): lower is more focused")
DELETION_AUC = Metric("deletion_auc", False, "area under target probability as the most salient pixels are "
                                             "removed: lower means the map found what the model uses")
RAND_SPEARMAN = Metric("rand_spearman", False, "rank correlation of the maps with those of the model with random "
                                               "weights: lower means the maps depend on what the model learned")
RAND_SSIM = Metric("rand_ssim", False, "SSIM of the same pairs of maps: lower is better for the same reason")
ROBUST_AREA = Metric("auc", True, "mean robust accuracy over the eps range")
ROBUST_AREA_REL = Metric("auc_rel", True, "mean robust / clean accuracy over the eps range")
SHOWN = (SPARSENESS, COMPLEXITY, DELETION_AUC, RAND_SPEARMAN, RAND_SSIM, ROBUST_AREA, ROBUST_AREA_REL)


def arrow(metric: Metric) -> str:
    """The report's arrow for a metric: which way is better, from the metric itself."""
    return "\u2191" if metric.higher_is_better else "\u2193"


def gini(maps: torch.Tensor) -> torch.Tensor:
    """Gini index of each flattened |map| (Chalasani et al. 2020's sparseness): [N, ...] -> [N]."""
    a = maps.abs().flatten(1).double().sort(dim=1).values
    n = a.shape[1]
    k = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)
    total = a.sum(1)
    g = ((2 * k - n - 1) * a).sum(1) / (n * total)
    return torch.where(total > 0, g, torch.zeros_like(g)).float()


def entropy(maps: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of |map| normalised to sum 1 (Bhatt et al. 2020's complexity): [N, ...] -> [N]."""
    a = maps.abs().flatten(1).double()
    p = a / a.sum(1, keepdim=True).clamp_min(1e-300)
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1).float()
