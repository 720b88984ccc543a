"""Nested parameters checked against the registries and the signatures of the code they feed."""

from __future__ import annotations

import inspect
from pathlib import Path

import nbformat
import pytest

from mibench_lib.attacks import ATTACK_NEEDS, ATTACKS
from mibench_lib.defenses import DEFENSES
from mibench_lib.studies import cli
from mibench_lib.studies.params import (
    ATTACK_SUPPLIED,
    BUDGET_BOUNDS,
    DEFENSE_SUPPLIED,
    ParameterError,
    check_study_parameters,
    load_parameters,
)

ROOT = Path(__file__).resolve().parents[2]


def _problems(values, source="x.yaml") -> list[str]:
    try:
        check_study_parameters(values, source=source)
    except ParameterError as err:
        return str(err).splitlines()
    return []


def _allowed(fn, supplied) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return sorted(
        n
        for n, p in inspect.signature(fn).parameters.items()
        if p.kind in kinds and n not in supplied
    )


# ----------------------------------------------------------------------------- the issue's cases


def test_unknown_attack_keyword_names_field_key_and_allowed():
    (line,) = _problems({"attack_kwargs": {"gmi": {"stepz": 3}}})
    allowed = _allowed(ATTACKS["gmi"], ATTACK_SUPPLIED | set(ATTACK_NEEDS["gmi"]))
    assert line == (
        f"x.yaml: field 'attack_kwargs.gmi': unknown key 'stepz'; allowed: {', '.join(allowed)}"
    )
    assert {"lr", "steps"} <= set(allowed)
    assert not {"generator", "discriminator", "rng", "on_step", "oracle"} & set(allowed)


def test_unknown_training_keys_name_field_and_allowed():
    (gan,) = _problems({"gan_train": {"epochz": 1}})
    assert gan.startswith("x.yaml: field 'gan_train': unknown key 'epochz'; allowed: ")
    assert {"epochs", "batch_size", "n_critic"} <= set(gan.split("allowed: ")[1].split(", "))
    (target,) = _problems({"target_train": {"lrr": 0.1}})
    assert target.startswith("x.yaml: field 'target_train': unknown key 'lrr'; allowed: ")
    allowed = target.split("allowed: ")[1].split(", ")
    assert {"lr", "epochs", "eval_every"} <= set(allowed)
    assert not {"loss_fn", "device", "rng", "defense", "progress"} & set(allowed)


def test_unknown_attack_name():
    (line,) = _problems({"attacks": ["gmii"]})
    assert (
        line
        == f"x.yaml: field 'attacks[0]': unknown attack 'gmii'; known: {', '.join(sorted(ATTACKS))}"
    )
    (line,) = _problems({"attack_kwargs": {"gmii": {}}})
    assert "field 'attack_kwargs': unknown attack 'gmii'" in line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("attack_kwargs={gmi: {stepz: 3}}", "-p: field 'attack_kwargs.gmi': unknown key 'stepz'"),
        ("gan_train={epochz: 1}", "-p: field 'gan_train': unknown key 'epochz'"),
        ("target_train={lrr: 0.1}", "-p: field 'target_train': unknown key 'lrr'"),
        ("attacks=[gmii]", "-p: field 'attacks[0]': unknown attack 'gmii'"),
        ("seeds=[]", "-p: field 'seeds': empty list"),
        ("query_budgets={gmi: 2.5}", "-p: field 'query_budgets.gmi' expects a positive int"),
        ("query_budgets={gmi: true}", "-p: field 'query_budgets.gmi' expects a positive int"),
        ("gan_train={epochs: 0}", "-p: field 'gan_train.epochs': 0 is below 1"),
        ("attack_kwargs={gmi: {steps: 1000000000000}}", "exceeds the sanity bound"),
    ],
)
def test_mibench_validate_refuses_the_issue_cases(override, expected, capsys):
    key, value = override.split("=", 1)
    tiny = ROOT / "parameters" / "predictive_power" / "tiny.yaml"
    assert cli.main(["validate", str(tiny), "-p", key, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mibench: error: ") and expected in err, err
    assert "Traceback" not in err


def test_every_registered_attack_and_defense_is_offered_by_its_signature():
    for name, fn in ATTACKS.items():
        (line,) = _problems({"attack_kwargs": {name: {"no_such_key": 1}}})
        allowed = _allowed(fn, ATTACK_SUPPLIED | set(ATTACK_NEEDS.get(name, ())))
        assert line.endswith(f"allowed: {', '.join(allowed) or 'none'}"), line
    for name, fn in DEFENSES.items():
        lines = _problems({"defenses": [{"name": name, "kwargs": {"no_such_key": 1}}]})
        allowed = _allowed(fn, DEFENSE_SUPPLIED)
        assert lines[0].endswith(f"allowed: {', '.join(allowed) or 'none'}"), lines


def test_a_new_attack_and_defense_need_no_change_in_the_checks(monkeypatch):
    from mibench_lib.attacks import ATTACK_NEEDS as needs

    def fancy_attack(oracle, labels, *, generator, alpha: float = 1.0, rounds: int = 3, rng=None):
        raise AssertionError("never called")

    def fancy_defense(*, strength: float = 0.5, seed: int = 0):
        raise AssertionError("never called")

    monkeypatch.setitem(ATTACKS, "fancy", fancy_attack)
    monkeypatch.setitem(needs, "fancy", ("generator",))
    monkeypatch.setitem(DEFENSES, "fancy_def", fancy_defense)
    assert (
        _problems(
            {
                "attacks": ["fancy"],
                "attack_kwargs": {"fancy": {"alpha": 2, "rounds": 5}},
                "defenses": [{"name": "fancy_def", "kwargs": {"strength": 1.0}}],
            }
        )
        == []
    )
    assert _problems({"attack_kwargs": {"fancy": {"beta": 1}}}) == [
        "x.yaml: field 'attack_kwargs.fancy': unknown key 'beta'; allowed: alpha, rounds"
    ]
    assert _problems({"attack_kwargs": {"fancy": {"rounds": "many"}}}) == [
        "x.yaml: field 'attack_kwargs.fancy.rounds' expects int, got str ('many')"
    ]
    assert _problems({"defenses": [{"name": "fancy_def", "kwargs": {"seed": 3}}]}) == [
        "x.yaml: field 'defenses[0].kwargs': 'seed' set by the study code, not by a parameter "
        "file; remove it"
    ]


# ----------------------------------------------------------------------------- each field


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"dataset": "mnist6k"}, "field 'dataset': unknown dataset 'mnist6k'; known: "),
        (
            {"dataset": "digits", "dataset_kwargs": {"resolutoin": 16}},
            "field 'dataset_kwargs': unknown key 'resolutoin'; allowed: ",
        ),
        (
            {"dataset": "celeba", "dataset_kwargs": {"resolution": 64}},
            "field 'dataset_kwargs': missing key 'root' (needed by dataset 'celeba')",
        ),
        (
            {"dataset": "digits", "dataset_kwargs": {"resolution": "16"}},
            "field 'dataset_kwargs.resolution' expects int, got str ('16')",
        ),
        ({"target_arch": "vgg"}, "field 'target_arch': unknown architecture 'vgg'; known: "),
        ({"evaluator_arch": 3}, "field 'evaluator_arch' expects the architecture name as a str"),
        ({"face_arch": "ir999"}, "field 'face_arch': unknown architecture 'ir999'"),
        ({"gan": {"latent_dim": 16}}, "field 'gan': missing keys 'width', 'critic_width'"),
        ({"gan": {"latent_dim": 16, "width": 8, "critic_width": 8, "depth": 3}}, "'depth'"),
        ({"gan_train": {"betas": [0.5, 0.9]}}, "field 'gan_train': 'betas' set by the study code"),
        ({"evaluator_train": {"epochs": 0}}, "field 'evaluator_train.epochs': 0 is below 1"),
        ({"face_train": {"batch_size": 0}}, "field 'face_train.batch_size': 0 is below 1"),
        ({"target_train": {"lr": "fast"}}, "field 'target_train.lr' expects float, got str"),
        ({"target_train": {"lr_milestones": 5}}, "field 'target_train.lr_milestones' expects"),
        ({"target_train": {"epochs": 10**12}}, "exceeds the sanity bound 10,000 for 'epochs'"),
        ({"attack_kwargs": {"gmi": {"select": "bst"}}}, "field 'attack_kwargs.gmi.select' expects"),
        ({"attack_kwargs": {"gmi": {"restarts": True}}}, "expects int, got bool (True)"),
        ({"attack_kwargs": {"miface": {"max_iter": 0}}}, "'attack_kwargs.miface.max_iter': 0 is"),
        ({"attack_kwargs": {"gmi": "steps=10"}}, "field 'attack_kwargs.gmi' expects a mapping"),
        ({"attack_kwargs": {"gmi": {"rng": 0}}}, "'rng' set by the study code"),
        ({"attacks": []}, "field 'attacks': empty list; give at least one attack"),
        ({"attacks": ["gmi", "gmi"]}, "field 'attacks[1]': repeats 'gmi'"),
        ({"baselines": ["random"]}, "field 'baselines[0]': unknown baseline 'random'; known: "),
        ({"baselines": "random_latent"}, "field 'baselines' expects a list of baselines"),
        ({"seeds": []}, "field 'seeds': empty list; give at least one seed"),
        ({"seeds": [0, 0]}, "field 'seeds[1]': repeats 0"),
        ({"seeds": [-1]}, "field 'seeds[0]' expects an int in [0, 2**63), got int (-1)"),
        ({"seeds": [1.5]}, "field 'seeds[0]' expects an int"),
        ({"classes": [0, -2]}, "field 'classes[1]' expects a class id (int >= 0)"),
        ({"thresholds": []}, "field 'thresholds': empty list"),
        ({"thresholds": [0.5, 2]}, "field 'thresholds[1]' expects a test accuracy in (0, 1]"),
        ({"samples_per_class": 0}, "field 'samples_per_class': 0 is below 1"),
        ({"workers": -1}, "field 'workers': -1 is below 0"),
        ({"query_budgets": {"gmi": 0}}, "field 'query_budgets.gmi' expects a positive int"),
        ({"query_budgets": {"gmi": 2.5}}, "got float (2.5)"),
        ({"query_budgets": {"gmi": True}}, "got bool (True)"),
        ({"query_budgets": {"gmii": 10}}, "field 'query_budgets': unknown attack 'gmii'"),
        ({"query_budgets": [10]}, "field 'query_budgets' expects a mapping"),
        ({"defenses": []}, "field 'defenses': empty list"),
        ({"defenses": ["mid"]}, "field 'defenses[0]' expects a mapping {name, kwargs}"),
        ({"defenses": [{"name": "mdi"}]}, "field 'defenses[0].name': unknown defense 'mdi'"),
        ({"defenses": [{"nme": "mid"}]}, "field 'defenses[0]': unknown key 'nme'; allowed:"),
        ({"defenses": [{"name": "mid", "kwargs": {"bta": 1}}]}, "unknown key 'bta'; allowed: "),
        ({"defenses": [{"name": "mid", "kwargs": {"beta": "x"}}]}, "'defenses[0].kwargs.beta' "),
        (
            {"defenses": [{"name": "tl_dmi", "kwargs": {"pretrain_epochs": 0}}]},
            "field 'defenses[0].kwargs.pretrain_epochs': 0 is below 1",
        ),
        (
            {"defenses": [{"name": "none"}, {"name": "mid"}, {"name": "none", "kwargs": {}}]},
            "field 'defenses[2]': repeats defenses[0]",
        ),
        ({"eps_grid": {}}, "field 'eps_grid': empty mapping"),
        ({"eps_grid": {"l3": [1.0]}}, "field 'eps_grid': unknown norm 'l3'; known: l2, linf"),
        ({"eps_grid": {"linf": []}}, "field 'eps_grid.linf': empty list"),
        ({"eps_grid": {"linf": [0.0]}}, "field 'eps_grid.linf[0]' expects a radius > 0"),
        ({"eps_grid": {"l2": [1.0, 1.0]}}, "field 'eps_grid.l2[1]': repeats 1.0"),
        ({"at_kwargs": {"eps": 0.1}}, "field 'at_kwargs': 'eps' set by the study code"),
        ({"at_kwargs": {"stepz": 5}}, "field 'at_kwargs': unknown key 'stepz'; allowed: "),
        ({"at_kwargs": {"steps": 0}}, "field 'at_kwargs.steps': 0 is below 1"),
        ({"at_kwargs": {"eval_steps": 10**9}}, "exceeds the sanity bound"),
    ],
)
def test_field_problems(values, expected):
    problems = _problems(values)
    assert any(expected in line for line in problems), problems
    assert all(line.startswith("x.yaml: field '") for line in problems), problems


@pytest.mark.parametrize(
    "values",
    [
        {"dataset": "celeba", "dataset_kwargs": {"root": "data/celeba", "resolution": 64}},
        {"attack_kwargs": {"gmi": {"steps": 0}}},  # documented: keeps the initial draws
        {"attack_kwargs": {"brep_mi": {"max_radius": None, "max_iters": None}}},
        {"attack_kwargs": {"gmi": {"lr": 1}}},  # an int passes for a float
        {"query_budgets": {"gmi": 10**15}},  # a budget is a cap, not a cost
        {"classes": []},
        {"baselines": []},
        {"baselines": ["random_latent", "blank_image", "mean_public"]},
        {"defenses": [{"name": "bido", "kwargs": {"layers": ["a", "b"]}}]},
        {"defenses": [{"name": "dp_sgd", "kwargs": {"epochs": None, "target_epsilon": 8}}]},
        {"gan": {"latent_dim": 16, "width": 8, "critic_width": 8}},
        {"study_specific_knob": {"anything": 1}},  # fields without a known meaning pass
    ],
)
def test_valid_values_pass(values):
    assert _problems(values) == []


def test_budget_bounds_cover_every_training_epoch_count():
    assert BUDGET_BOUNDS["epochs"][0] == 1 and BUDGET_BOUNDS["pretrain_epochs"][0] == 1
    for field in ("target_train", "evaluator_train", "face_train", "gan_train"):
        assert _problems({field: {"epochs": 0}}) == [
            f"x.yaml: field '{field}.epochs': 0 is below 1 (training needs at least one epoch)"
        ]


def test_every_problem_is_reported_at_once():
    problems = _problems(
        {"seeds": [], "attacks": ["gmii"], "gan_train": {"epochz": 1}, "workers": -1}
    )
    assert len(problems) == 4


# ----------------------------------------------------------------------------- sources


def _variant(tree, tmp_path, source: str) -> Path:
    nb = nbformat.read(tree.notebook, as_version=4)
    nb.cells[1].source = source
    path = tmp_path / "variant.ipynb"
    nbformat.write(nb, path)
    return path


VARIANT = """\
study = "x"
config = "y"
out_dir = ""
seeds = [0]
dataset = "digits"
dataset_kwargs = {
    "resolution": 16,
}
attacks = ["gmi"]
attack_kwargs = {"gmi": {"steps": 5}}
"""


def test_each_problem_names_where_its_value_came_from(tree, tmp_path):
    notebook = _variant(tree, tmp_path, VARIANT)
    path = tree.config("a", "dataset: celeba\nattack_kwargs: {gmi: {stepz: 3}}\n")
    with pytest.raises(ParameterError) as err:
        load_parameters(path, notebook, overrides={"attacks": ["gmii"]})
    lines = str(err.value).splitlines()
    assert len(lines) == 3, lines
    # dataset_kwargs is not in the file: its value is the notebook's default, named as such.
    assert lines[0] == (
        f"{notebook} (default): field 'dataset_kwargs': missing key 'root' "
        "(needed by dataset 'celeba')"
    )
    assert (
        lines[1]
        == f"-p: field 'attacks[0]': unknown attack 'gmii'; known: {', '.join(sorted(ATTACKS))}"
    )
    assert lines[2].startswith(f"{path}: field 'attack_kwargs.gmi': unknown key 'stepz'; allowed: ")


def test_defaults_of_a_multiline_dict_are_read_whole(tree, tmp_path):
    notebook = _variant(tree, tmp_path, VARIANT)
    path = tree.config("a", "seeds: [1]\n")
    assert load_parameters(path, notebook) == {"seeds": [1]}
    with pytest.raises(ParameterError, match=r"^-p: field 'dataset_kwargs' expects dict"):
        load_parameters(path, notebook, overrides={"dataset_kwargs": [16]})


# ------------------------------------------------------------------- resolution study, priors


def test_per_resolution_overrides_are_checked_like_the_parameters_they_override():
    values = {
        "resolutions": [16, 64],
        "gan": {"latent_dim": 8, "width": 8, "critic_width": 8},
        "gan_train": {"epochs": 100},
        "seeds": [0],
    }
    assert _problems({**values, "per_resolution": {64: {"gan_train": {"epochs": 3}}}}) == []
    (line,) = _problems({**values, "per_resolution": {64: {"gan_train": {"epochz": 3}}}})
    assert line.startswith("x.yaml: field 'per_resolution.64.gan_train': unknown key 'epochz'")
    (line,) = _problems({**values, "per_resolution": {32: {"gan_train": {"epochs": 3}}}})
    assert line == "x.yaml: field 'per_resolution.32': 32 is not one of resolutions [16, 64]"
    (line,) = _problems({**values, "per_resolution": {16: {"seeds": [1]}}})
    assert "'per_resolution.16.seeds': is not a parameter a resolution can override" in line
    (line,) = _problems({**values, "per_resolution": {16: {"dataset_kwargz": {}}}})
    assert "'per_resolution.16.dataset_kwargz'" in line


def test_resolutions_are_distinct_image_sides():
    assert _problems({"resolutions": [16, 32, 64]}) == []
    (line,) = _problems({"resolutions": [16, 4]})
    assert "'resolutions[1]' expects an image side in pixels (int >= 8)" in line
    (line,) = _problems({"resolutions": [16, 16]})
    assert "'resolutions[1]': repeats 16" in line


def test_prior_kwargs_name_registered_target_priors():
    (line,) = _problems({"prior_kwargs": {"kedmi_gann": {"epochs": 1}}})
    assert "field 'prior_kwargs': unknown prior 'kedmi_gann'" in line
    (line,) = _problems({"prior_kwargs": [1]})
    assert "expects a mapping of prior to keyword arguments" in line
