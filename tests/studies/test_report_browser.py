"""The built report in headless Chromium: every page loads clean, and the checker sees breakage.

Needs Debian's ``/usr/bin/chromium`` (CI installs it with apt and sets ``MIBENCH_REQUIRE_BROWSER=1``,
which turns the skip into a failure). Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import csv
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest

from mibench_lib.studies.report import CHROMIUM, build_report, check_site

# the outputs tree comes from a real papermill run; one worker builds it (`--dist loadgroup`)
pytestmark = [pytest.mark.notebook, pytest.mark.xdist_group("report_browser")]

REPO = Path(__file__).resolve().parents[2]
STUDY = "fixture_study"


def _require_browser() -> None:
    reason = None
    if not Path(CHROMIUM).is_file():
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is not installed (pip install playwright)"
    if reason is None:
        return
    if os.environ.get("MIBENCH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MIBENCH_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report built over a real run of the fixture study (see test_report.make_outputs_tree)."""
    _require_browser()
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_report import make_outputs_tree
    finally:
        sys.path.remove(str(Path(__file__).parent))
    tree = make_outputs_tree(tmp_path_factory.mktemp("browser") / "project")
    (tree.outputs / "fixture_study" / "partial").mkdir()  # an incomplete run: page, no marker
    shutil.copy(tree.out / "parameters.yaml", tree.outputs / "fixture_study" / "partial")
    (tree.params / "partial.yaml").write_text("n: 2\n")
    build_report(tree.outputs, **tree.kwargs)
    return tree.outputs


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_site_is_sound_and_screenshotted(site, tmp_path):
    shots = tmp_path / "shots"
    assert check_site(site, screenshot_dir=shots) == []
    expected = {
        "index.png",
        f"{STUDY}__default__report.png",
        f"{STUDY}__default__{STUDY}.png",
        f"{STUDY}__partial__report.png",
    }
    assert {p.name for p in shots.iterdir()} == expected
    for name in expected:
        width, height = _png_size(shots / name)
        assert width == 1280 and height >= 500, (name, width, height)
        assert (shots / name).stat().st_size > 15_000, f"{name} looks blank"
    # The configuration page holds tables, a figure and the environment: far taller than a screen.
    assert _png_size(shots / f"{STUDY}__default__report.png")[1] > 1500


def test_checker_reports_breakage(site, tmp_path, capsys):
    """Through scripts/check_report.py, which prints each problem and exits 1."""
    import runpy

    main = runpy.run_path(str(REPO / "scripts" / "check_report.py"))["main"]
    assert main([str(tmp_path / "absent")]) == 1
    assert "build the report first" in capsys.readouterr().err

    broken = tmp_path / "site"
    shutil.copytree(site, broken)
    out = broken / STUDY / "default"
    (out / "fig_line.png").unlink()  # an image the page shows
    (out / "table_tricky.md").unlink()  # a link target
    with (out / "table_tricky.csv").open("a", newline="") as f:  # a row the page does not show
        csv.writer(f, lineterminator="\n").writerow(["added", "1"])
    index = broken / "index.html"
    index.write_text(
        index.read_text().replace(
            "</body>",
            '<script>console.error("boom")</script><script>throw new Error("kaboom")</script>'
            "</body>",
        )
    )
    assert main([str(broken)]) == 1
    out = capsys.readouterr()
    problems = out.out.splitlines()
    assert f"{len(problems)} problem(s)" in out.err
    text = "\n".join(problems)
    page = f"{STUDY}/default/report.html"
    assert f"{page}: image not shown: fig_line.png" in problems, text
    assert f"{page}: HTTP 404 for {STUDY}/default/fig_line.png" in problems, text
    assert (
        f"{page}: link to a missing target: {STUDY}/default/table_tricky.md (HTTP 404)" in problems
    )
    assert any(
        p.startswith(f"{page}: table from {STUDY}/default/table_tricky.csv: 4 rows shown where")
        for p in problems
    ), text
    assert "index.html: console error: boom" in problems, text
    assert any(p.startswith("index.html: page error: ") and "kaboom" in p for p in problems), text
