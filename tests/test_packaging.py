"""`pip install .` without the Makefile: the wheel carries the study files and the CLI finds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

# One worker runs this module (`--dist loadgroup`), so its module fixture is built once.
pytestmark = pytest.mark.xdist_group("packaging")

ROOT = Path(__file__).resolve().parents[1]


def test_license_file_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel and installed (no dependencies) into a folder of its own."""
    base = tmp_path_factory.mktemp("install")
    wheels, site, source = base / "wheels", base / "site", base / "source"
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources, and a stale
    # build/ left in a clone would break the build.
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in ("mibench_lib", "notebooks", "parameters"):
        shutil.copytree(ROOT / name, source / name, ignore=skip)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # --no-build-isolation: the test machine's setuptools (a clean install fetches it from PyPI).
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=False,
        cwd=base,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("mibench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    studies = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    for study in studies:
        assert f"mibench_lib/_study/notebooks/{study}.ipynb" in names
    for config in (ROOT / "parameters").glob("*/*.yaml"):
        assert f"mibench_lib/_study/parameters/{config.parent.name}/{config.name}" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=base
    )
    return site


def _mibench(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed copy before the checkout's
    env.pop("MIBENCH_ROOT", None)
    return subprocess.run(
        [sys.executable, "-m", "mibench_lib.studies", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_installed_cli_finds_the_study_files_outside_a_clone(installed, tmp_path):
    listed = _mibench(installed, tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    assert "predictive_power: celeba64, default, tiny" in listed.stdout
    assert "the installed package" in listed.stdout  # says where it looks
    done = _mibench(installed, tmp_path, "validate", "parameters/predictive_power/tiny.yaml")
    assert done.returncode == 0, done.stderr
    assert "valid for" in done.stdout and str(installed) in done.stdout
    missing = _mibench(installed, tmp_path, "validate", "parameters/predictive_power/nope.yaml")
    assert missing.returncode == 2
    assert "installed package" in missing.stderr and "_study" in missing.stderr


@pytest.mark.slow
def test_mibench_root_points_an_installed_cli_at_a_clone(installed, tmp_path):
    env_root = {"MIBENCH_ROOT": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "mibench_lib.studies", "validate", "parameters/defenses/tiny.yaml"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(installed), **env_root},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "mibench_lib.studies", "list"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(installed), "MIBENCH_ROOT": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "MIBENCH_ROOT" in bad.stderr


def test_conda_environment_file_installs_the_pinned_requirements():
    """`conda env create -f environment.yml` is not run here (no conda channel is reachable from
    these machines; the README says so); this checks the file asks for what `make setup` installs:
    the Python version pyproject allows, the pinned requirements.txt and the package itself."""
    import yaml

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11" and python == "python=3.11"
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert pip == ["-r requirements.txt", "-e ."]
    assert "pip" in deps
