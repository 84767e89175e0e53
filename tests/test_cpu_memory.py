"""The CPU memory policy (`scs_probe.cpu_memory`): set once per process, opted out of by environment variables,
recorded as it holds."""

import sys

import pytest

from scs_probe import cpu_memory


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not chosen its policy yet, with none of the variables that rule it."""
    monkeypatch.setattr(cpu_memory, "_state", {"policy": None})
    for name in (cpu_memory.OPT_OUT, "THP_MEM_ALLOC_ENABLE", *cpu_memory._GLIBC_OWN):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_opt_out_is_recorded_and_thp_set_only_where_unset(fresh):
    assert cpu_memory.describe() == {"thp_mem_alloc": "unset", "freed_memory": "not set by scs-probe"}
    fresh.setenv(cpu_memory.OPT_OUT, " 0 ")
    fresh.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert cpu_memory.configure() == "off: SCS_PROBE_KEEP_FREED_MEMORY=0"
    assert cpu_memory.describe() == {"thp_mem_alloc": "0", "freed_memory": "off: SCS_PROBE_KEEP_FREED_MEMORY=0"}
    fresh.delenv(cpu_memory.OPT_OUT)
    assert cpu_memory.configure() == "off: SCS_PROBE_KEEP_FREED_MEMORY=0"  # once per process


def test_glibcs_own_settings_rule(fresh):
    fresh.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert cpu_memory.configure() == "off: glibc's own settings in the environment"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_by_default_on_linux(fresh):
    """What `scs-probe` itself does in every process (its main calls `configure`)."""
    policy = cpu_memory.configure()
    assert (policy.startswith("kept (glibc ") and "mmap threshold 1 GiB" in policy) or policy == "off: not glibc"
    assert cpu_memory.describe() == {"thp_mem_alloc": "1", "freed_memory": policy}
