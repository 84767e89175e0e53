"""Robust accuracy under attack as eps grows: torchattacks PGD (L-inf), optionally Square (gradient-free)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import RecordError
from ..progress import progress_bar
from ..stats import binomial_interval, bootstrap_interval
from ..storage import atomic_write, write_csv
from .base import Analysis, AnalysisConfig, AnalysisResult, Context
from .sources import LoadedModel, check_classes, load_models, run_labels, runs_dataset, select_test_images

ATTACKS = ("pgd", "square", "autoattack")
DEFAULT_EPS = (0.0, 2 / 255, 4 / 255, 6 / 255, 8 / 255)
PER_IMAGE = "pgd_per_image.npz"  # robust[model-attack, eps, image]: for paired comparisons
TINY = 0.02  # robust accuracy at `large_eps` above this: the attack cannot reach what any input change can


@dataclass(frozen=True)
class RobustnessConfig(AnalysisConfig):
    eps: tuple = DEFAULT_EPS          # L-inf radii; images live in [0, 1]; 0 is the clean accuracy
    attacks: tuple = ("pgd",)         # pgd, square (gradient-free), autoattack (APGD-CE, APGD-T, FAB-T, Square)
    n_images: int = 500               # the first N test images
    steps: int = 10
    alpha: float | None = None        # PGD step size; None: 2.5 eps / steps
    restarts: int = 1                 # an image is robust only if every restart fails
    batch_size: int = 256
    seed: int = 0
    n_queries: int = 1000             # Square's budget
    aa_steps: int = 100               # AutoAttack's APGD/APGD-T/FAB iterations (the original "standard": 100)
    aa_queries: int = 5000            # AutoAttack's Square queries (standard: 5,000)
    checks: bool = True               # gradient-masking checks (masking_checks.csv)
    large_eps: float = 0.5
    n_boot: int = 1000                # bootstrap resamples of the curve areas

    def validate(self) -> None:
        eps = tuple(float(e) for e in self.eps)
        self.require("eps", len(eps) > 0, "needs at least one value")
        bad = [e for e in eps if not 0 <= e <= 1]
        self.require("eps", not bad, f"must lie in [0, 1] (images live in [0, 1]), got {bad[0] if bad else 0:.6g}")
        object.__setattr__(self, "eps", tuple(sorted(set(eps))))
        unknown = [a for a in self.attacks if a not in ATTACKS]
        self.require("attacks", not unknown and len(self.attacks) > 0,
                     f"unknown attack {unknown[0] if unknown else None!r}; allowed: {', '.join(ATTACKS)}")
        object.__setattr__(self, "attacks", tuple(dict.fromkeys(self.attacks)))
        for key in ("n_images", "steps", "restarts", "batch_size", "n_queries", "aa_steps", "aa_queries"):
            self.require(key, int(getattr(self, key)) >= 1, f"must be >= 1, got {getattr(self, key)}")
        self.require("alpha", self.alpha is None or 0 < self.alpha <= 1, f"must lie in (0, 1], got {self.alpha}")
        self.require("large_eps", 0 < self.large_eps <= 1, f"must lie in (0, 1], got {self.large_eps}")
        self.require("n_boot", self.n_boot >= 100, f"must be >= 100, got {self.n_boot}")


def default_alpha(eps: float, steps: int) -> float:
    """Step size scaled with eps (2.5 eps / steps, Madry et al.): a fixed alpha under-attacks large eps."""
    return 2.5 * eps / steps


def autoattack_targets(n_classes: int) -> int:
    """Target classes of AutoAttack's APGD-T and FAB-T: the 9 most likely other classes (Croce & Hein 2020), or
    every other class where there are fewer than 10."""
    return max(1, min(9, int(n_classes) - 1))


def _attack(kind: str, model, eps: float, alpha: float, steps: int, seed: int, n_queries: int,
            aa_steps: int = 100, aa_queries: int = 5000, n_classes: int = 10):
    import torchattacks
    if kind == "pgd":
        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    if kind == "square":
        return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=n_queries, n_restarts=1, seed=seed)
    # torchattacks' AutoAttack(version="standard") runs APGD, APGD-T and FAB-T with 10 iterations; the original
    # standard version (Croce & Hein 2020) runs 100 (and Square with 5,000 queries): built here as the original.
    # torchattacks' n_classes is the targets + 1 (it targets n_classes - 1 classes). APGD-T's targeted DLR loss
    # divides by the gap to the 3rd and 4th largest logits: with 3 classes APGD with the (untargeted) DLR loss
    # stands in for it, with 2 neither is defined and FAB-T and Square carry on.
    targets = autoattack_targets(n_classes) + 1
    second = ([torchattacks.APGDT(model, norm="Linf", eps=eps, steps=aa_steps, n_restarts=1, n_classes=targets,
                                  seed=seed)] if n_classes >= 4 else
              [torchattacks.APGD(model, norm="Linf", eps=eps, steps=aa_steps, n_restarts=1, loss="dlr", seed=seed)]
              if n_classes == 3 else [])
    return torchattacks.MultiAttack([
        torchattacks.APGD(model, norm="Linf", eps=eps, steps=aa_steps, n_restarts=1, loss="ce", seed=seed),
        *second,
        torchattacks.FAB(model, norm="Linf", eps=eps, steps=aa_steps, n_restarts=1, multi_targeted=True,
                         n_classes=targets, seed=seed),
        torchattacks.Square(model, norm="Linf", eps=eps, n_queries=aa_queries, n_restarts=1, seed=seed)])


def robust_mask(model, images, labels, eps: float, kind: str = "pgd", steps: int = 10, alpha=None,
                restarts: int = 1, batch_size: int = 256, seed: int = 0, n_queries: int = 1000, aa_steps: int = 100,
                aa_queries: int = 5000, progress=None, source=None) -> torch.Tensor:
    """Per image: still classified correctly under every restart of the attack (eps 0: clean correctness).
    `source`: craft the examples on this model instead and test them on `model` (transfer)."""
    model.eval()
    alpha = default_alpha(eps, steps) if alpha is None else alpha
    out = []
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        with torch.no_grad():
            logits = model(x)
            ok = logits.argmax(1) == y
        if eps > 0:
            for r in range(restarts):
                torch.manual_seed(seed + r)
                adv = _attack(kind, source or model, eps, alpha, steps, seed + r, n_queries, aa_steps,
                              aa_queries, n_classes=logits.shape[1])(x, y)
                with torch.no_grad():
                    ok &= model(adv).argmax(1) == y
        out.append(ok.cpu())
        if progress is not None:
            progress.update(len(y))
    return torch.cat(out)


def robust_accuracy(model, images, labels, eps: float, kind: str = "pgd", **kwargs) -> float:
    """Share of images still classified correctly under the attack (eps 0: clean accuracy)."""
    return robust_mask(model, images, labels, eps, kind, **kwargs).float().mean().item()


def area_under_curve(eps: list[float], acc: list[float]) -> float:
    """Trapezoid area of robust accuracy over eps, divided by the eps span: the mean robust accuracy over the
    range (one eps alone: that accuracy)."""
    if len(eps) < 2 or eps[-1] == eps[0]:
        return float(acc[0])
    return float(np.trapezoid(acc, eps) / (eps[-1] - eps[0]))


def attack_models(models: list[LoadedModel], images, labels, config: RobustnessConfig, device="cpu",
                  progress: bool = True) -> tuple[list[dict], dict]:
    """One row per model, attack and eps (robust accuracy with its exact binomial interval, and relative to
    the model's clean accuracy), and the per-image robustness masks keyed by (model, attack)."""
    c = config
    images, labels = images.to(device), labels.to(device)
    rows, masks = [], {}
    total = len(models) * len(c.attacks) * len(c.eps) * len(labels)
    with progress_bar(total=total, enabled=progress, desc="attacks", unit="img") as bar:
        for m in models:
            clean = robust_mask(m.model, images, labels, 0.0, batch_size=c.batch_size).float().mean().item()
            for kind in c.attacks:
                per_eps = []
                for eps in c.eps:
                    a = default_alpha(eps, c.steps) if c.alpha is None else c.alpha
                    mask = robust_mask(m.model, images, labels, eps, kind, c.steps, a, c.restarts, c.batch_size,
                                       c.seed, c.n_queries, c.aa_steps, c.aa_queries, bar)
                    per_eps.append(mask)
                    ci = binomial_interval(int(mask.sum()), len(mask))
                    budget = {"pgd": c.steps, "square": c.n_queries, "autoattack": c.aa_steps}[kind]
                    rows.append({"model": m.name, "attack": kind, "eps": eps, "eps_255": round(eps * 255, 4),
                                 "robust_acc": ci.estimate, "acc_lo": ci.lo, "acc_hi": ci.hi, "n": len(mask),
                                 "rel_acc": ci.estimate / clean if clean > 0 else float("nan"),
                                 "steps": budget, "alpha": a if kind == "pgd" else ""})
                masks[(m.name, kind)] = torch.stack(per_eps).numpy()  # [eps, images]
    return rows, masks


def summarize(rows, masks=None, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per model and attack: area under the robust-accuracy curve (with a bootstrap interval over images where
    the per-image masks are given), the area of the curve relative to clean accuracy, clean accuracy and the
    accuracy at the largest eps."""
    out = []
    for key in dict.fromkeys((r["model"], r["attack"]) for r in rows):
        sel = sorted((r for r in rows if (r["model"], r["attack"]) == key), key=lambda r: r["eps"])
        eps, acc = [r["eps"] for r in sel], [r["robust_acc"] for r in sel]
        row = {"model": key[0], "attack": key[1], "auc": round(area_under_curve(eps, acc), 6)}
        if masks is not None and key in masks:
            ci = bootstrap_interval(lambda m: area_under_curve(eps, m.mean(axis=0)), masks[key].T.astype(float),
                                    n_boot=n_boot, seed=seed)
            row |= {"auc_lo": round(ci.lo, 6), "auc_hi": round(ci.hi, 6)}
        rel = [r["rel_acc"] for r in sel]
        row |= {"auc_rel": round(area_under_curve(eps, rel), 6) if all(np.isfinite(rel)) else "",
                "clean_acc": acc[0] if eps[0] == 0 else "", "eps_max_255": round(eps[-1] * 255, 4),
                "acc_at_eps_max": acc[-1]}
        out.append(row)
    return out


def conv_twin(m: LoadedModel, models: list[LoadedModel]) -> LoadedModel | None:
    """The conv model of the same architecture, normalisation and image size (a sharpened model's twin), of
    the same seed where there is one."""
    if m.variant.get("layer") == "conv":
        return None
    same = [o for o in models if o.variant.get("layer") == "conv"
            and all(o.variant.get(k) == m.variant.get(k) for k in ("arch", "norm", "image_size"))]
    same.sort(key=lambda o: o.seed != m.seed)  # stable: the same seed first
    return same[0] if same else None


def masking_checks(models: list[LoadedModel], images, labels, rows: list[dict], config: RobustnessConfig,
                   device="cpu") -> list[dict]:
    """Signs of gradient masking per model (Carlini et al. 2019; Athalye et al. 2018), at the check eps (the
    largest eps where PGD leaves some accuracy; else the largest): PGD cannot drive accuracy near 0 at
    `large_eps`; Square or AutoAttack beats PGD beyond PGD's interval; twice the steps or more restarts still
    lower it (not converged); examples crafted on the conv twin beat PGD on the model itself."""
    c = config
    images, labels = images.to(device), labels.to(device)
    out = []
    for m in models:
        pgd = sorted((r for r in rows if r["model"] == m.name and r["attack"] == "pgd" and r["eps"] > 0),
                     key=lambda r: r["eps"])
        if not pgd:
            continue
        alive = [r for r in pgd if r["robust_acc"] > 0]
        ref = alive[-1] if alive else pgd[-1]
        eps, lo = ref["eps"], ref["acc_lo"]
        kw = dict(batch_size=c.batch_size, seed=c.seed, n_queries=c.n_queries)

        def acc(kind="pgd", **extra):
            return robust_mask(m.model, images, labels, extra.pop("eps", eps), kind,
                               **{"steps": c.steps, **kw, **extra}).float().mean().item()

        row = {"model": m.name, "check_eps_255": round(eps * 255, 4), "pgd_acc": ref["robust_acc"], "pgd_lo": lo,
               "large_eps": c.large_eps, "large_eps_acc": acc(eps=c.large_eps, steps=max(c.steps, 20))}
        flags = []
        if row["large_eps_acc"] > TINY:
            flags.append("large-eps accuracy not ~0")
        others = [r for r in rows if r["model"] == m.name and r["attack"] != "pgd" and r["eps"] == eps]
        if not any(r["attack"] == "square" for r in others):
            others.append({"attack": "square", "robust_acc": acc("square")})
        for r in others:
            row[f"{r['attack']}_acc"] = r["robust_acc"]
            if r["robust_acc"] < lo:
                flags.append(f"{r['attack']} beats pgd")
        row["pgd_2x_steps_acc"] = acc(steps=2 * c.steps)
        row["pgd_restarts_acc"] = acc(restarts=c.restarts + 2)
        if min(row["pgd_2x_steps_acc"], row["pgd_restarts_acc"]) < lo:
            flags.append("pgd not converged")
        twin = conv_twin(m, models)
        row["transfer_from"], row["transfer_acc"] = (twin.name, robust_mask(
            m.model, images, labels, eps, "pgd", c.steps, None, 1, source=twin.model, **kw).float().mean().item()) \
            if twin else ("", "")
        if twin and row["transfer_acc"] < lo:
            flags.append("transfer from conv twin beats pgd")
        row["flags"] = "; ".join(flags)
        out.append(row)
    return out


def plot_curves(rows, summary, out: Path, variants: dict | None = None):
    """Robust accuracy and robust accuracy relative to clean against eps (x/255): one colour per variant
    (`variants`: model label -> variant name), a line style per attack. A variant of one seed: its line with the
    95% exact binomial band over images; of several: each seed a thin line, their mean thick and the range over
    seeds a band. The legend, below the axes, gives each curve's area (mean over seeds)."""
    import numpy as np

    from .figures import legend_below, plt, save, seed_band, variant_palette
    variants = variants or {}
    groups: dict[tuple[str, str], list[str]] = {}
    for s in summary:
        groups.setdefault((variants.get(s["model"], s["model"]), s["attack"]), []).append(s["model"])
    pal = variant_palette(list(dict.fromkeys(v for v, _ in groups)))
    area = {(s["model"], s["attack"]): s["auc"] for s in summary}
    line = {"pgd": "-", "square": "--", "autoattack": ":"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    handles, labels = [], []
    for (variant, attack), models in groups.items():
        per = [sorted((r for r in rows if r["model"] == m and r["attack"] == attack), key=lambda r: r["eps"])
               for m in models]
        x = [r["eps"] * 255 for r in per[0]]
        acc = np.array([[r["robust_acc"] for r in sel] for sel in per], dtype=float)
        rel = np.array([[r["rel_acc"] for r in sel] for sel in per], dtype=float)
        kw = dict(color=pal[variant], linestyle=line.get(attack, "-"))
        handles.append(seed_band(axes[0], x, acc, label=variant, **kw))
        seed_band(axes[1], x, rel, label=variant, **kw)
        if len(models) == 1:  # one seed: the images' uncertainty
            axes[0].fill_between(x, [r["acc_lo"] for r in per[0]], [r["acc_hi"] for r in per[0]],
                                 color=pal[variant], alpha=0.12, linewidth=0)
        mean_area = float(np.mean([area[(m, attack)] for m in models]))
        labels.append(f"{variant} {attack}: area {mean_area:.3f}" + (
            f" (mean of {len(models)} seeds; band: range over seeds)" if len(models) > 1
            else " (band: 95% exact binomial over images)"))
    ticks = sorted({r["eps"] * 255 for r in rows})
    for ax in axes:
        ax.set_xlabel("eps (x/255, L-inf)")
        if len(ticks) <= 9:  # ticks at the eps attacked; more would crowd: the default ticks then
            ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
            ax.tick_params(axis="x", labelrotation=45 if max(len(f"{t:.3g}") for t in ticks) > 3 else 0)
    axes[0].set(ylabel="robust accuracy", ylim=(-0.02, 1.02), title="Robust accuracy")
    axes[1].set(ylabel="robust / clean accuracy", ylim=(-0.02, 1.05), title="Relative to clean accuracy")
    legend_below(fig, handles, labels, ncol=1 if len(labels) < 4 else 2)
    return save(fig, out, "pgd")


class RobustnessAnalysis(Analysis):
    """`scs-probe pgd`: every model attacked on the first n test images at every eps. Writes pgd.csv
    (model, attack, eps, robust accuracy with its interval, relative to clean, n, steps, alpha), pgd_summary.csv
    (area under each curve with a bootstrap interval, masking flags), masking_checks.csv and pgd.png/svg."""

    name = "pgd"
    Config = RobustnessConfig
    summary_file = "pgd_summary.csv"
    figure_stems = ("pgd",)
    uses_test_images = True

    def _run(self, runs, out: Path, context: Context) -> AnalysisResult:
        c = self.config
        models = load_models(runs, context.device)
        dataset = runs_dataset(runs, context.dataset)
        images, labels, _, classes = select_test_images(context.data_dir, c.n_images, random_pick=False,
                                                        dataset=dataset)
        check_classes(models, classes, dataset)
        rows, masks = attack_models(models, images, labels, c, context.device, context.progress)
        summary = summarize(rows, masks, c.n_boot, c.seed)
        if c.checks:
            checks = masking_checks(models, images, labels, rows, c, context.device)
            write_csv(out / "masking_checks.csv", checks, float_format=".6g")
            flags = {r["model"]: r["flags"] for r in checks}
            for s in summary:
                s["masking_flags"] = flags.get(s["model"], "") if s["attack"] == "pgd" else ""
        write_csv(out / "pgd.csv", rows, float_format=".6g")
        write_csv(out / self.summary_file, summary, float_format=".6g")
        keys = list(masks)
        atomic_write(out / PER_IMAGE, lambda f: np.savez_compressed(
            f, models=np.asarray([k[0] for k in keys]), attacks=np.asarray([k[1] for k in keys]),
            eps=np.asarray(c.eps), robust=np.stack([masks[k] for k in keys])))
        variants = dict(zip(run_labels(runs), (r.name for r in runs)))
        return AnalysisResult(self.name, out, summary, {"pgd": plot_curves(rows, summary, out, variants)})


def load_per_image(out) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(model, attack) -> (eps, robust [eps, image]) from a stored robustness analysis; {} where there is none."""
    path = Path(out) / PER_IMAGE
    if not path.is_file():
        return {}
    try:
        with np.load(path) as z:  # allow_pickle=False: an object array is refused, never unpickled
            per = {(str(m), str(a)): (np.asarray(z["eps"], dtype=float), np.asarray(z["robust"][i], dtype=float))
                   for i, (m, a) in enumerate(zip(z["models"], z["attacks"]))}
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise RecordError(f"{path}: unreadable or malformed ({type(e).__name__}); delete the robustness analysis "
                          "to have it run again") from None
    if any(r.ndim != 2 or r.shape[0] != len(eps) for eps, r in per.values()):
        raise RecordError(f"{path}: malformed (robust accuracies that do not match their eps)")
    return per
