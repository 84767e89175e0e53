"""What a number comes from and what it may be compared with: chance level relative to the number of classes, and
whether two runs ran alike (the SCS backend actually used, threads, host, device, GPU, CUDA, torch, CPU memory
policy), and whether they were trained and tested on one copy of the data."""

from __future__ import annotations

from ..data import near_chance_threshold  # 1.5 / classes: one rule for training's summaries and the analyses

# thp_mem_alloc, freed_memory: scs_probe.cpu_memory's policy (kept freed memory halved a conv stem's time)
ENVIRONMENT_KEYS = ("backend", "threads", "host", "device", "gpu", "cuda", "torch", "thp_mem_alloc", "freed_memory")


def near_chance(row: dict) -> bool:
    """A summary row (RunDir.summary) whose final test accuracy stayed below `near_chance_threshold`."""
    return row.get("test_acc", "") != "" and float(row["test_acc"]) < near_chance_threshold(row.get("num_classes"))


def environment(run) -> dict | None:
    """What the run recorded it ran on (config.json's `environment`); None for runs from before it was recorded."""
    return run.read_config().get("environment")


def environment_difference(runs_a: list, runs_b: list) -> str:
    """'' where every run of both lists ran alike (all keys of ENVIRONMENT_KEYS equal), else what differs, e.g.
    "backend auto vs eager (fallback: ...); threads 2 vs 4". Runs that recorded nothing (an older scs-probe) are
    only comparable with each other, and the caller is told (`unrecorded`)."""
    envs_a, envs_b = [environment(r) for r in runs_a], [environment(r) for r in runs_b]
    recorded = [e is not None for e in envs_a + envs_b]
    if not any(recorded):
        return ""
    if not all(recorded):
        return "some runs do not record what they ran on (trained by an older scs-probe)"
    diffs = []
    for key in ENVIRONMENT_KEYS:
        a = sorted({str(e.get(key, "-")) for e in envs_a})
        b = sorted({str(e.get(key, "-")) for e in envs_b})
        if len(set(a) | set(b)) > 1:
            diffs.append(f"{key} {' / '.join(a)} vs {' / '.join(b)}")
    return "; ".join(diffs)


def data_difference(runs: list) -> str:
    """'' where every run that recorded a data fingerprint (data.fingerprint) recorded the same one, else which
    runs differ: runs on two copies of a data set (other images or labels) measure different things, and a paired
    or pooled difference between them would be meaningless. Runs from before fingerprints were recorded are not
    counted (their labels are still checked image by image where predictions are paired)."""
    copies: dict[str, object] = {}
    for run in runs:
        fingerprint = (run.read_config().get("data") or {}).get("fingerprint")
        if fingerprint:
            copies.setdefault(str(fingerprint), run)
    if len(copies) < 2:
        return ""
    (fa, ra), (fb, rb) = list(copies.items())[:2]
    return (f"trained on different copies of the data (data fingerprint {fa.split(':')[-1][:12]} for {ra.path.name}, "
            f"{fb.split(':')[-1][:12]} for {rb.path.name})")


def hardware_label(runs: list) -> str:
    """The hardware and implementation runs share, for a verdict's text: 'cuda (NVIDIA H200, CUDA 12.4), 16
    threads, backend auto, torch 2.5'; '' where not recorded."""
    env = next((e for e in map(environment, runs) if e), None)
    if not env:
        return ""
    device = env.get("device", "?")
    if env.get("gpu"):
        device += f" ({env['gpu']}, CUDA {env.get('cuda', '?')})"
    return (f"{device}, {env.get('threads', '?')} threads on {env.get('host', '?')}, "
            f"backend {env.get('backend', '?')}, torch {env.get('torch', '?')}")


def speed_comparability(runs: list, a: str, b: str) -> tuple[str, str]:
    """For the speed claim on variants a and b (their finished runs): (what differs in what they ran on, '' where
    nothing does; the phrase its verdict measures: these two implementations on this hardware)."""
    def finished(name):
        return [r for r in runs if r.name == name and r.read_config().get("status") == "finished"]
    ra, rb = finished(a), finished(b)
    label = hardware_label(ra + rb)
    return (environment_difference(ra, rb),
            "measures these two implementations on this hardware" + (f": {label}" if label else
                                                                     " (not recorded: an older scs-probe)"))
