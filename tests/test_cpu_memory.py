"""The CPU-memory policy (`scs_probe.cpu_memory`): opting out, glibc's own settings, other platforms; never raises.
glibc's thresholds are stubbed out except in the last test, which sets them as every command does."""

import sys

import pytest

from scs_probe import cpu_memory


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_state", {"policy": None})
    monkeypatch.setattr(cpu_memory, "_set_glibc_thresholds", lambda: "kept (stub)")
    for name in (cpu_memory.OPT_OUT, *cpu_memory._GLIBC_OWN):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cpu_memory.sys, "platform", "linux")
    return monkeypatch


@pytest.mark.parametrize("value", ["0", " 0 ", "false", "False", "no", "off", "OFF"])
def test_the_opt_out_is_honoured_however_it_is_spelled(fresh, value):
    fresh.setenv(cpu_memory.OPT_OUT, value)
    assert cpu_memory.keep_freed_memory().startswith("off:")


@pytest.mark.parametrize("value", ["", "1", "yes"])
def test_other_values_keep_freed_memory(fresh, value):
    fresh.setenv(cpu_memory.OPT_OUT, value)
    assert cpu_memory.keep_freed_memory() == "kept (stub)"
    assert cpu_memory.describe()["freed_memory"] == "kept (stub)"


def test_glibc_settings_and_other_platforms_are_left_alone(fresh):
    fresh.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    assert cpu_memory.keep_freed_memory() == "off: glibc's own settings in the environment"
    assert cpu_memory.keep_freed_memory() == "off: glibc's own settings in the environment"  # once per process
    fresh.setattr(cpu_memory, "_state", {"policy": None})
    fresh.delenv("GLIBC_TUNABLES")
    fresh.setattr(cpu_memory.sys, "platform", "darwin")
    assert cpu_memory.keep_freed_memory() == "off: not glibc (darwin)"


def test_a_libc_without_mallopt_is_not_glibc(fresh):
    class NoMallopt:
        def __init__(self, name):
            pass

    fresh.undo()  # the real _set_glibc_thresholds, with a libc that lacks mallopt
    fresh.setattr(cpu_memory.ctypes, "CDLL", NoMallopt)
    assert cpu_memory._set_glibc_thresholds() == "off: not glibc"


@pytest.fixture
def unset(monkeypatch):
    """A process that has not chosen its policy yet, with none of the variables that rule it (glibc's real
    mallopt: `test_kept_by_default_on_linux` sets the thresholds, as every `scs-probe` command does)."""
    monkeypatch.setattr(cpu_memory, "_state", {"policy": None})
    for name in (cpu_memory.OPT_OUT, "THP_MEM_ALLOC_ENABLE", *cpu_memory._GLIBC_OWN):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_opt_out_is_recorded_and_thp_set_only_where_unset(unset):
    assert cpu_memory.describe() == {"thp_mem_alloc": "unset", "freed_memory": "not set by scs-probe"}
    unset.setenv(cpu_memory.OPT_OUT, " 0 ")
    unset.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert cpu_memory.configure() == "off: SCS_PROBE_KEEP_FREED_MEMORY=0"
    assert cpu_memory.describe() == {"thp_mem_alloc": "0", "freed_memory": "off: SCS_PROBE_KEEP_FREED_MEMORY=0"}
    unset.delenv(cpu_memory.OPT_OUT)
    assert cpu_memory.configure() == "off: SCS_PROBE_KEEP_FREED_MEMORY=0"  # once per process


def test_glibcs_own_settings_rule(unset):
    unset.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert cpu_memory.configure() == "off: glibc's own settings in the environment"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_by_default_on_linux(unset):
    """What `scs-probe` itself does in every process (its main calls `configure`)."""
    policy = cpu_memory.configure()
    assert (policy.startswith("kept (glibc ") and "mmap threshold 1 GiB" in policy) or policy == "off: not glibc"
    assert cpu_memory.describe() == {"thp_mem_alloc": "1", "freed_memory": policy}
