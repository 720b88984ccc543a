"""Cached construction of the trained pieces every study needs: evaluators, targets, GAN priors.

Each builder derives a cache config from everything that determines the artifact (a fingerprint of
the exact training images, the architecture and its arguments, the training hyperparameters and
the seed), so a rerun reuses it and any changed field retrains. Training always goes through
:func:`mibench_lib.models.train.train_classifier` or
:func:`mibench_lib.generators.train.train_wgan_gp`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mibench_lib.cache import ArtifactCache, prefixed, tensor_fingerprint, unprefixed
from mibench_lib.data._types import ImageSet, MISplit
from mibench_lib.generators import GENERATORS
from mibench_lib.models.base import Classifier, ResizedInput
from mibench_lib.models.train import train_classifier

#: Bump when the meaning of a training recipe changes, so old cache entries are not reused.
RECIPE = "1"

_TRAIN_KEYS = {
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "lr_milestones",
    "eval_every",
}


def build_classifier(
    arch: str, num_classes: int, input_shape: Sequence[int], **arch_kwargs: Any
) -> Classifier:
    """Instantiate a zoo architecture by registry name (see :data:`mibench_lib.models.MODELS`)."""
    from mibench_lib.models import MODELS

    if arch not in MODELS:
        raise ValueError(f"unknown model architecture {arch!r}; known: {sorted(MODELS)}")
    return MODELS[arch](num_classes, input_shape=tuple(input_shape), **arch_kwargs)


def data_fingerprint(*sets: ImageSet) -> str:
    """Identity of the exact images and labels (used in cache keys)."""
    return tensor_fingerprint(*[t for s in sets for t in (s.data, s.labels)])


def _check_train_cfg(train_cfg: Mapping[str, Any], where: str) -> None:
    unknown = set(train_cfg) - _TRAIN_KEYS
    if unknown:
        raise ValueError(
            f"{where}: unknown training keys {sorted(unknown)}; allowed: {sorted(_TRAIN_KEYS)}"
        )


@dataclass
class TrainedClassifier:
    """A trained (or cache-loaded) classifier with its accuracy and provenance."""

    model: Classifier
    test_acc: float
    meta: dict[str, Any]
    cache_hit: bool


def cached_classifier(
    cache: ArtifactCache,
    *,
    role: str,
    arch: str,
    train: ImageSet,
    test: ImageSet,
    num_classes: int,
    train_cfg: Mapping[str, Any],
    seed: int,
    arch_kwargs: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TrainedClassifier:
    """Train (or load) one classifier, e.g. the evaluator or the delta_face extractor.

    Args:
        cache: Where artifacts live.
        role: Cache folder name and progress label (``"evaluator"``, ``"face"``, ...).
        arch: Registry name of the architecture.
        train, test: Its labelled training and test sets.
        num_classes: Output size.
        train_cfg: Keyword arguments of ``train_classifier`` (epochs, batch_size, lr, ...).
        seed: Seeds initialisation and batch order.
    """
    _check_train_cfg(train_cfg, role)
    arch_kwargs = dict(arch_kwargs or {})
    config = {
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "num_classes": num_classes,
        "data": data_fingerprint(train, test),
        "train": dict(train_cfg),
        "seed": seed,
    }

    def build() -> tuple[dict, dict]:
        torch.manual_seed(seed)
        model = build_classifier(arch, num_classes, train.image_shape, **arch_kwargs)
        t0 = time.perf_counter()
        model, rep = train_classifier(
            model,
            train,
            test,
            device=device,
            rng=torch.Generator().manual_seed(seed),
            progress=progress,
            desc=role,
            **train_cfg,
        )
        meta = {
            "test_acc": rep.test_acc,
            "train_acc": rep.train_acc,
            "steps": rep.steps,
            "wall_time_s": time.perf_counter() - t0,
        }
        return model.state_dict(), meta

    tensors, meta, hit = cache.get_or_build(role, config, build)
    torch.manual_seed(seed)
    model = build_classifier(arch, num_classes, train.image_shape, **arch_kwargs)
    model.load_state_dict(tensors)
    return TrainedClassifier(model.to(device).eval(), float(meta["test_acc"]), meta, hit)


def cached_evaluator(
    cache: ArtifactCache,
    split: MISplit,
    *,
    role: str = "evaluator",
    arch: str,
    train_cfg: Mapping[str, Any],
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TrainedClassifier:
    """Train (or load) a classifier on the evaluator's data and label space (all classes)."""
    return cached_classifier(
        cache,
        role=role,
        arch=arch,
        train=split.evaluator_train,
        test=split.evaluator_test,
        num_classes=split.evaluator_num_classes,
        train_cfg=train_cfg,
        seed=seed,
        device=device,
        progress=progress,
    )


@dataclass
class TargetCheckpoint:
    """The target as it was the first time its test accuracy reached ``threshold``."""

    threshold: float
    step: int
    test_acc: float
    model: Classifier


def cached_target_checkpoints(
    cache: ArtifactCache,
    split: MISplit,
    *,
    arch: str,
    train_cfg: Mapping[str, Any],
    thresholds: Sequence[float],
    seed: int,
    arch_kwargs: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[TargetCheckpoint]:
    """Train one target on the private data, keeping weights at each accuracy threshold.

    Returns one :class:`TargetCheckpoint` per threshold reached, in rising order; thresholds the
    training run never reached are missing (the caller reports them).
    """
    _check_train_cfg(train_cfg, "target")
    arch_kwargs = dict(arch_kwargs or {})
    thresholds = sorted(float(t) for t in thresholds)
    config = {
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "num_classes": split.num_classes,
        "data": data_fingerprint(split.private_train, split.private_test),
        "train": dict(train_cfg),
        "thresholds": thresholds,
        "seed": seed,
    }

    def build() -> tuple[dict, dict]:
        torch.manual_seed(seed)
        model = build_classifier(arch, split.num_classes, split.image_shape, **arch_kwargs)
        t0 = time.perf_counter()
        _, rep = train_classifier(
            model,
            split.private_train,
            split.private_test,
            device=device,
            rng=torch.Generator().manual_seed(seed),
            checkpoint_thresholds=thresholds,
            progress=progress,
            desc=f"target seed {seed}",
            **train_cfg,
        )
        tensors: dict = {}
        ckpts = []
        for i, c in enumerate(rep.checkpoints):
            tensors.update(prefixed(c.state_dict, f"ckpt{i}"))
            ckpts.append({"threshold": c.threshold, "step": c.step, "test_acc": c.test_acc})
        if not tensors:
            raise RuntimeError(
                f"target (seed {seed}) reached none of the thresholds {thresholds}; "
                f"final test accuracy {rep.test_acc:.3f}: train longer or lower them"
            )
        meta = {
            "checkpoints": ckpts,
            "final_test_acc": rep.test_acc,
            "acc_history": rep.acc_history,
            "wall_time_s": time.perf_counter() - t0,
        }
        return tensors, meta

    tensors, meta, _ = cache.get_or_build("target", config, build)
    out = []
    for i, c in enumerate(meta["checkpoints"]):
        model = build_classifier(arch, split.num_classes, split.image_shape, **arch_kwargs)
        model.load_state_dict(unprefixed(tensors, f"ckpt{i}"))
        out.append(
            TargetCheckpoint(
                float(c["threshold"]), int(c["step"]), float(c["test_acc"]), model.to(device).eval()
            )
        )
    return out


@dataclass
class TrainedGAN:
    """A GAN prior trained on public data: generator, critic and provenance."""

    generator: nn.Module
    discriminator: nn.Module
    meta: dict[str, Any]
    cache_hit: bool


def cached_gan(
    cache: ArtifactCache,
    public: ImageSet,
    *,
    arch: str = "dcgan",
    latent_dim: int = 100,
    width: int = 16,
    critic_width: int = 16,
    train_cfg: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TrainedGAN:
    """Train (or load) the GMI GAN prior on the public images only (labels are dropped first)."""
    from mibench_lib.generators import train_wgan_gp

    if arch not in GENERATORS:
        raise ValueError(f"unknown GAN architecture {arch!r}; known: {sorted(GENERATORS)}")
    train_cfg = dict(train_cfg or {})
    allowed = {"epochs", "batch_size", "lr", "n_critic", "gp_weight"}
    if set(train_cfg) - allowed:
        raise ValueError(
            f"gan: unknown training keys {sorted(set(train_cfg) - allowed)}; allowed: {sorted(allowed)}"
        )
    public = public.unlabelled()
    gen_cls, critic_cls = GENERATORS[arch]
    config = {
        "arch": arch,
        "latent_dim": latent_dim,
        "width": width,
        "critic_width": critic_width,
        "data": data_fingerprint(public),
        "train": train_cfg,
        "seed": seed,
    }

    def make() -> tuple[nn.Module, nn.Module]:
        torch.manual_seed(seed)
        return gen_cls(latent_dim, public.image_shape, width=width), critic_cls(
            public.image_shape, width=critic_width
        )

    def build() -> tuple[dict, dict]:
        g, d = make()
        t0 = time.perf_counter()
        rep = train_wgan_gp(
            g,
            d,
            public,
            device=device,
            rng=torch.Generator().manual_seed(seed),
            progress=progress,
            **train_cfg,
        )
        meta = {
            "generator_steps": rep.steps,
            "final_wasserstein": rep.wasserstein[-1] if rep.wasserstein else None,
            "wasserstein": rep.wasserstein[:: max(1, len(rep.wasserstein) // 200)],
            "wall_time_s": time.perf_counter() - t0,
        }
        return {**prefixed(g.state_dict(), "G"), **prefixed(d.state_dict(), "D")}, meta

    tensors, meta, hit = cache.get_or_build("gan", config, build)
    g, d = make()
    g.load_state_dict(unprefixed(tensors, "G"))
    d.load_state_dict(unprefixed(tensors, "D"))
    for m in (g, d):
        m.to(device).eval().requires_grad_(False)
    return TrainedGAN(g, d, meta, hit)


@dataclass
class FeatureExtractor:
    """The independent second feature extractor behind delta_face."""

    name: str
    model: Classifier
    test_acc: float
    source: str


def _native_shape(arch: str, split: MISplit) -> tuple[int, int, int]:
    """The input shape ``arch`` is defined at (its constructor's default), with the data's channels.

    Local weights of a network fix its input size; data of another resolution is resized to it.
    """
    import inspect

    from mibench_lib.models import MODELS

    default = inspect.signature(MODELS[arch]).parameters.get("input_shape")
    if default is None or default.default is inspect.Parameter.empty:
        return split.image_shape
    return (split.image_shape[0], *tuple(default.default)[1:])


def load_face_extractor(
    cache: ArtifactCache,
    split: MISplit,
    *,
    arch: str,
    train_cfg: Mapping[str, Any],
    weights: str = "",
    seed: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> FeatureExtractor:
    """The delta_face feature extractor.

    With ``weights`` (a local file, e.g. a face-recognition network a user has), ``arch`` is built
    and its backbone loaded from that file and used as is: its penultimate features are the
    embedding and it is never trained here (``test_acc`` is NaN). Without weights, a second
    evaluator of architecture ``arch`` is trained on the evaluator's data: independent of the
    evaluator by architecture and seed.
    """
    if weights:
        from mibench_lib.models.weights import load_backbone_weights

        model = build_classifier(arch, split.evaluator_num_classes, _native_shape(arch, split))
        load_backbone_weights(model, weights)
        if model.input_shape != split.image_shape:  # weights fix the size: resize the images
            model = ResizedInput(model, split.image_shape)
        return FeatureExtractor(
            f"{arch} (local weights)", model.to(device).eval(), float("nan"), str(weights)
        )
    trained = cached_evaluator(
        cache,
        split,
        role="face",
        arch=arch,
        train_cfg=train_cfg,
        seed=seed,
        device=device,
        progress=progress,
    )
    return FeatureExtractor(arch, trained.model, trained.test_acc, "trained second evaluator")


def public_labelled(split: MISplit) -> ImageSet:
    """The public images with their (evaluator-space) labels, relabelled 0..P-1.

    Defenders may use labelled public data (TL-DMI pre-trains on it); attackers never see these
    labels. Built from the evaluator's data: every image whose class is not a private class.

    Raises:
        ValueError: the split has no labelled public classes (e.g. CelebA, whose evaluator knows
            only the private identities).
    """
    pool = ImageSet.concat(split.evaluator_train, split.evaluator_test)
    private = set(split.private_to_evaluator.tolist())
    public_classes = sorted(set(pool.labels.tolist()) - private)
    if not public_classes:
        raise ValueError(
            f"{split.name} has no labelled public classes; TL-DMI needs labelled public "
            "data (or a pre-trained backbone loaded from local weights)"
        )
    keep = torch.isin(pool.labels, torch.tensor(public_classes))
    subset = pool.subset(keep)
    remap = {c: i for i, c in enumerate(public_classes)}
    return ImageSet(subset.data, torch.tensor([remap[int(c)] for c in subset.labels.tolist()]))


@dataclass
class DefendedTarget:
    """A target trained under a defense (or the plain recipe), with its report."""

    defense: Any
    model: Classifier
    natural_acc: float
    extra: dict[str, Any]
    cache_hit: bool


def make_defense(
    name: str,
    kwargs: Mapping[str, Any],
    split: MISplit,
    *,
    train_cfg: Mapping[str, Any],
    seed: int,
    device: torch.device | str = "cpu",
) -> Any:
    """Instantiate a registered defense, filling in what the study provides.

    Every parameter of :data:`mibench_lib.defenses.STUDY_INPUTS` that the constructor accepts and
    ``kwargs`` does not set is supplied: ``seed``, ``device`` (as a string), ``rng`` (None),
    ``train_epochs`` (``train_cfg["epochs"]``, 10 when unset), ``pretrain_data`` (the labelled
    public data, :func:`public_labelled`, built only when asked for) and ``pretrain_num_classes``
    (the classes of ``pretrain_data``).

    Raises:
        ValueError: an unknown defense name.
    """
    import inspect

    from mibench_lib.defenses import DEFENSES, STUDY_INPUTS

    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; known: {sorted(DEFENSES)}")
    ctor = DEFENSES[name]
    accepted = inspect.signature(ctor).parameters
    kw = dict(kwargs)

    @functools.cache
    def pretrain_data() -> ImageSet:
        return public_labelled(split)  # raises for splits without labelled public classes

    def pretrain_num_classes() -> int:
        data = kw["pretrain_data"] if "pretrain_data" in kw else pretrain_data()
        return int(data.labels.max()) + 1

    supply = {
        "seed": lambda: seed,
        "device": lambda: str(device),
        "rng": lambda: None,
        "train_epochs": lambda: int(train_cfg.get("epochs", 10)),
        "pretrain_data": pretrain_data,
        "pretrain_num_classes": pretrain_num_classes,
    }
    for key in STUDY_INPUTS:  # table order: pretrain_data before pretrain_num_classes
        if key in accepted and key not in kw:
            kw[key] = supply[key]()
    return ctor(**kw)


def cached_defended_target(
    cache: ArtifactCache,
    split: MISplit,
    *,
    arch: str,
    train_cfg: Mapping[str, Any],
    defense_name: str,
    defense_kwargs: Mapping[str, Any] | None = None,
    seed: int,
    arch_kwargs: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> DefendedTarget:
    """Train (or load) one target on the private data under a defense.

    Output-processing defenses (and ``"none"``) share the undefended target; their effect is applied
    by the oracle. Training defenses go through ``train_classifier(..., defense=...)``; the trained
    model passes through the defense's ``unwrap`` hook (if any) before its weights are saved, and
    the report's extra numbers (epsilon for DP-SGD, robust accuracy for adversarial training,
    theta_C for TL-DMI) are cached with the weights.
    """
    _check_train_cfg(train_cfg, "target")
    defense_kwargs = dict(defense_kwargs or {})
    arch_kwargs = dict(arch_kwargs or {})
    defense = make_defense(
        defense_name, defense_kwargs, split, train_cfg=train_cfg, seed=seed, device=device
    )
    trains = defense.trains
    config = {
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "num_classes": split.num_classes,
        "data": data_fingerprint(split.private_train, split.private_test),
        "train": dict(train_cfg),
        "seed": seed,
        "defense": defense.name if trains else "none",
        "defense_config": dict(defense.config) if trains else {},
    }

    def fresh() -> Classifier:
        torch.manual_seed(seed)
        return build_classifier(arch, split.num_classes, split.image_shape, **arch_kwargs)

    def build() -> tuple[dict, dict]:
        t0 = time.perf_counter()
        model, rep = train_classifier(
            fresh(),
            split.private_train,
            split.private_test,
            device=device,
            rng=torch.Generator().manual_seed(seed),
            progress=progress,
            desc=f"target {defense.name} seed {seed}",
            defense=defense if trains else None,
            **train_cfg,
        )
        if trains and defense.unwrap is not None:
            model = defense.unwrap(model)
        extra = {k: v for k, v in rep.extra.items() if isinstance(v, (int, float, str))}
        meta = {
            "natural_acc": rep.test_acc,
            "train_acc": rep.train_acc,
            "extra": extra,
            "wall_time_s": time.perf_counter() - t0,
        }
        return model.state_dict(), meta

    tensors, meta, hit = cache.get_or_build("defended_target", config, build)
    model = fresh()
    restore = defense.restore or defense.build
    if trains and restore is not None:
        model = restore(model)
    model.load_state_dict(tensors)
    model = model.to(device).eval()
    return DefendedTarget(defense, model, float(meta["natural_acc"]), dict(meta["extra"]), hit)
