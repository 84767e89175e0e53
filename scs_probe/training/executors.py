"""Where many runs execute: worker processes on this machine, or tasks on a Ray cluster.

Both hand out the same picklable `RunJob`s to `run_job`, which trains or resumes one run directory: what a run
has done lives in its directory, never in the executor, so a retried task (a killed worker, a lost node) picks
up from the last checkpoint. Scheduling, retries and placement are the engines' own (the standard library's
`ProcessPoolExecutor`, Ray's task retries and resource requests); this module only adapts them to one shape.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import socket
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from ..data import UnverifiedDataWarning
from ..errors import OptionError, ScsProbeError, ServiceUnavailable, TrainingDiverged
from ..rundir import RunDir
from .options import TrainOptions

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class RunJob:
    """One run to train or resume, with everything a fresh worker process needs (nothing from the driver's
    globals: the layer backend and thread count travel with it)."""

    name: str
    options: TrainOptions
    explicit: frozenset[str] | None = None
    threads: int | None = None
    backend: str | None = None


def is_parallel(executor) -> bool:
    """Whether `executor` runs work elsewhere (None and a one-job LocalExecutor run it in this process)."""
    return executor is not None and not (isinstance(executor, LocalExecutor) and executor.jobs == 1)


def cap_jobs(executor, n: int) -> None:
    """At most `n` workers (the runs there are to do): `--jobs 100` for one run starts one worker, and says so."""
    if executor is not None and executor.jobs is not None:
        executor.jobs = max(1, min(executor.jobs, n))


def checked_data_dir(options: TrainOptions) -> Path:
    """The data folder as an absolute path, its data set checked (and downloaded) here, once, by the driver: the
    workers never race to download it."""
    from ..data import load_dataset, resolve_data_dir
    data_dir = resolve_data_dir(options.data_dir).resolve()
    load_dataset(options.dataset, data_dir, train=False, image_size=options.variant.image_size)
    return data_dir


def prepare_worker(job) -> None:
    """A worker process as its driver has it: the job's torch threads and layer backend; the data warning, which
    the driver gave once, silenced."""
    import torch

    from ..layers import set_backend
    if job.threads:
        torch.set_num_threads(job.threads)
    if job.backend:
        set_backend(job.backend)
    warnings.simplefilter("ignore", UnverifiedDataWarning)


def run_job(job: RunJob) -> dict:
    """Train `job`'s run from scratch, or resume it from its checkpoint. Returns an outcome dict: the run's
    name, its status (finished, diverged or failed), a message, and the epoch it resumed after (0: fresh).
    Errors of the run are outcomes, not exceptions, so that one bad run does not stop a sweep."""
    from .trainer import Trainer
    prepare_worker(job)
    run = RunDir(job.options.run_dir())
    try:
        status = run.status
        resumed = int(run.load_checkpoint()["epoch"]) if status else 0
        explicit = None if job.explicit is None else set(job.explicit)
        result = Trainer(job.options, resume=status is not None, explicit=explicit, progress=False,
                         log=lambda *a, **k: None).run()
        return {"name": job.name, "status": result["status"], "message": "", "resumed": resumed}
    except TrainingDiverged as e:
        return {"name": job.name, "status": "diverged", "message": str(e), "resumed": 0}
    except ScsProbeError as e:
        return {"name": job.name, "status": "failed", "message": str(e), "resumed": 0}


# ------------------------------------------------------------------------------------------------ local

_GPU_SLOT = None


def _init_local_worker(slots, n_gpus: int) -> None:
    """Each worker process takes one slot number: its GPU is slot mod the GPUs present. An idle worker ignores
    Ctrl-C (the driver shuts the pool down); a working one stops its run (see `_call_local`)."""
    global _GPU_SLOT
    _GPU_SLOT = slots.get() % n_gpus if n_gpus else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _call_local(fn, job) -> dict:
    """fn(job) in a worker, on the worker's GPU where `job.options` leaves the device to us."""
    if _GPU_SLOT is not None and job.options.device in ("auto", "cuda"):
        job = replace(job, options=replace(job.options, device=f"cuda:{_GPU_SLOT}"))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return fn(job)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalExecutor:
    """`jobs` worker processes on this machine (spawned, so CUDA is safe), each with its share of the CPU threads
    and, where there are GPUs, one GPU (worker i takes GPU i mod the count)."""

    name = "local"

    def __init__(self, jobs: int = 1):
        if not isinstance(jobs, int) or jobs < 1:
            raise OptionError("jobs", f"must be an integer >= 1, got {jobs!r}")
        self.jobs = jobs
        self.pool = None

    def describe(self) -> str:
        return f"{self.jobs} local worker process{'es' if self.jobs > 1 else ''}"

    def threads_per_run(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.jobs)

    def __enter__(self) -> LocalExecutor:
        import torch
        ctx = multiprocessing.get_context("spawn")
        slots = ctx.Queue()
        for i in range(self.jobs):
            slots.put(i)
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.pool = cf.ProcessPoolExecutor(self.jobs, mp_context=ctx, initializer=_init_local_worker,
                                           initargs=(slots, n_gpus))
        return self

    def capacity(self) -> int:
        return self.jobs

    def submit(self, job, fn=None):
        """Start fn(job) (default `run_job`): `job` is a frozen dataclass with `options`, `threads`, `backend`."""
        return self.pool.submit(_call_local, fn or run_job, job)

    def wait(self, pending, timeout: float):
        done, rest = cf.wait(pending, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done), list(rest)

    def result(self, handle) -> dict:
        return handle.result()

    def cancel(self, pending) -> None:
        """Interrupt the running runs (each stops between two atomic writes) and drop the queued ones."""
        for process in list(getattr(self.pool, "_processes", {}).values()):
            try:
                os.kill(process.pid, signal.SIGINT)
            except (ProcessLookupError, TypeError):
                pass
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------------ ray

def _ray():
    try:
        import ray
    except ImportError:
        raise ServiceUnavailable("the ray executor needs Ray: pip install 'scs-probe[distributed]'") from None
    return ray


class RayExecutor:
    """Each run is a Ray task asking for `cpus_per_run` CPUs and `gpus_per_run` GPUs (default: 1 where the
    cluster has GPUs, else 0). `address` joins a running cluster ('auto', 'HOST:PORT', 'ray://HOST:PORT');
    without it a local Ray instance is started and stopped. A task whose worker dies is retried by Ray up to
    `max_retries` times; it resumes from the run's last checkpoint."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float | None = None,
                 max_retries: int = 3, jobs: int | None = None):
        if cpus_per_run <= 0:
            raise OptionError("cpus_per_run", f"must be > 0, got {cpus_per_run!r}")
        if gpus_per_run is not None and gpus_per_run < 0:
            raise OptionError("gpus_per_run", f"must be >= 0, got {gpus_per_run!r}")
        if max_retries < 0:
            raise OptionError("max_retries", f"must be >= 0, got {max_retries!r}")
        if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
            raise OptionError("jobs", f"must be an integer >= 1, got {jobs!r}")
        self.address, self.cpus, self.gpus, self.max_retries = address, cpus_per_run, gpus_per_run, max_retries
        if address not in (None, "auto"):
            host, _, port = address.removeprefix("ray://").rpartition(":")
            if not host or not port.isdigit():
                raise OptionError("address", f"expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
        self.jobs = jobs  # at most this many runs in flight (None: as many as the resources allow)
        self.started = False
        self.remotes = {}

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
        return f"{where} ({self.cpus:g} CPU and {self.gpus:g} GPU per run, up to {self.max_retries} retries)"

    def threads_per_run(self) -> int:
        return max(1, int(self.cpus))

    def __enter__(self) -> RayExecutor:
        import logging
        ray = _ray()
        self.started = not ray.is_initialized()
        if self.started:
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR, configure_logging=True)
            except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
                raise ServiceUnavailable(f"cannot reach a Ray cluster at {self.address} "
                                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        resources = ray.cluster_resources()
        if self.gpus is None:
            self.gpus = 1 if resources.get("GPU", 0) > 0 else 0
        for option, kind, asked in (("cpus_per_run", "CPU", self.cpus), ("gpus_per_run", "GPU", self.gpus)):
            have = resources.get(kind, 0)
            if asked > have:  # Ray would wait forever for a task no node can take
                where = "the local Ray instance" if self.started and not self.address else "the Ray cluster"
                if self.started and not self.address:
                    ray.shutdown()
                    self.started = False
                    raise OptionError(option, f"{asked:g} {kind} per run asked for; {where} has {have:g}")
                warnings.warn(f"{asked:g} {kind} per run asked for but {where} has {have:g} now: runs wait until "
                              "nodes that have them join", RuntimeWarning, stacklevel=2)
        self.remotes = {}
        return self

    def capacity(self) -> int:
        """How many runs the cluster holds at once with these resources per run."""
        resources = _ray().cluster_resources()
        fits = [resources.get("CPU", 0) / self.cpus] + ([resources.get("GPU", 0) / self.gpus] if self.gpus else [])
        return max(1, int(min(fits)))

    def submit(self, job, fn=None):
        """A Ray task of fn(job) (default `run_job`), retried on a dead worker, never on an exception."""
        fn = fn or run_job
        if fn not in self.remotes:
            self.remotes[fn] = _ray().remote(fn).options(num_cpus=self.cpus, num_gpus=self.gpus,
                                                         max_retries=self.max_retries, retry_exceptions=False)
        return self.remotes[fn].remote(job)

    def wait(self, pending, timeout: float):
        if not pending:
            return [], []
        return _ray().wait(list(pending), num_returns=1, timeout=timeout)

    def result(self, handle) -> dict:
        ray = _ray()
        try:
            return ray.get(handle)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as e:
            return {"name": "", "status": "failed", "resumed": 0,
                    "message": f"its worker died {self.max_retries + 1} times ({type(e).__name__})"}

    def cancel(self, pending) -> None:
        """Stop running tasks now (their checkpoints are written atomically, so the last one stays whole)."""
        ray = _ray()
        for ref in pending:
            ray.cancel(ref, force=True)

    def __exit__(self, *exc) -> None:
        if self.started:
            _ray().shutdown()


def run_all(executor, jobs: list, fn=None, on_done=None, on_tick=None, limit: int | None = None) -> None:
    """Run fn(job) for every job on an entered executor, at most `limit` at once (default: the executor's jobs,
    else all), calling on_done(job, outcome) as each ends and on_tick(jobs in flight) about once a second.
    Ctrl-C stops the jobs in flight (and the queued ones never start), then propagates."""
    queue, pending = list(jobs), {}
    limit = limit or executor.jobs or len(jobs)
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                job = queue.pop(0)
                pending[executor.submit(job, fn)] = job
            done, _ = executor.wait(list(pending), timeout=1.0)
            for handle in done:
                job = pending.pop(handle)
                if on_done is not None:
                    on_done(job, executor.result(handle))
            if on_tick is not None:
                on_tick(list(pending.values()))
    except KeyboardInterrupt:
        executor.cancel(list(pending))
        raise


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail in seconds on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ServiceUnavailable(f"cannot reach a Ray cluster at {address} ({e.strerror or type(e).__name__})") \
            from None


def make_executor(name: str = "local", jobs: int | None = None, address: str | None = None,
                  cpus_per_run: float | None = None, gpus_per_run: float | None = None, max_retries: int = 3):
    """An executor from a command's options (`address`, resources and retries only mean something to Ray)."""
    if name not in EXECUTORS:
        raise OptionError("executor", f"unknown value {name!r}; allowed: {', '.join(EXECUTORS)}")
    if name == "local":
        for option, value in (("address", address), ("cpus_per_run", cpus_per_run), ("gpus_per_run", gpus_per_run)):
            if value is not None:
                raise OptionError(option, "only applies to the ray executor")
        return LocalExecutor(1 if jobs is None else jobs)
    return RayExecutor(address, 1 if cpus_per_run is None else cpus_per_run, gpus_per_run, max_retries, jobs)

