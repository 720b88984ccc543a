"""The attack registry and the contract every attack shares."""

from __future__ import annotations

import inspect

import pytest
import torch

from mibench_lib.attacks import ATTACK_ACCESS, ATTACK_NEEDS, ATTACKS, SPECS, InversionResult
from mibench_lib.oracle import ACCESS_LEVELS, TargetOracle
from mibench_lib.testing import (
    attack_needs,
    tiny_classifier,
    tiny_digits,
    tiny_discriminator,
    tiny_generator,
)


def test_registries_agree():
    assert set(ATTACKS) == set(ATTACK_ACCESS) == set(ATTACK_NEEDS) == set(SPECS)
    assert set(ATTACK_ACCESS.values()) <= set(ACCESS_LEVELS)
    for name, spec in SPECS.items():
        assert (
            spec.name == name and ATTACKS[name] is spec.run and ATTACK_ACCESS[name] == spec.access
        )
    # the threat models of the first attacks, as their papers define them
    assert {k: ATTACK_ACCESS[k] for k in ("gmi", "brep_mi", "miface")} == {
        "gmi": "white-box",
        "brep_mi": "label",
        "miface": "white-box",
    }


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_signature_is_uniform(name):
    params = inspect.signature(ATTACKS[name]).parameters
    assert list(params)[:2] == ["oracle", "labels"]
    keyword_only = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
    assert {"rng", "on_step", *ATTACK_NEEDS[name]} <= keyword_only
    assert all(params[p].default is inspect.Parameter.empty for p in ATTACK_NEEDS[name])
    # the function lives in the attack's own file, named by (a prefix of) the registry name:
    # lomma.py holds lomma_gmi and lomma_kedmi
    module = ATTACKS[name].__module__
    assert module.startswith("mibench_lib.attacks.") and name.startswith(module.rsplit(".")[-1])
    assert ATTACKS[name].__doc__


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_runs_at_its_weakest_access_and_reports_progress(name):
    target = tiny_classifier()  # random weights: predicts class 3 on the tiny generator
    oracle = TargetOracle(target, access=ATTACK_ACCESS[name])
    provided = {"generator": tiny_generator(), "discriminator": tiny_discriminator()}
    digits, digit_labels = tiny_digits()
    public = digits[:64]  # the public images its priors are trained on
    needs, prior_queries = attack_needs(
        SPECS[name], target, public, digit_labels[:64], provided=provided, private=digits[64:66]
    )
    if SPECS[name].target_priors:
        assert prior_queries > 0, f"{name}'s target priors never asked the target"
    calls = []
    res = ATTACKS[name](
        oracle,
        torch.tensor([3, 3]),
        rng=torch.Generator().manual_seed(0),
        on_step=lambda step, total, info: calls.append((step, total, info)),
        **needs,
        **SPECS[name].quick,
    )
    assert isinstance(res, InversionResult) and res.attack == name
    assert res.queries == oracle.queries
    # every attack asks the target, unless all its queries went into its target priors (LOKT)
    assert (res.queries > 0) == SPECS[name].queries_in_attack and res.wall_time_s >= 0
    assert res.images.shape == (2, 1, 8, 8) and res.labels.tolist() == [3, 3]
    assert calls and all(isinstance(c[0], int) and c[0] >= 1 for c in calls)
    assert all(isinstance(c[2], dict) for c in calls)
    assert all(isinstance(v, float) for c in calls for v in c[2].values())
