"""Fixtures for the study runner: a temporary notebooks/parameters tree around a 3-cell notebook."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
STUDY = "fixture_study"


@dataclass
class StudyTree:
    """A throwaway project: notebooks/, parameters/<study>/, outputs/ and a tiny code tree."""

    root: Path
    study: str
    notebooks: Path
    parameters: Path
    outputs: Path
    code: Path

    @property
    def notebook(self) -> Path:
        return self.notebooks / f"{self.study}.ipynb"

    def config(self, name: str, text: str) -> Path:
        path = self.parameters / self.study / f"{name}.yaml"
        path.write_text(text)
        return path

    def add_study(self, name: str, parameters: str, code: str) -> Path:
        """A second study: notebook ``<name>.ipynb`` with these cells, and its parameters folder."""
        import nbformat

        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell, nbformat.v4.new_code_cell(code)]
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        path = self.notebooks / f"{name}.ipynb"
        nbformat.write(nb, path)
        (self.parameters / name).mkdir(exist_ok=True)
        return path

    def run_kwargs(self) -> dict:
        return {
            "notebooks_dir": self.notebooks,
            "out_root": self.outputs,
            "code_dir": self.code,
            "progress": False,
            "timeout_s": 60,
        }


@pytest.fixture
def tree(tmp_path: Path) -> StudyTree:
    notebooks, parameters, code = tmp_path / "notebooks", tmp_path / "parameters", tmp_path / "code"
    for folder in (notebooks, parameters / STUDY, code):
        folder.mkdir(parents=True)
    shutil.copy(FIXTURES / f"{STUDY}.ipynb", notebooks)
    # A stand-in source tree: the real package changes while others work, which would flip hashes.
    (code / "module.py").write_text("X = 1\n")
    return StudyTree(tmp_path, STUDY, notebooks, parameters, tmp_path / "outputs", code)
