"""Analyses of trained checkpoints: saliency, robustness under attack, weight norms and exponents, reports."""

from .metrics import COMPLEXITY, DELETION_AUC, SPARSENESS, Metric, entropy, gini
from .norms import run_norms
from .robustness import analyze_robustness, parse_eps_list, parse_eps_range
from .saliency import analyze_saliency

__all__ = ["COMPLEXITY", "DELETION_AUC", "SPARSENESS", "Metric", "analyze_robustness", "analyze_saliency", "entropy",
           "gini", "parse_eps_list", "parse_eps_range", "run_norms"]
