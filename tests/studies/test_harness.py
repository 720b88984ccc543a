"""The harness: rows that do not depend on the process history, budgets, trivial floors."""

from __future__ import annotations

import math
import multiprocessing

import pytest
import torch

from mibench_lib.cache import ArtifactCache
from mibench_lib.studies.harness import BASELINES, mean_public_image, prepare_setting
from mibench_lib.studies.jobs import TargetRef, attack_target, build_target

TRAIN = {"epochs": 1, "batch_size": 64, "lr": 0.002}
MID = TargetRef("mnist_cnn", TRAIN, seed=0, defense_name="mid", defense_kwargs={"beta": 0.01})


def _setting(cache_dir, out_dir, **overrides):
    kwargs = {
        "cache": ArtifactCache(cache_dir),
        "dataset": "digits",
        "dataset_kwargs": {"resolution": 16},
        "classes": [0, 1, 2],
        "samples_per_class": 1,
        "model_seed": 0,
        "evaluator_arch": "mnist_eval",
        "evaluator_train": TRAIN,
        "face_arch": "mnist_resnet",
        "face_train": TRAIN,
        "face_weights": "",
        "gan": {"latent_dim": 16, "width": 8, "critic_width": 8},
        "gan_train": {"epochs": 1, "batch_size": 64, "n_critic": 5, "gp_weight": 10.0},
        "attacks": ["gmi", "brep_mi"],
        "attack_kwargs": {"gmi": {"steps": 3, "restarts": 1}},
        "query_budgets": {},
        "inception_weights": "",
        "device": "cpu",
        "out_dir": out_dir,
        "progress": False,
    }
    return prepare_setting(**{**kwargs, **overrides}, eager=False)


def _job_in_fresh_process(cache_dir, out_dir, preload, queue):
    """One GMI job against a MID target (which samples at inference) in a new interpreter."""
    torch.set_num_threads(1)
    setting = _setting(cache_dir, out_dir)
    if preload:  # the GAN and scoring models already loaded by an earlier job in this worker
        _ = (setting.prior, setting.evaluator, setting.face)
    row = attack_target(setting, MID, "gmi", seed=0, tag=f"gmi_{preload}")
    queue.put({k: v for k, v in row.items() if k != "wall_time_s"})


@pytest.mark.slow
def test_row_does_not_depend_on_what_the_process_loaded_before(tmp_path):
    cache_dir = tmp_path / "cache"
    setting = _setting(cache_dir, tmp_path / "warm")
    _ = (setting.prior, setting.evaluator, setting.face)
    build_target(setting, MID)
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for preload in (False, True):
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_job_in_fresh_process, args=(cache_dir, tmp_path / "out", preload, queue)
        )
        proc.start()
        proc.join(timeout=600)
        assert proc.exitcode == 0, f"the job's process failed (exit code {proc.exitcode})"
        rows.append(queue.get(timeout=10))
    lazy, preloaded = rows
    assert lazy.keys() == preloaded.keys()
    for key, value in lazy.items():
        other = preloaded[key]
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(other), key
        else:
            assert value == other, f"{key}: {value!r} (lazy) != {other!r} (preloaded)"


def test_exhausted_budget_is_recorded_in_the_row(tmp_path):
    # GMI spends its queries step by step and has no use for a cut-short search: it runs out
    setting = _setting(tmp_path / "cache", tmp_path / "out", query_budgets={"gmi": 7})
    ref = TargetRef("mnist_cnn", TRAIN, seed=0)
    row = attack_target(setting, ref, "gmi", seed=0, tag="gmi")
    assert row["budget_exhausted"] is True
    assert row["queries"] <= 7  # the query that would pass the budget never ran
    assert "budget" in row["unavailable"]
    assert "acc1" not in row  # nothing reconstructed: no metric invented
    assert not (tmp_path / "out" / "reconstructions" / "gmi.safetensors").exists()


def test_a_search_stopped_by_its_budget_is_scored(tmp_path):
    setting = _setting(tmp_path / "cache", tmp_path / "out", query_budgets={"brep_mi": 7})
    ref = TargetRef("mnist_cnn", TRAIN, seed=0)
    row = attack_target(setting, ref, "brep_mi", seed=0, tag="brep")
    assert row["budget_exhausted"] is False and row["stopped_by_budget"] is True
    assert row["queries"] == 0  # not even one start-point batch (256) fits in 7
    assert 0.0 <= row["acc1"] <= 1.0 and row["query_budget"] == 7
    assert (tmp_path / "out" / "reconstructions" / "brep.safetensors").exists()


def test_trivial_floors_are_scored_like_attacks(tmp_path):
    setting = _setting(tmp_path / "cache", tmp_path / "out")
    ref = TargetRef("mnist_cnn", TRAIN, seed=0)
    for name in BASELINES:
        row = attack_target(setting, ref, name, seed=0, tag=name)
        assert row["queries"] == 0 and row["family"] == "baseline"
        assert row["budget_exhausted"] is False
        assert 0.0 <= row["acc1"] <= 1.0
        if name != "random_latent":
            # one constant image, scored against 3 classes: at most one can be a hit
            assert row["acc1"] in (0.0, pytest.approx(1 / 3))
    mean = mean_public_image(setting.split, chunk=7)
    torch.testing.assert_close(mean, setting.split.public.images.mean(0), atol=1e-5, rtol=0)


# -- priors: public ones cached by data, target ones through the deployment's release ----------
def _recording_target_prior(seen):
    from mibench_lib.attacks import TargetPrior

    def build(oracle, public, *, num_classes, seed, device, progress, **kwargs):
        x = public.images[:3]
        seen.append((oracle.access, oracle(x).clone(), bool((public.labels == -1).all())))
        return {"w": torch.zeros(1)}, {"n": len(public)}

    return TargetPrior("recorder", "probabilities", build, lambda t, m, d: dict(m))


def test_target_prior_learns_from_what_the_output_defense_releases(tmp_path):
    from mibench_lib.defenses import label_only_defense, rounding_defense
    from mibench_lib.studies.harness import build_target_prior
    from mibench_lib.studies.jobs import load_target

    setting = _setting(tmp_path / "cache", tmp_path / "out")
    model = load_target(setting, TargetRef("mnist_cnn", TRAIN, seed=0)).model
    seen: list = []
    prior = _recording_target_prior(seen)
    _, plain = build_target_prior(setting, prior, model)
    _, rounded = build_target_prior(setting, prior, model, defense=rounding_defense(decimals=1))
    _, labels = build_target_prior(setting, prior, model, defense=label_only_defense())
    assert [s[0] for s in seen] == ["probabilities", "probabilities", "label"]
    assert all(s[2] for s in seen)  # public images reach target priors without labels
    assert torch.equal(seen[1][1], torch.round(seen[0][1], decimals=1))
    assert not torch.equal(seen[1][1], seen[0][1])
    assert seen[2][1].dtype == torch.int64 and torch.equal(seen[2][1], seen[0][1].argmax(1))
    assert plain["queries"] == rounded["queries"] == labels["queries"] == 3
    # each release is its own cache entry; asking again builds nothing
    build_target_prior(setting, prior, model, defense=rounding_defense(decimals=1))
    assert len(seen) == 3


def test_prior_through_noise_does_not_depend_on_what_the_worker_ran_before(tmp_path):
    """Fresh Gaussian noise draws from torch's global generator; a pool worker's global state
    depends on the jobs it ran before, so the build seeds it (the prior is a function of its
    cache key, whichever worker builds it)."""
    from mibench_lib.defenses import gaussian_noise_defense
    from mibench_lib.studies.harness import build_target_prior
    from mibench_lib.studies.jobs import load_target

    seen: list = []
    prior = _recording_target_prior(seen)
    for run, history in enumerate((0, 12345)):
        setting = _setting(tmp_path / f"cache{run}", tmp_path / f"out{run}")
        model = load_target(setting, TargetRef("mnist_cnn", TRAIN, seed=0)).model
        torch.manual_seed(history)  # another worker, another history
        torch.randn(history % 7 + 1)
        build_target_prior(setting, prior, model, defense=gaussian_noise_defense(scale=0.2))
    assert len(seen) == 2
    assert torch.equal(seen[0][1], seen[1][1])


def test_public_prior_is_built_once_from_labelled_public_data(tmp_path):
    from mibench_lib.attacks import PublicPrior
    from mibench_lib.studies.harness import build_public_prior

    calls = []

    def build(public, *, seed, device, progress, **kwargs):
        calls.append((public.labels.clone(), kwargs))
        return {"mean": public.images.mean(0)}, {"seed": seed}

    prior = PublicPrior("mean_image", build, lambda t, m, d: t["mean"])
    setting = _setting(tmp_path / "cache", tmp_path / "out", prior_kwargs={"mean_image": {"k": 2}})
    first, meta = build_public_prior(setting, prior)
    again, _ = build_public_prior(setting, prior)
    assert len(calls) == 1 and calls[0][1] == {"k": 2} and "build_s" in meta
    assert torch.equal(calls[0][0], setting.split.public_labels)  # its own labels, not -1
    assert (calls[0][0] >= 0).all() and torch.equal(first, again)


def test_partial_image_attackers_hold_fixed_private_images_of_their_class(tmp_path):
    from mibench_lib.studies.harness import PUBLIC_ARTIFACTS, private_originals

    setting = _setting(tmp_path / "cache", tmp_path / "out", samples_per_class=2)
    originals = private_originals(setting)
    again = private_originals(_setting(tmp_path / "cache", tmp_path / "out2", samples_per_class=2))
    assert torch.equal(originals, again)  # the same images whatever the attack seed
    train = setting.split.private_train
    for image, label in zip(originals, setting.labels):
        match = (train.images == image).flatten(1).all(1)
        assert match.any() and (train.labels[match] == label).all()
    assert not torch.equal(originals[0], originals[1])  # two entries of a class: two images
    masked = PUBLIC_ARTIFACTS["masked_private"](setting)
    hidden = masked.mask == 0
    assert hidden.any() and (masked.images[hidden.expand_as(masked.images)] == 0).all()
    known = hidden.logical_not().expand_as(originals)
    assert torch.equal(masked.images[known], originals[known])


def test_an_arm_budget_caps_the_oracle_and_is_reported(tmp_path):
    setting = _setting(tmp_path / "cache", tmp_path / "out", query_budgets={"brep_mi": 10**6})
    ref = TargetRef("mnist_cnn", TRAIN, seed=0)
    row = attack_target(setting, ref, "brep_mi", seed=0, tag="brep", budget=9)
    assert row["query_budget"] == 9 and row["queries"] <= 9
