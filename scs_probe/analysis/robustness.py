"""Robust accuracy under attack as eps grows: torchattacks PGD (L-inf), optionally Square (gradient-free)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..progress import progress_bar
from ..storage import write_csv
from .base import Analysis, AnalysisConfig, AnalysisResult, Context
from .sources import LoadedModel, load_models, select_test_images

ATTACKS = ("pgd", "square")
DEFAULT_EPS = (0.0, 2 / 255, 4 / 255, 6 / 255, 8 / 255)


@dataclass(frozen=True)
class RobustnessConfig(AnalysisConfig):
    eps: tuple = DEFAULT_EPS          # L-inf radii; images live in [0, 1]; 0 is the clean accuracy
    attacks: tuple = ("pgd",)
    n_images: int = 500               # the first N test images
    steps: int = 10
    alpha: float | None = None        # PGD step size; None: 2.5 eps / steps
    restarts: int = 1                 # an image is robust only if every restart fails
    batch_size: int = 256
    seed: int = 0
    n_queries: int = 1000             # Square's budget

    def validate(self) -> None:
        eps = tuple(float(e) for e in self.eps)
        self.require("eps", len(eps) > 0, "needs at least one value")
        bad = [e for e in eps if not 0 <= e <= 1]
        self.require("eps", not bad, f"must lie in [0, 1] (images live in [0, 1]), got {bad[0] if bad else 0:.6g}")
        object.__setattr__(self, "eps", tuple(sorted(set(eps))))
        unknown = [a for a in self.attacks if a not in ATTACKS]
        self.require("attacks", not unknown and len(self.attacks) > 0,
                     f"unknown attack {unknown[0] if unknown else None!r}; allowed: {', '.join(ATTACKS)}")
        for key in ("n_images", "steps", "restarts", "batch_size", "n_queries"):
            self.require(key, int(getattr(self, key)) >= 1, f"must be >= 1, got {getattr(self, key)}")
        self.require("alpha", self.alpha is None or 0 < self.alpha <= 1, f"must lie in (0, 1], got {self.alpha}")


def default_alpha(eps: float, steps: int) -> float:
    """Step size scaled with eps (2.5 eps / steps, Madry et al.): a fixed alpha under-attacks large eps."""
    return 2.5 * eps / steps


def _attack(kind: str, model, eps: float, alpha: float, steps: int, seed: int, n_queries: int):
    import torchattacks
    if kind == "pgd":
        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=n_queries, n_restarts=1, seed=seed)


def robust_accuracy(model, images, labels, eps: float, kind: str = "pgd", steps: int = 10, alpha=None,
                    restarts: int = 1, batch_size: int = 256, seed: int = 0, n_queries: int = 1000,
                    progress=None) -> float:
    """Share of images still classified correctly under every restart of the attack (eps 0: clean accuracy)."""
    model.eval()
    alpha = default_alpha(eps, steps) if alpha is None else alpha
    correct = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        if eps > 0:
            for r in range(restarts):
                torch.manual_seed(seed + r)
                adv = _attack(kind, model, eps, alpha, steps, seed + r, n_queries)(x, y)
                with torch.no_grad():
                    ok &= model(adv).argmax(1) == y
        correct += int(ok.sum())
        if progress is not None:
            progress.update(len(y))
    return correct / len(labels)


def area_under_curve(eps: list[float], acc: list[float]) -> float:
    """Trapezoid area of robust accuracy over eps, divided by the eps span: the mean robust accuracy over the
    range (one eps alone: that accuracy)."""
    if len(eps) < 2 or eps[-1] == eps[0]:
        return float(acc[0])
    return float(np.trapezoid(acc, eps) / (eps[-1] - eps[0]))


def attack_models(models: list[LoadedModel], images, labels, config: RobustnessConfig, device="cpu",
                  progress: bool = True) -> list[dict]:
    """One row per model, attack and eps: robust accuracy on the same images."""
    c = config
    images, labels = images.to(device), labels.to(device)
    rows = []
    total = len(models) * len(c.attacks) * len(c.eps) * len(labels)
    with progress_bar(total=total, enabled=progress, desc="attacks", unit="img") as bar:
        for m in models:
            for kind in c.attacks:
                for eps in c.eps:
                    a = default_alpha(eps, c.steps) if c.alpha is None else c.alpha
                    acc = robust_accuracy(m.model, images, labels, eps, kind, c.steps, a, c.restarts, c.batch_size,
                                          c.seed, c.n_queries, bar)
                    rows.append({"model": m.name, "attack": kind, "eps": eps, "robust_acc": acc, "n": len(labels),
                                 "steps": c.steps if kind == "pgd" else c.n_queries,
                                 "alpha": a if kind == "pgd" else ""})
    return rows


def summarize(rows) -> list[dict]:
    out = []
    for key in dict.fromkeys((r["model"], r["attack"]) for r in rows):
        sel = sorted((r for r in rows if (r["model"], r["attack"]) == key), key=lambda r: r["eps"])
        eps, acc = [r["eps"] for r in sel], [r["robust_acc"] for r in sel]
        out.append({"model": key[0], "attack": key[1], "auc": round(area_under_curve(eps, acc), 6),
                    "clean_acc": acc[0] if eps[0] == 0 else "", "eps_max": eps[-1],
                    "acc_at_eps_max": acc[-1]})
    return out


def plot_curves(rows, summary, out: Path):
    from .figures import plt, save, variant_palette
    models = list(dict.fromkeys(r["model"] for r in rows))
    pal = variant_palette(models)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for s in summary:
        sel = sorted((r for r in rows if r["model"] == s["model"] and r["attack"] == s["attack"]),
                     key=lambda r: r["eps"])
        ax.plot([r["eps"] * 255 for r in sel], [r["robust_acc"] for r in sel], marker="o", ms=3,
                color=pal[s["model"]], linestyle="-" if s["attack"] == "pgd" else "--",
                label=f"{s['model']} {s['attack'].upper()} (area {s['auc']:.3f})")
    ax.set_xlabel("eps (x 1/255, L-inf)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Robust accuracy vs attack strength")
    ax.legend(fontsize=7)
    return save(fig, out, "pgd")


class RobustnessAnalysis(Analysis):
    """`scs-probe pgd`: every model attacked on the first n test images at every eps. Writes pgd.csv
    (model, attack, eps, robust_acc, n, steps, alpha), pgd_summary.csv (area under each curve) and pgd.png/svg."""

    name = "pgd"
    Config = RobustnessConfig
    summary_file = "pgd_summary.csv"
    figure_stems = ("pgd",)

    def _run(self, runs, out: Path, context: Context) -> AnalysisResult:
        models = load_models(runs, context.device)
        images, labels, _ = select_test_images(context.data_dir, self.config.n_images, random_pick=False)
        rows = attack_models(models, images, labels, self.config, context.device, context.progress)
        summary = summarize(rows)
        write_csv(out / "pgd.csv", rows, float_format=".6g")
        write_csv(out / self.summary_file, summary, float_format=".6g")
        return AnalysisResult(self.name, out, summary, {"pgd": plot_curves(rows, summary, out)})
