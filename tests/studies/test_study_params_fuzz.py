"""Property-based fuzzing of the parameter loader and the nested checks (hypothesis)."""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mibench_lib.attacks import ATTACK_NEEDS, ATTACKS  # noqa: E402
from mibench_lib.studies.params import (  # noqa: E402
    ATTACK_SUPPLIED,
    ParameterError,
    check_study_parameters,
    parse_overrides,
    read_parameter_file,
    safe_dump,
)

FUZZ = settings(
    max_examples=150,
    deadline=None,  # shared CI cores: no per-example time limit
    suppress_health_check=[HealthCheck.too_slow],
)

names = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=12,
)
parameter_files = st.dictionaries(names, values, min_size=1, max_size=8)


def _write(text: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="mibench-fuzz-"))
    path = folder / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@FUZZ
@given(parameter_files)
def test_any_mapping_round_trips_through_the_loader(data):
    path = _write(safe_dump(data))
    assert read_parameter_file(path) == data


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_is_a_mapping_or_a_parameter_error(text):
    path = _write(text)
    try:
        data = read_parameter_file(path)
    except ParameterError as err:
        assert str(err).startswith(str(path)), err  # every message names the file
    else:
        assert isinstance(data, dict) and data and all(isinstance(k, str) for k in data)


@FUZZ
@given(st.text(max_size=60))
def test_override_values_parse_or_raise_parameter_error(text):
    try:
        parse_overrides([("key", text)])
    except ParameterError as err:
        assert str(err).startswith("-p key "), err


@FUZZ
@given(
    st.lists(names, min_size=1, max_size=6, unique=True),
    st.integers(0, 5),
    st.integers(0, 6),
    st.integers(0, 3),
)
def test_a_repeated_key_at_any_level_is_refused_with_its_line(raw, which, where, depth):
    keys = [f"k{n}" for n in raw]  # a letter first: never read as a number, bool or null
    key = keys[which % len(keys)]
    entries = [f"{k}: {i}" for i, k in enumerate(keys)]
    at = keys.index(key) + 1 + where % (len(entries) - keys.index(key))
    entries.insert(at, f"{key}: again")  # after its first occurrence
    indent = "  " * depth
    head = [f"{'  ' * d}level{d}:" for d in range(depth)]
    text = "\n".join(["first: 0", *head, *(indent + e for e in entries)]) + "\n"
    first_line = 2 + depth + keys.index(key)
    with pytest.raises(ParameterError) as err:
        read_parameter_file(_write(text))
    assert f":{1 + depth + at + 1}: duplicate key '{key}' (first on line {first_line})" in str(
        err.value
    )


def _gmi_parameters() -> dict[str, inspect.Parameter]:
    supplied = ATTACK_SUPPLIED | set(ATTACK_NEEDS["gmi"])
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        n: p
        for n, p in inspect.signature(ATTACKS["gmi"]).parameters.items()
        if p.kind in kinds and n not in supplied
    }


@FUZZ
@given(st.data())
def test_attack_kwargs_fail_exactly_on_unknown_keys(draw):
    params = _gmi_parameters()
    known = draw.draw(st.lists(st.sampled_from(sorted(params)), unique=True))
    supplied = ATTACK_SUPPLIED | set(ATTACK_NEEDS["gmi"])  # refused with their own message
    fresh = names.filter(lambda n: n not in params and n not in supplied)
    unknown = draw.draw(st.lists(fresh, unique=True, max_size=3))
    kwargs = {k: params[k].default for k in known}  # the defaults are valid values
    kwargs.update({k: 1 for k in unknown})
    try:
        check_study_parameters({"attack_kwargs": {"gmi": kwargs}}, source="f.yaml")
    except ParameterError as err:
        assert unknown, err
        (line,) = str(err).splitlines()
        assert line.startswith("f.yaml: field 'attack_kwargs.gmi': unknown key")
        assert all(repr(k) in line for k in unknown)
    else:
        assert not unknown


@FUZZ
@given(st.integers(-(10**15), 10**15) | st.floats(allow_nan=False) | st.booleans() | st.text())
def test_query_budget_accepts_exactly_positive_ints(budget):
    try:
        check_study_parameters({"query_budgets": {"gmi": budget}}, source="f.yaml")
    except ParameterError as err:
        assert "field 'query_budgets.gmi' expects a positive int" in str(err)
        assert isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
    else:
        assert type(budget) is int and budget >= 1
