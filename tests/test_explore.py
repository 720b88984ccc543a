"""The outputs explorer: listing, tag mapping, private images, figures, widgets, static pages.

Fast tests use hand-made configuration folders; the ``notebook`` tests browse a real tiny
predictive-power run (run once per module, ~2 min) and execute ``notebooks/explore.ipynb``.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from mibench_lib.data import load_dataset
from mibench_lib.progress import HEADLESS_ENV
from mibench_lib.studies import explore as ex
from mibench_lib.studies.jobs import run_tag
from mibench_lib.studies.params import safe_dump
from mibench_lib.studies.runner import REPO_ROOT, run_config

# One worker runs this module (`--dist loadgroup`), so its module fixture is built once.
pytestmark = pytest.mark.xdist_group("explore")

PNG = b"\x89PNG\r\n\x1a\n"
TOY_PARAMS = {"dataset": "digits", "dataset_kwargs": {"resolution": 8}, "attacks": ["brep_mi"]}
TOY_CLASSES = [0, 1, 2]


def _write_config(
    root: Path,
    study: str,
    config: str,
    key: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    *,
    saved: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """A finished-looking configuration folder; ``saved`` rows (default: all) get reconstructions.

    The reconstructions are named from the row values as given (the types the study passed),
    and each holds 2 images per class of ``TOY_CLASSES`` whose pixel value encodes the row's seed.
    """
    out = root / study / config
    (out / "reconstructions").mkdir(parents=True)
    pd.DataFrame(list(rows)).to_csv(out / "results.csv", index=False)
    (out / "results_key.json").write_text(json.dumps({"key": [*key, "attack", "seed"]}))
    (out / "parameters.yaml").write_text(safe_dump(dict(params)))
    labels = torch.tensor(TOY_CLASSES).repeat_interleave(2)
    for row in rows if saved is None else saved:
        images = torch.full((len(labels), 1, 8, 8), 0.1 + 0.2 * row["seed"])
        tag = run_tag({k: row[k] for k in key}, row["attack"], row["seed"])
        save_file(
            {"images": images, "labels": labels}, out / "reconstructions" / f"{tag}.safetensors"
        )
    return out


def _budget_rows() -> list[dict[str, Any]]:
    """A query-budget-like configuration: int budgets, one run that exhausted its budget."""
    rows = []
    for budget in (100, 1000):
        for seed in (0, 1):
            rows.append(
                {"budget_per_class": budget, "attack": "brep_mi", "seed": seed, "acc1": 0.1 * seed}
            )
    rows.append({"budget_per_class": 1000, "attack": "random_latent", "seed": 0, "acc1": 0.0})
    rows[0]["acc1"] = math.nan  # (100, brep_mi, 0) ran out of queries: no metrics, no file
    rows[0]["unavailable"] = "query budget exhausted: 100 queries"
    return rows


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """outputs/ with a finished configuration, an unfinished one and the runner's side folders."""
    root = tmp_path / "outputs"
    rows = _budget_rows()
    _write_config(root, "query_budget", "small", ["budget_per_class"], rows, TOY_PARAMS,
                  saved=rows[1:])  # fmt: skip
    (root / "query_budget" / "running").mkdir()
    (root / "query_budget" / "running" / "parameters.yaml").write_text("seeds: [0]\n")
    _write_config(root / "_previous", "query_budget", "small", ["budget_per_class"], rows,
                  TOY_PARAMS)  # fmt: skip
    (root / ".locks" / "query_budget").mkdir(parents=True)
    return root


# ----------------------------------------------------------------------------- fast: hand-made


def test_list_configurations_only_finished_and_visible(toy):
    assert ex.list_configurations(toy) == {"query_budget": ["small"]}


def test_resolve_out_root_names_a_missing_folder(tmp_path):
    assert ex.resolve_out_root("") == REPO_ROOT / "outputs"
    assert ex.resolve_out_root(tmp_path) == tmp_path.resolve()
    with pytest.raises(FileNotFoundError, match="does not exist; pass out_root="):
        ex.resolve_out_root(tmp_path / "nowhere")


def test_open_configuration_reads_key_columns(toy):
    conf = ex.open_configuration(toy, "query_budget", "small")
    assert conf.key == ("budget_per_class",)
    assert len(conf.results) == 5 and conf.params["dataset"] == "digits"
    assert ex.attack_options(conf) == ["brep_mi", "random_latent"]
    assert ex.key_options(conf, "random_latent", {}) == {"budget_per_class": [1000]}
    assert ex.key_options(conf, "brep_mi", {}) == {"budget_per_class": [100, 1000]}
    assert ex.seed_options(conf, "brep_mi", {"budget_per_class": 1000}) == [0, 1]
    assert ex.config_classes(conf) == TOY_CLASSES


def test_open_configuration_explains_a_bad_key_file(toy):
    (toy / "query_budget" / "small" / "results_key.json").write_text('{"key": ["seed"]}')
    with pytest.raises(ValueError, match=r"results_key\.json: expected .*'attack', 'seed'"):
        ex.open_configuration(toy, "query_budget", "small")


@pytest.mark.parametrize(
    ("written", "read"),
    [
        (1000, 1000.0),  # an int column read back as float (e.g. beside a missing value)
        (1000, "1000"),
        (0.3, "0.3"),
        (0.0, 0),
        (8 / 255, 8 / 255),
        ("mid (beta=0.01)", "mid (beta=0.01)"),
    ],
)
def test_tag_mapping_finds_the_file_whatever_type_the_csv_gave(tmp_path, written, read):
    rows = [{"knob": written, "attack": "gmi", "seed": 2, "acc1": 0.5}]
    _write_config(tmp_path, "s", "c", ["knob"], rows, TOY_PARAMS)
    conf = ex.open_configuration(tmp_path, "s", "c")
    path = ex.reconstruction_path(conf, ex.Run({"knob": read}, "gmi", 2))
    assert path is not None and path.stem == run_tag({"knob": written}, "gmi", 2)
    assert ex.reconstruction_path(conf, ex.Run({"knob": read}, "gmi", 3)) is None


def test_a_run_without_its_file_gets_a_clear_note(toy):
    conf = ex.open_configuration(toy, "query_budget", "small")
    run = ex.Run({"budget_per_class": 100}, "brep_mi", 0)
    view = ex.view_run(conf, run, 0)
    assert view.grid is None
    (note,) = view.notes
    assert "No reconstructions saved for budget_per_class 100, brep_mi, seed 0" in note
    assert "reconstructions/100_brep_mi_s0.safetensors" in note
    assert "query budget exhausted" in note
    assert view.metrics.loc["unavailable", "seed 0"].startswith("query budget exhausted")
    assert view.placement is not None and view.placement.startswith(PNG)


def test_dataset_recipe_of_resolution_variants_and_relative_roots():
    params = {
        "dataset": "mnist5k",
        "dataset_kwargs": {"test_fraction": 0.2},
        "resolutions": [16, 32],
        "per_resolution": {32: {"dataset_kwargs": {"resolution": 32, "split_seed": 3}}},
    }
    assert ex.dataset_recipe(params, {"resolution": 16.0}) == (
        "mnist5k",
        {"test_fraction": 0.2, "resolution": 16},
    )
    assert ex.dataset_recipe(params, {"resolution": 32}) == (
        "mnist5k",
        {"test_fraction": 0.2, "resolution": 32, "split_seed": 3},
    )
    celeba = {"dataset": "celeba", "dataset_kwargs": {"root": "data/celeba", "resolution": 64}}
    assert ex.dataset_recipe(celeba, {"defense_label": "none"}) == (
        "celeba",
        {"root": str(REPO_ROOT / "data" / "celeba"), "resolution": 64},
    )


def test_private_images_are_the_first_of_the_class(toy):
    conf = ex.open_configuration(toy, "query_budget", "small")
    images, name, note = ex.private_images(conf, {"budget_per_class": 100}, 2, 3)
    split = load_dataset("digits", resolution=8)
    expected = split.private_train.images[split.private_train.labels == 2][:3]
    assert note == "" and name == "2"
    torch.testing.assert_close(images, expected, rtol=0, atol=0)


def test_an_absent_local_dataset_shows_the_reconstructions_alone(tmp_path):
    params = {"dataset": "celeba", "dataset_kwargs": {"root": str(tmp_path / "no_celeba")}}
    rows = [{"defense_label": "none", "attack": "gmi", "seed": 0, "acc1": 0.5}]
    _write_config(tmp_path / "out", "defenses", "celeba", ["defense_label"], rows, params)
    conf = ex.open_configuration(tmp_path / "out", "defenses", "celeba")
    view = ex.view_run(conf, ex.Run({"defense_label": "none"}, "gmi", 0), 1)
    assert view.grid is not None and view.grid.startswith(PNG)
    (note,) = view.notes
    assert note.startswith("Private images not shown (DatasetNotFoundError: CelebA root")


def test_widgets_follow_study_attack_key_and_seed(toy):
    rows = [
        {"norm": n, "eps": e, "attack": a, "seed": s, "acc1": 0.2, "delta_eval": 3.0}
        for n, e, attacks in [("none", 0.0, ["gmi", "random_latent"]), ("linf", 0.3, ["gmi"])]
        for a in attacks
        for s in (0, 1, 2)
    ]
    _write_config(toy, "adversarial_robustness", "toy", ["norm", "eps"], rows, TOY_PARAMS)
    explorer = ex.Explorer(toy)
    assert explorer.study.options == ("adversarial_robustness", "query_budget")
    assert [c.description for c in explorer.keys.values()] == ["norm", "eps"]
    assert explorer.selected == ex.Run({"norm": "linf", "eps": 0.3}, "gmi", 0)
    assert bytes(explorer.grid.value).startswith(PNG) and "seed 0" in explorer.metrics.value
    first = bytes(explorer.grid.value)

    explorer.seed.value = 2
    assert explorer.view.run.seed == 2 and "seed 2" in explorer.metrics.value
    assert bytes(explorer.grid.value).startswith(PNG) and bytes(explorer.grid.value) != first
    explorer.keys["norm"].value = "none"  # eps follows the norm
    assert explorer.keys["eps"].options == (("0", 0.0),)
    assert explorer.selected == ex.Run({"norm": "none", "eps": 0.0}, "gmi", 2)
    explorer.attack.value = "random_latent"
    assert explorer.keys["norm"].options == (("none", "none"),)
    assert explorer.selected.attack == "random_latent" and explorer.note.value == ""

    explorer.study.value = "query_budget"  # the attack stays; the seed falls back to the first
    assert explorer.config.options == (("small", "small"),)
    assert [c.description for c in explorer.keys.values()] == ["budget_per_class"]
    assert explorer.attack.options == (("brep_mi", "brep_mi"), ("random_latent", "random_latent"))
    assert explorer.selected == ex.Run({"budget_per_class": 1000}, "random_latent", 0)
    explorer.attack.value = "brep_mi"
    assert explorer.keys["budget_per_class"].options == (("100", 100), ("1000", 1000))
    explorer.keys["budget_per_class"].value = 100
    assert explorer.selected == ex.Run({"budget_per_class": 100}, "brep_mi", 0)
    assert "No reconstructions saved" in explorer.note.value
    assert explorer.grid.layout.display == "none"
    explorer.keys["budget_per_class"].value = 1000
    explorer.cls.value = 1
    assert explorer.view.cls == 1 and explorer.view.notes == ()
    assert explorer.grid.layout.display is None and bytes(explorer.grid.value).startswith(PNG)


def test_widgets_on_an_empty_outputs_folder_say_so(tmp_path):
    explorer = ex.Explorer(tmp_path)
    assert "No finished configuration" in explorer.note.value
    with pytest.raises(ValueError, match="no finished configuration of study 'nope'"):
        ex.Explorer(tmp_path, study="nope")


# ----------------------------------------------------------------------------- a real tiny run


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """outputs/ holding a real tiny predictive-power run with two seeds, and a hand-made one."""
    tmp = tmp_path_factory.mktemp("explore")
    run_config(
        REPO_ROOT / "parameters" / "predictive_power" / "tiny.yaml",
        out_root=tmp / "outputs",
        overrides={"cache_dir": str(tmp / "cache"), "seeds": [0, 1]},
        progress=False,
        timeout_s=600,
    )
    rows = _budget_rows()
    _write_config(tmp / "outputs", "query_budget", "small", ["budget_per_class"], rows,
                  TOY_PARAMS, saved=rows[1:])  # fmt: skip
    return tmp / "outputs"


@pytest.mark.notebook
def test_real_run_every_row_finds_its_reconstructions(finished):
    conf = ex.open_configuration(finished, "predictive_power", "tiny")
    assert conf.key == ("threshold",)
    runs = [
        ex.Run({"threshold": r["threshold"]}, r["attack"], int(r["seed"]))
        for r in conf.results.to_dict("records")
    ]
    assert len(runs) == 2 * 2 * 6  # thresholds x seeds x (3 attacks + 3 baselines)
    paths = [ex.reconstruction_path(conf, run) for run in runs]
    assert None not in paths
    assert {p.stem for p in paths} == conf.tags  # every saved file belongs to one row
    images, labels = ex.load_reconstructions(paths[0])
    assert images.shape[1:] == (1, 16, 16) and sorted(set(labels.tolist())) == [0, 1, 2, 3, 4]
    assert ex.config_classes(conf) == [0, 1, 2, 3, 4]
    assert ex.default_run(conf) == ex.Run({"threshold": 0.5}, "gmi", 0)


@pytest.mark.notebook
def test_real_run_private_images_of_a_class(finished):
    conf = ex.open_configuration(finished, "predictive_power", "tiny")
    images, name, note = ex.private_images(conf, {"threshold": 0.9}, 3, 4)
    assert note == "" and name == "3" and images.shape == (4, 1, 16, 16)
    split = load_dataset("digits", resolution=16)
    torch.testing.assert_close(images, split.private_train.of_class(3).images[:4])


@pytest.mark.notebook
def test_real_run_placement_highlights_the_selected_run(finished):
    conf = ex.open_configuration(finished, "predictive_power", "tiny")
    run = ex.Run({"threshold": 0.9}, "miface", 1)
    (row,) = ex.run_rows(conf, run).to_dict("records")
    fig = ex.plot_placement(conf, run)
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == list(ex.HEADLINE.values())
    for ax, metric in zip(fig.axes[:2], ex.HEADLINE, strict=True):
        (star,) = [line for line in ax.get_lines() if line.get_gid() == "selected"]
        assert star.get_ydata().tolist() == [row[metric]]
        attacks = ex.attack_options(conf)
        width = 0.8 / len(attacks)
        x = 1 + (attacks.index("miface") - (len(attacks) - 1) / 2) * width  # second arm: 0.9
        assert star.get_xdata().tolist() == pytest.approx([x])
        dots = sum(len(c.get_offsets()) for c in ax.collections)
        assert dots == conf.results[metric].notna().sum() == 24
    table = ex.metrics_table(conf, run)
    assert list(table.columns) == ["seed 1"]
    assert table.loc["attack", "seed 1"] == "miface"
    assert float(table.loc["acc1", "seed 1"]) == pytest.approx(row["acc1"], abs=5e-4)


@pytest.mark.notebook
def test_real_run_widgets_update_on_seed_and_attack(finished):
    explorer = ex.Explorer(finished, study="predictive_power", config="tiny")
    assert explorer.selected == ex.Run({"threshold": 0.5}, "gmi", 0)
    assert explorer.seed.options == (("0", 0), ("1", 1))
    assert explorer.note.value == "" and bytes(explorer.grid.value).startswith(PNG)
    seed0 = bytes(explorer.grid.value)
    explorer.seed.value = 1
    assert explorer.view.run.seed == 1 and "seed 1" in explorer.metrics.value
    assert bytes(explorer.grid.value) != seed0
    explorer.attack.value = "brep_mi"
    explorer.keys["threshold"].value = 0.9
    assert explorer.selected == ex.Run({"threshold": 0.9}, "brep_mi", 1)
    assert ">brep_mi<" in explorer.metrics.value and explorer.note.value == ""


def _outputs(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


@pytest.mark.notebook
def test_execute_explorer_headless_writes_static_pages(finished, tmp_path):
    path = ex.execute_explorer(finished, tmp_path / "explore.ipynb", timeout_s=300)
    nb = nbformat.read(path, as_version=4)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [
        o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    headings = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert [h for h in headings if h.startswith("## ")] == [
        "## predictive_power/tiny",
        "## query_budget/small",
    ]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 4  # a grid and a placement figure per configuration
    assert all(base64.b64decode(o.data["image/png"]).startswith(PNG) for o in pngs)
    tables = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(tables) == 2 and "gmi" in tables[0] and "brep_mi" in tables[1]
    assert path.stat().st_size < 500_000


@pytest.mark.notebook
def test_explorer_notebook_runs_with_widgets_in_a_kernel(finished, tmp_path, monkeypatch):
    """What JupyterLab does on "Run All": the widgets path, in a real kernel, without errors."""
    import papermill

    monkeypatch.delenv(HEADLESS_ENV, raising=False)
    out = tmp_path / "widgets.ipynb"
    papermill.execute_notebook(
        str(ex.EXPLORER_NOTEBOOK),
        str(out),
        parameters={"out_root": str(finished), "study": "predictive_power", "mode": "widgets"},
        kernel_name="python3",
        cwd=str(ex.EXPLORER_NOTEBOOK.parent),  # JupyterLab's working directory
        progress_bar=False,
        execution_timeout=300,
    )
    nb = nbformat.read(out, as_version=4)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type in ("error", "stream") and "Error" in str(o)]
    (view,) = [
        o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    box = state[view.data["application/vnd.jupyter.widget-view+json"]["model_id"]]
    assert box["model_name"] == "VBoxModel"
    images = [m for m in state.values() if m["model_name"] == "ImageModel"]
    pngs = [base64.b64decode(b["data"]) for m in images for b in m.get("buffers", [])]
    assert len(pngs) == 2 and all(p.startswith(PNG) for p in pngs)
    html = [m["state"]["value"] for m in state.values() if m["model_name"] == "HTMLModel"]
    assert any("seed 0" in h and "gmi" in h for h in html)
    assert not any("Error" in h for h in html)
    dropdowns = {
        m["state"]["description"]: m["state"]["_options_labels"]
        for m in state.values()
        if m["model_name"] == "DropdownModel"
    }
    assert set(dropdowns) == {"study", "configuration", "attack", "threshold", "class", "seed"}
    assert dropdowns["threshold"] == ["0.5", "0.9"] and dropdowns["seed"] == ["0", "1"]
