"""Result records: resumable CSV rows, mean ± std tables, figure and table files."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from mibench_lib.studies.records import (
    TornRowWarning,
    append_rows,
    completed_keys,
    mean_std_table,
    repair_torn_tail,
    save_figure,
    save_table,
)


def test_append_rows_writes_header_once_and_resume_keys(tmp_path):
    out = tmp_path / "run"
    assert completed_keys(out, ["attack", "seed"]) == set()  # nothing yet, folder missing
    path = append_rows(out, [{"attack": "gmi", "checkpoint": 10, "seed": 0, "acc": 0.5}])
    append_rows(
        out,
        [
            {"seed": 1, "attack": "gmi", "checkpoint": 10, "acc": 0.25},  # key order may differ
            {"attack": "kedmi", "checkpoint": 20, "seed": 0, "acc": 1.0},
        ],
    )
    assert path == out / "results.csv"
    assert path.read_text().splitlines() == [
        "attack,checkpoint,seed,acc",
        "gmi,10,0,0.5",
        "gmi,10,1,0.25",
        "kedmi,20,0,1.0",
    ]
    keys = completed_keys(out, ["attack", "checkpoint", "seed"])
    assert keys == {("gmi", 10, 0), ("gmi", 10, 1), ("kedmi", 20, 0)}
    assert ("gmi", 10, 1) in keys and ("gmi", 10, 2) not in keys  # ints compare with ints


def test_append_rows_missing_and_new_columns(tmp_path):
    append_rows(tmp_path, [{"attack": "gmi", "seed": 0}])
    append_rows(tmp_path, [{"attack": "gmi", "seed": 1, "acc1_selected": 0.5}, {"seed": 2}])
    append_rows(tmp_path, [{"seed": 3, "attack": "kedmi"}])
    assert (tmp_path / "results.csv").read_text().splitlines() == [
        "attack,seed,acc1_selected",
        "gmi,0,",
        "gmi,1,0.5",
        ",2,",
        "kedmi,3,",
    ]
    assert append_rows(tmp_path, []) == tmp_path / "results.csv"  # no rows: no change
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 5
    with pytest.raises(ValueError, match="non-empty strings, got 3"):
        append_rows(tmp_path, [{3: "x"}])


def test_completed_keys_errors(tmp_path):
    append_rows(tmp_path, [{"attack": "gmi", "seed": 0}], filename="other.csv")
    expected = r"no column \['step'\]; its columns are \['attack', 'seed'\]"
    with pytest.raises(ValueError, match=expected):
        completed_keys(tmp_path, ["attack", "step"], filename="other.csv")
    with pytest.raises(TypeError, match="list of column names"):
        completed_keys(tmp_path, "attack", filename="other.csv")


def test_mean_std_table_formats_and_counts():
    df = pd.DataFrame(
        {
            "attack": ["gmi", "gmi", "gmi", "kedmi"],
            "seed": [0, 1, 2, 0],
            "acc": [0.5, 0.6, 0.7, 0.9],
            "dist": [1.0, 3.0, 5.0, 2.0],
        }
    )
    table = mean_std_table(df, ["attack"], ["acc", "dist"], digits=2)
    # gmi: acc mean 0.6, sample std 0.1; dist mean 3, sample std 2. kedmi: one seed, mean only.
    assert table.to_dict("records") == [
        {"attack": "gmi", "acc": "0.60 ± 0.10", "dist": "3.00 ± 2.00", "n": 3},
        {"attack": "kedmi", "acc": "0.90", "dist": "2.00", "n": 1},
    ]
    with pytest.raises(ValueError, match=r"no column \['defense'\]"):
        mean_std_table(df, ["defense"], ["acc"])
    with pytest.raises(ValueError, match=r"non-numeric \['attack'\]"):
        mean_std_table(df, ["seed"], ["attack"])


def test_save_table_writes_markdown_latex_csv(tmp_path):
    df = pd.DataFrame({"attack_name": ["gmi"], "acc": ["0.60 ± 0.10"], "n": [3]})
    paths = save_table(df, tmp_path / "t", "summary")
    assert {k: p.name for k, p in paths.items()} == {
        "md": "table_summary.md",
        "tex": "table_summary.tex",
        "csv": "table_summary.csv",
    }
    md = paths["md"].read_text()
    assert "| attack_name" in md and "0.60 ± 0.10" in md
    tex = paths["tex"].read_text()
    assert r"attack\_name" in tex and r"0.60 $\pm$ 0.10" in tex and r"\toprule" in tex
    assert pd.read_csv(paths["csv"]).to_dict("records") == df.to_dict("records")


def test_save_figure_writes_png_and_pdf(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    png, pdf = save_figure(fig, tmp_path, "curve")
    plt.close(fig)
    assert (png.name, pdf.name) == ("fig_curve.png", "fig_curve.pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match="plain file-name part"):
        save_figure(fig, tmp_path, "../escape")


# ----------------------------------------------------------------------------- torn rows

HEADER = "attack,seed,acc\n"


@pytest.mark.parametrize(
    "tail",
    [
        "gmi,1,0.2",  # the last field cut short, no newline
        "gmi,1",  # fields missing, no newline
        "gmi,1\n",  # fields missing, newline already written
        "gm",  # cut inside the first field
        'gmi,1,"0.',  # cut inside a quoted field
        'gmi,1,"a\n',  # cut after a newline inside a quoted field
    ],
)
def test_torn_last_row_is_dropped_and_computed_again(tmp_path, tail):
    path = tmp_path / "results.csv"
    path.write_text(HEADER + "gmi,0,0.5\n" + tail)
    with pytest.warns(TornRowWarning, match=r"results\.csv: dropped the torn line 3"):
        done = completed_keys(tmp_path, ["attack", "seed"])
    assert done == {("gmi", 0)}  # the torn row is not done...
    assert path.read_text() == HEADER + "gmi,0,0.5\n"  # ...and is gone from the file
    append_rows(tmp_path, [{"attack": "gmi", "seed": 1, "acc": 0.25}])  # recomputed once
    assert path.read_text() == HEADER + "gmi,0,0.5\ngmi,1,0.25\n"
    assert completed_keys(tmp_path, ["attack", "seed"]) == {("gmi", 0), ("gmi", 1)}


def test_append_rows_drops_a_torn_row_before_appending(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(HEADER + "gmi,0,0.5\ngmi,1,0.")  # killed while writing seed 1
    with pytest.warns(TornRowWarning):
        append_rows(tmp_path, [{"attack": "gmi", "seed": 1, "acc": 0.25}])
    # Without the repair the new row would glue onto the torn one: "gmi,1,0.gmi,1,0.25".
    assert path.read_text().splitlines() == ["attack,seed,acc", "gmi,0,0.5", "gmi,1,0.25"]
    assert not (tmp_path / "results.csv.tmp").exists()


def test_torn_row_with_a_multibyte_character_cut_in_half(tmp_path):
    path = tmp_path / "results.csv"
    path.write_bytes((HEADER + "gmi,0,é\n").encode() + "gmi,1,é".encode()[:-1])
    with pytest.warns(TornRowWarning):
        assert completed_keys(tmp_path, ["attack", "seed"]) == {("gmi", 0)}
    assert path.read_text(encoding="utf-8") == HEADER + "gmi,0,é\n"


def test_torn_header_leaves_an_empty_file(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("attack,se")
    with pytest.warns(TornRowWarning):
        assert completed_keys(tmp_path, ["attack", "seed"]) == set()
    append_rows(tmp_path, [{"attack": "gmi", "seed": 0}])
    assert path.read_text() == "attack,seed\ngmi,0\n"


def test_intact_file_is_left_alone(tmp_path):
    path = append_rows(tmp_path, [{"attack": "gmi", "seed": 0, "note": "a,b\nc"}])
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no TornRowWarning
        assert repair_torn_tail(path) == 0
        assert completed_keys(tmp_path, ["attack", "seed"]) == {("gmi", 0)}
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert repair_torn_tail(tmp_path / "absent.csv") == 0


def test_malformed_line_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(HEADER + "gmi,0\ngmi,1,0.5\n")
    with pytest.raises(
        ValueError, match=r"results\.csv: line 2 has 2 fields where the header has 3"
    ):
        completed_keys(tmp_path, ["attack", "seed"])
    assert path.read_text() == HEADER + "gmi,0\ngmi,1,0.5\n"  # nothing rewritten
