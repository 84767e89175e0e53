"""Analyses of trained runs, one class each (`Analysis(config).run(runs, out, context)`): saliency, robustness
under attack, weight norms and exponents; and the HTML report that gathers them."""

from .base import Analysis, AnalysisConfig, AnalysisResult, Context
from .compare import CompareConfig, ComparisonAnalysis
from .metrics import COMPLEXITY, DELETION_AUC, SPARSENESS, Metric, entropy, gini
from .norms import NormsAnalysis, NormsConfig
from .report import ANALYSES, build_report
from .robustness import RobustnessAnalysis, RobustnessConfig
from .saliency import SaliencyAnalysis, SaliencyConfig
from .sources import resolve_runs

__all__ = ["ANALYSES", "Analysis", "AnalysisConfig", "AnalysisResult", "COMPLEXITY", "CompareConfig",
           "ComparisonAnalysis", "Context", "DELETION_AUC", "Metric", "NormsAnalysis", "NormsConfig",
           "RobustnessAnalysis", "RobustnessConfig", "SPARSENESS", "SaliencyAnalysis", "SaliencyConfig",
           "build_report", "entropy", "gini", "resolve_runs"]
