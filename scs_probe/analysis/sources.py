"""What the analyses run on: trained models (from checkpoints or a directory of runs) and test images."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import CLASSES, load_cifar10
from ..training.runs import find_runs
from ..training.checkpoint import model_from_checkpoint, resolve_checkpoint_path


@dataclass
class LoadedModel:
    name: str            # the variant's name (made unique when two checkpoints share it)
    model: torch.nn.Module
    checkpoint: Path
    variant: dict


def checkpoint_paths(ckpts=(), sweep=None) -> list[Path]:
    """--ckpt files (or run directories) and/or every run under --sweep DIR."""
    paths = [resolve_checkpoint_path(c) for c in ckpts]
    if sweep is not None:
        paths += [resolve_checkpoint_path(r) for r in find_runs(sweep)]
    return paths


def load_models(paths, device) -> list[LoadedModel]:
    """Load every checkpoint (weights_only) into its architecture, in eval mode on `device`."""
    out, seen = [], {}
    for path in paths:
        model, ckpt = model_from_checkpoint(path, device)
        name = _variant_name(ckpt)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} ({path.parent.name})"
        for p in model.parameters():
            p.requires_grad_(False)
        out.append(LoadedModel(name, model, path, ckpt["variant"]))
    return out


def _variant_name(ckpt) -> str:
    from ..zoo import Variant
    return Variant.from_dict(ckpt["variant"]).name


def parse_classes(text: str | None) -> list[int] | None:
    """'cat,dog' or '3,5' -> class indices."""
    if not text:
        return None
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item.isdigit() and int(item) < 10:
            out.append(int(item))
        elif item.lower() in CLASSES:
            out.append(CLASSES.index(item.lower()))
        else:
            raise ValueError(f"unknown class {item!r}; use 0-9 or one of {', '.join(CLASSES)}")
    return out


def parse_indices(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        idx = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--indices takes comma-separated integers, got {text!r}") from None
    if any(i < 0 for i in idx):
        raise ValueError("--indices must be >= 0")
    return idx


def test_images(data_dir, n: int, indices=None, classes=None, seed: int = 0, random_pick: bool = True):
    """(images float [0, 1], labels, indices) from the CIFAR-10 test split: explicit indices, or n images
    (of the given classes) drawn with `seed` (or the first n when not random_pick)."""
    split = load_cifar10(data_dir, train=False)
    if indices:
        if max(indices) >= len(split):
            raise ValueError(f"--indices go up to {len(split) - 1}")
        chosen = list(indices)
    else:
        pool = [i for i, y in enumerate(split.labels.tolist()) if classes is None or y in classes]
        if random_pick:
            pool = random.Random(seed).sample(pool, min(n, len(pool)))
        chosen = pool[:n]
    idx = torch.tensor(chosen)
    return split.images[idx].float().div(255), split.labels[idx], chosen
