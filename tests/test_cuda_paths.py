"""CUDA faults that a CPU can show: a worker's GPU never stored in a run's options, out-of-memory as a failed run
(not a reason to turn the compiled backend off), compiled graphs keyed by device and layout, CPU runs holding no
Ray GPU. GPU-only checks live in benchmarks/gpu.sh and skip here without CUDA."""

import pytest
import torch

from scs_probe.cli import main
from scs_probe.errors import OutOfMemory
from scs_probe.layers import backend
from scs_probe.training import TrainOptions, executors
from scs_probe.training.devices import amp_dtype, out_of_memory_as_error
from scs_probe.zoo import Variant


def test_a_workers_gpu_is_made_current_not_written_into_the_options(monkeypatch):
    # _call_local leaves SIGINT ignored, as an idle pool worker has it: not this process (its children inherit it)
    monkeypatch.setattr(executors.signal, "signal", lambda *a: None)
    seen = []
    monkeypatch.setattr(executors, "_GPU_SLOT", 1)
    monkeypatch.setattr(torch.cuda, "set_device", seen.append)
    trust = executors.model_code_trust()
    job = executors.RunJob("r", TrainOptions(Variant("rohrer25k"), device="auto"))
    assert executors._call_local(lambda j: j.options.device, job, trust) == "auto" and seen == [1]
    explicit = executors.RunJob("r", TrainOptions(Variant("rohrer25k"), device="cpu"))
    assert executors._call_local(lambda j: j.options.device, explicit, trust) == "cpu" and seen == [1]


def test_out_of_memory_is_a_failed_run_of_a_sweep(monkeypatch, tmp_path):
    def oom(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(executors.Trainer, "run", oom)
    job = executors.RunJob("big", TrainOptions(Variant("rohrer25k"), device="cpu", out=str(tmp_path / "big")))
    outcome = executors.run_job(job)
    assert outcome["status"] == "failed" and "ran out of memory" in outcome["message"]
    assert "lower the batch size" in outcome["message"]


def test_out_of_memory_in_train_is_one_line_and_exit_1(monkeypatch, capsys, fake_cifar, tmp_path):
    from scs_probe.training import trainer

    def oom(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")
    monkeypatch.setattr(trainer.Trainer, "run", oom)
    assert main(["train", "--arch", "rohrer25k", "--epochs", "1", "--device", "cpu", "--data-dir", str(fake_cifar),
                 "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ran out of memory" in err and "Traceback" not in err


def test_out_of_memory_does_not_switch_the_compiled_backend_off(monkeypatch):
    monkeypatch.setattr(backend, "_state", {"backend": "compiled", "failed": None, "fns": {}})
    monkeypatch.setattr(backend, "_use_compiled", lambda ref, numel=None: True)

    def compiled_oom(make, static, args, fixed=True):
        def run(*a):
            raise torch.OutOfMemoryError("out of memory")
        return run
    monkeypatch.setattr(backend, "_compiled", compiled_oom)
    with pytest.raises(torch.OutOfMemoryError):
        backend._run(backend._sharpen_math, backend._sharpen_eager, torch.zeros(1), torch.zeros(1))
    assert backend._state["failed"] is None
    with pytest.raises(OutOfMemory):
        with out_of_memory_as_error("run", "cuda:0"):
            raise torch.OutOfMemoryError("out of memory")


def test_compiled_graphs_are_keyed_by_device_and_layout():
    x = torch.zeros(2, 4, 5, 5)
    cl = x.to(memory_format=torch.channels_last)
    one = torch.zeros(1, 4, 5, 5)
    sigs = {backend._signature((t,)) for t in (x, cl, one, x.to(torch.float64))}
    assert len(sigs) == 4
    assert backend._signature((x,)) == backend._signature((torch.ones(3, 4, 5, 5),))  # the batch stays symbolic
    assert backend._signature((x,)) != backend._signature((torch.ones(2, 4, 6, 6),))  # other sizes: a graph each
    assert backend._signature((x,), fixed=False) == backend._signature((torch.ones(3, 4, 6, 6),), fixed=False)


def test_amp_on_cpu_is_bfloat16_and_off_is_float32():
    assert amp_dtype(torch.device("cpu"), True) == torch.bfloat16 and amp_dtype(torch.device("cpu"), False) is None


def test_a_cpu_run_holds_no_ray_gpu(monkeypatch):
    made = []

    class FakeRemote:
        def __init__(self, fn):
            self.fn = fn

        def options(self, **kw):
            made.append(kw["num_gpus"])
            return self

        def remote(self, fn, job, trust):
            return job

    class FakeRay:
        remote = FakeRemote
    monkeypatch.setattr(executors, "_ray", lambda: FakeRay)
    ex = executors.RayExecutor(gpus_per_run=1)
    ex.submit(executors.RunJob("cpu", TrainOptions(Variant("rohrer25k"), device="cpu")))
    ex.submit(executors.RunJob("gpu", TrainOptions(Variant("rohrer25k"), device="auto")))
    assert made == [0, 1]
