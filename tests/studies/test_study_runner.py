"""The papermill runner on the 3-cell fixture notebook; kernel tests are marked ``notebook``."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
import yaml

from mibench_lib.studies.params import ParameterError
from mibench_lib.studies.runner import (
    MARKER,
    RunFailedError,
    list_configs,
    list_studies,
    run_all,
    run_config,
    source_tree_hash,
    unmet_requirements,
)

STUDY = "fixture_study"  # the notebook in tests/studies/fixtures


def test_list_studies_and_configs(tree):
    tree.config("b", "")
    tree.config("a", "")
    tree.config("tiny", "")
    tree.config("_shared", "")
    (tree.parameters / "orphan").mkdir()  # parameters without a notebook: not a study
    (tree.notebooks / "draft.ipynb").write_text("{}")  # notebook without parameters: not a study
    assert list_studies(notebooks_dir=tree.notebooks, parameters_dir=tree.parameters) == [STUDY]
    assert list_configs(STUDY, parameters_dir=tree.parameters) == ["a", "b", "tiny"]
    assert list_configs(STUDY, parameters_dir=tree.parameters, include_tiny=False) == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="nope"):
        list_configs("nope", parameters_dir=tree.parameters)


def test_unmet_requirements(tmp_path, monkeypatch):
    params = {
        "data_root": str(tmp_path / "absent"),
        "ckpt_root": str(tmp_path),
        "x_root": "",
        "dataset_kwargs": {"root": "data/celeba", "resolution": 64},
        "face_weights": "",
        "n": 3,
    }
    assert unmet_requirements(params, root=tmp_path) == [
        f"data_root: {tmp_path / 'absent'} not found",
        "dataset_kwargs.root: data/celeba not found",
    ]
    (tmp_path / "data" / "celeba").mkdir(parents=True)
    assert unmet_requirements({"dataset_kwargs": {"root": "data/celeba"}}, root=tmp_path) == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert unmet_requirements({"device": "cuda:1"}) == ["device: cuda:1 but CUDA is not available"]
    assert unmet_requirements({"device": "cpu"}) == []


def test_source_tree_hash_tracks_python_files(tree):
    before = source_tree_hash(tree.code)
    (tree.code / "notes.txt").write_text("ignored")
    assert source_tree_hash(tree.code) == before
    (tree.code / "module.py").write_text("X = 2\n")
    assert source_tree_hash(tree.code) != before
    (tree.code / "studies").mkdir(exist_ok=True)
    changed = source_tree_hash(tree.code)
    (tree.code / "studies" / "report.py").write_text("Y = 1\n")  # outside the kernel
    assert source_tree_hash(tree.code) == changed


def test_notebooks_do_not_import_modules_left_out_of_the_code_hash():
    """The code hash skips OUTSIDE_KERNEL; that is only sound if no notebook imports them."""
    import re
    import subprocess
    import sys

    from mibench_lib.studies.runner import NOTEBOOKS_DIR, OUTSIDE_KERNEL, list_studies

    imports = set()
    for script in (NOTEBOOKS_DIR / f"{study}.py" for study in list_studies()):
        for line in script.read_text().splitlines():
            if re.match(r"\s*(from mibench_lib\S* import |import mibench_lib)", line):
                imports.add(line.strip())
    assert imports, "no notebook imports found"
    outside = sorted("mibench_lib." + p[: -len(".py")].replace("/", ".") for p in OUTSIDE_KERNEL)
    probe = "\n".join([*sorted(imports), "import sys", f"print([m for m in {outside!r} if m in sys.modules])"])
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_invalid_parameters_write_nothing(tree):
    path = tree.config("bad", "n: many\n")
    with pytest.raises(ParameterError, match="field 'n' expects int"):
        run_config(path, **tree.run_kwargs())
    assert not tree.outputs.exists()


def test_missing_notebook_named(tree, tmp_path):
    other = tmp_path / "parameters" / "ghost"
    other.mkdir()
    (other / "a.yaml").write_text("")
    with pytest.raises(FileNotFoundError, match=r"no notebook .*ghost\.ipynb"):
        run_config(other / "a.yaml", **tree.run_kwargs())


@pytest.mark.notebook
def test_run_config_end_to_end_skip_and_rerun(tree):
    path = tree.config("small", "seeds: [0, 1]\nn: 2\n")
    out = run_config(path, **tree.run_kwargs())
    assert out == tree.outputs / STUDY / "small"
    names = {p.name for p in out.iterdir()}
    assert {"parameters.yaml", "environment.json", f"{STUDY}.ipynb", MARKER, "results.csv"} <= names
    assert (out / "results.csv").read_text().splitlines() == [
        "seed,i,value",
        "0,0,0.0",
        "0,1,1.0",
        "1,0,10.0",
        "1,1,11.0",
    ]
    injected = yaml.safe_load((out / "parameters.yaml").read_text())
    assert injected == {
        "study": STUDY,
        "config": "small",
        "out_dir": str(out),
        "seeds": [0, 1],
        "n": 2,
    }
    env = json.loads((out / "environment.json").read_text())
    assert env["status"] == "complete" and env["wall_s"] > 0 and env["finished"] >= env["started"]
    keys = ("python", "torch", "numpy", "papermill", "cpu_count", "cuda_available", "git_dirty")
    assert all(key in env for key in keys)
    marker = json.loads((out / MARKER).read_text())
    assert marker["code"] == source_tree_hash(tree.code)
    executed = json.loads((out / f"{STUDY}.ipynb").read_text())
    assert executed["metadata"]["papermill"]["parameters"]["n"] == 2

    # Same notebook, parameters and code: skipped without touching the folder.
    mtime = (out / f"{STUDY}.ipynb").stat().st_mtime_ns
    start = time.perf_counter()
    assert run_config(path, **tree.run_kwargs()) == out
    assert time.perf_counter() - start < 1.0
    assert (out / f"{STUDY}.ipynb").stat().st_mtime_ns == mtime

    # Changed parameters: re-run into a fresh folder; the old one is kept aside.
    assert run_config(path, overrides={"n": 1}, **tree.run_kwargs()) == out
    assert (out / "results.csv").read_text().splitlines() == ["seed,i,value", "0,0,0.0", "1,0,10.0"]
    assert (tree.outputs / "_previous" / STUDY / "small" / MARKER).is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["small"]
    assert json.loads((out / MARKER).read_text())["hash"] != marker["hash"]


@pytest.mark.notebook
def test_failed_run_names_notebook_and_leaves_no_marker(tree):
    path = tree.config("broken", "fail: true\n")
    executed = tree.outputs / STUDY / "broken" / f"{STUDY}.ipynb"
    with pytest.raises(RunFailedError, match="fixture asked to fail") as err:
        run_config(path, **tree.run_kwargs())
    assert str(executed) in str(err.value)
    assert executed.is_file() and "fixture asked to fail" in executed.read_text()
    assert not (executed.parent / MARKER).exists()
    env = json.loads((executed.parent / "environment.json").read_text())
    assert env["status"] == "failed" and env["wall_s"] is not None

    # Same parameters again: the unfinished folder is reused in place (a notebook may resume).
    (executed.parent / "partial.csv").write_text("kept\n")
    with pytest.raises(RunFailedError):
        run_config(path, **tree.run_kwargs())
    assert (executed.parent / "partial.csv").read_text() == "kept\n"
    assert not (tree.outputs / "_previous").exists()


@pytest.mark.notebook
def test_run_all_parallel_skips_tiny_and_unavailable_and_reports_failure(tree):
    tree.config("one", "n: 1\n")
    tree.config("tiny", "n: 1\n")
    tree.config("celeba", f"data_root: {tree.root / 'no_such_data'}\n")
    tree.config("zfail", "fail: true\n")
    kwargs = {k: v for k, v in tree.run_kwargs().items() if k != "progress"}
    results = run_all(jobs=2, parameters_dir=tree.parameters, **kwargs)
    assert [(r.config, r.status) for r in results] == [
        ("celeba", "unavailable"),
        ("one", "ran"),
        ("zfail", "failed"),
    ]
    celeba, one, zfail = results
    assert "no_such_data" in celeba.detail and celeba.out_dir is None
    assert "fixture asked to fail" in zfail.detail
    assert str(tree.outputs / STUDY / "zfail" / f"{STUDY}.ipynb") in zfail.detail
    assert (one.out_dir / MARKER).is_file()
    env = json.loads((one.out_dir / "environment.json").read_text())
    assert env["omp_num_threads"] == str(max(1, (os.cpu_count() or 1) // 2))  # cores per job
