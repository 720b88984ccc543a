"""``mibench compare``: gathering output folders, the side-by-side table, the figure and the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mibench_lib.studies import cli
from mibench_lib.studies.compare import (
    SOURCE_COLUMNS,
    CompareError,
    IncompleteRunWarning,
    compare_markdown,
    compare_table,
    gather_results,
    plot_compare,
)

ATTACKS = ("gmi", "brep_mi")
SEEDS = (0, 1, 2)


def make_run(
    root: Path,
    study: str = "predictive_power",
    config: str = "default",
    *,
    commit: str | None = "abc1234deadbeef",
    dirty: bool = False,
    device: str = "cpu",
    complete: bool = True,
    offset: float = 0.0,
    extra: dict | None = None,
) -> Path:
    """A fake ``<root>/<study>/<config>`` output folder: 2 attacks x 3 seeds."""
    out = root / study / config
    out.mkdir(parents=True)
    rng = np.random.default_rng(len(str(root)) + int(100 * offset))
    rows = [
        {
            "attack": attack,
            "seed": seed,
            "acc1": round(float(rng.uniform(0.2, 0.8)), 4),
            "acc5": round(float(rng.uniform(0.5, 1.0)), 4),
            "delta_eval": round(float(rng.uniform(10, 20)) + offset, 4),
            "n_images": 20,
            **(extra or {}),
        }
        for attack in ATTACKS
        for seed in SEEDS
    ]
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    params = {"study": study, "config": config, "out_dir": str(out), "device": device}
    (out / "parameters.yaml").write_text(yaml.safe_dump(params))
    cuda = device != "cpu"
    env = {
        "git_commit": commit,
        "git_dirty": dirty if commit else None,
        "cuda_available": cuda,
        "cuda_device": "NVIDIA H200" if cuda else None,
        "wall_s": 12.5,
    }
    (out / "environment.json").write_text(json.dumps(env))
    if complete:
        (out / "_complete.json").write_text(json.dumps({"hash": "x"}))
    return out


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """The CPU default next to a GPU run of another commit."""
    cpu = make_run(tmp_path / "outputs", config="default")
    gpu = make_run(
        tmp_path / "outputs",
        config="celeba64",
        commit="def5678cafef00d",
        dirty=True,
        device="cuda",
        offset=5.0,
    )
    return cpu, gpu


_CELL = re.compile(r"(-?[\d.]+) ± ([\d.]+) \[(-?[\d.]+), (-?[\d.]+)\]")


def _parse(cell: str) -> tuple[float, ...]:
    match = _CELL.fullmatch(cell)
    assert match, cell
    return tuple(float(g) for g in match.groups())


# ----------------------------------------------------------------------------- gathering


def test_gather_stacks_rows_and_names_sources(two_runs):
    cpu, gpu = two_runs
    df = gather_results([cpu, gpu])
    assert len(df) == 2 * len(ATTACKS) * len(SEEDS)
    assert list(df.columns[: len(SOURCE_COLUMNS)]) == list(SOURCE_COLUMNS)
    by_source = df.drop_duplicates("source").set_index("source")
    assert list(by_source.index) == ["predictive_power/default", "predictive_power/celeba64"]
    assert by_source["study"].tolist() == ["predictive_power"] * 2
    assert by_source["config"].tolist() == ["default", "celeba64"]
    assert by_source["commit"].tolist() == ["abc1234", "def5678-dirty"]
    assert by_source["device"].tolist() == ["cpu", "NVIDIA H200"]
    assert by_source["complete"].tolist() == [True, True]
    # The rows themselves are the files' rows, unchanged.
    own = pd.read_csv(gpu / "results.csv")
    got = df[df["source"] == "predictive_power/celeba64"].drop(columns=list(SOURCE_COLUMNS))
    pd.testing.assert_frame_equal(got.reset_index(drop=True), own)


def test_folder_names_stand_in_for_missing_metadata(tmp_path):
    out = make_run(tmp_path / "outputs", "s", "c")
    for name in ("parameters.yaml", "environment.json"):
        (out / name).unlink()
    df = gather_results([out])
    row = df.iloc[0]
    assert (row["source"], row["study"], row["config"]) == ("s/c", "s", "c")
    assert pd.isna(row["commit"]) and pd.isna(row["device"])
    notes = compare_table(df).attrs["notes"]
    assert any("no git commit recorded" in n and "s/c" in n for n in notes)


# ----------------------------------------------------------------------------- labels


def test_identical_labels_take_the_out_root(tmp_path):
    cpu = make_run(tmp_path / "outputs-cpu")
    gpu = make_run(tmp_path / "outputs-gpu", device="cuda")
    sources = gather_results([cpu, gpu])["source"].unique().tolist()
    assert sources == [
        "predictive_power/default (outputs-cpu)",
        "predictive_power/default (outputs-gpu)",
    ]


def test_identical_labels_and_roots_take_the_commit(tmp_path):
    old = make_run(tmp_path / "v1" / "outputs", commit="1111111aaaa")
    new = make_run(tmp_path / "v2" / "outputs", commit="2222222bbbb", dirty=True)
    sources = gather_results([old, new])["source"].unique().tolist()
    assert sources == [
        "predictive_power/default (1111111)",
        "predictive_power/default (2222222-dirty)",
    ]


def test_identical_everything_takes_a_longer_path(tmp_path):
    a = make_run(tmp_path / "a" / "outputs")
    b = make_run(tmp_path / "b" / "outputs")
    sources = gather_results([a, b])["source"].unique().tolist()
    assert sources == [
        "predictive_power/default (a/outputs)",
        "predictive_power/default (b/outputs)",
    ]


def test_renamed_copy_takes_its_folder_name(tmp_path):
    run = make_run(tmp_path / "outputs")
    copy = run.with_name("default-copy")
    shutil.copytree(run, copy)
    sources = gather_results([run, copy])["source"].unique().tolist()
    assert sources == [
        "predictive_power/default (default)",
        "predictive_power/default (default-copy)",
    ]


def test_previous_run_is_told_apart_from_the_current_one(tmp_path):
    now = make_run(tmp_path / "outputs")
    before = make_run(tmp_path / "outputs" / "_previous", commit="0000000ffff")
    sources = gather_results([now, before])["source"].unique().tolist()
    assert sources == ["predictive_power/default (outputs)", "predictive_power/default (_previous)"]


# ----------------------------------------------------------------------------- table


def test_table_mean_and_std_equal_pandas(two_runs):
    df = gather_results(two_runs)
    table = compare_table(df, metrics=["acc1", "delta_eval"], digits=6)
    assert list(table.columns) == ["source", "attack", "acc1", "delta_eval", "n"]
    # Sources of one attack sit side by side, in the order the folders were given.
    assert list(zip(table["attack"], table["source"], strict=True)) == [
        (a, s)
        for a in sorted(ATTACKS)
        for s in ("predictive_power/default", "predictive_power/celeba64")
    ]
    expected = df.groupby(["source", "attack"])[["acc1", "delta_eval"]].agg(["mean", "std"])
    for row in table.itertuples():
        assert row.n == len(SEEDS)
        for metric in ("acc1", "delta_eval"):
            mean, std, lo, hi = _parse(getattr(row, metric))
            want = expected.loc[(row.source, row.attack), metric]
            assert mean == pytest.approx(want["mean"], abs=1e-6)
            assert std == pytest.approx(want["std"], abs=1e-6)
            assert lo <= mean <= hi


def test_default_metrics_are_those_present(two_runs):
    table = compare_table(gather_results(two_runs))
    assert list(table.columns) == ["source", "attack", "acc1", "acc5", "delta_eval", "n"]
    assert table.attrs["notes"] == []


def test_grid_columns_split_the_conditions(tmp_path):
    folders = [
        make_run(tmp_path / f"outputs-{n}", extra={"threshold": 0.5}) for n in ("cpu", "gpu")
    ]
    # A second grid point appended to the first folder's results.
    extra = pd.read_csv(folders[0] / "results.csv").assign(threshold=0.9)
    with (folders[0] / "results.csv").open("a") as f:
        extra.to_csv(f, header=False, index=False)
    table = compare_table(gather_results(folders), metrics=["acc1"])
    assert list(table.columns) == ["source", "attack", "threshold", "acc1", "n"]
    assert len(table) == len(ATTACKS) * 3  # (0.5: both sources) + (0.9: the first only)
    assert table.groupby("threshold").size().to_dict() == {0.5: 4, 0.9: 2}


def test_mixed_studies_are_noted_and_their_grids_kept_apart(tmp_path):
    pp = make_run(tmp_path / "outputs", "predictive_power", extra={"threshold": 0.5})
    de = make_run(tmp_path / "outputs", "defenses", extra={"defense_label": "none"})
    table = compare_table(gather_results([pp, de]), metrics=["acc1"])
    assert list(table.columns) == ["source", "attack", "threshold", "defense_label", "acc1", "n"]
    assert len(table) == 2 * len(ATTACKS)
    (note,) = table.attrs["notes"]
    assert "different studies (predictive_power, defenses)" in note
    text = compare_markdown(table)
    assert "Notes:\n- the sources come from different studies" in text
    assert "nan" not in text  # a grid column a source lacks is an empty cell
    ax = plot_compare(gather_results([pp, de]), "acc1")
    assert len(ax.containers) == 2 and len(ax.get_xticks()) == 2 * len(ATTACKS)


def test_incomplete_run_is_kept_flagged_and_noted(two_runs, tmp_path):
    partial = make_run(tmp_path / "outputs", config="partial", complete=False)
    with pytest.warns(IncompleteRunWarning, match="partial.*_complete.json"):
        df = gather_results([*two_runs, partial])
    assert df.groupby("source")["complete"].all().to_dict() == {
        "predictive_power/default": True,
        "predictive_power/celeba64": True,
        "predictive_power/partial": False,
    }
    table = compare_table(df, metrics=["acc1"])
    assert table.set_index(["source", "attack"])["complete"].xs("gmi", level="attack").tolist() == [
        True,
        True,
        False,
    ]
    assert any(
        "incomplete run" in n and "predictive_power/partial" in n for n in table.attrs["notes"]
    )


# ----------------------------------------------------------------------------- errors


def test_folder_without_results_is_named(tmp_path):
    empty = tmp_path / "outputs" / "predictive_power" / "default"
    empty.mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError, match=r"default holds no results.csv.*outputs/<study>/<config>"
    ):
        gather_results([empty])
    with pytest.raises(FileNotFoundError, match="no folder"):
        gather_results([tmp_path / "nowhere"])


def test_study_folder_suggests_its_configurations(tmp_path):
    make_run(tmp_path / "outputs", config="default")
    with pytest.raises(FileNotFoundError, match="holds the configurations default"):
        gather_results([tmp_path / "outputs" / "predictive_power"])


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "is empty"), ("attack,seed,acc1\n", "no row")],
)
def test_empty_results_are_refused(tmp_path, text, match):
    out = make_run(tmp_path / "outputs")
    (out / "results.csv").write_text(text)
    with pytest.raises(CompareError, match=match):
        gather_results([out])


def test_bad_input_errors(two_runs):
    cpu, _ = two_runs
    with pytest.raises(CompareError, match="given twice"):
        gather_results([cpu, cpu.parent / ".." / cpu.parent.name / cpu.name])
    with pytest.raises(CompareError, match="no output folder"):
        gather_results([])
    (cpu / "environment.json").write_text("{not json")
    with pytest.raises(CompareError, match=r"environment\.json is not valid JSON"):
        gather_results([cpu])


def test_unknown_metric_and_column_are_refused(two_runs):
    df = gather_results(two_runs)
    with pytest.raises(CompareError, match=r"no metric column \['acc9'\]"):
        compare_table(df, metrics=["acc9"])
    with pytest.raises(CompareError, match=r"no column \['norm'\] to group by"):
        compare_table(df, by=["attack", "norm"])


def test_repeated_seeds_name_the_missing_grid_column(tmp_path):
    out = make_run(tmp_path / "outputs", extra={"defense_knob": "a"})
    again = pd.read_csv(out / "results.csv").assign(defense_knob="b")
    with (out / "results.csv").open("a") as f:
        again.to_csv(f, header=False, index=False)
    with pytest.raises(CompareError, match=r"several rows share .*defense_knob"):
        compare_table(gather_results([out]))


# ----------------------------------------------------------------------------- figure


def test_figure_has_one_errorbar_series_per_source(two_runs):
    df = gather_results(two_runs)
    ax = plot_compare(df, "acc1")
    assert len(ax.containers) == 2
    assert [c.get_label() for c in ax.containers] == [
        "predictive_power/default",
        "predictive_power/celeba64",
    ]
    assert [t.get_text() for t in ax.get_xticklabels()] == sorted(ATTACKS)
    means = df.groupby(["source", "attack"])["acc1"].mean()
    for container in ax.containers:
        line = container.lines[0]
        assert len(line.get_xdata()) == len(ATTACKS)
        want = [means[(container.get_label(), a)] for a in sorted(ATTACKS)]
        np.testing.assert_allclose(line.get_ydata(), want)
    assert ax.get_ylim() == pytest.approx((-0.02, 1.02))  # an accuracy axis


# ----------------------------------------------------------------------------- CLI


def test_cli_prints_and_writes_the_comparison(two_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", *map(str, two_runs), "--metrics", "acc1", "delta_eval", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| source")
    assert "predictive_power/celeba64" in printed and "wrote" in printed
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.md", "compare.png"]
    table = pd.read_csv(out / "compare.csv")
    assert list(table.columns) == ["source", "attack", "acc1", "delta_eval", "n"]
    assert len(table) == 2 * len(ATTACKS)
    assert (out / "compare.md").read_text().startswith("| source")
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_notes_an_incomplete_run_without_a_python_warning(two_runs, tmp_path, capsys):
    partial = make_run(tmp_path / "outputs", config="partial", complete=False)
    assert cli.main(["compare", *map(str, two_runs), str(partial)]) == 0
    captured = capsys.readouterr()
    assert "- incomplete run" in captured.out
    assert "Warning" not in captured.err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--metrics", "acc9"], "no metric column"),
        (["nowhere"], "no folder"),
        (["--out", "FILE"], "is a file, not a folder"),
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(two_runs, tmp_path, capsys, extra, match):
    (tmp_path / "FILE").write_text("")
    extra = [str(tmp_path / e) if e in ("nowhere", "FILE") else e for e in extra]
    assert cli.main(["compare", *map(str, two_runs), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mibench: error: ") and match in err
    assert err.count("\n") == 1


def test_cli_without_folders_is_a_usage_error(capsys):
    assert cli.main(["compare"]) == 2
    assert "FOLDER" in capsys.readouterr().err


def test_grid_columns_recorded_by_the_engine_key_the_conditions(tmp_path):
    """A study the fallback list does not know keys its rows by the columns it recorded."""
    out = make_run(tmp_path / "outputs", "new_study")
    rows = pd.read_csv(out / "results.csv")
    rows = pd.concat([rows.assign(width=4), rows.assign(width=8, acc1=rows["acc1"] / 2)])
    rows.to_csv(out / "results.csv", index=False)
    (out / "results_key.json").write_text(json.dumps({"key": ["width", "attack", "seed"]}))
    table = compare_table(gather_results([out]), metrics=["acc1"])
    assert "width" in table.columns and len(table) == 2 * len(ATTACKS)
    (out / "results_key.json").write_text("[1, 2")
    with pytest.raises(CompareError, match="not a results key file"):
        gather_results([out])
