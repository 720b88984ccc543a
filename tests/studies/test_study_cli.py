"""The ``mibench`` command line through ``main([...])``: output and exit codes."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from mibench_lib.studies import cli, runner
from mibench_lib.studies.params import display_path
from mibench_lib.studies.runner import ConfigResult, RunFailedError

STUDY = "fixture_study"


@pytest.fixture
def repo(tree, monkeypatch):
    """Point the runner's default folders at the temporary tree."""
    monkeypatch.setattr(runner, "NOTEBOOKS_DIR", tree.notebooks)
    monkeypatch.setattr(runner, "PARAMETERS_DIR", tree.parameters)
    monkeypatch.setattr(runner, "OUTPUTS_DIR", tree.outputs)
    monkeypatch.setattr(runner, "CODE_DIR", tree.code)
    return tree


def _fake_module(monkeypatch, name: str, **attrs) -> None:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def registries(monkeypatch):
    _fake_module(monkeypatch, "mibench_lib.data", DATASETS={"mnist5k": 1, "digits": 2})
    _fake_module(monkeypatch, "mibench_lib.models", MODELS={"mnist_cnn": 1})
    _fake_module(
        monkeypatch,
        "mibench_lib.attacks",
        ATTACKS={"gmi": 1, "brep_mi": 2},
        ATTACK_ACCESS={"gmi": "white-box", "brep_mi": "label"},
    )
    _fake_module(monkeypatch, "mibench_lib.metrics", METRICS={"attack_acc": 1, "knn_dist": 2})


def test_list_prints_registries_and_studies(repo, registries, monkeypatch, capsys):
    repo.config("default", "")
    repo.config("tiny", "n: 1\n")
    monkeypatch.setitem(sys.modules, "mibench_lib.defenses", None)  # not written yet
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "datasets: digits, mnist5k",
        "models: mnist_cnn",
        "attacks:",
        "  brep_mi (label)",
        "  gmi (white-box)",
        "metrics: attack_acc, knn_dist",
        "defenses: none yet",
        f"studies (from {runner.STUDY_FILES_FROM}: {display_path(repo.parameters.parent)}):",
        f"  {STUDY}: default, tiny",
    ]


def test_list_shows_defenses_when_present(repo, registries, monkeypatch, capsys):
    _fake_module(monkeypatch, "mibench_lib.defenses", DEFENSES={"mid": 1, "bido": 2})
    assert cli.main(["list"]) == 0
    assert "defenses: bido, mid" in capsys.readouterr().out.splitlines()


def test_validate_ok_and_errors_are_one_line(repo, capsys):
    good = repo.config("good", "seeds: [0, 1]\n")
    assert cli.main(["validate", str(good), "-p", "n", "4"]) == 0
    assert "valid" in capsys.readouterr().out

    bad = repo.config("bad", "sedes: [0]\n")
    cases = [
        (["validate", str(bad)], "unknown parameter 'sedes'"),
        (["validate", str(good), "-p", "seeds", "0,1"], "field 'seeds' expects list, got str"),
        (["validate", str(good), "-p", "out_dir", "/tmp"], "'out_dir' set by the runner"),
        (["validate", str(repo.parameters / STUDY / "missing.yaml")], "does not exist"),
        (["run", str(repo.parameters / STUDY / "missing.yaml")], "does not exist"),
    ]
    for argv, expected in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("mibench: error: ") and expected in err, err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_usage_errors_exit_2(repo, capsys):
    assert cli.main([]) == 2
    assert cli.main(["run-all", "--study", "nope"]) == 2
    assert "unknown study 'nope'; known studies: fixture_study" in capsys.readouterr().err
    assert cli.main(["run-all", "--jobs", "0"]) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err


def test_failed_run_exits_1_with_notebook_path(repo, monkeypatch, capsys):
    path = repo.config("a", "")

    def fail(*args, **kwargs):
        raise RunFailedError("fixture_study/a failed in cell 3; see the executed notebook X.ipynb")

    monkeypatch.setattr(runner, "run_config", fail)
    assert cli.main(["run", str(path)]) == 1
    assert capsys.readouterr().err == (
        "mibench: run failed: fixture_study/a failed in cell 3; see the executed notebook X.ipynb\n"
    )


def test_run_all_reports_failures_exit_1(repo, monkeypatch, capsys):
    p = Path("x.yaml")
    results = [
        ConfigResult(STUDY, "a", p, "ran", Path("out/a"), wall_s=1.0),
        ConfigResult(STUDY, "b", p, "unavailable", None, "data_root: /d not found"),
        ConfigResult(STUDY, "c", p, "failed", None, "RunFailedError: boom; see c.ipynb"),
    ]
    seen = {}

    def fake_run_all(**kwargs):
        seen.update(kwargs)
        return results

    monkeypatch.setattr(runner, "run_all", fake_run_all)
    assert cli.main(["run-all", "--jobs", "2", "--study", STUDY]) == 1
    assert seen["jobs"] == 2 and seen["study"] == STUDY and seen["include_tiny"] is False
    out, err = capsys.readouterr()
    assert "1 ran, 0 already complete, 1 unavailable here, 1 failed" in out
    assert err.strip() == f"FAILED {STUDY}/c: RunFailedError: boom; see c.ipynb"
    results.pop()
    assert cli.main(["run-all"]) == 0


@pytest.mark.notebook
def test_run_then_skip(repo, capsys):
    path = repo.config("a", "n: 1\n")
    argv = ["run", str(path), "-p", "seeds", "[3]", "--no-progress"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "running fixture_study/a" in err
    assert out.strip() == str(repo.outputs / STUDY / "a")
    assert (repo.outputs / STUDY / "a" / "results.csv").read_text() == "seed,i,value\n3,0,30.0\n"
    assert cli.main(argv) == 0
    assert "skipped fixture_study/a" in capsys.readouterr().err

    # the report over what the run wrote: its status, pages and the index
    assert cli.main(["report", "--no-explorer"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [f"{STUDY}/a", "stale:", "parameters", "changed", "(seeds)"]
    assert out[-1].startswith("wrote ") and out[-1].endswith(str(repo.outputs / "index.html"))
    assert (repo.outputs / STUDY / "a" / "report.html").is_file()


def test_report_without_outputs_is_a_usage_error(repo, capsys):
    assert cli.main(["report", "--no-explorer"]) == 2
    assert "run a study first" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    missing = tmp_path / "study" / "none.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "mibench_lib.studies", "validate", str(missing)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"mibench: error: parameter file {missing} does not exist (")
    assert done.stderr.count("\n") == 1  # one line, saying where it looked
