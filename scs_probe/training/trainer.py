"""Training one variant: Adam + OneCycleLR (stepped every batch), weight decay 0, records every epoch."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import platform
import socket
import time
from datetime import UTC, datetime

import torch
import torch.nn.functional as F

from .. import __version__, cpu_memory
from ..checkpoint import load_checkpoint
from ..data import (
    BatchLoader,
    auto_val_split,
    describe,
    fingerprint,
    load_dataset,
    normalization,
    resolve_data_dir,
    validation_split,
)
from ..errors import (
    Busy,
    CheckpointError,
    DataMismatch,
    OptionError,
    ResumeConflict,
    RunExistsError,
    TrainingDiverged,
    TrainingError,
)
from ..layers import backend_used
from ..progress import print_escaped, progress_bar, write_line
from ..rundir import RunDir
from ..schema import _shown
from ..zoo import build_model, count_params, get_arch
from .devices import amp_dtype, describe_device, out_of_memory_as_error, resolve_device
from .options import TrainOptions
from .records import exponent_rows, sharpened_layers, tracked_layers, weight_norm_rows
from .tensorboard_log import TensorBoardLog, final_metrics, run_hparams
from .tensorboard_log import require as require_tensorboard


def _ray_node_id() -> str | None:
    """The Ray node this process runs on (in a Ray task), else None; never imports Ray."""
    import sys
    ray = sys.modules.get("ray")
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None


def versions() -> dict:
    import torchvision
    return {"scs_probe": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version(), "scs_backend": backend_used()}


def environment(device: torch.device) -> dict:
    """What a run ran on, as the speed claim compares it: the SCS backend actually used (a fallback to eager
    with its reason), torch threads, host, device (with the GPU's name and the CUDA version on CUDA), the
    torch version and the CPU memory policy (`cpu_memory.describe`: it halves some conv layers' times)."""
    env = {"backend": backend_used(), "threads": torch.get_num_threads(), "host": socket.gethostname(),
           "device": device.type, "torch": str(torch.__version__)}
    env |= {k: v for k, v in describe_device(device).items() if k != "device"}  # GPU, CUDA, cuDNN, TF32
    return env | cpu_memory.describe()  # last: the longest text (inspect's "ran on:" line)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def load_init_weights(model: torch.nn.Module, path: str, arch: str) -> int:
    """Copy every tensor of another checkpoint of the same architecture whose name and shape match (e.g. SCS
    from trained conv kernels). Returns how many tensors were copied."""
    src = load_checkpoint(RunDir.of(path).checkpoint_path)
    if src["variant"].get("arch") != arch:
        raise CheckpointError(f"initial weights {path} are from a {src['variant'].get('arch')} checkpoint, "
                              f"not {arch}")
    own = model.state_dict()
    matched = {k: v for k, v in src["model"].items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise CheckpointError(f"initial weights {path}: no tensor matches this model's names and shapes")
    model.load_state_dict(matched, strict=False)
    return len(matched)


class Trainer:
    """Trains one run directory from scratch or from its checkpoint (`resume`), holding the run's training lock
    (`RunDir.training_lock`) from reading its checkpoint to the end of `run`: a second process that would train the
    same run is refused (Busy)."""

    def __init__(self, options: TrainOptions, resume: bool = False, explicit: set[str] | None = None,
                 progress: bool = True, log=print_escaped, on_epoch=None):
        """`explicit`: the option names the user gave (TrainOptions fields, or a Variant's axes); resuming with
        one that differs from the stored run's is a ResumeConflict, the others are taken from the run."""
        self.log, self.progress = log, progress
        self.on_epoch = on_epoch  # on_epoch(epoch, history row) after each epoch's checkpoint: may stop the run
        self.board = None  # the run's TensorBoard log while it trains (option tensorboard)
        self.run_dir = RunDir(options.run_dir())
        self.ckpt = None
        self._lock = None  # the run's training lock while held
        if resume and not self.run_dir.has_checkpoint():
            raise TrainingError(f"{self.run_dir.path} holds no run to resume (no {self.run_dir.checkpoint_path.name})")
        if self.run_dir.has_checkpoint():
            if not resume:
                raise RunExistsError(self.run_dir.path)
            self._take_lock()  # before the checkpoint is read: nobody else writes it from here on
        try:
            self.options = self._options(options, explicit)
        except BaseException:
            self._release_lock()
            raise

    def _options(self, options: TrainOptions, explicit) -> TrainOptions:
        """`options`, or for a resumed run the stored ones with what may change on resume taken from `options`."""
        if self.run_dir.has_checkpoint():
            self.ckpt = self.run_dir.load_checkpoint()
            try:
                stored = TrainOptions.from_dict(self.ckpt["options"])
            except OptionError as e:  # e.g. a package.module:factory that is not importable here
                raise CheckpointError(f"{self.run_dir.checkpoint_path} holds a model this scs-probe cannot build "
                                      f"here ({e.message}); for a package.module:factory model, make its package "
                                      "importable (PYTHONPATH)") from None
            given, kept = options.to_dict(), stored.to_dict()
            for key in sorted(explicit or ()):
                if key not in TrainOptions.RESUMABLE and given.get(key) != kept.get(key):
                    raise ResumeConflict(self.run_dir.path, key, kept.get(key), given.get(key))
            # where and how fast it runs: what the caller gave (all of them from the library; from the command
            # line, what the user typed), else what the run was started with
            kept_keys = [k for k in TrainOptions.RESUMABLE if explicit is None or k in explicit or k == "out"]
            options = dataclasses.replace(stored, **{k: getattr(options, k) for k in kept_keys})
        options = options.resolved()
        if options.tensorboard:
            require_tensorboard()
        return options

    # ------------------------------------------------------------------------------------------------ lock
    def _take_lock(self) -> bool:
        """Hold the run's training lock (True where this call took it); Busy where another process trains the run.
        A file system that cannot lock at all trains unprotected, with a warning."""
        if self._lock is not None:
            return False
        lock = self.run_dir.training_lock()
        try:
            taken = lock.acquire()
        except OSError as e:
            self.log(f"warning: cannot lock {self.run_dir} ({e.strerror or e}): nothing stops a second process "
                     "from training it at the same time")
            return False
        if not taken:
            raise Busy(self.run_dir.path, "being trained", self.run_dir.trainer())
        self._lock = lock
        return True

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------------------------------------ set-up
    def _setup(self):
        o = self.options
        spec = get_arch(o.variant.arch)
        self.device = resolve_device(o.device)
        self.amp = amp_dtype(self.device, o.amp)
        if o.amp and self.amp is None:
            self.log(f"warning: bfloat16 autocast is not supported on {self.device}; training in float32")
        torch.manual_seed(o.seed)
        root = resolve_data_dir(o.data_dir)
        train = load_dataset(o.dataset, root, train=True, image_size=o.variant.image_size)
        full_test = load_dataset(o.dataset, root, train=False, image_size=o.variant.image_size)
        data_fingerprint = fingerprint(train, full_test)
        self._check_data(data_fingerprint, root)
        val, split_info = None, None
        if o.val_split is not None:  # held out of the whole training split; --limit-train takes from the rest
            n = auto_val_split(len(train)) if o.val_split == "auto" else o.val_split
            train, val, split_info = validation_split(train, n, o.val_seed)
            self.options = o = dataclasses.replace(o, val_split=n)
        train = train.limit(o.limit_train)
        test = full_test.limit(o.limit_test)
        # n_test: the images every number is computed on; test_split: how many the data set holds (what more
        # images could reach, for "to decide"); fingerprint: which copy of the data set (see data.fingerprint)
        self.data_info = {**describe(train, test, root), "test_split": len(full_test), "val_split": split_info,
                          "fingerprint": data_fingerprint}
        if self.ckpt is not None and (self.ckpt.get("data") or {}).get("val_split") not in (None, split_info):
            raise CheckpointError(f"{self.run_dir.checkpoint_path} was trained with another validation split "
                                  f"({self.ckpt['data']['val_split']}) than this data gives ({split_info})")
        self.train_loader = BatchLoader(train, o.batch_size, self.device, True, spec.augment, o.variant.image_size,
                                        o.seed,
                                        o.workers)
        self.test_loader = BatchLoader(test, max(o.batch_size, 256), self.device, False,
                                       image_size=o.variant.image_size,
                                       workers=o.workers)
        self.val_loader = None if val is None else BatchLoader(val, max(o.batch_size, 256), self.device, False,
                                                               image_size=o.variant.image_size, workers=o.workers)
        self.variant = o.variant
        self.model = build_model(self.variant, seed=o.seed, num_classes=len(train.classes),
                                 normalization=normalization(o.dataset)).to(self.device)
        self.net = speed_options(self.model, o.compile, o.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=o.max_lr, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=o.max_lr, total_steps=o.epochs * len(self.train_loader))
        self.label_smoothing = spec.label_smoothing
        self.layers = tracked_layers(self.model)
        self.history: list[dict] = []
        self.start_epoch = 0
        if self.ckpt is not None:
            self._load_training_state()
            self.history = list(self.ckpt.get("history", []))
            self.start_epoch = int(self.ckpt["epoch"])
            self.run_dir.truncate_records(self.start_epoch)
        else:
            if getattr(self.model, "conversion", None) is not None:  # a model from elsewhere, converted
                for line in self.model.conversion.summary().splitlines():
                    self.log(f"convert: {line}")
            if o.init_from:
                n = load_init_weights(self.model, o.init_from, o.variant.arch)
                self.log(f"initialised {n} tensors from {o.init_from}")
            self.run_dir.path.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            if self.run_dir.has_checkpoint():  # another process started it since this one looked
                raise RunExistsError(self.run_dir.path)
            self.run_dir.start_records()
            self.run_dir.append("norms", weight_norm_rows(0, self.layers))
            self.run_dir.append("exponents", exponent_rows(0, self.model))
            self._save(0, "running")

    def _load_training_state(self) -> None:
        """Weights, optimizer and schedule from the checkpoint, each checked against the run it resumes: one that
        does not fit (crafted, or another run's) is a CheckpointError now, not a traceback epochs later."""
        path, ckpt = self.run_dir.checkpoint_path, self.ckpt

        def refuse(what, e=None):
            detail = f" ({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]})" if e else ""
            return CheckpointError(f"{path}: cannot resume from it: {what}{detail}")
        epoch, history = int(ckpt["epoch"]), ckpt.get("history", [])
        if not 0 <= epoch <= self.options.epochs:  # else "already finished" with epochs this run never trained
            raise refuse(f"it is at epoch {epoch}, outside this run's 0-{self.options.epochs}")
        if len(history) != epoch:  # the run's records would say other than its weights
            n = len(history)
            raise refuse(f"its history holds {n} epoch{'' if n == 1 else 's'}, and it says epoch {epoch}")
        epochs = [row["epoch"] for row in history]  # of the right length, but other epochs: the same records
        if epochs != list(range(1, epoch + 1)):
            shown = ", ".join(map(str, epochs[:8])) + (", ..." if len(epochs) > 8 else "")
            raise refuse(f"its history holds epochs {shown}, and it says epoch {epoch}")
        status = ckpt.get("status")  # training saves its last epoch as finished, and no other
        if (status == "finished" and epoch != self.options.epochs) or (status == "running"
                                                                       and epoch == self.options.epochs):
            raise refuse(f"it says {status} at epoch {epoch} of {self.options.epochs}")
        try:
            self.model.load_state_dict(ckpt["model"])
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise refuse("its weights do not fit the model", e) from None
        try:
            self.optimizer.load_state_dict(ckpt.get("optimizer"))
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            for param in params:  # a moment of another shape would fail in the first step
                for value in self.optimizer.state.get(param, {}).values():
                    if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                        raise ValueError(f"a state tensor of shape {tuple(value.shape)} for a parameter of "
                                         f"{tuple(param.shape)}")
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise refuse("its optimizer state does not fit the model", e) from None
        per_epoch = len(self.train_loader)
        try:
            self.scheduler.load_state_dict(ckpt.get("scheduler"))
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise refuse("its learning-rate schedule does not fit", e) from None
        sched = self.scheduler
        counts = (sched.total_steps, sched.last_epoch, sched._step_count)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts) \
                or sched.total_steps != self.options.epochs * per_epoch \
                or sched.last_epoch != int(ckpt["epoch"]) * per_epoch:
            raise refuse(f"its learning-rate schedule does not fit (step {_shown(sched.last_epoch)} of "
                         f"{_shown(sched.total_steps)}; its epoch {ckpt['epoch']} of {self.options.epochs}, "
                         f"{per_epoch} batches each, make step {int(ckpt['epoch']) * per_epoch} of "
                         f"{self.options.epochs * per_epoch})")

    def _check_data(self, data_fingerprint: str, root) -> None:
        """A resumed run continues on the copy of the data it was trained on, or not at all (DataMismatch); a run
        from before fingerprints were recorded resumes with a warning (and records this copy's from now on)."""
        if self.ckpt is None:
            return
        stored = (self.ckpt.get("data") or {}).get("fingerprint")
        dataset = self.options.dataset
        here = "the one there now" if dataset.startswith("imagefolder:") else f"the one in {root}"
        if stored is None:
            self.log(f"warning: {self.run_dir} records no fingerprint of the data it was trained on (an older "
                     f"scs-probe): resuming on {dataset} ({here}) unchecked")
        elif stored != data_fingerprint:
            raise DataMismatch(f"{self.run_dir} was trained on another copy of {dataset} than {here} (other images "
                               f"or labels: data fingerprint {data_fingerprint[7:19]}, recorded {stored[7:19]}); "
                               "resume it on the data it was trained on")

    def _config(self, status: str, **extra) -> dict:
        return {"variant": self.variant.to_dict(), "variant_name": self.variant.name, "options": self.options.to_dict(),
                "params": count_params(self.model), "data": self.data_info, "versions": versions(),
                "environment": environment(self.device), "device": str(self.device),
                "host": socket.gethostname(), "pid": os.getpid(), "node": _ray_node_id(),  # which node and process
                "amp": str(self.amp) if self.amp else None, "status": status,
                "epochs_done": len(self.history), "updated": datetime.now(UTC).isoformat(), **extra}

    def _save(self, epoch: int, status: str, **extra) -> None:
        self.run_dir.save_checkpoint({
            "variant": self.variant.to_dict(), "options": self.options.to_dict(), "epoch": epoch,
            "status": status, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "history": self.history, "data": self.data_info,
            "params": count_params(self.model), "versions": versions(), "environment": environment(self.device),
            **extra})
        self.run_dir.write_config(self._config(status, **extra))

    # ------------------------------------------------------------------------------------------------ loops
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def _train_epoch(self, epoch: int) -> dict:
        model, o = self.net, self.options
        model.train()
        self.train_loader.set_epoch(epoch)
        grads = [w for _, w in self.layers]
        grad_sum = torch.zeros(len(grads), device=self.device)
        batch_norms = []
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, check_every = 0, 1 if self.device.type == "cpu" else 25
        _sync(self.device)
        t0 = time.perf_counter()
        bar = progress_bar(self.train_loader, enabled=self.progress, desc=f"epoch {epoch}/{o.epochs}", leave=False,
                           unit="batch")
        for b, (x, y) in enumerate(bar):
            with self._autocast():
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
            if b % check_every == 0 and not torch.isfinite(loss).item():
                raise TrainingDiverged(f"non-finite loss ({loss.item()}) at epoch {epoch}, batch {b}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms = torch.stack(torch._foreach_norm([g.grad if g.grad is not None else torch.zeros_like(g)
                                                     for g in grads])).float()
            grad_sum += norms
            self.optimizer.step()
            self.scheduler.step()
            if o.norms_every_batch:
                wn = torch.stack(torch._foreach_norm([w.detach() for w in grads])).float()
                batch_norms.append(torch.stack([wn, norms]))
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if b % 20 == 0 and self.progress:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.1%}")
        _sync(self.device)
        seconds = time.perf_counter() - t0
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"non-finite loss ({train_loss}) in epoch {epoch}")
        norm_rows = []
        names = [n for n, _ in self.layers]
        for bi, pair in enumerate(torch.stack(batch_norms).cpu().tolist() if batch_norms else []):
            for kind, values in zip(("weight", "grad"), pair):
                norm_rows += [{"epoch": epoch, "batch": bi, "layer": n, "kind": kind, "l2": f"{v:.6g}"}
                              for n, v in zip(names, values)]
        norm_rows += weight_norm_rows(epoch, self.layers)
        norm_rows += [{"epoch": epoch, "batch": "", "layer": n, "kind": "grad", "l2": f"{v:.6g}"}
                      for n, v in zip(names, (grad_sum / max(1, b + 1)).cpu().tolist())]
        return {"train_loss": train_loss, "train_acc": correct.item() / seen, "train_seconds": seconds,
                "norm_rows": norm_rows}

    @torch.no_grad()
    def _evaluate(self, loader=None) -> dict:
        return evaluate(self.net, loader or self.test_loader, self.device, self._autocast)

    def _warm_up_backend(self) -> None:
        """Run every path the clock will time once before the first epoch's clock starts, so that train and eval
        seconds compare layers, not compilers or first-call set-up: a training step and eval-mode forwards at
        every batch size the loaders will give (the compiled SCS kernels, cuDNN's algorithm choice and the
        allocator's first blocks alike, for conv and SCS models). On a throwaway copy of the model, random
        batches and a forked RNG: the run's weights, data order and random draws stay untouched. TorchInductor's
        compilation takes seconds per layer shape and direction once (about a minute for a rohrer model on two
        busy CPU cores), then comes from its disk cache."""
        o = self.options
        size = o.variant.image_size

        def sizes(loader):
            n, b = len(loader.split), loader.batch_size
            return sorted({min(n, b), n % b} - {0})

        gen = torch.Generator().manual_seed(0)
        batches = lambda n: torch.rand((n, 3, size, size), generator=gen).to(self.device)  # noqa: E731
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        if o.compile or (sharpened_layers(self.model) and not backend_used().startswith("eager")):
            self.log("warming up: compiling kernels for new layer shapes (up to a minute or more the first time, "
                     "cached on disk; not timed)")
        t0 = time.perf_counter()
        # torch.compile's graphs belong to the compiled module: warm that one (its state restored after: BatchNorm's
        # running statistics must not see the random batches), else a throwaway copy
        saved = copy.deepcopy(self.model.state_dict()) if o.compile else None
        with torch.random.fork_rng(devices=devices):
            model = self.net.train() if o.compile else copy.deepcopy(self.model).train()
            for n in sizes(self.train_loader):
                with self._autocast():
                    loss = model(batches(n)).float().sum()
                loss.backward()
                model.zero_grad(set_to_none=True)
            model.eval()
            with torch.no_grad():
                for n in sorted(set(sizes(self.test_loader) + (sizes(self.val_loader) if self.val_loader else []))):
                    with self._autocast():
                        model(batches(n))
            _sync(self.device)
        if saved is not None:
            self.model.load_state_dict(saved)
            self.model.zero_grad(set_to_none=True)
        if time.perf_counter() - t0 > 1.0:
            self.log(f"warmed up train and eval paths in {time.perf_counter() - t0:.1f} s (compilation; not counted "
                     "in train or eval seconds)")

    def run(self) -> dict:
        """Train the remaining epochs. Returns the config dict of the finished run. The run's training lock is
        let go at the end, however it ends."""
        try:
            return self._run()
        finally:
            self._release_lock()

    def _run(self) -> dict:
        self._setup()
        o = self.options
        if self.ckpt is not None and self.run_dir.sync_config(self.ckpt):  # killed between checkpoint and config
            self.log(f"{self.run_dir}: config.json said other than its checkpoint (status {self.ckpt.get('status')}, "
                     f"epoch {self.ckpt['epoch']}); rewritten from it")
        if self.ckpt is not None and self.ckpt.get("status") == "finished":
            n = self.start_epoch
            self.log(f"{self.run_dir}: already finished ({n} epoch{'' if n == 1 else 's'})")
            return self._config("finished")
        self.log(f"{self.variant.name}: {count_params(self.model):,} parameters, {o.epochs} "
                 f"epoch{'' if o.epochs == 1 else 's'} of {len(self.train_loader)} batches on {self.device}"
                 + (f", {len(self.val_loader.split):,} training images held out for validation"
                    if self.val_loader is not None else "")
                 + (" (bf16 autocast)" if self.amp else "") + (f", resuming after epoch {self.start_epoch}"
                                                                if self.start_epoch else ""))
        self._warm_up_backend()
        self._open_board()
        for epoch in range(self.start_epoch + 1, o.epochs + 1):
            try:
                tr = self._train_epoch(epoch)
            except TrainingDiverged as e:
                self._mark_diverged(epoch, str(e))
                raise TrainingDiverged(f"{self.variant.name} diverged: {e}; records in {self.run_dir} marked "
                                       f"diverged (last good checkpoint: epoch {epoch - 1})") from None
            ev = self._evaluate()
            if not (math.isfinite(ev["loss"]) and math.isfinite(ev["acc"])):  # a nan test loss is no result
                reason = f"non-finite test loss ({ev['loss']}) at epoch {epoch}"
                self._mark_diverged(epoch, reason)
                raise TrainingDiverged(f"{self.variant.name} diverged: {reason}; records in {self.run_dir} marked "
                                       f"diverged (last good checkpoint: epoch {epoch - 1})")
            va = self._evaluate(self.val_loader) if self.val_loader is not None else None
            row = {"epoch": epoch, "train_loss": round(tr["train_loss"], 6), "train_acc": round(tr["train_acc"], 6),
                   "val_loss": round(va["loss"], 6) if va else "", "val_acc": round(va["acc"], 6) if va else "",
                   "test_loss": round(ev["loss"], 6), "test_acc": round(ev["acc"], 6),
                   "train_seconds": round(tr["train_seconds"], 4), "eval_seconds": round(ev["seconds"], 4),
                   "lr": f"{self.scheduler.get_last_lr()[0]:.6g}"}
            self.history.append(row)
            self.run_dir.append("history", [row])
            self.run_dir.append("norms", tr["norm_rows"])
            p_rows = exponent_rows(epoch, self.model)
            self.run_dir.append("exponents", p_rows)
            self.run_dir.write_predictions(epoch, self.test_loader.split.labels, ev["preds"])
            self._save(epoch, "finished" if epoch == o.epochs else "running")
            if self.board is not None:
                self.board.epoch(row, tr["norm_rows"], p_rows)
            msg = (f"epoch {epoch}/{o.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}  "
                   + (f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}  " if va else "") +
                   f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.2%}  "
                   f"train {row['train_seconds']:.1f}s eval {row['eval_seconds']:.1f}s")
            write_line(msg, self.log)
            if self.on_epoch is not None:
                self.on_epoch(epoch, row)
        self._close_board("finished")
        return self._config("finished")

    def mark(self, status: str, **extra) -> None:
        """Set the run's status (e.g. 'pruned' by a search) in its checkpoint and config.json."""
        took = self._take_lock()  # `run` let it go when it ended
        try:
            ckpt = self.run_dir.load_checkpoint()
            ckpt.update(status=status, **extra)
            self.run_dir.save_checkpoint({k: v for k, v in ckpt.items() if k != "format"})
            self.run_dir.write_config(self._config(status, **extra))
            self._close_board(status)
        finally:
            if took:
                self._release_lock()

    # ------------------------------------------------------------------------------------------ TensorBoard
    def _open_board(self) -> None:
        """With the tensorboard option: open the run's log; one new or never logged gets the epochs its records hold."""
        if not self.options.tensorboard:
            return
        self.board = TensorBoardLog(self.run_dir.tensorboard_path, first_epoch=self.start_epoch + 1)
        if self.board.fresh:
            self.board.backfill(self.history, self.run_dir.read("norms"), self.run_dir.read("exponents"))

    def _close_board(self, status: str) -> None:
        """The run's options, status and final metrics to TensorBoard's HParams, and the log closed."""
        if self.board is not None:
            self.board.finish({**run_hparams(self.options.to_dict()), "status": status}, final_metrics(self.history))
            self.board = None

    def _mark_diverged(self, epoch: int, reason: str) -> None:
        """Keep the last good weights; mark checkpoint and config.json as diverged."""
        self.mark("diverged", diverged={"epoch": epoch, "reason": reason})


# --compile / --channels-last ---------------------------------------------------------------------------------
def speed_options(model: torch.nn.Module, compile: bool = False, channels_last: bool = False) -> torch.nn.Module:
    """What the training and evaluation loops call: `model` itself, or (`channels_last`) the model with its
    parameters and every input in channels_last format, and (`compile`) torch.compile of it. The same for conv and
    SCS models; `model` keeps its state_dict keys (checkpoints never see a compiled wrapper)."""
    net = model
    if channels_last:
        model.to(memory_format=torch.channels_last)
        model.register_forward_pre_hook(_inputs_channels_last)
    if compile:
        net = torch.compile(model)
    return net


def _inputs_channels_last(module, args):
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
                 else a for a in args)
# ------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, loader, device, autocast) -> dict:
    """Test loss, accuracy, seconds of one pass (model in eval mode) and the predicted class of every image."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n, preds = 0, []
    _sync(device)
    t0 = time.perf_counter()
    for x, y in loader:
        with autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        pred = logits.argmax(1)
        correct += (pred == y).sum()
        preds.append(pred)
        n += len(y)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"loss": loss_sum.item() / max(n, 1), "acc": correct.item() / max(n, 1), "seconds": seconds,
            "preds": torch.cat(preds).cpu() if preds else torch.zeros(0, dtype=torch.long)}


def train(options: TrainOptions, resume: bool = False, **kwargs) -> dict:
    with out_of_memory_as_error(options.variant.name, options.device):
        return Trainer(options, resume=resume, **kwargs).run()
