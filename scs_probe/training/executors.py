"""Where many runs execute: worker processes on this machine, or tasks on a Ray cluster.

Both hand out the same picklable `RunJob`s to `run_job`, which trains or resumes one run directory: what a run
has done lives in its directory, never in the executor, so a retried task (a killed worker, a lost node) picks
up from the last checkpoint. Scheduling, retries and placement are the engines' own (the standard library's
`ProcessPoolExecutor`, Ray's task retries and resource requests); this module only adapts them to one shape.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import multiprocessing
import os
import shutil
import signal
import socket
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import cpu_memory
from ..data import UnverifiedDataWarning, dataset_files, load_dataset, resolve_data_dir
from ..errors import OptionError, ScsProbeError, ServiceUnavailable, StorageNotShared, TrainingDiverged
from ..layers import set_backend
from ..rundir import RunDir
from ..zoo import ModelCodeTrust, model_code_trust, trust_model_code
from .devices import out_of_memory_as_error
from .options import TrainOptions
from .trainer import Trainer

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
    data_dir = resolve_data_dir(options.data_dir).resolve()
    load_dataset(options.dataset, data_dir, train=False, image_size=options.variant.image_size)
    return data_dir


def prepare_worker(job) -> None:
    """A worker process as its driver has it: the job's torch threads and layer backend; the data warning, which
    the driver gave once, silenced."""
    cpu_memory.configure()  # a worker process (spawned, Ray) keeps freed memory as the driver does
    if job.threads:
        torch.set_num_threads(job.threads)
    if job.backend:
        set_backend(job.backend)
    warnings.simplefilter("ignore", UnverifiedDataWarning)


def run_job(job: RunJob) -> dict:
    """Train `job`'s run from scratch, or resume it from its checkpoint. Returns an outcome dict: the run's
    name, its status (finished, diverged or failed), a message, and the epoch it resumed after (0: fresh).
    Errors of the run are outcomes, not exceptions, so that one bad run does not stop a sweep."""
    prepare_worker(job)
    run = RunDir(job.options.run_dir())
    try:
        status = run.status
        resumed = int(run.load_checkpoint()["epoch"]) if status else 0
        explicit = None if job.explicit is None else set(job.explicit)
        with out_of_memory_as_error(job.name, job.options.device):
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


def _call_trusting(fn, job, trust: ModelCodeTrust) -> dict:
    """fn(job) under the driver's trust in model code (`scs_probe.zoo.trust_model_code`: the spec the user named,
    or every one), which a fresh worker process does not have; restored after, as workers are reused."""
    with trust_model_code(trust):
        return fn(job)


def _call_local(fn, job, trust: ModelCodeTrust) -> dict:
    """fn(job) in a worker, on the worker's GPU where `job.options` leaves the device to us: made the process'
    current device, never written into the options (a resumed run must not return to a slot of an old worker)."""
    if _GPU_SLOT is not None and job.options.device in ("auto", "cuda"):
        torch.cuda.set_device(_GPU_SLOT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _call_trusting(fn, job, trust)
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
        return self.pool.submit(_call_local, fn or run_job, job, model_code_trust())

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

    def check_storage(self, out, dataset: str, data_dir) -> None:
        """Nothing to check: every worker process is on this machine."""

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
                # "local": a new instance even where `ray start` left a cluster running on this machine (ray.init
                # would join that one, whose workers lack this process' environment)
                ray.init(address=self.address or "local", include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR, configure_logging=True)
            except (ConnectionError, TimeoutError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
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
        # a CPU run holds no GPU, whatever the cluster has
        gpus = 0 if str(getattr(getattr(job, "options", None), "device", "")) == "cpu" else self.gpus
        if gpus not in self.remotes:
            self.remotes[gpus] = _ray().remote(_call_trusting).options(
                num_cpus=self.cpus, num_gpus=gpus, max_retries=self.max_retries, retry_exceptions=False)
        return self.remotes[gpus].remote(fn or run_job, job, model_code_trust())

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

    def check_storage(self, out, dataset: str, data_dir, timeout: float = 120.0) -> None:
        """Before any run starts: every alive node that can take a run sees `out` and the data set's files as this
        driver does (a run's state lives in its directory, which the driver reads back). One small task per node
        (no CPU asked, so busy nodes answer too) looks for the driver's mark in a folder under `out`, writes its
        probe next to it, and fingerprints the data files; the driver reads the probes back. A StorageNotShared
        error names the first node that differs. Skipped on a local instance this executor started (one
        machine); nodes that join later are not checked."""
        if self.started and not self.address:
            return
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        nodes = [n for n in ray.nodes() if n.get("Alive") and self._fits(n.get("Resources", {}))]
        if not nodes:
            return
        out = Path(out).resolve()
        folder = out / STORAGE_CHECK / uuid.uuid4().hex
        folder.mkdir(parents=True)
        try:
            (folder / "driver").write_text(socket.gethostname())
            expected = data_fingerprint(dataset_files(dataset, data_dir))
            probe = ray.remote(num_cpus=0, max_retries=0)(storage_probe)
            refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(str(folder), n["NodeID"], dataset, str(data_dir)): n for n in nodes}
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
            for ref, node in refs.items():
                problem = _storage_problem(ray, ref, ready, node, folder, expected, timeout)
                if problem:
                    where = (f"node {node['NodeID']} ({node.get('NodeManagerAddress', '?')}, host "
                             f"{node.get('NodeManagerHostname', '?')})")
                    raise StorageNotShared(f"{where} {problem}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            try:
                folder.parent.rmdir()
            except OSError:
                pass

    def _fits(self, resources: dict) -> bool:
        """Whether a node with these resources can take a run."""
        return resources.get("CPU", 0) >= self.cpus and resources.get("GPU", 0) >= (self.gpus or 0)

    def __exit__(self, *exc) -> None:
        if self.started:
            _ray().shutdown()


# ------------------------------------------------------------------------------------------------ shared storage

STORAGE_CHECK = ".storage-check"  # OUT/.storage-check/<token>/: the driver's mark and one probe per node
HASHED_FILES, HASHED_BYTES = 64, 1 << 16
SHARED_ADVICE = ("put the output folder and the data folder on a file system every node mounts at the same path "
                 "(NFS or similar), or copy the data to the same path on every node")


def data_fingerprint(files: list[Path]) -> dict:
    """What a node sees of a data set's files: how many, a digest of their paths and sizes, and each of the
    first files' size and hash of its first 64 KiB (enough to tell a partial or different copy)."""
    digest, sample = hashlib.sha256(), {}
    for i, path in enumerate(files):
        size = path.stat().st_size
        digest.update(f"{path}\0{size}\n".encode())
        if i < HASHED_FILES:
            with open(path, "rb") as f:
                sample[str(path)] = [size, hashlib.sha256(f.read(HASHED_BYTES)).hexdigest()]
    return {"count": len(files), "digest": digest.hexdigest(), "sample": sample}


def storage_probe(folder: str, node: str, dataset: str, data_dir: str) -> dict:
    """On one node: whether it sees the driver's mark in `folder`, its own probe written there (only where it
    sees the mark: never a folder of the same name on a local disk), and the data files as it sees them."""
    folder = Path(folder)
    seen = {"sees_out": (folder / "driver").is_file(), "write_error": "", "host": socket.gethostname()}
    if seen["sees_out"]:
        try:
            (folder / f"{node}.probe").write_text(seen["host"])
        except OSError as e:
            seen["write_error"] = e.strerror or type(e).__name__
    try:
        seen["data"] = data_fingerprint(dataset_files(dataset, data_dir))
    except (OSError, ScsProbeError) as e:
        seen["data"] = {"error": str(e)}
    return seen


def _storage_problem(ray, ref, ready, node: dict, folder: Path, expected: dict, timeout: float) -> str:
    """What is wrong with one node's view of the storage ('' where nothing is)."""
    out = folder.parent.parent
    if ref not in ready:
        return f"did not answer the shared-storage check within {timeout:g} s"
    try:
        seen = ray.get(ref)
    except Exception as e:  # the probe could not run there at all (scs-probe missing, say)
        return f"could not run the shared-storage check ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
    if not seen["sees_out"]:
        return (f"does not see the output folder {out} as this driver does (the probe this driver wrote there is not "
                f"there); {SHARED_ADVICE}")
    if seen["write_error"]:
        return f"cannot write to the output folder {out} ({seen['write_error']}); make it writable there"
    if not (folder / f"{node['NodeID']}.probe").is_file():
        return f"writes to the output folder {out} where this driver cannot read it back; {SHARED_ADVICE}"
    data = seen["data"]
    if data.get("error"):
        return f"cannot read the data files ({data['error']}); {SHARED_ADVICE}"
    if data != expected:
        differ = [p for p in sorted(set(expected["sample"]) | set(data["sample"]))
                  if expected["sample"].get(p) != data["sample"].get(p)]
        detail = (f"{differ[0]} {'is missing' if differ[0] not in data['sample'] else 'differs'} there" if differ
                  else f"{data['count']} data files there, {expected['count']} here, or their sizes differ")
        return f"sees other data files than this driver ({detail}); {SHARED_ADVICE}"
    return ""


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
    """Fail in seconds where Ray itself would retry for a minute or more: a HOST:PORT nobody listens on, or one
    that answers but is no Ray head (its GCS does not answer GetClusterId within `timeout`)."""
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ServiceUnavailable(f"cannot reach a Ray cluster at {address} ({e.strerror or type(e).__name__})") \
            from None
    if not address.startswith("ray://"):  # ray:// is Ray Client's own server, which ray.init bounds itself
        _check_gcs(address, timeout)


def _check_gcs(address: str, timeout: float) -> None:
    """Ask the Ray head's GCS at `address` for its cluster id, as `ray.init` does first, with a deadline, and with
    the authentication token `ray.init` would send (Ray's token authentication, RAY_AUTH_MODE=token)."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    token = _ray_token() if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else None
    channel = grpc.insecure_channel(address)
    try:
        gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
            gcs_service_pb2.GetClusterIdRequest(), timeout=timeout,
            metadata=[("authorization", f"Bearer {token}")] if token else None)
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            why = ("its head asks for Ray's authentication token: set RAY_AUTH_MODE=token here and on every node, "
                   "with the head's token in ~/.ray/auth_token or RAY_AUTH_TOKEN" if token is None else
                   "it refuses this machine's authentication token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                   "~/.ray/auth_token): give the head's")
            raise ServiceUnavailable(f"cannot join the Ray cluster at {address} ({why})") from None
        why = {grpc.StatusCode.DEADLINE_EXCEEDED: f"no answer from a Ray head within {timeout:g} s",
               grpc.StatusCode.UNIMPLEMENTED: "it answers, but is not a Ray head"}.get(
            code, f"{code.name.lower()}: {(e.details() or '').splitlines()[0][:120] if e.details() else ''}")
        raise ServiceUnavailable(f"cannot reach a Ray cluster at {address} ({why}); give the head's GCS address, "
                                 "HOST:PORT as ray start printed it on the head, or auto on a node of the cluster") \
            from None
    finally:
        channel.close()


def _ray_token() -> str | None:
    """The token Ray's token authentication would send from here: $RAY_AUTH_TOKEN, else the file
    $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    try:
        return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").read_text().strip() \
            or None
    except OSError:
        return None


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

