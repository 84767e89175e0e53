"""The built wheel is a package others can adopt: it holds the templates, the paper's tables and the license, states
its metadata, and, installed into a fresh virtual environment (which sees this environment's torch and the other
dependencies), runs `scs-probe`."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# subprocesses see neither this checkout (PYTHONPATH) nor its metadata: only what they install
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
pytestmark = pytest.mark.slow


def _setuptools_version() -> tuple[int, ...]:
    try:
        import setuptools
    except ImportError:
        return (0,)
    return tuple(int(p) for p in re.findall(r"\d+", setuptools.__version__)[:2])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if _setuptools_version() < (77,):  # pyproject's build-system requires it (license as an SPDX expression)
        pytest.skip("setuptools >= 77 is needed to build the wheel without build isolation")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"  # a copy of what the wheel is built from: no build/ or egg-info left in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "scs_probe", src / "scs_probe", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp / "dist"), str(src)], check=True, capture_output=True, text=True, cwd=tmp, env=CLEAN_ENV)
    (built,) = (tmp / "dist").glob("scs_probe-*.whl")
    return built


def test_wheel_holds_templates_tables_license_and_metadata(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "scs_probe"
    data = [p.relative_to(ROOT).as_posix() for pattern in ("templates/*.j2", "resources/*.csv")
            for p in package.glob(pattern)]
    assert data and set(data) <= names, set(data) - names
    (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert "BSD 3-Clause" in zipfile.ZipFile(wheel).read(license_file).decode()
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    for line in ("License-Expression: BSD-3-Clause", "Author: The scs-probe authors",
                 "Project-URL: Source, https://github.com/scs-probe/scs-probe", "Classifier: ",
                 "Keywords: ", "Requires-Dist: torch"):
        assert line in text, line


def test_wheel_installs_into_a_fresh_venv_and_runs(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, text=True, cwd=tmp_path, env=CLEAN_ENV)
    # the dependencies (torch, ...) from this environment: its site-packages after the venv's own, as a plain path
    # (its .pth files, such as an editable install of this checkout, are not processed)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True, env=CLEAN_ENV).stdout.strip())
    (site / "shared-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    def run(*args):
        return subprocess.run([str(env_dir / "bin" / "scs-probe"), *args], check=True, capture_output=True,
                              text=True, cwd=tmp_path, env=CLEAN_ENV).stdout

    assert run("--version").strip() == "scs-probe, version 0.1.0"
    out = run("zoo", "--arch", "rohrer25k")
    assert "rohrer25k-scs-none-maxabs" in out and "24,974" in out
    where = subprocess.run(
        [str(python), "-c", "import scs_probe, scs_probe.paper as p; from importlib.resources import files; "
                            "print(scs_probe.__file__); print(len(files('scs_probe').joinpath('templates')"
                            ".joinpath('report.html.j2').read_text()) > 0); print(len(p.paper_rows()) > 0)"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=CLEAN_ENV).stdout.split()
    assert Path(where[0]).is_relative_to(env_dir) and where[1:] == ["True", "True"], where
