"""The process pool gives the same rows as running every job in the notebook's own process."""

from __future__ import annotations

import math

import pytest
import torch

from mibench_lib.cache import ArtifactCache
from mibench_lib.studies.harness import prepare_setting
from mibench_lib.studies.jobs import (
    TargetRef,
    attack_order,
    attack_target,
    build_artifact,
    build_target,
    load_target,
)
from mibench_lib.studies.pool import StudyPool, default_workers

ATTACK_KWARGS = {
    "gmi": {"steps": 4, "restarts": 2, "select": "all"},
    "miface": {"max_iter": 6, "window": 3},
}


def _setting(tmp_path, **overrides):
    kwargs = {
        "cache": ArtifactCache(tmp_path / "cache"),
        "dataset": "digits",
        "dataset_kwargs": {"resolution": 16},
        "classes": [0, 1],
        "samples_per_class": 1,
        "model_seed": 0,
        "evaluator_arch": "mnist_eval",
        "evaluator_train": {"epochs": 1, "batch_size": 64, "lr": 0.002},
        "face_arch": "mnist_resnet",
        "face_train": {"epochs": 1, "batch_size": 64, "lr": 0.002},
        "face_weights": "",
        "gan": {"latent_dim": 16, "width": 8, "critic_width": 8},
        "gan_train": {"epochs": 1, "batch_size": 64, "n_critic": 5, "gp_weight": 10.0},
        "attacks": ["gmi", "miface"],
        "attack_kwargs": ATTACK_KWARGS,
        "query_budgets": {},
        "inception_weights": "",
        "device": "cpu",
        "out_dir": tmp_path / "out",
        "progress": False,
    }
    return prepare_setting(**{**kwargs, **overrides}, eager=False)


def _run(pool, refs):
    pool.wait(pool.warm_up())
    pool.wait([pool.submit(build_target, ref) for ref in refs])
    futures = {
        pool.submit(
            attack_target, ref, name, seed=ref.seed, tag=f"{name}_{i}", through_defense=True
        ): (
            i,
            name,
        )
        for name in attack_order(["gmi", "miface"])
        for i, ref in enumerate(refs)
    }
    return dict(pool.results(futures, progress=False))


@pytest.mark.slow
def test_two_workers_give_the_rows_of_one_process(tmp_path):
    refs = [
        TargetRef("mnist_cnn", {"epochs": 1, "batch_size": 64, "lr": 0.002}, seed=0),
        TargetRef(
            "mnist_cnn",
            {"epochs": 1, "batch_size": 64, "lr": 0.002},
            seed=1,
            defense_name="rounding",
            defense_kwargs={"decimals": 1},
        ),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the workers get one thread each, like the in-process run below
    try:
        with StudyPool(_setting(tmp_path), workers=2) as pool:
            parallel = _run(pool, refs)
        torch.set_num_threads(1)
        setting = _setting(tmp_path)
        serial = _run(StudyPool(setting, workers=1), refs)
    finally:
        torch.set_num_threads(threads)
    # the workers built every artifact; the in-process run only loaded them
    assert setting.prior.cache_hit and setting.evaluator.cache_hit
    assert load_target(setting, refs[0]).cache_hit
    assert sorted(parallel) == sorted(serial) == [(i, a) for i in (0, 1) for a in ("gmi", "miface")]
    for key, row in serial.items():
        for col, value in row.items():
            if col == "wall_time_s":
                continue
            other = parallel[key][col]
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(other), (key, col)
            else:
                assert other == value, (key, col)
    assert (tmp_path / "out" / "reconstructions" / "gmi_0.safetensors").exists()


def test_in_process_pool_delivers_errors_through_the_future(tmp_path):
    pool = StudyPool(_setting(tmp_path), workers=1)
    future = pool.submit(build_artifact, "no_such_artifact")
    with pytest.raises(ValueError, match="unknown study artifact"):
        pool.wait([future])
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(build_artifact, "prior")


def test_attack_order_puts_prior_free_attacks_first():
    assert attack_order(["gmi", "brep_mi", "miface"]) == ["miface", "gmi", "brep_mi"]
    assert attack_order(["random_latent", "miface"]) == ["miface", "random_latent"]


def test_default_workers(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert default_workers("cpu") == 2
    assert default_workers("cpu", 3) == 3
    assert default_workers("cuda") == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    assert default_workers("cpu") == 8  # each worker holds its own copy of the data
    assert default_workers("cpu", 16) == 16
    with pytest.raises(ValueError, match="workers"):
        default_workers("cpu", -1)
