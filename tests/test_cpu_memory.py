"""The CPU-memory policy (`scs_probe.cpu_memory`): opting out, glibc's own settings, other platforms; never raises.
glibc itself is not touched here (its thresholds would stay set for the rest of the test process)."""

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
