"""Study notebooks: contract checks (no kernel) and the papermill smoke run on tiny.yaml."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from mibench_lib.studies.params import load_parameters
from mibench_lib.studies.runner import list_studies, run_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONFIGS = sorted((ROOT / "parameters").glob("*/*.yaml"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_without_outputs_and_with_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"
    assert (ROOT / "parameters" / path.stem / "tiny.yaml").exists(), "every study needs a tiny.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_parameter_file_validates_against_its_notebook(path):
    params = load_parameters(path, ROOT / "notebooks" / f"{path.parent.name}.ipynb")
    assert params["attacks"]


def test_studies_are_listed():
    assert "predictive_power" in list_studies()


@pytest.mark.notebook
def test_predictive_power_tiny_smoke(tmp_path):
    out = run_config(
        ROOT / "parameters" / "predictive_power" / "tiny.yaml",
        out_root=tmp_path / "out",
        overrides={"cache_dir": str(tmp_path / "cache")},
        progress=False,
        timeout_s=600,
    )
    df = pd.read_csv(out / "results.csv")
    params = json.loads(
        json.dumps(
            load_parameters(
                ROOT / "parameters" / "predictive_power" / "tiny.yaml",
                ROOT / "notebooks" / "predictive_power.ipynb",
            )
        )
    )
    expected = {"random_latent", *params["attacks"]}
    assert set(df["attack"]) == expected
    per_checkpoint = df.groupby(["threshold", "seed"])["attack"].nunique()
    assert (per_checkpoint == len(expected)).all()
    for col in ["acc1", "acc5", "delta_eval", "delta_face", "fid", "target_acc", "target_test_acc"]:
        assert df[col].map(math.isfinite).all(), col
    attacks = df[df["attack"] != "random_latent"]
    assert (attacks["queries"] > 0).all() and (
        df.loc[df["attack"] == "random_latent", "queries"] == 0
    ).all()
    assert set(df.loc[df["attack"] == "brep_mi", "access"]) == {"label"}
    for name in ["trends", "target_vs_evaluator", "gan_samples"]:
        assert (out / f"fig_{name}.png").stat().st_size > 0
    assert sorted(out.glob("fig_reconstructions_*.png"))
    for ext in ["md", "tex", "csv"]:
        assert (out / f"table_results_mean_std.{ext}").exists()
    for name in ["parameters.yaml", "environment.json", "predictive_power.ipynb", "_complete.json"]:
        assert (out / name).exists(), name
