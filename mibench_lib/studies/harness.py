"""What every study notebook does between "here is a target" and "here is a results row".

A :class:`StudySetting` bundles the pieces that stay fixed within a study configuration (data
split, evaluator, delta_face extractor, GAN prior, the labels to invert, attack arguments, query
budgets). :func:`attack_and_score` runs one attack (or the random-latent baseline) against one target
through an oracle at the attack's access level (optionally behind an output defense), scores the
reconstructions with every metric, saves them, and returns one tidy row. Notebooks stay thin:
they loop over what their study varies and call this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from mibench_lib.artifacts import (
    FeatureExtractor,
    TrainedClassifier,
    TrainedGAN,
    cached_evaluator,
    cached_gan,
    load_face_extractor,
)
from mibench_lib.attacks import ATTACK_ACCESS, ATTACK_NEEDS, ATTACKS, InversionResult
from mibench_lib.baselines import random_latent_baseline
from mibench_lib.cache import ArtifactCache
from mibench_lib.data import MISplit, load_dataset
from mibench_lib.metrics import evaluate_reconstructions
from mibench_lib.oracle import TargetOracle

BASELINE = "random_latent"

#: Threat-model family of each access level, for tables that separate them.
FAMILY = {
    "white-box": "white-box",
    "logits": "black-box",
    "probabilities": "black-box",
    "top-k": "black-box",
    "label": "label-only",
    "none": "baseline",
}


@dataclass
class StudySetting:
    """The fixed pieces of one study configuration."""

    split: MISplit
    evaluator: TrainedClassifier
    face: FeatureExtractor
    prior: TrainedGAN
    labels: Tensor
    attack_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    query_budgets: Mapping[str, int] = field(default_factory=dict)
    inception_weights: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    out_dir: Path | None = None


def prepare_setting(
    *,
    cache: ArtifactCache,
    dataset: str,
    dataset_kwargs: Mapping[str, Any],
    classes: list[int],
    samples_per_class: int,
    model_seed: int,
    evaluator_arch: str,
    evaluator_train: Mapping[str, Any],
    face_arch: str,
    face_train: Mapping[str, Any],
    face_weights: str,
    gan: Mapping[str, Any],
    gan_train: Mapping[str, Any],
    attacks: list[str],
    attack_kwargs: Mapping[str, Mapping[str, Any]],
    query_budgets: Mapping[str, int],
    inception_weights: str,
    device: torch.device,
    out_dir: Path,
    progress: bool = True,
) -> StudySetting:
    """Load the data and build (or load from the cache) evaluator, delta_face extractor and GAN.

    Raises:
        ValueError: an unknown attack name, or a class outside the private classes.
    """
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; known: {sorted(ATTACKS)}")
    split = load_dataset(dataset, **dataset_kwargs)
    bad = [c for c in classes if not 0 <= c < split.num_classes]
    if bad:
        raise ValueError(
            f"classes {bad} are not private classes of {dataset} (0..{split.num_classes - 1})"
        )
    attack_classes = list(classes) or list(range(split.num_classes))
    labels = torch.tensor(attack_classes, dtype=torch.int64).repeat_interleave(samples_per_class)
    evaluator = cached_evaluator(
        cache,
        split,
        arch=evaluator_arch,
        train_cfg=evaluator_train,
        seed=model_seed,
        device=device,
        progress=progress,
    )
    face = load_face_extractor(
        cache,
        split,
        arch=face_arch,
        train_cfg=face_train,
        weights=face_weights,
        seed=model_seed + 1,
        device=device,
        progress=progress,
    )
    prior = cached_gan(
        cache,
        split.public,
        latent_dim=gan["latent_dim"],
        width=gan["width"],
        critic_width=gan["critic_width"],
        train_cfg=gan_train,
        seed=model_seed,
        device=device,
        progress=progress,
    )
    (out_dir / "reconstructions").mkdir(parents=True, exist_ok=True)
    return StudySetting(
        split,
        evaluator,
        face,
        prior,
        labels,
        attack_kwargs,
        query_budgets,
        inception_weights or None,
        device,
        out_dir,
    )


def run_attack(
    setting: StudySetting, name: str, oracle: TargetOracle | None, *, seed: int
) -> InversionResult:
    """Run attack ``name`` (or the random-latent baseline, which takes no oracle) with seed ``seed``."""
    rng = torch.Generator().manual_seed(seed)
    torch.manual_seed(
        seed
    )  # stochastic targets (MID samples at inference) draw from the global RNG
    if name == BASELINE:
        return random_latent_baseline(
            setting.prior.generator, setting.labels, rng=rng, truncation=1.0
        )
    needs = {"generator": setting.prior.generator, "discriminator": setting.prior.discriminator}
    kwargs = {k: needs[k] for k in ATTACK_NEEDS[name]}
    return ATTACKS[name](
        oracle, setting.labels, rng=rng, **kwargs, **setting.attack_kwargs.get(name, {})
    )


def score(setting: StudySetting, result: InversionResult, target: nn.Module) -> dict[str, Any]:
    """Every metric of ``result`` plus attack bookkeeping, as one flat dict."""
    split = setting.split
    scores = evaluate_reconstructions(
        result.images,
        result.labels,
        evaluator=setting.evaluator.model,
        private_train=split.private_train,
        label_map=split.private_to_evaluator,
        target=target,
        face_model=setting.face.model,
        inception_weights=setting.inception_weights,
        device=setting.device,
        strict=False,
    )
    unavailable = scores.pop("unavailable", {})
    row = {
        **scores,
        "queries": result.queries,
        "wall_time_s": result.wall_time_s,
        "n_images": len(result.images),
        "evaluator_acc": setting.evaluator.test_acc,
        "face_acc": setting.face.test_acc,
        "unavailable": "; ".join(f"{k}: {v}" for k, v in unavailable.items()),
    }
    if "selected" in result.extras:  # GMI's best-of-restarts selection, scored on its own
        sel = result.extras["selected"]
        sel_scores = evaluate_reconstructions(
            result.images[sel],
            result.labels[sel],
            evaluator=setting.evaluator.model,
            private_train=split.private_train,
            label_map=split.private_to_evaluator,
            target=target,
            device=setting.device,
            strict=False,
        )
        row["acc1_selected"] = sel_scores["acc1"]
    if "found_start" in result.extras:  # BREP-MI: entries the target never labelled at the start
        row["start_found"] = float(result.extras["found_start"].float().mean())
    return row


def attack_and_score(
    setting: StudySetting,
    name: str,
    target: nn.Module,
    *,
    seed: int,
    tag: str,
    oracle: TargetOracle | None = None,
) -> dict[str, Any]:
    """Attack ``target`` with ``name`` and return its results row; reconstructions go to disk.

    Args:
        setting: The study's fixed pieces.
        name: Attack registry name or ``"random_latent"``.
        target: The (possibly defended) target model.
        seed: Seeds the attack.
        tag: File stem of the saved reconstructions (``<out_dir>/reconstructions/<tag>.safetensors``).
        oracle: A prepared oracle (e.g. behind an output defense); default: a plain oracle at the
            attack's access level with its query budget.
    """
    if name == BASELINE:
        access, oracle = "none", None
    else:
        if oracle is None:
            oracle = TargetOracle(
                target, access=ATTACK_ACCESS[name], budget=setting.query_budgets.get(name)
            )
        access = oracle.access
    result = run_attack(setting, name, oracle, seed=seed)
    row = {
        "attack": name,
        "seed": seed,
        "access": access,
        "family": FAMILY[access],
        **score(setting, result, target),
    }
    if setting.out_dir is not None:
        save_file(
            {"images": result.images.contiguous(), "labels": result.labels.contiguous()},
            setting.out_dir / "reconstructions" / f"{tag}.safetensors",
        )
    return row
