"""Vanilla-gradient saliency (Captum `Saliency`) for the same test images across models, with metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from captum.attr import Saliency

from ..data import CLASSES
from ..stats import ratio_interval, t_interval
from ..storage import atomic_write, write_csv
from .base import Analysis, AnalysisConfig, AnalysisResult, Context
from .metrics import COMPLEXITY, DELETION_AUC, SPARSENESS, entropy, gini
from .sources import LoadedModel, check_classes, load_models, run_labels, runs_dataset, select_test_images

TARGETS = ("label", "pred")


@dataclass(frozen=True)
class SaliencyConfig(AnalysisConfig):
    n_images: int = 100               # drawn at random with `seed` (of `classes` if given) ...
    indices: tuple | None = None      # ... unless test-set indices are given
    classes: tuple | None = None      # class indices or names (of the data set the images come from)
    target: str = "label"             # explain the true label's logit, or the predicted one's
    seed: int = 0
    per_image_scale: bool = False     # main figure scaled per image (default: one shared scale)
    deletion_steps: int = 10
    grid_images: int = 8              # columns of the saliency figure (the metrics use every image)
    sanity: bool = True               # model-parameter randomisation check (Adebayo et al. 2018)
    sanity_images: int = 16

    def validate(self) -> None:
        for key in ("grid_images", "sanity_images"):
            self.require(key, getattr(self, key) >= 1, f"must be >= 1, got {getattr(self, key)}")
        self.require("n_images", self.n_images >= 1, f"must be >= 1, got {self.n_images}")
        self.require("indices", self.indices is None or (len(self.indices) > 0 and all(int(i) >= 0 for i in
                                                                                         self.indices)),
                     "must be one or more integers >= 0")
        self.require("classes", self.classes is None or (len(self.classes) > 0 and all(
            isinstance(c, str) or int(c) >= 0 for c in self.classes)), "must be one or more class indices >= 0 "
                                                                          "or names")
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
    deletion_auc: torch.Tensor  # [N]: area under each image's target-probability curve
    start_prob: torch.Tensor    # [N]: the target probability before any pixel is removed


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
    p_target = probs.gather(2, target.view(1, n, 1).expand(steps + 1, n, 1)).squeeze(-1)   # [S, N]
    return fractions, torch.stack([acc, p_target.mean(1)], 1).cpu(), p_target.cpu()


def deletion_areas(fractions, p_target) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: area under the target-probability curve, and the starting probability. A model is summarised
    by sum(area) / sum(start) (`normalised_deletion`): the area relative to where the curves start, so that a
    model that starts unsure does not win, without per-image ratios that explode where the start is near 0."""
    area = torch.from_numpy(np.trapezoid(p_target.double().numpy(), fractions.double().numpy(), axis=0))
    return area.float(), p_target[0].float()


def normalised_deletion(area: torch.Tensor, start: torch.Tensor):
    """Deletion area over starting probability, aggregated as sum / sum over images (an Interval)."""
    return ratio_interval(area.double().numpy(), start.double().numpy())


def run_saliency(models: list[LoadedModel], images, labels, target: str = "label", steps: int = 10,
                 device="cpu") -> list[SaliencyResult]:
    images, labels = images.to(device), labels.to(device)
    results = []
    for m in models:
        with torch.no_grad():
            preds = m.model(images).argmax(1)
        tgt = labels if target == "label" else preds
        maps = saliency_maps(m.model, images, tgt)
        fractions, curve, p_target = deletion_curve(m.model, images, tgt, maps, steps)
        area, start = deletion_areas(fractions, p_target)
        results.append(SaliencyResult(m.name, maps.cpu(), preds.cpu(), tgt.cpu(), gini(maps).cpu(),
                                      entropy(maps).cpu(), curve, fractions, area, start))
    return results


def _mean_ci(name: str, values: torch.Tensor | None = None, ci=None) -> dict:
    ci = ci or t_interval(values.double().numpy())
    return {f"{name}_mean": round(ci.estimate, 6), f"{name}_lo": round(ci.lo, 6) if ci.defined else "",
            f"{name}_hi": round(ci.hi, 6) if ci.defined else ""}


def write_outputs(results: list[SaliencyResult], images, labels, indices, out: Path,
                  classes=CLASSES) -> list[dict]:
    """saliency.csv (per image), deletion.csv, saliency_maps.npz; returns the per-model summary rows (means with
    95% t intervals over images)."""
    per_image = [{"model": r.model, "image_index": idx, "label": classes[int(labels[i])],
                  "target": classes[int(r.targets[i])], "pred": classes[int(r.preds[i])],
                  SPARSENESS.name: f"{r.sparseness[i]:.6f}", COMPLEXITY.name: f"{r.complexity[i]:.6f}",
                  DELETION_AUC.name: f"{r.deletion_auc[i]:.6f}", "start_prob": f"{r.start_prob[i]:.6f}"}
                 for r in results for i, idx in enumerate(indices)]
    write_csv(out / "saliency.csv", per_image)
    summary = [{"model": r.model, "n": len(indices), **_mean_ci(SPARSENESS.name, r.sparseness),
                **_mean_ci(COMPLEXITY.name, r.complexity), **_mean_ci(DELETION_AUC.name, r.deletion_auc),
                **_mean_ci("deletion_auc_norm", ci=normalised_deletion(r.deletion_auc, r.start_prob)),
                "accuracy": round((r.preds == labels.cpu()).float().mean().item(), 6),
                "interval": "95% Student t over images; deletion_auc_norm: sum(area) / sum(start probability), "
                            "delta method"} for r in results]
    deletion = [{"model": r.model, "fraction_removed": f"{fr:.3f}", "accuracy": f"{acc:.6f}", "target_prob": f"{p:.6f}"}
                for r in results for fr, (acc, p) in zip(r.fractions.tolist(), r.deletion.tolist())]
    write_csv(out / "deletion.csv", deletion)
    atomic_write(out / "saliency_maps.npz", lambda f: np.savez_compressed(
        f, images=images.cpu().numpy(), labels=labels.cpu().numpy(), indices=np.asarray(indices),
        models=np.asarray([r.model for r in results]), maps=np.stack([r.maps.numpy() for r in results])))
    return summary


def _title_room(fig, inches: float = 0.75) -> None:
    """Keep a fixed margin above a grid of maps for its row titles and the suptitle: matplotlib's default top
    (12 % of the height) left two inches of blank paper above a tall grid."""
    height = fig.get_figheight()
    fig.subplots_adjust(top=1 - min(0.12, inches / height))


def plot_grid(results: list[SaliencyResult], images, labels, out: Path, per_image_scale: bool = False,
              n_images: int = 8, classes=CLASSES):
    """The first `n_images` images as columns, models as rows; one shared colour scale unless per_image_scale."""
    from .figures import plt, save
    n_img, n_rows = min(n_images, images.shape[0]), len(results) + 1
    fig, axes = plt.subplots(n_rows, n_img, figsize=(1.45 * n_img + 1.6, 1.5 * n_rows), squeeze=False)
    _title_room(fig)
    allmaps = torch.stack([r.maps[:n_img] for r in results])
    vmax_shared = torch.quantile(allmaps.flatten().float(), 0.995).item() or 1.0
    for j in range(n_img):
        ax = axes[0, j]
        ax.imshow(images[j].permute(1, 2, 0).cpu().numpy().clip(0, 1))
        ax.set_title(classes[int(labels[j])], fontsize=8)
        for i, r in enumerate(results, 1):
            ax = axes[i, j]
            vmax = (torch.quantile(allmaps[:, j].flatten().float(), 0.995).item() or 1.0) if per_image_scale \
                else vmax_shared
            im = ax.imshow(r.maps[j].numpy(), cmap="inferno", vmin=0, vmax=vmax)
            ok = int(r.preds[j]) == int(labels[j])
            ax.set_title(f"pred {classes[int(r.preds[j])]}", fontsize=7, color="black" if ok else "crimson")
    for i, r in enumerate(results, 1):
        axes[i, 0].set_ylabel(r.model, fontsize=7, rotation=0, ha="right", va="center")
    axes[0, 0].set_ylabel("image", fontsize=8, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        ax.grid(False)
    if not per_image_scale:
        # taken from every column of every row alike, so that each map stays under its image
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="|gradient| (shared scale)")
    fig.suptitle("Vanilla-gradient saliency" + (" (per-image scale)" if per_image_scale else " (shared scale)"),
                 fontsize=10, y=1 - 0.2 / fig.get_figheight())
    return save(fig, out, "saliency")


def plot_deletion(results: list[SaliencyResult], out: Path, variants: dict | None = None):
    """Mean target probability as the most salient pixels are removed: one colour per variant (`variants`: model
    label -> variant name), its seeds thin lines with their mean thick and their range a band; the legend,
    below the axes, gives each variant's area relative to its start (sum / sum over images) per seed."""
    import numpy as np

    from .figures import legend_below, plt, save, seed_band, variant_palette
    variants = variants or {}
    groups: dict[str, list[SaliencyResult]] = {}
    for r in results:
        groups.setdefault(variants.get(r.model, r.model), []).append(r)
    pal = variant_palette(list(groups))
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    handles, labels = [], []
    for variant, rs in groups.items():
        curves = np.stack([r.deletion[:, 1].numpy() for r in rs])
        ratios = ", ".join(f"{normalised_deletion(r.deletion_auc, r.start_prob).estimate:.3f}" for r in rs)
        many = len(rs) > 1
        handles.append(seed_band(ax, rs[0].fractions.numpy(), curves, pal[variant], variant))
        labels.append(f"{variant}: area / start {ratios}" + (f" ({len(rs)} seeds: mean, band = range)" if many
                                                             else ""))
    ax.set_xlabel("fraction of most salient pixels removed")
    ax.set_ylabel("mean target probability")
    ax.set_xlim(0, 1)
    ax.set_title("Deletion curves (lower area relative to the start: the map found what the model uses)",
                 fontsize=10)
    legend_below(fig, handles, labels, ncol=1)
    return save(fig, out, "deletion")


def _weighted_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Modules that hold parameters of their own, in definition order (input to output)."""
    return [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


@torch.no_grad()
def _reinit(module: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        for p in module.parameters(recurse=False):
            p.normal_(0, 0.1)


def _similarity(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean Spearman rank correlation and SSIM (maps scaled to [0, 1] each) of two [N, H, W] stacks. Two constant
    maps are identical (1); a constant map against a varying one shares nothing (0)."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity
    rhos, ssims = [], []
    for x, y in zip(a.double().numpy(), b.double().numpy()):
        flat_x, flat_y = x.ravel(), y.ravel()
        cx, cy = np.ptp(flat_x) == 0, np.ptp(flat_y) == 0
        if cx or cy:
            rhos.append(1.0 if cx and cy else 0.0)
            ssims.append(1.0 if cx and cy else 0.0)
            continue
        rhos.append(float(spearmanr(flat_x, flat_y).statistic))
        nx, ny = x / x.max(), y / y.max()
        ssims.append(float(structural_similarity(nx, ny, data_range=1.0, win_size=min(7, *x.shape) | 1)))
    return float(np.mean(rhos)), float(np.mean(ssims))


RANDOMISATION_LIMIT = 0.5  # mean Spearman of |map| above this with every weight re-drawn: not explaining the model


def randomisation_check(models: list[LoadedModel], images, labels, target: str = "label", seed: int = 0,
                        device="cpu"):
    """Model-parameter randomisation (Adebayo et al. 2018): maps of each model with its weights re-drawn,
    cascading from the output layer to the input, and all at once, compared with the trained model's maps.
    A map that barely changes when every weight is random does not explain the model (flagged)."""
    import copy
    images, labels = images.to(device), labels.to(device)
    rows, cascades = [], {}
    for m in models:
        with torch.no_grad():
            preds = m.model(images).argmax(1)
        tgt = labels if target == "label" else preds
        base = saliency_maps(m.model, images, tgt).cpu()
        layers = [n for n, _ in _weighted_layers(m.model)]
        cascade, stages = copy.deepcopy(m.model), [("trained", base)]
        for k, name in enumerate(reversed(layers), 1):
            _reinit(cascade.get_submodule(name), seed + k)
            stages.append((f"top {k}: {name}", saliency_maps(cascade, images, tgt).cpu()))
        independent = copy.deepcopy(m.model)
        for k, name in enumerate(layers):
            _reinit(independent.get_submodule(name), seed + 1000 + k)
        stages.append(("all", saliency_maps(independent, images, tgt).cpu()))
        for k, (stage, maps) in enumerate(stages[1:], 1):
            rho, ssim = _similarity(base, maps)
            flag = "maps barely change with random weights" if stage == "all" and rho > RANDOMISATION_LIMIT else ""
            rows.append({"model": m.name, "stage": stage, "layers_randomised": k if stage != "all" else len(layers),
                         "spearman": rho, "ssim": ssim, "n": len(images), "flag": flag})
        cascades[m.name] = [(stage, maps[0]) for stage, maps in stages]
    return rows, cascades


def plot_randomisation(cascades: dict, image, out: Path):
    """One image per variant: its map for the trained model, then as layers are re-drawn from the output (at
    most 12 stages shown; randomisation.csv has them all)."""
    from .figures import plt, save
    max_cols = 12  # deep models have dozens of stages: show evenly spaced ones, always the first and the last
    cascades = {m: [st[round(i * (len(st) - 1) / (max_cols - 1))] for i in range(max_cols)]
                if len(st) > max_cols else st for m, st in cascades.items()}
    n_cols = max(len(v) for v in cascades.values()) + 1
    fig, axes = plt.subplots(len(cascades), n_cols, figsize=(1.3 * n_cols + 1.5, 1.45 * len(cascades)),
                             squeeze=False)
    _title_room(fig)
    for i, (model, stages) in enumerate(cascades.items()):
        axes[i, 0].imshow(image.permute(1, 2, 0).cpu().numpy().clip(0, 1))
        axes[i, 0].set_ylabel(model, fontsize=7, rotation=0, ha="right", va="center")
        for j, (stage, m) in enumerate(stages, 1):
            axes[i, j].imshow(m.numpy(), cmap="inferno")  # each map on its own scale: shape, not size, matters
            axes[i, j].set_title(stage.split(":")[0], fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        ax.grid(False)
        if not ax.images:
            ax.axis("off")
    fig.suptitle("Randomisation check: maps as weights are re-drawn from the output layer down (last: all at once)",
                 fontsize=9, y=1 - 0.2 / fig.get_figheight())
    return save(fig, out, "randomisation")


class SaliencyAnalysis(Analysis):
    """`scs-probe saliency`: the same test images explained by every model (Captum Saliency), with sparseness,
    complexity and deletion curves; figures saliency.png (shared scale), per_image/saliency.png, deletion.png."""

    name = "saliency"
    Config = SaliencyConfig
    summary_file = "saliency_summary.csv"
    figure_stems = ("saliency", "deletion", "randomisation")
    uses_test_images = True
    stored_columns = {"saliency.csv": ("start_prob",)}  # deletion / start became sum(area) / sum(start)

    def _run(self, runs, out: Path, context: Context) -> AnalysisResult:
        c = self.config
        models = load_models(runs, context.device)
        dataset = runs_dataset(runs, context.dataset)
        images, labels, idx, classes = select_test_images(context.data_dir, c.n_images, c.indices, c.classes,
                                                          c.seed, dataset=dataset)
        check_classes(models, classes, dataset)
        results = run_saliency(models, images, labels, c.target, c.deletion_steps, context.device)
        summary = write_outputs(results, images, labels, idx, out, classes)
        figures = {"saliency": plot_grid(results, images, labels, out, c.per_image_scale, c.grid_images, classes),
                   "deletion": plot_deletion(results, out, dict(zip(run_labels(runs), (r.name for r in runs))))}
        if not c.per_image_scale:
            plot_grid(results, images, labels, out / "per_image", per_image_scale=True, n_images=c.grid_images,
                      classes=classes)
        if c.sanity:
            rows, cascades = randomisation_check(models, images[:c.sanity_images], labels[:c.sanity_images],
                                                 c.target, c.seed, context.device)
            write_csv(out / "randomisation.csv", rows, float_format=".6g")
            figures["randomisation"] = plot_randomisation(cascades, images[0], out)
            verdicts = {r["model"]: r for r in rows if r["stage"] == "all"}
            for s in summary:
                v = verdicts.get(s["model"], {})
                s |= {"rand_spearman": round(v["spearman"], 4) if v else "",
                      "rand_ssim": round(v["ssim"], 4) if v else "",
                      "rand_flag": v.get("flag", "")}
        write_csv(out / self.summary_file, summary)
        return AnalysisResult(self.name, out, summary, figures)
