"""The study engine: the run loop (resume, same-run reuse, arms), target priors, row labels."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from mibench_lib import attacks as attack_registry
from mibench_lib.attacks import AttackSpec, InversionResult, TargetPrior
from mibench_lib.studies import engine as engine_module
from mibench_lib.studies.engine import Arm, open_study
from mibench_lib.studies.jobs import TargetRef, defense_label, key_label, run_tag
from mibench_lib.studies.params import load_parameters, notebook_parameters

ROOT = Path(__file__).resolve().parents[2]
TRAIN = {"epochs": 1, "batch_size": 64, "lr": 0.002}


def _params(tmp_path: Path, **overrides) -> dict:
    """tiny.yaml's parameters for the defense notebook, a few attack steps, one process."""
    notebook = ROOT / "notebooks" / "defenses.ipynb"
    params = {n: ast.literal_eval(p.default) for n, p in notebook_parameters(notebook).items()}
    params.update(load_parameters(ROOT / "parameters" / "defenses" / "tiny.yaml", notebook))
    params.update(
        out_dir=str(tmp_path / "out"),
        cache_dir=str(tmp_path.parent / "engine-cache"),
        workers=1,
        progress=False,
        classes=[0, 1],
        attacks=["gmi", "brep_mi"],
        baselines=["blank_image"],
        attack_kwargs={
            "gmi": {"steps": 2, "restarts": 1},
            "brep_mi": {"max_iters": 2, "max_init_batches": 2, "missing_start": "random"},
        },
    )
    params.update(overrides)
    return params


def _ref(defense: dict, seed: int = 0) -> TargetRef:
    return TargetRef(
        "mnist_cnn",
        TRAIN,
        seed,
        defense_name=defense["name"],
        defense_kwargs=defense.get("kwargs", {}),
    )


DEFENSES = [{"name": "none"}, {"name": "rounding", "kwargs": {"decimals": 1}}]


def _arms(study, seeds=(0,)) -> list[Arm]:
    refs = {(defense_label(d), s): _ref(d, s) for d in DEFENSES for s in seeds}
    study.targets(refs)
    return [
        Arm({"defense_label": label}, ref, seed, baselines=label == "none", through_defense=True)
        for (label, seed), ref in refs.items()
    ]


@pytest.fixture
def counted_jobs(monkeypatch):
    """Count the attack jobs the engine submits (every job runs in this process: workers=1)."""
    calls: list[tuple[str, str]] = []
    real = engine_module.attack_target

    def counting(setting, ref, attack, **kw):
        calls.append((ref.defense_name, attack))
        return real(setting, ref, attack, **kw)

    monkeypatch.setattr(engine_module, "attack_target", counting)
    return calls


def test_run_computes_each_observation_once_and_resumes_by_key(tmp_path, counted_jobs):
    study = open_study(_params(tmp_path))
    try:
        df = study.run(_arms(study))
    finally:
        study.close()
    # none: blank_image, gmi, brep_mi; rounding: brep_mi sees rounded scores (computed), GMI holds
    # the undefended model (the same run, copied)
    assert sorted(counted_jobs) == sorted(
        [("none", "blank_image"), ("none", "gmi"), ("none", "brep_mi"), ("rounding", "brep_mi")]
    )
    assert len(df) == 5
    copied = df[df["same_run_as"].notna()]
    assert copied[["defense_label", "attack", "same_run_as"]].values.tolist() == [
        ["rounding (decimals=1)", "gmi", "none"]
    ]
    gmi = df[df["attack"] == "gmi"].set_index("defense_label")
    assert gmi.loc["none", "acc1"] == gmi.loc["rounding (decimals=1)", "acc1"]
    recon = Path(study.out) / "reconstructions"
    assert (recon / f"{run_tag({'d': 'rounding (decimals=1)'}, 'gmi', 0)}.safetensors").exists()
    assert study.reconstructions({"defense_label": "none"}, "gmi", 0)[0].shape[0] == 2

    # A second run of the same arms computes nothing and returns the same rows.
    counted_jobs.clear()
    again = open_study(_params(tmp_path))
    try:
        df2 = again.run(_arms(again))
    finally:
        again.close()
    assert counted_jobs == []
    pd.testing.assert_frame_equal(df.drop(columns="wall_time_s"), df2.drop(columns="wall_time_s"))


def test_run_without_reuse_recomputes_the_same_numbers(tmp_path, counted_jobs):
    study = open_study(_params(tmp_path))
    try:
        df = study.run(_arms(study), reuse=False)
    finally:
        study.close()
    assert ("rounding", "gmi") in counted_jobs and "same_run_as" not in df
    gmi = df[df["attack"] == "gmi"].set_index("defense_label")
    assert gmi.loc["none", "acc1"] == gmi.loc["rounding (decimals=1)", "acc1"]
    assert gmi.loc["none", "delta_eval"] == gmi.loc["rounding (decimals=1)", "delta_eval"]


def test_arm_attack_subset_and_baselines(tmp_path, counted_jobs):
    study = open_study(_params(tmp_path))
    try:
        refs = {d["name"]: _ref(d) for d in DEFENSES}
        study.targets(refs)
        arms = [
            Arm({"defense_label": "none"}, refs["none"], 0, attacks=["gmi"]),
            Arm({"defense_label": "r"}, refs["rounding"], 0, attacks=[], baselines=False),
        ]
        df = study.run(arms)
    finally:
        study.close()
    assert sorted(counted_jobs) == [("none", "blank_image"), ("none", "gmi")]
    assert sorted(df["attack"]) == ["blank_image", "gmi"]


def test_arms_must_share_key_columns_and_be_unique(tmp_path):
    study = open_study(_params(tmp_path))
    ref = _ref({"name": "none"})
    try:
        with pytest.raises(ValueError, match="key columns differ"):
            study.run([Arm({"a": 1}, ref, 0), Arm({"b": 1}, ref, 0)])
        with pytest.raises(ValueError, match="share the key"):
            study.run([Arm({"a": 1}, ref, 0), Arm({"a": 1}, ref, 0)])
        with pytest.raises(ValueError, match="at least one arm"):
            study.run([])
    finally:
        study.close()


def test_variants_give_each_arm_its_own_setting(tmp_path):
    variants = {str(r): {"dataset_kwargs": {"resolution": r}} for r in (16, 32)}
    study = open_study(_params(tmp_path, attacks=["gmi"]), variants=variants)
    try:
        assert {v: s.split.image_shape for v, s in study.settings.items()} == {
            "16": (1, 16, 16),
            "32": (1, 32, 32),
        }
        arms = []
        for v in variants:
            study.targets({0: _ref({"name": "none"})}, variant=v)
            arms.append(Arm({"resolution": int(v)}, _ref({"name": "none"}), 0, variant=v))
        df = study.run(arms)
    finally:
        study.close()
    assert sorted(df["resolution"].unique()) == [16, 32]
    for res in (16, 32):
        images, _ = study.reconstructions({"resolution": res}, "gmi", 0)
        assert images.shape[-1] == res


# -- a plug-in attack that trains a prior with the target's answers (one file in real life) --------
BUILDS: list[int] = []


def _build_surrogate(oracle, public, *, num_classes, seed, device, progress, epochs: int = 1):
    """A linear surrogate fitted to the target's released probabilities on public images."""
    BUILDS.append(1)
    torch.manual_seed(seed)
    images = public.data[:64].float() / 255.0
    soft = oracle(images)
    model = nn.Sequential(nn.Flatten(), nn.Linear(images[0].numel(), num_classes))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs * 5):
        opt.zero_grad()
        loss = -(soft * model(images).log_softmax(1)).sum(1).mean()
        loss.backward()
        opt.step()
    meta = {"shape": list(images.shape[1:]), "num_classes": num_classes}
    return {k: v.detach() for k, v in model.state_dict().items()}, meta


def _load_surrogate(tensors, meta, device):
    c, h, w = meta["shape"]
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, meta["num_classes"]))
    model.load_state_dict(dict(tensors))
    return model.eval()


SURROGATE = TargetPrior("surrogate", "probabilities", _build_surrogate, _load_surrogate)


def surrogate_attack(
    oracle, labels, *, surrogate, generator, rng=None, on_step=None, steps: int = 3
):
    """Latent search on the surrogate only; one final batch of label queries."""
    t0 = time.perf_counter()
    z = torch.randn(len(labels), generator.latent_dim, generator=rng).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(surrogate(generator(z)), labels).backward()
        opt.step()
    with torch.no_grad():
        images = generator(z)
    oracle(images)
    return InversionResult(
        "surrogate", images, labels, z.detach(), [], oracle.queries, time.perf_counter() - t0
    )


@pytest.fixture
def plugin(monkeypatch):
    spec = AttackSpec("surrogate", surrogate_attack, access="label", needs=("generator", SURROGATE))
    for registry, value in [
        ("SPECS", spec),
        ("ATTACKS", spec.run),
        ("ATTACK_ACCESS", spec.access),
        ("ATTACK_NEEDS", spec.keywords),
    ]:
        monkeypatch.setitem(getattr(attack_registry, registry), "surrogate", value)
    BUILDS.clear()
    return spec


def test_target_prior_is_trained_through_a_counting_oracle_and_cached_per_target(tmp_path, plugin):
    study = open_study(_params(tmp_path, attacks=["surrogate"], baselines=[]))
    try:
        refs = {s: _ref({"name": "none"}, s) for s in (0, 1)}
        study.targets(refs)
        arms = [Arm({"target": f"seed {s}"}, ref, s) for s, ref in refs.items()]
        arms.append(Arm({"target": "seed 0 again"}, refs[0], 0))
        df = study.run(arms).set_index("target")
    finally:
        study.close()
    # 64 public images answered while training each target's surrogate; 2 label queries per attack
    assert (df["prior_queries"] == 64).all()
    # the build's seconds are reported apart from the attack's (the cached one keeps its build's)
    assert (df["prior_build_s"] > 0).all() and (df["wall_time_s"] >= 0).all()
    assert df.loc["seed 0", "prior_build_s"] == df.loc["seed 0 again", "prior_build_s"]
    assert (df["queries"] == 2).all()
    assert (
        len(BUILDS) == 2
    )  # one surrogate per target; the third arm reuses seed 0's from the cache
    assert df.loc["seed 0", "acc1"] == df.loc["seed 0 again", "acc1"]


def test_attack_spec_refuses_unknown_needs_and_access():
    with pytest.raises(ValueError, match="no study provides"):
        AttackSpec("x", surrogate_attack, access="label", needs=("flow",))
    with pytest.raises(ValueError, match="unknown access level"):
        AttackSpec("x", surrogate_attack, access="pixels")
    with pytest.raises(ValueError, match="unknown access level"):
        TargetPrior("p", "everything", _build_surrogate, _load_surrogate)


def test_labels_and_tags():
    assert defense_label(
        {"name": "dp_sgd", "kwargs": {"noise_multiplier": 0, "max_grad_norm": None}}
    ) == ("dp_sgd (noise_multiplier=0, max_grad_norm=None)")
    # the tags the notebooks wrote before the engine, for defense labels
    label = "dp_sgd (noise_multiplier=0, max_grad_norm=None)"
    assert (
        run_tag({"defense_label": label}, "gmi", 0)
        == "dp_sgd_noise_multiplier=0_max_grad_norm=None_gmi_s0"
    )
    assert run_tag({"threshold": 0.5}, "gmi", 1) == "0.5_gmi_s1"
    assert run_tag({"x": "../../etc passwd"}, "gmi", 0) == ".._.._etc_passwd_gmi_s0"
    assert "/" not in run_tag({"x": "a/b"}, "gmi", 0)
    assert key_label({"norm": "l2", "eps": 2.0}) == "l2 2"
    # distinct keys, distinct tags
    tags = {run_tag({"t": t}, a, s) for t in (0.5, 0.9) for a in ("gmi", "brep_mi") for s in (0, 1)}
    assert len(tags) == 8
