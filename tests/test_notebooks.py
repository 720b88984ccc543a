"""Study notebooks: contract checks (no kernel) and the papermill smoke run on tiny.yaml."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import jupytext
import nbformat
import numpy as np
import pandas as pd
import pytest

from mibench_lib.attacks import SPECS
from mibench_lib.studies.params import INJECTED, load_parameters, notebook_parameters
from mibench_lib.studies.runner import list_studies, run_config

KEY_DEFENSES = ["defense_label", "attack", "seed"]
GOLDEN_KEYS = {
    "predictive_power": ["attack", "threshold", "seed"],
    "defenses": KEY_DEFENSES,
    "adversarial_robustness": ["norm", "eps", "attack", "seed"],
}
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))  # the studies and the explorer
STUDY_NOTEBOOKS = [p for p in NOTEBOOKS if p.stem in list_studies()]
CONFIGS = sorted((ROOT / "parameters").glob("*/*.yaml"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_without_outputs_and_with_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", STUDY_NOTEBOOKS, ids=lambda p: p.stem)
def test_every_study_has_a_tiny_yaml(path):
    assert (ROOT / "parameters" / path.stem / "tiny.yaml").exists(), "every study needs a tiny.yaml"


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_a_jupytext_pair_in_sync(path):
    """``notebooks/<study>.py`` (py:percent, what reviews and ruff read) is the .ipynb's code."""
    script = path.with_suffix(".py")
    assert script.exists(), (
        f"{path.name} has no py:percent pair; run: jupytext --set-formats ipynb,py:percent {path}"
    )
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    paired = jupytext.read(script)
    assert _cells(paired) == _cells(nb), (
        f"{path.name} and {script.name} differ: run `jupytext --sync {script}` and commit both"
    )


@pytest.mark.parametrize("path", STUDY_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_defaults_are_its_default_yaml(path):
    """ "Run All" in JupyterLab runs exactly the configuration `mibench run default.yaml` runs."""
    params = load_parameters(ROOT / "parameters" / path.stem / "default.yaml", path)
    defaults = {
        name: ast.literal_eval(spec.default)
        for name, spec in notebook_parameters(path).items()
        if name not in INJECTED
    }
    differ = {k: (defaults[k], v) for k, v in params.items() if k in defaults and defaults[k] != v}
    assert not differ, f"notebook default vs default.yaml: {differ}"


GOLDEN = Path(__file__).parent / "studies" / "fixtures" / "golden_tiny"


def _assert_rows_as_recorded(study: str, df: pd.DataFrame, key: list[str]) -> None:
    """The tiny study's rows equal those the code wrote before the study engine replaced the
    notebooks' own run loops (recorded at commit 12e94fe; equal to the last bit on the recording
    machine; a margin for other CPUs' float summation order)."""
    golden = pd.read_csv(GOLDEN / f"{study}.csv")
    new = df.sort_values(key, ignore_index=True)
    assert set(golden.columns) <= set(new.columns), set(golden.columns) - set(new.columns)
    new = new[list(golden.columns)]
    numeric = [c for c in golden if pd.api.types.is_numeric_dtype(golden[c])]
    text = [c for c in golden if c not in numeric]
    pd.testing.assert_frame_equal(golden[text].astype(str), new[text].astype(str))
    for col in numeric:
        close = np.isclose(
            golden[col], new[col].astype(float), rtol=1e-3, atol=1e-3, equal_nan=True
        )
        assert close.all(), (col, golden.loc[~close, col].tolist(), new.loc[~close, col].tolist())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_parameter_file_validates_against_its_notebook(path):
    params = load_parameters(path, ROOT / "notebooks" / f"{path.parent.name}.ipynb")
    assert params["attacks"]


@pytest.mark.parametrize("config", ["default", "tiny", "celeba64"])
def test_the_leaderboard_runs_every_registered_attack(config):
    path = ROOT / "parameters" / "leaderboard" / f"{config}.yaml"
    params = load_parameters(path, ROOT / "notebooks" / "leaderboard.ipynb")
    assert params["attacks"] == list(SPECS), "list every attack of the registry, in its order"


def test_studies_are_listed():
    assert "predictive_power" in list_studies()


@pytest.mark.notebook
@pytest.mark.parametrize("study", list_studies())
def test_study_tiny_smoke(study, tmp_path):
    """Every study runs headless on tiny.yaml and writes results, tables and figures."""
    params_file = ROOT / "parameters" / study / "tiny.yaml"
    out = run_config(
        params_file,
        out_root=tmp_path / "out",
        overrides={"cache_dir": str(tmp_path / "cache")},
        progress=False,
        timeout_s=600,
    )
    params = load_parameters(params_file, ROOT / "notebooks" / f"{study}.ipynb")
    df = pd.read_csv(out / "results.csv")
    if (GOLDEN / f"{study}.csv").exists():
        _assert_rows_as_recorded(study, df.drop(columns="wall_time_s"), GOLDEN_KEYS[study])
    assert set(params["attacks"]) <= set(df["attack"])
    for col in ["acc1", "acc5", "delta_eval", "delta_face", "fid_eval", "target_acc"]:
        assert df[col].map(math.isfinite).all(), col
    assert df["fid_inception"].isna().all()  # no FID-Inception weights on this machine
    assert (df["budget_exhausted"] == False).all()  # noqa: E712 (a column of numpy bools)
    baselines = {"random_latent", "blank_image", "mean_public"}
    assert set(params.get("baselines", baselines)) <= set(df["attack"])
    assert (df.loc[df["attack"].isin(baselines), "queries"] == 0).all()
    attacks = df[~df["attack"].isin(baselines)]
    # every attack asks the target, unless all its queries went into its priors (LOKT)
    asks = attacks["attack"].map(lambda a: SPECS[a].queries_in_attack)
    assert (attacks.loc[asks, "queries"] > 0).all()
    assert (attacks.loc[~asks, "queries"] == 0).all()
    if "gmi" in set(attacks["attack"]):
        assert set(attacks.loc[attacks["attack"] == "gmi", "family"]) == {"white-box"}
    figures = sorted(p.name for p in out.glob("fig_*.png"))
    assert any(f.startswith("fig_reconstructions") for f in figures), figures
    main_table = "leaderboard" if study == "leaderboard" else "results_mean_std"
    for ext in ["md", "tex", "csv"]:
        assert (out / f"table_{main_table}.{ext}").exists()
    for name in ["parameters.yaml", "environment.json", f"{study}.ipynb", "_complete.json"]:
        assert (out / name).exists(), name
    assert (out / f"table_{main_table}.md").read_text().count("[") > len(df["attack"].unique())
    paired = next(out.glob("table_paired_*.csv"))
    assert {"difference", "supported"} <= set(pd.read_csv(paired).columns)
    if study == "predictive_power":
        expected = baselines | set(params["attacks"])
        assert set(df["attack"]) == expected
        assert (df.groupby(["threshold", "seed"])["attack"].nunique() == len(expected)).all()
        assert {"fig_trends.png", "fig_target_vs_evaluator.png", "fig_gan_samples.png"} <= set(
            figures
        )
    if study == "defenses":
        assert {"fig_privacy_utility.png", "fig_defense_attack_heatmap.png"} <= set(figures)
        # output defenses act at the oracle: white-box attacks see the undefended target, bit for bit
        gmi = df[df["attack"] == "gmi"].set_index("defense")
        if {"none", "rounding"} <= set(gmi.index):
            assert gmi.loc["none", "acc1"] == gmi.loc["rounding", "acc1"]
            assert gmi.loc["none", "delta_eval"] == gmi.loc["rounding", "delta_eval"]
            # computed once (the white-box attacker holds the same model), reported under both
            reused = df[df["same_run_as"].notna()]
            assert set(reused["defense"]) == {"rounding"}
            # BREP-MI sees rounded outputs; the floors are scored on the first defense only
            assert set(reused["attack"]) == {"gmi", "miface"}
            assert set(reused["same_run_as"]) == {"none"}
        dp = df[df["defense"] == "dp_sgd"].drop_duplicates("defense_label")
        noised = ~dp["defense_label"].str.contains("noise_multiplier=0,", regex=False)
        assert dp.loc[noised, "defense_epsilon"].map(math.isfinite).all()
        # the matched GroupNorm baseline (no noise, no clipping) has no privacy guarantee
        assert (dp.loc[~noised, "defense_epsilon"] == math.inf).all()
        assert (~noised).sum() == 1  # tiny.yaml trains it, for GMI only
        assert set(
            df.loc[df["defense_label"].isin(dp.loc[~noised, "defense_label"]), "attack"]
        ) == {"gmi"}
    if study == "leaderboard":
        assert set(df["attack"]) == baselines | set(SPECS)  # every registered attack
        board = pd.read_csv(out / "table_leaderboard.csv")
        for _, family in board.groupby("family"):  # ranked within each threat model
            assert family["rank"].tolist() == list(range(1, len(family) + 1))
            assert family["acc1"].str.split().str[0].astype(float).is_monotonic_decreasing
        priors = [name for name, spec in SPECS.items() if spec.target_priors]
        if priors:  # their queries and seconds are reported apart from the attack's own
            trained = df[df["attack"].isin(priors)]
            assert (trained["prior_queries"] > 0).all() and (trained["prior_build_s"] > 0).all()
        assert {"fig_acc1_vs_distance.png", "fig_per_class.png"} <= set(figures)
        per_class = pd.read_csv(out / "table_per_class.csv")
        partial = {name for name, spec in SPECS.items() if spec.threat_model == "partial"}
        assert set(per_class["attack"]) == set(df["attack"]) - partial
        assert set(board["attack"]) & partial == set()  # another threat model: never ranked
        if partial:
            assert "fig_partial_image.png" in figures
            part = pd.read_csv(out / "table_partial_image.csv")
            assert set(part["attack"]) == partial
    if study == "query_budget":
        assert "fig_budget_curves.png" in figures
        capped = df[df["attack"].isin(params["attacks"])]
        entries = capped.groupby(["attack", "budget_per_class", "seed"]).size()
        assert (entries == 1).all()
        # every run is capped by its oracle: queries never pass budget x entries
        assert (capped["queries"] <= capped["query_budget"]).all()
        assert capped["stopped_by_budget"].any()
    if study == "adversarial_robustness":
        assert "fig_attack_vs_epsilon.png" in figures
        at = df[df["norm"] != "none"]
        assert at["robust_acc"].map(math.isfinite).all()


@pytest.mark.notebook
def test_reused_runs_equal_recomputed_runs(tmp_path):
    """A run reported under a second output defense (same_run_as) is what recomputing it gives."""
    params_file = ROOT / "parameters" / "defenses" / "tiny.yaml"
    defenses = [
        {"name": "none"},
        {"name": "rounding", "kwargs": {"decimals": 1}},
        {"name": "label_only"},
    ]
    frames = {}
    for reuse in (True, False):
        out = run_config(
            params_file,
            out_root=tmp_path / str(reuse),
            overrides={
                "cache_dir": str(tmp_path / "cache"),
                "defenses": defenses,
                "fisher": False,
                "reuse_identical_runs": reuse,
            },
            progress=False,
            timeout_s=600,
        )
        frames[reuse] = pd.read_csv(out / "results.csv").set_index(KEY_DEFENSES).sort_index()
    reused, recomputed = frames[True], frames[False]
    assert (
        reused["same_run_as"].notna().sum() == 5
    )  # gmi, miface x 2 defenses; brep_mi x label_only
    assert "same_run_as" not in recomputed
    metrics = ["acc1", "acc5", "delta_eval", "delta_face", "target_acc", "queries"]
    pd.testing.assert_frame_equal(reused[metrics], recomputed[metrics])


#: The tiny leaderboard's settings of the attacks that train target priors.
_LEADERBOARD_TINY = ROOT / "parameters" / "leaderboard" / "tiny.yaml"


@pytest.mark.notebook
@pytest.mark.parametrize("study", ["defenses", "predictive_power"])
def test_a_study_takes_any_registered_attack_by_name(study, tmp_path):
    """Naming an attack in a parameter file is all it takes, target priors included."""
    tiny = load_parameters(_LEADERBOARD_TINY, ROOT / "notebooks" / "leaderboard.ipynb")
    new = ["kedmi", "plg_mi"]
    overrides = {
        "cache_dir": str(tmp_path / "cache"),
        "attacks": new,
        "attack_kwargs": {a: tiny["attack_kwargs"][a] for a in new},
        "prior_kwargs": {p: tiny["prior_kwargs"][p] for p in ("kedmi_gan", "plg_cgan")},
    }
    if study == "defenses":
        overrides["defenses"] = [
            {"name": "none"},
            {"name": "mid", "kwargs": {"beta": 0.01}},
            {"name": "rounding", "kwargs": {"decimals": 1}},
        ]
        overrides["fisher"] = False
    out = run_config(
        ROOT / "parameters" / study / "tiny.yaml",
        out_root=tmp_path / "out",
        overrides=overrides,
        progress=False,
        timeout_s=600,
    )
    df = pd.read_csv(out / "results.csv")
    runs = df[df["attack"].isin(new)]
    assert set(runs["attack"]) == set(new)
    assert (runs["prior_queries"] > 0).all() and runs["acc1"].map(math.isfinite).all()
    if study == "defenses":
        assert set(runs["defense"]) == {"none", "mid", "rounding"}
        # each trained target (none, mid) gets its own priors; rounding deploys none's weights
        for prior in ("kedmi_gan", "plg_cgan"):
            assert len(list((tmp_path / "cache" / f"prior_{prior}").glob("*.safetensors"))) == 2
        by = runs.set_index(["defense", "attack"])
        # a white-box attacker holds the undefended model behind an output defense: same run
        assert by.loc[("rounding", "kedmi"), "same_run_as"] == "none"
