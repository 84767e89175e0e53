"""Across machines, on one: a Ray cluster of a head and a worker node (Ray's own multi-node harness,
`ray.cluster_utils.Cluster`). A sweep's runs land on both nodes; a node removed mid-sweep has its runs retried on
the other, resumed from their last checkpoints with every epoch recorded once; tune workers on both nodes share
one study; a node that sees another --out (a real mount namespace with a tmpfs over it) or another data folder
is refused before any training, by name; an address that answers but is no Ray head fails in seconds."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_executors import PAIR, _cli, _epochs_done, _history_whole, _sweep_args, _wait_for, base

from scs_probe.cli import main
from scs_probe.rundir import RunDir
from scs_probe.storage import read_csv, read_json
from scs_probe.training import RayExecutor, select_variants, sweep

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::scs_probe.data.UnverifiedDataWarning")]

SMALL = {"object_store_memory": 80 * 2**20}
# a dead node noticed in about 1.5 s (Ray's default: about 30 s)
FAST_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}


def _cluster(workers: int = 1):
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "_system_config": FAST_DEATH, **SMALL})
    nodes = [cluster.add_node(num_cpus=1, **SMALL) for _ in range(workers)]
    return cluster, nodes


@pytest.fixture
def two_nodes():
    """A head and a worker node, one CPU each: two one-CPU runs can only run at once on both."""
    cluster, (worker,) = _cluster(1)
    try:
        yield cluster, cluster.head_node.node_id, worker
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def _nodes_of(runs) -> set:
    return {RunDir(r).read_config()["node"] for r in runs}


def test_a_sweep_lands_on_both_nodes(two_nodes, fake_cifar, tmp_path):
    cluster, head, worker = two_nodes
    variants = select_variants("rohrer100k", "study", PAIR)
    lines = []
    rows = sweep(variants, tmp_path, base(fake_cifar, epochs=1), log=lines.append, progress=False,
                 executor=RayExecutor(address=cluster.address, cpus_per_run=1))
    assert [r["status"] for r in rows] == ["finished", "finished"], lines
    assert _nodes_of(tmp_path / name for name in PAIR) == {head, worker.node_id}
    config = read_json(tmp_path / PAIR[0] / "config.json")
    assert config["host"] == socket.gethostname() and config["pid"] != os.getpid()
    assert not (tmp_path / ".storage-check").exists()  # the storage check leaves nothing behind


def test_a_removed_nodes_runs_resume_on_the_other(two_nodes, fake_cifar, tmp_path):
    cluster, head, worker = two_nodes
    epochs = 4
    proc = _cli([*_sweep_args(fake_cifar, tmp_path, epochs), "--executor", "ray", "--address", cluster.address,
                 "--max-retries", "2"])

    def victim():
        for name in PAIR:
            try:
                config = read_json(tmp_path / name / "config.json")
            except (OSError, ValueError):
                continue
            if config.get("node") == worker.node_id and config.get("epochs_done", 0) >= 1:
                return name
        return None

    _wait_for(lambda: victim() is not None, proc)
    name = victim()
    assert _epochs_done(tmp_path / name) < epochs
    cluster.remove_node(worker, allow_graceful=False)  # the node's raylet and its workers die
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert f"{name}: finished (resumed after epoch" in out, out
    for run in PAIR:
        _history_whole(tmp_path / run, epochs)
        assert RunDir(tmp_path / run).status == "finished"
    assert read_json(tmp_path / name / "config.json")["node"] == head  # finished on the node that was left


def test_tune_workers_on_both_nodes_share_one_study(two_nodes, fake_cifar, tmp_path, capsys):
    cluster, head, worker = two_nodes
    args = ["tune", "--n-trials", "4", "--epochs", "2", "--limit-train", "128", "--limit-test", "64", "--batch-size",
            "64", "--data-dir", str(fake_cifar), "--device", "cpu", "--quiet", "--out", str(tmp_path),
            "--pruner", "none", "--executor", "ray", "--address", cluster.address]
    assert main(args) == 0, capsys.readouterr()
    rows = read_csv(tmp_path / "trials.csv")
    numbers = [int(r["number"]) for r in rows]
    assert len(numbers) == len(set(numbers)) and 4 <= len(rows) <= 5
    assert all(r["state"] == "complete" for r in rows)
    for r in rows:  # each trial's run directory is the trial's: its p, its accuracy
        config = RunDir(tmp_path / "trials" / r["number"]).read_config()
        assert config["variant"]["fixed_p"] == pytest.approx(float(r["p"]), rel=1e-5)
        history = RunDir(tmp_path / "trials" / r["number"]).read("history")
        assert float(history[-1]["val_acc"]) == pytest.approx(float(r["val_acc"]), abs=1e-6)  # the objective
        assert float(history[-1]["test_acc"]) == pytest.approx(float(r["test_acc"]), abs=1e-6)
    assert _nodes_of(tmp_path / "trials" / r["number"] for r in rows) == {head, worker.node_id}


# ------------------------------------------------------------------------------------------------ storage

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


def _node_in_namespace(address: str, hidden: Path) -> subprocess.Popen:
    """A worker node (`ray start --block`) in a mount namespace of its own, where a tmpfs hides `hidden`: a node
    whose file system differs from the driver's at that path, as a node without the shared mount has it."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    ports = [str(_free_port()) for _ in range(6)]
    start = [ray_bin, "start", "--address", address, "--num-cpus", "1", "--object-store-memory", str(80 * 2**20),
             "--node-manager-port", ports[0], "--object-manager-port", ports[1], "--metrics-export-port", ports[2],
             "--dashboard-agent-listen-port", ports[3], "--dashboard-agent-grpc-port", ports[4],
             "--runtime-env-agent-port", ports[5], "--disable-usage-stats", "--block"]
    script = 'mount -t tmpfs tmpfs "$1" && shift && exec "$@"'
    return subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(hidden),
                             *start], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.parametrize("hidden", ["out", "data"])
def test_a_node_that_sees_other_storage_is_refused_before_training(fake_cifar, tmp_path, capsys, hidden):
    if not _can_unshare():
        pytest.skip("needs root and unshare -m (a mount namespace) for a node with its own view of the files")
    (tmp_path / "out").mkdir()
    shutil.copytree(fake_cifar, tmp_path / "data")
    cluster, _ = _cluster(0)
    node = _node_in_namespace(cluster.address, tmp_path / hidden)
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        head = cluster.head_node.node_id
        deadline = time.monotonic() + 60
        while not (others := [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head]):
            assert node.poll() is None and time.monotonic() < deadline, "the namespaced node did not join"
            time.sleep(0.5)
        (other,) = others
        out = tmp_path / "out" / "sweep"
        args = [*_sweep_args(tmp_path / "data", out, 1), "--executor", "ray", "--address", cluster.address]
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [err] and f"node {other} (" in err, err
        seen = "does not see the output folder" if hidden == "out" else "sees other data files than this driver"
        assert seen in err, err
        assert "file system every node mounts" in err
        assert sorted(p.name for p in out.iterdir()) == []  # no run started, and the probes are gone
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop(node)
        cluster.shutdown()


# ------------------------------------------------------------------------------------------------ joining

def test_an_address_that_is_no_ray_head_fails_in_seconds(fake_cifar, tmp_path, capsys):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []
    threading.Thread(target=lambda: accepted.extend(server.accept() for _ in range(8)), daemon=True).start()
    try:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        args = ["sweep", "--only", PAIR[0], "--epochs", "1", "--data-dir", str(fake_cifar), "--out", str(tmp_path),
                "--executor", "ray", "--address", address]
        started = time.monotonic()
        assert main(args) == 1
        assert time.monotonic() - started < 15  # ray.init alone waits about 40 s, then retries
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [err] and f"cannot reach a Ray cluster at {address}" in err, err
        assert not ray.is_initialized()
    finally:
        server.close()


def test_a_head_that_asks_for_a_token_is_one_line(monkeypatch, tmp_path):
    """A GCS that answers UNAUTHENTICATED (Ray's token authentication): said at once, with what to set."""
    import grpc

    from scs_probe.errors import ServiceUnavailable
    from scs_probe.training.executors import _check_reachable

    class Refuse(grpc.GenericRpcHandler):
        def service(self, details):
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken"))

    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(2), handlers=[Refuse()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        for mode, said in (("", "set RAY_AUTH_MODE=token here and on every node"),
                           ("token", "it refuses this machine's authentication token")):
            monkeypatch.setenv("RAY_AUTH_MODE", mode)
            monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
            (tmp_path / "token").write_text("not-the-heads")
            with pytest.raises(ServiceUnavailable, match=said):
                _check_reachable(f"127.0.0.1:{port}")
    finally:
        server.stop(None)
