"""Sweeps in parallel: local worker processes and Ray tasks give the summary the sequential sweep gives, a killed
worker's run resumes with its history whole, Ctrl-C leaves checkpoints that resume, bad options are one line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scs_probe.cli import main
from scs_probe.errors import OptionError
from scs_probe.rundir import RunDir
from scs_probe.storage import read_csv, read_json
from scs_probe.training import TrainOptions, select_variants, sweep
from scs_probe.training.executors import LocalExecutor, RayExecutor, make_executor
from scs_probe.zoo import Variant

pytestmark = pytest.mark.filterwarnings("ignore::scs_probe.data.UnverifiedDataWarning")
PAIR = ["rohrer100k-conv-relu-max", "rohrer100k-scs-none-maxabs"]
TIMING = ("train_seconds_mean", "eval_seconds_mean")


def base(fake_cifar, epochs=2):
    return TrainOptions(Variant("rohrer100k"), epochs=epochs, batch_size=64, max_lr=0.01, limit_train=256,
                        limit_test=64, data_dir=str(fake_cifar), device="cpu")


def without_timing(path):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_csv(path)]


@pytest.mark.slow
def test_local_jobs_and_ray_write_the_sequential_summary(fake_cifar, tmp_path):
    pytest.importorskip("ray")
    import torch
    variants = select_variants("rohrer100k", "study", PAIR)
    quiet = dict(log=lambda *a: None, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the parallel runs train with one thread each: same sums, same numbers
    try:
        sweep(variants, tmp_path / "seq", base(fake_cifar), **quiet)
    finally:
        torch.set_num_threads(threads)
    sweep(variants, tmp_path / "jobs", base(fake_cifar), executor=LocalExecutor(jobs=2), **quiet)
    sweep(variants, tmp_path / "ray", base(fake_cifar), executor=RayExecutor(cpus_per_run=1), **quiet)
    expected = without_timing(tmp_path / "seq" / "summary.csv")
    assert [r["variant"] for r in expected] == PAIR and all(r["status"] == "finished" for r in expected)
    assert without_timing(tmp_path / "jobs" / "summary.csv") == expected
    assert without_timing(tmp_path / "ray" / "summary.csv") == expected
    for name in PAIR:
        seq, ray = RunDir(tmp_path / "seq" / name), RunDir(tmp_path / "ray" / name)
        assert [r["test_acc"] for r in ray.read("history")] == [r["test_acc"] for r in seq.read("history")]
        assert (tmp_path / "ray" / name / "predictions.csv").read_text() == \
            (tmp_path / "seq" / name / "predictions.csv").read_text()


def _cli(args, **kwargs):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "scs_probe", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kwargs)


def _wait_for(predicate, proc, timeout=180.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended early:\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("timed out")


def _epochs_done(run: Path) -> int:
    try:
        return read_json(run / "config.json").get("epochs_done", 0)
    except (OSError, ValueError):
        return 0


def _sweep_args(fake_cifar, out, epochs):
    return ["sweep", "--only", ",".join(PAIR), "--epochs", str(epochs), "--batch-size", "32", "--limit-train", "512",
            "--limit-test", "64", "--data-dir", str(fake_cifar), "--device", "cpu", "--out", str(out)]


def _history_whole(run: Path, epochs: int) -> None:
    """Every epoch's rows exactly once: history one row per epoch, norms the same count per epoch (0: at init)."""
    assert [int(r["epoch"]) for r in RunDir(run).read("history")] == list(range(1, epochs + 1))
    per_epoch = {}
    for r in RunDir(run).read("norms"):
        per_epoch[int(r["epoch"])] = per_epoch.get(int(r["epoch"]), 0) + 1
    assert sorted(per_epoch) == list(range(epochs + 1)) and len(set(list(per_epoch.values())[1:])) == 1


@pytest.mark.slow
def test_ray_retries_a_killed_worker_from_its_checkpoint(fake_cifar, tmp_path):
    pytest.importorskip("ray")
    epochs = 8
    proc = _cli([*_sweep_args(fake_cifar, tmp_path, epochs), "--executor", "ray", "--max-retries", "2"])
    victim = tmp_path / PAIR[1]
    _wait_for(lambda: _epochs_done(victim) >= 1, proc)
    os.kill(read_json(victim / "config.json")["pid"], signal.SIGKILL)  # the worker process, not the driver
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert f"{PAIR[1]}: finished (resumed after epoch" in out
    for name in PAIR:
        _history_whole(tmp_path / name, epochs)
        assert RunDir(tmp_path / name).status == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("executor", [["--jobs", "2"], ["--executor", "ray"]], ids=["local", "ray"])
def test_ctrl_c_stops_the_sweep_and_its_checkpoints_resume(fake_cifar, tmp_path, executor):
    if "ray" in executor:
        pytest.importorskip("ray")
    epochs = 6
    args = [*_sweep_args(fake_cifar, tmp_path, epochs), *executor]
    proc = _cli(args, start_new_session=True)
    _wait_for(lambda: all(_epochs_done(tmp_path / name) >= 1 for name in PAIR), proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    stopped = {name: RunDir(tmp_path / name).load_checkpoint()["epoch"] for name in PAIR}
    assert all(e >= 1 for e in stopped.values()) and any(e < epochs for e in stopped.values())
    proc = _cli(args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    for name in PAIR:
        _history_whole(tmp_path / name, epochs)


@pytest.mark.slow
def test_parallel_sweep_goes_on_past_a_failed_run_and_says_so(fake_cifar, tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA, where --device cuda fails in the worker")
    args = ["sweep", "--only", ",".join(PAIR), "--epochs", "1", "--limit-train", "64", "--limit-test", "32",
            "--data-dir", str(fake_cifar), "--device", "cuda", "--quiet", "--out", str(tmp_path), "--jobs", "2"]
    assert main(args) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "2 of 2 runs failed" in err[0] and "CUDA is not available" in err[0], err
    assert f"{PAIR[0]}: failed" in captured.out


def test_bad_executor_options_are_one_line(tmp_path, capsys):
    cases = {("--jobs", "0"): "--jobs", ("--address", "127.0.0.1:1"): "--address",
             ("--executor", "ray", "--address", "nohost"): "--address",
             ("--executor", "ray", "--cpus-per-run", "0"): "--cpus-per-run", ("--executor", "dask"): "--executor",
             ("--cpus-per-run", "2"): "--cpus-per-run"}
    for args, named in cases.items():
        assert main(["sweep", *args, "--out", str(tmp_path)]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("scs-probe: error:") and named in err, (args, err)
    with pytest.raises(OptionError):
        make_executor("local", jobs=0)


def test_unreachable_ray_cluster_is_exit_1(fake_cifar, tmp_path, capsys):
    pytest.importorskip("ray")
    args = ["sweep", "--only", PAIR[0], "--epochs", "1", "--data-dir", str(fake_cifar), "--out", str(tmp_path),
            "--executor", "ray", "--address", "127.0.0.1:1"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "cannot reach a Ray cluster at 127.0.0.1:1" in err


@pytest.mark.slow
def test_ray_resources_beyond_the_local_instance_fail_at_once(fake_cifar, tmp_path, capsys):
    pytest.importorskip("ray")
    import torch
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    args = ["sweep", "--only", PAIR[0], "--epochs", "1", "--data-dir", str(fake_cifar), "--out", str(tmp_path),
            "--executor", "ray"]
    for extra, named in ((["--gpus-per-run", "1"], "--gpus-per-run: 1 GPU per run asked for; the local Ray "
                                                   "instance has 0"),
                         (["--cpus-per-run", "512"], "--cpus-per-run: 512 CPU per run")):
        assert main([*args, *extra]) == 2  # not Ray's endless wait for a task no node can take
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [err] and named in err, err


@pytest.mark.slow
def test_a_finished_run_trained_otherwise_is_skipped_with_a_note(fake_cifar, tmp_path):
    variants = select_variants("rohrer100k", "study", PAIR[:1])
    sweep(variants, tmp_path, base(fake_cifar, epochs=1), log=lambda *a: None, progress=False)
    for executor in (None, LocalExecutor(jobs=2)):
        lines = []
        sweep(variants, tmp_path, base(fake_cifar, epochs=2), log=lines.append, progress=False, executor=executor)
        assert any("finished, skipped; trained with epochs 1 (asked 2)" in line for line in lines), lines
