"""Robust accuracy under attack as eps grows: torchattacks PGD (L-inf), optionally Square (gradient-free)."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .sources import LoadedModel


def parse_eps_value(text: str) -> float:
    """'0.03', '8/255' -> float >= 0."""
    t = text.strip()
    try:
        value = float(Fraction(t)) if "/" in t else float(t)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"bad eps value {text!r}: use a number or a fraction like 8/255") from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"eps must be >= 0, got {text!r}")
    return value


def parse_eps_range(text: str) -> list[float]:
    """'START:STOP:NUM' -> NUM evenly spaced values from START to STOP inclusive (numpy.linspace)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"--eps-range takes START:STOP:NUM, got {text!r}")
    start, stop = parse_eps_value(parts[0]), parse_eps_value(parts[1])
    try:
        num = int(parts[2])
    except ValueError:
        raise ValueError(f"--eps-range NUM must be an integer, got {parts[2]!r}") from None
    if num < 1:
        raise ValueError(f"--eps-range NUM must be >= 1, got {num}")
    if stop < start:
        raise ValueError(f"--eps-range STOP ({parts[1]}) is below START ({parts[0]})")
    return [float(v) for v in np.linspace(start, stop, num)]


def parse_eps_list(text: str) -> list[float]:
    values = [parse_eps_value(t) for t in text.split(",") if t.strip()]
    if not values:
        raise ValueError("--eps needs at least one value")
    return sorted(set(values))


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


def run_sweep(models: list[LoadedModel], images, labels, eps_values, attacks=("pgd",), steps=10, alpha=None,
              restarts=1, batch_size=256, seed=0, n_queries=1000, device="cpu", show_progress=True):
    images, labels = images.to(device), labels.to(device)
    rows = []
    total = len(models) * len(attacks) * len(eps_values) * len(labels)
    with tqdm(total=total, desc="attacks", unit="img", disable=not show_progress, dynamic_ncols=True) as bar:
        for m in models:
            for kind in attacks:
                for eps in eps_values:
                    a = default_alpha(eps, steps) if alpha is None else alpha
                    acc = robust_accuracy(m.model, images, labels, eps, kind, steps, a, restarts, batch_size, seed,
                                          n_queries, bar)
                    rows.append({"model": m.name, "attack": kind, "eps": eps, "robust_acc": acc, "n": len(labels),
                                 "steps": steps if kind == "pgd" else n_queries, "alpha": a if kind == "pgd" else ""})
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


def write_outputs(rows, summary, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (("pgd.csv", rows), ("pgd_summary.csv", summary)):
        with open(out / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]), lineterminator="\n")
            w.writeheader()
            w.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in data)


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


def analyze_robustness(paths, data_dir, out: Path, eps_values, attacks=("pgd",), n_images: int = 500, steps=10,
                       alpha=None, restarts=1, batch_size=256, seed=0, n_queries=1000, device="cpu",
                       show_progress=True) -> dict:
    """The whole `scs-probe pgd` command: the first n test images, every model, every eps."""
    from .sources import load_models, test_images
    models = load_models(paths, device)
    images, labels, _ = test_images(data_dir, n_images, random_pick=False)
    rows = run_sweep(models, images, labels, eps_values, attacks, steps, alpha, restarts, batch_size, seed,
                     n_queries, device, show_progress)
    summary = summarize(rows)
    out = Path(out)
    write_outputs(rows, summary, out)
    return {"rows": rows, "summary": summary, "figures": {"pgd": plot_curves(rows, summary, out)}}
