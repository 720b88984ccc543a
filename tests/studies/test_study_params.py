"""Parameter files checked against the fixture notebook's parameters cell (no kernel needed)."""

from __future__ import annotations

import nbformat
import pytest

from mibench_lib.studies.params import (
    ParameterError,
    load_parameters,
    notebook_parameters,
    parse_overrides,
    read_parameter_file,
    validate_parameters,
)


def test_notebook_parameters_types_from_annotation_and_default(tree):
    specs = notebook_parameters(tree.notebook)
    assert list(specs)[:3] == ["study", "config", "out_dir"]
    types = {name: spec.type for name, spec in specs.items()}
    assert types == {
        "study": str,
        "config": str,
        "out_dir": str,
        "seeds": list,
        "n": int,
        "scale": float,
        "data_root": str,
        "fail": bool,
    }
    assert specs["n"].default == "3"
    assert specs["n"].help == "rows per seed"


def test_valid_file_merges_overrides(tree):
    path = tree.config("a", "seeds: [0, 1]\nn: 5\nscale: 2\n")
    params = load_parameters(path, tree.notebook, overrides={"n": 7})
    assert params == {"seeds": [0, 1], "n": 7, "scale": 2.0}
    assert isinstance(params["scale"], float)  # int accepted for float, converted


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n", "---\n"])
def test_empty_file_rejected(tree, text):
    path = tree.config("empty", text)
    with pytest.raises(ParameterError, match=r"empty\.yaml: empty parameter file; it would run"):
        load_parameters(path, tree.notebook)


@pytest.mark.parametrize(
    ("text", "key", "line", "first"),
    [
        ("n: 2\nscale: 1.0\nn: 3\n", "n", 3, 1),
        ("n: 2\nsub:\n  a: 1\n  b: 2\n  a: 3\n", "a", 5, 3),
        ("n: 2\nsub: {a: {x: 1, x: 2}}\n", "x", 2, 2),
        ("n: 2\nsub:\n  - {k: 1}\n  - {k: 1, k: 2}\n", "k", 4, 4),
    ],
)
def test_duplicate_key_rejected_at_any_level(tree, text, key, line, first):
    path = tree.config("dup", text)
    with pytest.raises(ParameterError) as err:
        read_parameter_file(path)
    assert str(err.value).startswith(
        f"{path}:{line}: duplicate key '{key}' (first on line {first}); YAML would keep only"
    )


def test_merge_key_override_is_not_a_duplicate(tree):
    path = tree.config("merge", "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    assert read_parameter_file(path)["other"] == {"x": 3, "y": 2}


def test_duplicate_key_in_override_rejected():
    with pytest.raises(ParameterError, match=r"^-p attack_kwargs .*duplicate key 'steps'"):
        parse_overrides([("attack_kwargs", "{gmi: {steps: 1, steps: 2}}")])


@pytest.mark.parametrize("text", ["n: 2001-13-01\n", "n: !!int x\n", "n: !!binary xyz\n"])
def test_values_yaml_cannot_build_are_parameter_errors(tree, text):
    with pytest.raises(ParameterError, match=r"bad\.yaml(:1)?: invalid YAML"):
        read_parameter_file(tree.config("bad", text))


def test_unknown_key_names_key_file_and_known_keys(tree):
    path = tree.config("typo", "seed: [0]\n")
    with pytest.raises(ParameterError) as err:
        load_parameters(path, tree.notebook)
    msg = str(err.value)
    assert "'seed'" in msg and "typo.yaml" in msg
    assert "seeds, n, scale, data_root, fail" in msg
    assert "out_dir" not in msg.split("declares:")[1]  # injected names are not offered


def test_unknown_override_key_rejected(tree):
    path = tree.config("a", "n: 2\n")
    with pytest.raises(ParameterError, match=r"^-p: unknown parameter 'stepz'"):
        load_parameters(path, tree.notebook, overrides=parse_overrides([("stepz", "10")]))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("seeds: '0,1'\n", "field 'seeds' expects list, got str ('0,1')"),
        ("n: 2.5\n", "field 'n' expects int, got float (2.5)"),
        ("n: true\n", "field 'n' expects int, got bool (True)"),
        ("scale: fast\n", "field 'scale' expects float, got str ('fast')"),
        ("fail: 1\n", "field 'fail' expects bool, got int (1)"),
        ("data_root: 3\n", "field 'data_root' expects str, got int (3)"),
    ],
)
def test_wrong_type_names_field(tree, text, expected):
    path = tree.config("bad", text)
    with pytest.raises(ParameterError) as err:
        load_parameters(path, tree.notebook)
    assert str(err.value) == f"{path}: {expected}"  # tmp_path lies outside the cwd: absolute


def test_wrong_type_in_override_names_field(tree):
    path = tree.config("a", "n: 2\n")
    with pytest.raises(ParameterError, match=r"^-p: field 'n' expects int, got str \('ten'\)$"):
        load_parameters(path, tree.notebook, overrides=parse_overrides([("n", "ten")]))


@pytest.mark.parametrize("key", ["study", "config", "out_dir"])
def test_injected_keys_refused(tree, key):
    path = tree.config("inj", f"{key}: somewhere\n")
    with pytest.raises(ParameterError, match=f"'{key}' set by the runner"):
        load_parameters(path, tree.notebook)
    with pytest.raises(ParameterError, match=f"^-p: '{key}' set by the runner"):
        load_parameters(tree.config("ok", "n: 1\n"), tree.notebook, overrides={key: "x"})


def test_yaml_syntax_error_names_file_and_line(tree):
    path = tree.config("broken", "n: 3\nseeds: [0, 1\nscale: 1.0\n")
    with pytest.raises(ParameterError, match=r"broken\.yaml:\d+: invalid YAML"):
        read_parameter_file(path)


def test_non_mapping_file_rejected(tree):
    path = tree.config("listy", "- n\n- 3\n")
    with pytest.raises(ParameterError, match=r"listy\.yaml: expected a mapping .* got list"):
        read_parameter_file(path)


def test_missing_file_is_file_not_found(tree):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        read_parameter_file(tree.parameters / "nope.yaml")


def test_parse_overrides_reads_yaml_scalars_and_lists():
    pairs = [("seeds", "[0, 1]"), ("steps", "10"), ("lr", "1e-3"), ("name", "gmi"), ("on", "true")]
    assert parse_overrides(pairs) == {
        "seeds": [0, 1],
        "steps": 10,
        "lr": 1e-3,
        "name": "gmi",
        "on": True,
    }
    assert parse_overrides([("n", "1"), ("n", "2")]) == {"n": 2}
    with pytest.raises(ParameterError, match="-p seeds"):
        parse_overrides([("seeds", "[0, 1")])


def test_untyped_none_default_accepts_anything_and_nullable(tree):
    specs = notebook_parameters(tree.notebook)
    assert validate_parameters({"n": 4}, specs, source="s") == {"n": 4}
    with pytest.raises(ParameterError, match="field 'n' expects int, got NoneType"):
        validate_parameters({"n": None}, specs, source="s")


def _notebook_with_cell(tree, tmp_path, source: str):
    nb = nbformat.read(tree.notebook, as_version=4)
    nb.cells[1].source = source
    path = tmp_path / "variant.ipynb"
    nbformat.write(nb, path)
    return path


def test_optional_and_union_annotations(tree, tmp_path):
    # papermill's line parser skips "x: str | None = None"; the syntax tree still finds it.
    source = (
        "root: str | None = None\n"
        "k: Optional[int] = None  # top-k\n"
        "ids: list[int] = [1, 2]\n"
        "opts = {\n    'a': 1,\n}\n"
    )
    specs = notebook_parameters(_notebook_with_cell(tree, tmp_path, source))
    assert list(specs) == ["root", "k", "ids", "opts"]  # cell order
    assert {n: (s.type, s.nullable) for n, s in specs.items()} == {
        "root": (str, True),
        "k": (int, True),
        "ids": (list, False),
        "opts": (dict, False),
    }
    assert validate_parameters({"root": None, "k": 3}, specs, source="s") == {"root": None, "k": 3}
    with pytest.raises(ParameterError, match="field 'root' expects str, got int"):
        validate_parameters({"root": 1}, specs, source="s")


def test_notebook_without_injected_parameters_rejected(tree, tmp_path):
    path = _notebook_with_cell(tree, tmp_path, "n = 3\n")
    with pytest.raises(ParameterError, match="must declare 'study', 'config', 'out_dir'"):
        load_parameters(tree.config("a", "n: 1\n"), path)
