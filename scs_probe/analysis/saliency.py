"""Vanilla-gradient saliency (Captum `Saliency`) for the same test images across models, with metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from captum.attr import Saliency

from ..data import CLASSES
from ..storage import atomic_write, write_csv
from .base import Analysis, AnalysisConfig, AnalysisResult, Context
from .metrics import COMPLEXITY, DELETION_AUC, SPARSENESS, entropy, gini
from .sources import LoadedModel, load_models, select_test_images

TARGETS = ("label", "pred")


@dataclass(frozen=True)
class SaliencyConfig(AnalysisConfig):
    n_images: int = 8                 # drawn at random with `seed` (of `classes` if given) ...
    indices: tuple | None = None      # ... unless test-set indices are given
    classes: tuple | None = None      # class indices 0-9
    target: str = "label"             # explain the true label's logit, or the predicted one's
    seed: int = 0
    per_image_scale: bool = False     # main figure scaled per image (default: one shared scale)
    deletion_steps: int = 10

    def validate(self) -> None:
        self.require("n_images", self.n_images >= 1, f"must be >= 1, got {self.n_images}")
        self.require("indices", self.indices is None or all(int(i) >= 0 for i in self.indices), "must be >= 0")
        self.require("classes", self.classes is None or all(0 <= int(c) < len(CLASSES) for c in self.classes),
                     f"must lie in 0-{len(CLASSES) - 1}")
        self.require("target", self.target in TARGETS, f"unknown value {self.target!r}; allowed: "
                                                       f"{', '.join(TARGETS)}")
        self.require("deletion_steps", self.deletion_steps >= 1, f"must be >= 1, got {self.deletion_steps}")


@dataclass
class SaliencyResult:
    model: str
    maps: torch.Tensor          # [N, H, W]: max over channels of |d logit_target / d x|
    preds: torch.Tensor         # [N]
    targets: torch.Tensor       # [N]
    sparseness: torch.Tensor    # [N]
    complexity: torch.Tensor    # [N]
    deletion: torch.Tensor      # [steps + 1, 2]: accuracy, mean target probability per removed fraction
    fractions: torch.Tensor
    deletion_auc: float


def saliency_maps(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|gradient| of the target logit, max over colour channels. Captum does not call eval(): we do."""
    model.eval()
    x = images.clone().requires_grad_(True)
    with torch.enable_grad():
        attr = Saliency(model).attribute(x, target=target, abs=True)
    return attr.detach().amax(dim=1)


@torch.no_grad()
def deletion_curve(model, images, target, maps, steps: int = 10, baseline: float = 0.0):
    """Remove (set to `baseline`) the most salient pixels, a fraction at a time: all fractions in one batch of
    (steps + 1) * N images, so the curve costs a few forward passes. Returns fractions, [steps+1, 2] curve."""
    n, c, h, w = images.shape
    order = maps.flatten(1).argsort(dim=1, descending=True)                 # [N, HW]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=order.device).expand(n, -1))
    fractions = torch.linspace(0, 1, steps + 1)
    keep = torch.stack([(rank >= round(f.item() * h * w)) for f in fractions])  # [S, N, HW]
    masked = torch.where(keep.view(-1, n, 1, h, w), images.unsqueeze(0), torch.full_like(images[:1], baseline))
    probs = torch.cat([model(chunk).softmax(-1) for chunk in masked.view(-1, c, h, w).split(512)])
    probs = probs.view(steps + 1, n, -1)
    acc = (probs.argmax(-1) == target).float().mean(1)
    p_target = probs.gather(2, target.view(1, n, 1).expand(steps + 1, n, 1)).squeeze(-1).mean(1)
    return fractions, torch.stack([acc, p_target], 1).cpu()


def run_saliency(models: list[LoadedModel], images, labels, target: str = "label", steps: int = 10,
                 device="cpu") -> list[SaliencyResult]:
    images, labels = images.to(device), labels.to(device)
    results = []
    for m in models:
        with torch.no_grad():
            preds = m.model(images).argmax(1)
        tgt = labels if target == "label" else preds
        maps = saliency_maps(m.model, images, tgt)
        fractions, curve = deletion_curve(m.model, images, tgt, maps, steps)
        auc = float(np.trapezoid(curve[:, 1].numpy(), fractions.numpy()))
        results.append(SaliencyResult(m.name, maps.cpu(), preds.cpu(), tgt.cpu(), gini(maps).cpu(),
                                      entropy(maps).cpu(), curve, fractions, auc))
    return results


def write_outputs(results: list[SaliencyResult], images, labels, indices, out: Path) -> list[dict]:
    """saliency.csv (per image), saliency_summary.csv (per model), deletion.csv, saliency_maps.npz."""
    per_image = [{"model": r.model, "image_index": idx, "label": CLASSES[int(labels[i])],
                  "target": CLASSES[int(r.targets[i])], "pred": CLASSES[int(r.preds[i])],
                  SPARSENESS.name: f"{r.sparseness[i]:.6f}", COMPLEXITY.name: f"{r.complexity[i]:.6f}"}
                 for r in results for i, idx in enumerate(indices)]
    write_csv(out / "saliency.csv", per_image)
    summary = [{"model": r.model, "n": len(indices), f"{SPARSENESS.name}_mean": round(r.sparseness.mean().item(), 6),
                f"{COMPLEXITY.name}_mean": round(r.complexity.mean().item(), 6),
                DELETION_AUC.name: round(r.deletion_auc, 6),
                "accuracy": round((r.preds == labels.cpu()).float().mean().item(), 6)} for r in results]
    write_csv(out / "saliency_summary.csv", summary)
    deletion = [{"model": r.model, "fraction_removed": f"{fr:.3f}", "accuracy": f"{acc:.6f}", "target_prob": f"{p:.6f}"}
                for r in results for fr, (acc, p) in zip(r.fractions.tolist(), r.deletion.tolist())]
    write_csv(out / "deletion.csv", deletion)
    atomic_write(out / "saliency_maps.npz", lambda f: np.savez_compressed(
        f, images=images.cpu().numpy(), labels=labels.cpu().numpy(), indices=np.asarray(indices),
        models=np.asarray([r.model for r in results]), maps=np.stack([r.maps.numpy() for r in results])))
    return summary


def plot_grid(results: list[SaliencyResult], images, labels, out: Path, per_image_scale: bool = False):
    """Images as columns, models as rows; one shared colour scale unless per_image_scale."""
    from .figures import plt, save
    n_img, n_rows = images.shape[0], len(results) + 1
    fig, axes = plt.subplots(n_rows, n_img, figsize=(1.45 * n_img + 1.6, 1.5 * n_rows), squeeze=False)
    allmaps = torch.stack([r.maps for r in results])
    vmax_shared = torch.quantile(allmaps.flatten().float(), 0.995).item() or 1.0
    for j in range(n_img):
        ax = axes[0, j]
        ax.imshow(images[j].permute(1, 2, 0).cpu().numpy().clip(0, 1))
        ax.set_title(CLASSES[int(labels[j])], fontsize=8)
        for i, r in enumerate(results, 1):
            ax = axes[i, j]
            vmax = (torch.quantile(allmaps[:, j].flatten().float(), 0.995).item() or 1.0) if per_image_scale \
                else vmax_shared
            im = ax.imshow(r.maps[j].numpy(), cmap="inferno", vmin=0, vmax=vmax)
            ok = int(r.preds[j]) == int(labels[j])
            ax.set_title(f"pred {CLASSES[int(r.preds[j])]}", fontsize=7, color="black" if ok else "crimson")
    for i, r in enumerate(results, 1):
        axes[i, 0].set_ylabel(r.model, fontsize=7, rotation=0, ha="right", va="center")
    axes[0, 0].set_ylabel("image", fontsize=8, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        ax.grid(False)
    if not per_image_scale:
        fig.colorbar(im, ax=axes[1:, :].ravel().tolist(), shrink=0.6, label="|gradient| (shared scale)")
    fig.suptitle("Vanilla-gradient saliency" + (" (per-image scale)" if per_image_scale else " (shared scale)"),
                 fontsize=10)
    return save(fig, out, "saliency")


def plot_deletion(results: list[SaliencyResult], out: Path):
    from .figures import plt, save, variant_palette
    pal = variant_palette([r.model for r in results])
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot(r.fractions.numpy(), r.deletion[:, 1].numpy(), marker="o", ms=3, color=pal[r.model],
                label=f"{r.model} (AUC {r.deletion_auc:.3f})")
    ax.set_xlabel("fraction of most salient pixels removed")
    ax.set_ylabel("mean target probability")
    ax.set_title("Deletion curves (lower area: the map found what the model uses)")
    ax.legend(fontsize=7)
    return save(fig, out, "deletion")


class SaliencyAnalysis(Analysis):
    """`scs-probe saliency`: the same test images explained by every model (Captum Saliency), with sparseness,
    complexity and deletion curves; figures saliency.png (shared scale), per_image/saliency.png, deletion.png."""

    name = "saliency"
    Config = SaliencyConfig
    summary_file = "saliency_summary.csv"
    figure_stems = ("saliency", "deletion")

    def _run(self, runs, out: Path, context: Context) -> AnalysisResult:
        c = self.config
        models = load_models(runs, context.device)
        images, labels, idx = select_test_images(context.data_dir, c.n_images, c.indices, c.classes, c.seed)
        results = run_saliency(models, images, labels, c.target, c.deletion_steps, context.device)
        summary = write_outputs(results, images, labels, idx, out)
        figures = {"saliency": plot_grid(results, images, labels, out, c.per_image_scale),
                   "deletion": plot_deletion(results, out)}
        if not c.per_image_scale:
            plot_grid(results, images, labels, out / "per_image", per_image_scale=True)
        return AnalysisResult(self.name, out, summary, figures)
