"""What the analyses run on: trained models from run directories or checkpoint files, and test images."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import checkpoint_from_state_dict, model_from_checkpoint
from ..data import as_rgb, check_dataset, load_dataset
from ..errors import CheckpointError, OptionError, RecordError
from ..rundir import RunDir, RunsDir
from ..zoo import check_trusted


@dataclass
class LoadedModel:
    name: str            # the variant's name (made unique when two checkpoints share it)
    model: torch.nn.Module
    checkpoint: Path
    variant: dict
    seed: int | None = None  # the seed it was trained with
    num_classes: int = 10


def check_classes(models: Sequence[LoadedModel], classes: Sequence, dataset: str) -> None:
    """Every model must have an output per class of the data set the test images come from."""
    for m in models:
        if m.num_classes != len(classes):
            raise OptionError("dataset", f"{m.name} has {m.num_classes} outputs but {dataset} has {len(classes)} "
                                         "classes: test it on the data set it was trained on")


class StateDictRun(RunDir):
    """A plain state dict from elsewhere, read as a finished run of model `spec` (`checkpoint_from_state_dict`)."""

    def __init__(self, path, spec: str, dataset: str | None = None, activation: str = "keep", pool: str = "keep"):
        super().__init__(Path(path).parent, checkpoint=path)
        self.spec, self.dataset, self.activation, self.pool = spec, dataset or "cifar10", activation, pool
        self._ckpt = None

    def load_checkpoint(self) -> dict:
        if self._ckpt is None:
            self._ckpt = checkpoint_from_state_dict(self.checkpoint_path, self.spec, self.dataset, self.activation,
                                                    self.pool)
        return self._ckpt

    def read_config(self) -> dict:
        ckpt = self.load_checkpoint()
        return {"variant": ckpt["variant"], "variant_name": self.checkpoint_path.stem, "options": ckpt["options"],
                "status": "finished", "data": ckpt["data"]}


def resolve_runs(paths: Sequence = (), directory=None, model: str | None = None, dataset: str | None = None,
                 activation: str = "keep", pool: str = "keep") -> list[RunDir]:
    """Checkpoint files or run directories, and/or every run in a directory of runs; a path that holds no
    checkpoint is a CheckpointError. With `model` (a spec), the files are plain state dicts of that model
    (converted with `activation` and `pool`). A run whose config.json names model code that the user does not
    trust (`scs_probe.zoo.trust_model_code`) is an UntrustedModelCode now, before any work, with nothing imported
    (its checkpoint's spec is checked again when its model is built); `model` is the caller's own spec, but a
    package.module:factory must be trusted all the same."""
    stored = [] if model is not None else [RunDir.of(p) for p in paths]  # runs with records of their own
    for run in stored:
        if not run.has_checkpoint():
            raise CheckpointError(f"no checkpoint at {run.checkpoint_path}")
    if directory is not None:
        stored += RunsDir(directory).runs()
    for run in stored:
        _check_recorded_spec(run)
    if model is None:
        return stored
    state_dicts = [StateDictRun(p, model, dataset, activation, pool) for p in paths]
    for run in state_dicts:
        run.load_checkpoint()  # a file that does not fit says so now, before any work
    return state_dicts + stored


def _check_recorded_spec(run: RunDir) -> None:
    try:
        variant = run.read_config().get("variant", {})
    except RecordError:
        return  # unreadable records: the analyses that read them say so
    check_trusted(variant.get("arch"), source=run.config_path)


def run_labels(runs: Sequence[RunDir]) -> list[str]:
    """A unique label per run for tables and figures: its variant's name, or its folder's name where several
    runs share a variant (seeds: <variant>-seed<N>), with a counter where even those repeat."""
    names = [r.name for r in runs]
    labels = [r.path.name if names.count(r.name) > 1 else r.name for r in runs]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def load_models(runs: Sequence[RunDir], device) -> list[LoadedModel]:
    """Load every run's checkpoint (weights_only) into its architecture, in eval mode on `device`, with
    gradients off for the weights; named by `run_labels`."""
    out = []
    for run, label in zip(runs, run_labels(runs)):
        ckpt = run.load_checkpoint()
        model = model_from_checkpoint(ckpt, device, run.checkpoint_path)
        for p in model.parameters():
            p.requires_grad_(False)
        out.append(LoadedModel(label, model, run.checkpoint_path, ckpt["variant"], ckpt["options"].get("seed"),
                               int(ckpt.get("data", {}).get("num_classes", 10))))
    return out


def _class_index(c, names: Sequence[str], dataset: str) -> int:
    """A class given by index or by (case-insensitive) name, checked against the data set's classes."""
    lower = [n.lower() for n in names]
    if isinstance(c, str) and not c.isdigit():
        if c.lower() in lower:
            return lower.index(c.lower())
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise OptionError("classes", f"{dataset} has no class {c!r}; its classes: {shown} (or indices "
                                     f"0-{len(names) - 1})")
    if not 0 <= int(c) < len(names):
        raise OptionError("classes", f"{dataset} has classes 0-{len(names) - 1}")
    return int(c)


def runs_dataset(runs: Sequence[RunDir], asked: str | None = None) -> str:
    """The data set to take test images from: `asked`, else the one every run was trained on (as its config
    records; runs from before data sets were recorded: CIFAR-10)."""
    if asked:
        return check_dataset(asked)
    names = {r.read_config().get("options", {}).get("dataset", "cifar10") for r in runs}
    if len(names) > 1:
        raise OptionError("dataset", f"the runs were trained on different data sets ({', '.join(sorted(names))}); "
                                     "name the one to test on")
    return names.pop() if names else "cifar10"


def select_test_images(data_dir, n: int, indices=None, classes=None, seed: int = 0, random_pick: bool = True,
                       dataset: str = "cifar10"):
    """(images float [0, 1] with three channels, labels, indices, class names) from a data set's test split:
    explicit indices, or n images (of the given classes) drawn with `seed` (or the first n when not
    random_pick)."""
    split = load_dataset(dataset, data_dir, train=False)
    if indices:
        if max(indices) >= len(split):
            raise OptionError("indices", f"go up to {len(split) - 1} in this test split")
        chosen = list(indices)
    else:
        classes = None if classes is None else [_class_index(c, split.classes, dataset) for c in classes]
        pool = [i for i, y in enumerate(split.labels.tolist()) if classes is None or y in classes]
        if random_pick:
            pool = random.Random(seed).sample(pool, min(n, len(pool)))
        chosen = pool[:n]
    idx = torch.tensor(chosen)
    return as_rgb(split.images[idx].float().div(255)), split.labels[idx], chosen, split.classes
