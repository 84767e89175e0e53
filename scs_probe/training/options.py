"""What a training run computes and where: one `Variant` plus the training knobs, validated when made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..choices import DEFAULT_ARCH, DEVICES, WORKERS_MAX
from ..data import VAL_SPLIT_SEED, check_dataset
from ..errors import OptionError
from ..zoo import Variant, get_arch


def _default_variant() -> Variant:
    return Variant(DEFAULT_ARCH)


@dataclass
class TrainOptions:
    variant: Variant = field(default_factory=_default_variant)
    epochs: int | None = None          # None: the architecture's preset
    batch_size: int | None = None
    max_lr: float | None = None
    seed: int = 0
    device: str = "auto"
    dataset: str = "cifar10"           # cifar10, cifar100, svhn, mnist, fashion-mnist, imagefolder:DIR
    data_dir: str | None = None        # None: $SCS_PROBE_DATA, else ./data (see data.resolve_data_dir)
    out: str | None = None             # None: ./runs/<variant>
    limit_train: int | None = None     # the first N training images left after the validation split
    val_split: int | str | None = None  # N training images held out for validation; "auto": data.auto_val_split
    val_seed: int = VAL_SPLIT_SEED     # the split's own seed, independent of `seed`
    limit_test: int | None = None
    init_from: str | None = None
    norms_every_batch: bool = False
    workers: int = 0
    amp: bool = False
    tensorboard: bool = False          # also log for TensorBoard into RUN_DIR/tensorboard/ (the optional extra)
    compile: bool = False              # torch.compile the whole model (conv and SCS alike)
    channels_last: bool = False        # model and batches in channels_last memory format

    # Options that may change when a run is resumed (where and how fast it runs, or what it logs, not what it
    # computes).
    RESUMABLE = ("device", "data_dir", "workers", "out", "tensorboard", "compile", "channels_last")

    def __post_init__(self):
        if not isinstance(self.variant, Variant):
            raise TypeError(f"variant must be a Variant, got {type(self.variant).__name__}")
        for key in ("epochs", "batch_size", "limit_train", "limit_test"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise OptionError(key, f"must be an integer >= 1, got {value!r}")
        if self.val_split is not None and self.val_split != "auto" and (
                isinstance(self.val_split, bool) or not isinstance(self.val_split, int) or self.val_split < 1):
            raise OptionError("val_split", f"must be an integer >= 1 (or 'auto'), got {self.val_split!r}")
        if self.max_lr is not None and not self.max_lr > 0:
            raise OptionError("max_lr", f"must be > 0, got {self.max_lr!r}")
        if not isinstance(self.workers, int) or not 0 <= self.workers <= WORKERS_MAX:
            raise OptionError("workers", f"must be an integer from 0 to {WORKERS_MAX}, got {self.workers!r}")
        self.dataset = check_dataset(self.dataset)
        if self.dataset.startswith("imagefolder:"):  # recorded absolute: analyses run from elsewhere find it
            self.dataset = "imagefolder:" + str(Path(self.dataset.split(":", 1)[1]).expanduser().resolve())
        if self.device.split(":")[0] not in DEVICES:
            raise OptionError("device", f"unknown value {self.device!r}; allowed: {', '.join(DEVICES)}")

    def resolved(self) -> TrainOptions:
        """The architecture's presets (epochs, batch size, max LR) where these options leave them open."""
        spec = get_arch(self.variant.arch)
        presets = {"epochs": spec.epochs, "batch_size": spec.batch_size, "max_lr": spec.max_lr}
        return replace(self, **{k: v for k, v in presets.items() if getattr(self, k) is None})

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.variant.name

    # Checkpoints and config.json store the options flat, the variant's fields beside the others (the layout
    # since format 1): to_dict / from_dict keep it.
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "variant"}
        return {**asdict(self.variant), **d}

    @classmethod
    def from_dict(cls, d: dict) -> TrainOptions:
        names = {f.name for f in fields(cls)} - {"variant"}
        variant = Variant.from_dict(d["variant"]) if isinstance(d.get("variant"), dict) else Variant.from_dict(d)
        return cls(variant=variant, **{k: v for k, v in d.items() if k in names})
