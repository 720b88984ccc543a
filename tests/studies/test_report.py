"""The static report over an outputs tree, and README tables generated from a results snapshot.

The outputs tree is made by the real runner on the fixture study (``tests/studies/fixtures``), once
per module, then copied for each test that changes it; tests that need it are marked ``notebook``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import pytest

from mibench_lib.studies.records import mean_std_table, save_figure, save_table
from mibench_lib.studies.report import (
    ReportError,
    block_table,
    build_report,
    build_report_summary,
    config_statuses,
    format_summary,
    headline_table,
    parse_blocks,
    publish_snapshot,
    readme_sources,
    update_readme,
)
from mibench_lib.studies.runner import MARKER, REPO_ROOT, run_config

# One worker runs this module (`--dist loadgroup`), so its module fixture is built once.
pytestmark = pytest.mark.xdist_group("report")

FIXTURES = Path(__file__).parent / "fixtures"
STUDY = "fixture_study"
SCRIPT = "<script>alert(1)</script>"
TRICKY = {"name": ["<b>x</b>", "a|b", "  lead", "&amp;"], "value": ["0.10", "", "n/a", "1e-05"]}


@dataclass
class Tree:
    """notebooks/, parameters/<study>/, code/ and outputs/ in one folder."""

    root: Path

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def out(self) -> Path:
        return self.outputs / STUDY / "default"

    @property
    def params(self) -> Path:
        return self.root / "parameters" / STUDY

    @property
    def kwargs(self) -> dict[str, Path]:
        return {
            "parameters_dir": self.root / "parameters",
            "notebooks_dir": self.root / "notebooks",
            "code_dir": self.root / "code",
        }


def make_outputs_tree(root: Path) -> Tree:
    """Run the fixture study's ``default`` configuration and add tables and a figure to it."""
    tree = Tree(root)
    for folder in (root / "notebooks", tree.params, root / "code"):
        folder.mkdir(parents=True)
    shutil.copy(FIXTURES / f"{STUDY}.ipynb", root / "notebooks")
    (root / "code" / "module.py").write_text("X = 1\n")
    (tree.params / "default.yaml").write_text(f'seeds: [0, 1]\nn: 2\ndata_root: "{SCRIPT}"\n')
    (tree.params / "extra.yaml").write_text("n: 4\n")  # never run: missing
    (tree.params / "tiny.yaml").write_text("n: 1\n")  # the CI config: never missing
    (tree.params / "_shared.yaml").write_text("n: 1\n")  # a fragment, not a configuration
    out = run_config(
        tree.params / "default.yaml",
        notebooks_dir=root / "notebooks",
        out_root=tree.outputs,
        code_dir=root / "code",
        progress=False,
        timeout_s=60,
    )
    assert out == tree.out
    results = pd.read_csv(out / "results.csv")
    save_table(mean_std_table(results, ["seed"], ["value"]), out, "results_mean_std")
    save_table(pd.DataFrame(TRICKY), out, "tricky")
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    save_figure(fig, out, "line", dpi=60)
    # Not studies: what the runner keeps beside them.
    (tree.outputs / "_previous" / STUDY / "old").mkdir(parents=True)
    (tree.outputs / ".hidden" / "x").mkdir(parents=True)
    return tree


@pytest.fixture(scope="module")
def base_tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return make_outputs_tree(tmp_path_factory.mktemp("report") / "project")


@pytest.fixture
def tree(base_tree: Tree, tmp_path: Path) -> Tree:
    """A private copy of the module's tree (modification times kept)."""
    shutil.copytree(base_tree.root, tmp_path / "project", symlinks=True)
    return Tree(tmp_path / "project")


def _status(tree: Tree) -> dict[str, str]:
    return {s.name: s.label for s in config_statuses(tree.outputs, **tree.kwargs)}


def _stale_code(tree: Tree) -> None:
    (tree.root / "code" / "module.py").write_text("X = 2\n")


def _stale_parameters(tree: Tree) -> None:
    text = (tree.params / "default.yaml").read_text()
    (tree.params / "default.yaml").write_text(text.replace("n: 2", "n: 3"))


def _stale_notebook(tree: Tree) -> None:
    path = tree.root / "notebooks" / f"{STUDY}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("A note added after the run."))
    nbformat.write(nb, path)


def _incomplete(tree: Tree) -> None:
    (tree.out / MARKER).unlink()
    env = json.loads((tree.out / "environment.json").read_text())
    (tree.out / "environment.json").write_text(json.dumps({**env, "status": "running"}))


def _orphan(tree: Tree) -> None:
    (tree.params / "default.yaml").unlink()


def _invalid(tree: Tree) -> None:
    (tree.params / "default.yaml").write_text("n: many\n")


@pytest.mark.notebook
@pytest.mark.parametrize(
    ("change", "label"),
    [
        (None, "current"),
        (_stale_code, "stale: code changed"),
        (_stale_parameters, "stale: parameters changed (n)"),
        (_stale_notebook, "stale: notebook changed"),
        (_incomplete, "incomplete: interrupted or still running"),
        (_orphan, "orphan: "),
        (_invalid, "invalid: the parameter file no longer validates: "),
    ],
)
def test_status_of_each_configuration(tree, change, label):
    if change is not None:
        change(tree)
    status = _status(tree)
    assert status[f"{STUDY}/default"].startswith(label), status
    # extra.yaml has no folder; tiny.yaml and _shared.yaml are never "missing"; _previous and
    # .hidden are not studies.
    assert set(status) == {f"{STUDY}/default", f"{STUDY}/extra"}
    assert status[f"{STUDY}/extra"] == "missing"


@pytest.mark.notebook
def test_invalid_status_names_the_field(tree):
    _invalid(tree)
    label = _status(tree)[f"{STUDY}/default"]
    assert "'n'" in label and "\n" not in label


@pytest.mark.notebook
def test_index_names_missing_and_stale_first(tree):
    _stale_code(tree)
    summary = build_report_summary(tree.outputs, **tree.kwargs)
    index = summary.index.read_text()
    assert (
        f"1 configuration missing: {STUDY}/extra; 1 stale: {STUDY}/default (code changed)." in index
    )
    assert 'href="fixture_study/default/report.html"' in index
    assert 'class="badge badge-missing">missing</span>' in index
    lines = format_summary(summary).splitlines()
    assert any(line.split() == [f"{STUDY}/default", "stale:", "code", "changed"] for line in lines)
    assert summary.problems == ()


@pytest.mark.notebook
def test_pages_escape_user_data(tree):
    build_report(tree.outputs, **tree.kwargs)
    page = (tree.out / "report.html").read_text()
    assert "data_root: &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "&amp;amp;" in page
    for path in tree.outputs.rglob("*.html"):
        text = path.read_text()
        assert "<script" not in text.lower(), f"{path} holds a script"
        assert "<b>x</b>" not in text, path


EXTERNAL = re.compile(
    r"https?://|(?:src|href)\s*=\s*[\"']?//|url\(\s*[\"']?(?:https?:)?//|@import|cdn\.", re.I
)


@pytest.mark.notebook
def test_no_external_urls(tree):
    nb_path = tree.outputs / "explore.ipynb"  # the explorer page is rendered the same way
    shutil.copy(tree.out / f"{STUDY}.ipynb", nb_path)
    summary = build_report_summary(tree.outputs, **tree.kwargs)
    written = [*tree.outputs.rglob("*.html"), tree.outputs / "report.css"]
    assert {p.name for p in written} >= {
        "index.html",
        "report.html",
        f"{STUDY}.html",
        "explore.html",
        "report.css",
    }
    assert set(summary.pages) >= set(written)
    for path in written:
        found = EXTERNAL.findall(path.read_text())
        assert not found, f"{path}: {found}"
    assert 'href="explore.html"' in summary.index.read_text()


class _Tables(HTMLParser):
    """Cell texts of every table with a data-source attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "data-source" in attrs:
            self._rows = self.tables.setdefault(attrs["data-source"], [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._rows is not None:
            self._rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._rows = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return [row for row in csv.reader(f) if row]


@pytest.mark.notebook
def test_tables_show_the_csv_text_exactly(tree):
    index = build_report(tree.outputs, **tree.kwargs)
    parser = _Tables()
    parser.feed((tree.out / "report.html").read_text())
    assert set(parser.tables) == {"table_results_mean_std.csv", "table_tricky.csv"}
    for source, rows in parser.tables.items():
        assert rows == _csv_rows(tree.out / source), source
    assert parser.tables["table_tricky.csv"][1:] == [list(r) for r in zip(*TRICKY.values())]
    # The index shows the headline table, with its source relative to the index.
    parser = _Tables()
    parser.feed(index.read_text())
    headline = f"{STUDY}/default/table_results_mean_std.csv"
    assert list(parser.tables) == [headline]
    assert parser.tables[headline] == _csv_rows(tree.outputs / headline)


@pytest.mark.notebook
def test_config_page_links_every_output(tree):
    build_report(tree.outputs, **tree.kwargs)
    page = (tree.out / "report.html").read_text()
    for name in (
        "results.csv",
        f"{STUDY}.ipynb",
        f"{STUDY}.html",
        "environment.json",
        "table_tricky.csv",
        "table_tricky.md",
        "table_tricky.tex",
        "fig_line.pdf",
    ):
        assert f'href="{name}"' in page, name
    assert '<img src="fig_line.png" alt="Figure line of fixture_study/default">' in page
    env = json.loads((tree.out / "environment.json").read_text())
    assert f"<td>{env['git_commit']}</td>" in page
    assert "<th>wall time</th>" in page and "<th>papermill</th>" in page


@pytest.mark.notebook
def test_notebook_rendered_only_when_newer(tree):
    first = build_report_summary(tree.outputs, **tree.kwargs)
    page = tree.out / f"{STUDY}.html"
    assert first.rendered == (page,)
    assert "fixture_study/default" in page.read_text()
    written = page.stat().st_mtime_ns
    again = build_report_summary(tree.outputs, **tree.kwargs)
    assert again.rendered == () and again.reused == (page,)
    assert page.stat().st_mtime_ns == written
    later = page.stat().st_mtime + 10
    os.utime(tree.out / f"{STUDY}.ipynb", (later, later))  # the run wrote the notebook again
    assert build_report_summary(tree.outputs, **tree.kwargs).rendered == (page,)


PIXEL = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
)


def test_widget_state_and_scripts_are_dropped(tmp_path):
    from mibench_lib.studies.report import render_notebook

    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    cell = nbformat.v4.new_code_cell("show()")
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={
                "application/vnd.jupyter.widget-view+json": {"model_id": "abc"},
                "text/plain": "progress 3/3",
            },
        ),
        nbformat.v4.new_output("display_data", data={"application/javascript": "alert(2)"}),
        nbformat.v4.new_output(
            "display_data",
            data={"text/html": "<div>plot</div><script>draw()</script>", "text/plain": "Plot"},
        ),
        nbformat.v4.new_output("display_data", data={"image/png": PIXEL, "text/plain": "fig"}),
    ]
    nb.cells = [cell]
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    page = tmp_path / "nb.html"
    assert render_notebook(src, page, title="t", nav="", css_href="report.css")
    text = page.read_text()
    assert "progress 3/3" in text and "Plot" in text
    assert "<script" not in text and "alert(2)" not in text and "model_id" not in text
    images = re.findall(r"<img [^>]*>", text)
    assert len(images) == 1 and f'src="data:image/png;base64,{PIXEL}"' in images[0]
    assert 'alt="Image output of code cell 1"' in images[0]
    assert not render_notebook(src, page, title="t", nav="", css_href="report.css")


def test_headline_table_choice(tmp_path):
    for name in ("table_b.csv", "table_a.csv"):
        (tmp_path / name).write_text("x\n1\n")
    assert headline_table("anything", tmp_path) == tmp_path / "table_a.csv"
    (tmp_path / "table_results_mean_std.csv").write_text("x\n1\n")
    assert headline_table("anything", tmp_path) == tmp_path / "table_results_mean_std.csv"
    assert headline_table("leaderboard", tmp_path) == tmp_path / "table_results_mean_std.csv"
    (tmp_path / "table_leaderboard.csv").write_text("x\n1\n")
    assert headline_table("leaderboard", tmp_path) == tmp_path / "table_leaderboard.csv"
    assert headline_table("x", tmp_path / "absent") is None


def test_build_report_refuses_a_missing_outputs_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no outputs folder"):
        build_report(tmp_path / "nope")


# ----------------------------------------------------------------------------- README blocks

TABLE = "attack,acc1,delta_eval,note\ngmi,0.500,1.25,a|b\nkedmi,0.750,2.5,\nppa,0.125,3.0,x\n"
README = """# Project

Intro text stays.

<!-- mibench:table lb/default/table_lb columns=attack,acc1,note rows=attack:gmi|kedmi rename=acc1:top-1 -->
old body
<!-- /mibench:table -->

Closing text stays.
"""
EXPECTED_BODY = """
| attack | top-1 | note |
| --- | --- | --- |
| gmi | 0.500 | a\\|b |
| kedmi | 0.750 |  |

<sub>generated by mibench report from outputs/lb/default/table_lb.csv (commit abcdef1)</sub>

"""


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    folder = tmp_path / "results" / "lb" / "default"
    folder.mkdir(parents=True)
    (folder / "table_lb.csv").write_text(TABLE)
    (folder / "environment.json").write_text(
        json.dumps({"git_commit": "abcdef1234567890", "git_dirty": False})
    )
    return tmp_path / "results"


def _readme(tmp_path: Path, text: str = README) -> Path:
    path = tmp_path / "README.md"
    path.write_text(text)
    return path


def test_blocks_rewrite(tmp_path, snapshot):
    readme = _readme(tmp_path)
    changed = update_readme(readme, snapshot)
    assert len(changed) == 1 and changed[0].endswith("README.md:5 lb/default/table_lb")
    text = readme.read_text()
    start, end = README.split("old body\n")
    assert text == start + EXPECTED_BODY + end


def test_second_rewrite_is_a_no_op(tmp_path, snapshot):
    readme = _readme(tmp_path)
    update_readme(readme, snapshot)
    before = readme.read_bytes()
    written = readme.stat().st_mtime_ns
    assert update_readme(readme, snapshot) == []
    assert update_readme(readme, snapshot, check=True) == []
    assert readme.read_bytes() == before and readme.stat().st_mtime_ns == written


def test_check_mode_detects_a_changed_number(tmp_path, snapshot):
    readme = _readme(tmp_path)
    update_readme(readme, snapshot)
    synced = readme.read_text()
    csv_path = snapshot / "lb" / "default" / "table_lb.csv"
    csv_path.write_text(TABLE.replace("0.750", "0.751"))
    differ = update_readme(readme, snapshot, check=True)
    assert len(differ) == 1 and "README.md:5" in differ[0]
    assert readme.read_text() == synced  # check mode writes nothing
    update_readme(readme, snapshot)
    assert "| kedmi | 0.751 |  |" in readme.read_text()
    assert update_readme(readme, snapshot, check=True) == []


def test_commit_line_says_when_the_tree_was_dirty(tmp_path, snapshot):
    env = snapshot / "lb" / "default" / "environment.json"
    env.write_text(json.dumps({"git_commit": "0123456789", "git_dirty": True}))
    readme = _readme(
        tmp_path, "<!-- mibench:table lb/default/table_lb -->\n<!-- /mibench:table -->\n"
    )
    update_readme(readme, snapshot)
    text = readme.read_text()
    assert "(commit 0123456, uncommitted changes)</sub>" in text
    assert "| attack | acc1 | delta_eval | note |" in text and "| ppa | 0.125 | 3.0 | x |" in text


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("lb/default/table_lb colums=attack", r"README\.md:3: unknown option 'colums'"),
        ("lb/default/table_lb rows=attack", r"README\.md:3: rows='attack' is not column:value"),
        ("lb/default/table_lb columns=attack,acc9", r"README\.md:3: .*no column \['acc9'\]"),
        ("lb/default/table_lb rows=attack:gmii", r"README\.md:3: rows= value \['gmii'\] matches"),
        ("lb/default/table_lb rows=model:x", r"README\.md:3: rows= names the column 'model'"),
        ("lb/default/table_lb columns=attack rename=acc1:a", r"README\.md:3: rename= names"),
        ("lb/default/table_nope", r"README\.md:3: no .*table_nope\.csv"),
        ("lb/table_lb", r"README\.md:3: the source 'lb/table_lb' is not <study>/<config>/<table>"),
        ("lb/default/table_lb columns", r"README\.md:3: option 'columns' is not key=value"),
    ],
)
def test_bad_blocks_name_their_line(tmp_path, snapshot, block, message):
    readme = _readme(tmp_path, f"# T\n\n<!-- mibench:table {block} -->\n<!-- /mibench:table -->\n")
    before = readme.read_text()
    with pytest.raises(ReportError, match=message):
        update_readme(readme, snapshot)
    assert readme.read_text() == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- mibench:table lb/default/table_lb -->\n", r":1: the block is never closed"),
        ("x\n<!-- /mibench:table -->\n", r":2: closing .* without a block"),
        (
            "<!-- mibench:table lb/default/table_lb -->\n<!-- mibench:table lb/default/t -->\n",
            r":2: a block opens inside the block of line 1",
        ),
        ("see <!-- mibench:table lb/default/table_lb --> inline\n", r":1: a mibench comment"),
    ],
)
def test_malformed_blocks(text, message):
    with pytest.raises(ReportError, match=message):
        parse_blocks(text)


def test_readme_sources(tmp_path):
    readme = _readme(
        tmp_path,
        README + "<!-- mibench:table lb/default/table_lb columns=attack -->\n"
        "<!-- /mibench:table -->\n<!-- mibench:table x/y/table_z -->\n<!-- /mibench:table -->\n",
    )
    assert readme_sources(readme) == ["lb/default/table_lb", "x/y/table_z"]


@pytest.mark.notebook
def test_publish_copies_current_and_refuses_stale(tree, tmp_path):
    snap = tmp_path / "docs" / "results"
    source = f"{STUDY}/default/table_tricky"
    written = publish_snapshot(tree.outputs, snap, [source], **tree.kwargs)
    assert sorted(p.name for p in written) == ["environment.json", "table_tricky.csv"]
    for path in written:
        assert path.read_bytes() == (tree.out / path.name).read_bytes()
    readme = _readme(
        tmp_path, f"<!-- mibench:table {source} columns=name -->\n<!-- /mibench:table -->\n"
    )
    update_readme(readme, snap)
    assert "| a\\|b |" in readme.read_text()

    _stale_code(tree)
    other = tmp_path / "other"
    with pytest.raises(ReportError, match=f"{STUDY}/default is stale: code changed; run"):
        publish_snapshot(tree.outputs, other, [source], **tree.kwargs)
    assert not other.exists()
    _incomplete(tree)
    with pytest.raises(ReportError, match=f"{STUDY}/default is incomplete"):
        publish_snapshot(tree.outputs, other, [source], **tree.kwargs)
    with pytest.raises(ReportError, match="is missing"):
        publish_snapshot(tree.outputs, other, [f"{STUDY}/extra/table_x"], **tree.kwargs)


SNAPSHOT = REPO_ROOT / "docs" / "results"
SNAPSHOT_CONFIGS = sorted(f"{p.parent.name}/{p.name}" for p in SNAPSHOT.glob("*/*") if p.is_dir())


@pytest.mark.parametrize("part", ["README.md", *SNAPSHOT_CONFIGS])
def test_readme_blocks_match_snapshot(part):
    """The real README is in sync with docs/results, and each snapshot with its current outputs."""
    from mibench_lib.studies.report import config_status

    if part == "README.md":
        readme = REPO_ROOT / "README.md"
        if not parse_blocks(readme.read_text(encoding="utf-8")):
            pytest.skip("README.md has no <!-- mibench:table --> block yet")
        assert update_readme(readme, SNAPSHOT, check=True) == [], (
            "README.md tables differ from docs/results: regenerate them (update_readme)"
        )
        return
    study, config = part.split("/")
    outputs = REPO_ROOT / "outputs" / study / config
    if not outputs.is_dir():
        pytest.skip(f"outputs/{part} does not exist on this machine")
    status = config_status(REPO_ROOT / "outputs", study, config)
    if status.state != "current":
        pytest.skip(f"outputs/{part} is {status.label}: nothing current to compare")
    # What the README shows of this configuration (its blocks' columns and rows; timing columns
    # are not cited) must read the same from the snapshot and from the current run.
    blocks = [
        b
        for b in parse_blocks((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
        if f"{b.study}/{b.config}" == part
    ]
    assert blocks, f"docs/results/{part} is cited by no README block: delete it"
    for block in blocks:
        cited, _ = block_table(block, SNAPSHOT)
        measured, _ = block_table(block, REPO_ROOT / "outputs")
        assert cited == measured, (
            f"README.md:{block.line} ({part}/{block.table}) differs from outputs/: "
            "run `mibench report --publish` and commit"
        )
