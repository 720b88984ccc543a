"""The defense registry: kinds read from the hooks, and the study inputs constructors declare."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

from mibench_lib.defenses import DEFENSE_KIND, DEFENSES, STUDY_INPUTS, Defense
from mibench_lib.studies.params import DEFENSE_SUPPLIED

ROOT = Path(__file__).resolve().parents[2]

# The hand-written table DEFENSE_KIND replaced; the derived one must keep every value.
KIND_BEFORE = {
    "none": "none",
    "mid": "training",
    "bido": "training",
    "label_smoothing": "training",
    "tl_dmi": "training",
    "dp_sgd": "training",
    "adversarial_training": "training",
    "rolss": "training",
    "rounding": "output",
    "top_k": "output",
    "label_only": "output",
    "gaussian_noise": "output",
}


def test_kind_is_derived_and_equals_the_old_table():
    assert DEFENSE_KIND == KIND_BEFORE
    assert list(DEFENSE_KIND) == list(DEFENSES)


@pytest.mark.parametrize(
    ("defense", "kind"),
    [
        (Defense("none"), "none"),
        (Defense("x", loss=lambda *a, **k: torch.zeros(())), "training"),
        (Defense("x", build=lambda m: m), "training"),
        (Defense("x", postprocess=lambda p: p), "output"),
        (Defense("x", release="label"), "output"),
        (Defense("x", unwrap=lambda m: m), "none"),  # unwrap alone changes no training
    ],
)
def test_kind_follows_the_hooks(defense, kind):
    assert defense.kind == kind
    assert defense.trains == (kind == "training")


def test_parameter_files_may_not_set_a_study_input():
    assert DEFENSE_SUPPLIED == frozenset(STUDY_INPUTS)
    assert {"seed", "device", "train_epochs", "pretrain_data", "pretrain_num_classes"} <= set(
        STUDY_INPUTS
    )


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_builds_from_defaults_and_the_study_inputs_alone(name):
    params = inspect.signature(DEFENSES[name]).parameters
    required = {p for p, v in params.items() if v.default is inspect.Parameter.empty}
    assert required <= set(STUDY_INPUTS), f"{name} needs {sorted(required - set(STUDY_INPUTS))}"
    stand_ins = {k: v.stand_in for k, v in STUDY_INPUTS.items() if k in params}
    assert DEFENSES[name](**stand_ins).kind == DEFENSE_KIND[name]


def test_study_inputs_are_documented():
    assert all(inp.gives for inp in STUDY_INPUTS.values())


def test_the_artifact_code_names_no_defense():
    """make_defense and cached_defended_target act on hooks and signatures, never on names."""
    tree = ast.parse((ROOT / "mibench_lib" / "artifacts.py").read_text())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    assert not strings & (set(DEFENSES) - {"none"})
