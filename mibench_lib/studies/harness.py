"""What every study notebook does between "here is a target" and "here is a results row".

A :class:`StudySetting` bundles the pieces that stay fixed within a study configuration (data
split, evaluator, delta_face extractor, GAN prior, the labels to invert, attack arguments, query
budgets). :func:`attack_and_score` runs one attack (or the random-latent baseline) against one target
through an oracle at the attack's access level (optionally behind an output defense), scores the
reconstructions with every metric, saves them, and returns one tidy row. Notebooks stay thin:
they loop over what their study varies and call this.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import cached_property
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
    data_fingerprint,
    load_face_extractor,
)
from mibench_lib.attacks import (
    ATTACK_ACCESS,
    ATTACKS,
    SPECS,
    InversionResult,
    PublicPrior,
    TargetPrior,
)
from mibench_lib.attacks._masked import mask_images
from mibench_lib.baselines import (
    blank_image_baseline,
    mean_public_baseline,
    random_latent_baseline,
)
from mibench_lib.cache import ArtifactCache, tensor_fingerprint
from mibench_lib.data import ImageSet, MISplit, load_dataset
from mibench_lib.defenses import Defense, defended_oracle
from mibench_lib.metrics import evaluate_reconstructions
from mibench_lib.oracle import QueryBudgetExceeded, TargetOracle

BASELINE = "random_latent"
#: Reference points scored like attacks, without a query: random latents through the GAN prior,
#: an all-black image and the mean public image (the trivial floors of every accuracy).
BASELINES: tuple[str, ...] = (BASELINE, "blank_image", "mean_public")

#: Threat-model family of each access level, for tables that separate them.
FAMILY = {
    "white-box": "white-box",
    "logits": "black-box",
    "probabilities": "black-box",
    "top-k": "black-box",
    "label": "label-only",
    "none": "baseline",
}
#: Family of attacks of the partial-image threat model (SecretGen): never ranked with the others.
PARTIAL_FAMILY = "partial-image"


class StudySetting:
    """The fixed pieces of one study configuration, built lazily from their recipe.

    The evaluator, delta_face extractor and GAN prior are resolved through the artifact cache the
    first time they are used, so a worker process that only runs MIFace never waits for the GAN,
    and several processes that share the cache build each artifact once (see
    :class:`~mibench_lib.studies.pool.StudyPool`). ``recipe`` holds the keyword arguments of
    :func:`prepare_setting`: plain data that rebuilds the same setting in another process.
    """

    def __init__(self, recipe: Mapping[str, Any], split: MISplit, labels: Tensor) -> None:
        self.recipe = dict(recipe)
        self.split = split
        self.labels = labels
        self.cache: ArtifactCache = recipe["cache"]
        self.attack_kwargs: Mapping[str, Mapping[str, Any]] = recipe["attack_kwargs"]
        self.query_budgets: Mapping[str, int] = recipe["query_budgets"]
        self.inception_weights: str | None = recipe["inception_weights"] or None
        self.device = torch.device(recipe["device"])
        self.out_dir: Path | None = Path(recipe["out_dir"]) if recipe["out_dir"] else None
        self.progress: bool = recipe["progress"]
        #: Private-image features per scoring model, shared by every :func:`score` call.
        self.reference_cache: dict[tuple[Any, ...], Tensor] = {}
        #: Targets loaded in this process, by :func:`~mibench_lib.studies.jobs.TargetRef` key.
        self.targets: dict[str, Any] = {}

    @cached_property
    def evaluator(self) -> TrainedClassifier:
        """The independent evaluation classifier (trained on the evaluator's data, cached)."""
        r = self.recipe
        return cached_evaluator(
            self.cache,
            self.split,
            arch=r["evaluator_arch"],
            train_cfg=r["evaluator_train"],
            seed=r["model_seed"],
            device=self.device,
            progress=self.progress,
        )

    @cached_property
    def face(self) -> FeatureExtractor:
        """The second, independent feature extractor behind delta_face."""
        r = self.recipe
        return load_face_extractor(
            self.cache,
            self.split,
            arch=r["face_arch"],
            train_cfg=r["face_train"],
            weights=r["face_weights"],
            seed=r["model_seed"] + 1,
            device=self.device,
            progress=self.progress,
        )

    @cached_property
    def prior(self) -> TrainedGAN:
        """The GAN prior trained on the public images only."""
        r, gan = self.recipe, self.recipe["gan"]
        return cached_gan(
            self.cache,
            self.split.public,
            latent_dim=gan["latent_dim"],
            width=gan["width"],
            critic_width=gan["critic_width"],
            train_cfg=r["gan_train"],
            seed=r["model_seed"],
            device=self.device,
            progress=self.progress,
        )


def private_originals(setting: StudySetting) -> Tensor:
    """One private training image per label entry, the same for every seed: (N, C, H, W).

    Entry ``i`` of class ``c`` gets the ``k``-th image of a fixed permutation of class ``c``'s
    private training images (``k`` counts earlier entries of the same class), seeded by the
    study's model seed: what a partial-image attacker holds before its centre is hidden.
    """
    split, labels = setting.split, setting.labels
    rng = torch.Generator().manual_seed(int(setting.recipe["model_seed"]))
    data = split.private_train.images
    out = []
    seen: dict[int, int] = {}
    order: dict[int, Tensor] = {}
    for c in labels.tolist():
        if c not in order:
            idx = (split.private_train.labels == c).nonzero().squeeze(1)
            order[c] = idx[torch.randperm(idx.numel(), generator=rng)]
        k = seen.get(c, 0)
        seen[c] = k + 1
        out.append(data[order[c][k % order[c].numel()]])
    return torch.stack(out)


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
    prior_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    device: torch.device | str,
    out_dir: Path | str | None,
    progress: bool = True,
    eager: bool = True,
) -> StudySetting:
    """Load the data and describe (``eager``: also build or load) evaluator, extractor and GAN.

    With ``eager=False`` nothing is trained here: each artifact is resolved on first use, which
    lets a :class:`~mibench_lib.studies.pool.StudyPool` build them in its workers.

    Raises:
        ValueError: an unknown attack name, or a class outside the private classes.
    """
    recipe = {k: v for k, v in locals().items() if k != "eager"}
    recipe["device"] = str(device)
    recipe["prior_kwargs"] = dict(prior_kwargs or {})
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
    if out_dir is not None:
        (Path(out_dir) / "reconstructions").mkdir(parents=True, exist_ok=True)
    setting = StudySetting(recipe, split, labels)
    if eager:
        for name in ARTIFACTS:
            getattr(setting, name)
    return setting


#: The lazily built pieces of a :class:`StudySetting`, longest to build first.
ARTIFACTS: tuple[str, ...] = ("prior", "evaluator", "face")


def mean_public_image(split: MISplit, *, chunk: int = 4096) -> Tensor:
    """Mean of the public images, (C, H, W) in [0, 1], computed in chunks (large face sets)."""
    data = split.public.data
    total = torch.zeros(data.shape[1:], dtype=torch.float64)
    for start in range(0, data.shape[0], chunk):
        block = data[start : start + chunk].double()
        total += block.sum(0) / (255.0 if data.dtype == torch.uint8 else 1.0)
    return (total / max(1, data.shape[0])).float()


#: How a setting provides each of :data:`~mibench_lib.attacks.PUBLIC_NEEDS`.
PUBLIC_ARTIFACTS: dict[str, Callable[[StudySetting], Any]] = {
    "generator": lambda setting: setting.prior.generator,
    "discriminator": lambda setting: setting.prior.discriminator,
    "masked_private": lambda setting: mask_images(private_originals(setting)),
}


def target_fingerprint(target: nn.Module) -> str:
    """Identity of a target's weights and buffers (the cache key of its target priors)."""
    state = target.state_dict()
    return tensor_fingerprint(*(state[k] for k in sorted(state)))


def _released_by(defense: Defense | None) -> Any:
    """What an output defense changes in a query-access prior's answers (None: nothing)."""
    if defense is None or (defense.postprocess is None and defense.release is None):
        return None
    return {"defense": defense.name, "config": defense.config}


def build_target_prior(
    setting: StudySetting,
    prior: TargetPrior,
    target: nn.Module,
    *,
    defense: Defense | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train (or load) ``prior`` for ``target`` through a query-counting oracle; cached per target.

    The prior sees the target only through a :class:`~mibench_lib.oracle.TargetOracle` at
    ``prior.access`` and the public images without labels. Behind an output defense (``defense``
    with a ``postprocess`` or a release cap) the oracle is the one the deployment gives an attacker
    of that access level (:func:`~mibench_lib.defenses.defended_oracle`): LOKT's T-ACGAN learns
    from the labels the defense releases, C2FMI's adapter from its rounded or truncated scores. A
    white-box prior holds the model and bypasses the defense. Its cache key holds the target's
    weights (:func:`target_fingerprint`), what the defense releases, the public data, its keyword
    arguments (``prior_kwargs[prior.name]``) and the study's model seed.

    Returns:
        What the attack gets (``prior.load``) and the build's metadata, whose ``queries`` is the
        number of images the oracle answered while training it and ``build_s`` the seconds the
        build took (when it was built, not loaded).
    """
    r = setting.recipe
    kwargs = dict(r.get("prior_kwargs", {}).get(prior.name, {}))
    public = setting.split.public.unlabelled()
    released = None if prior.access == "white-box" else _released_by(defense)
    config = {
        "prior": prior.name,
        "access": prior.access,
        "target": target_fingerprint(target),
        "data": data_fingerprint(public),
        "num_classes": setting.split.num_classes,
        "kwargs": kwargs,
        "seed": r["model_seed"],
    }
    if released is not None:
        config["released"] = released

    def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
        if released is None:
            oracle = TargetOracle(target, access=prior.access)
        else:
            oracle = defended_oracle(target, defense, access=prior.access)  # type: ignore[arg-type]
        # A stochastic release (fresh Gaussian noise) draws from torch's global generator, whose
        # state in a pool worker depends on the jobs it ran before: seed it, so the prior is a
        # function of its cache key whichever worker builds it.
        torch.manual_seed(int(r["model_seed"]))
        t0 = time.perf_counter()
        tensors, meta = prior.build(
            oracle,
            public,
            num_classes=setting.split.num_classes,
            seed=r["model_seed"],
            device=setting.device,
            progress=setting.progress,
            **kwargs,
        )
        return tensors, {**meta, "queries": oracle.queries, "build_s": time.perf_counter() - t0}

    tensors, meta, _ = setting.cache.get_or_build(f"prior_{prior.name}", config, build)
    return prior.load(tensors, meta, setting.device), meta


def build_public_prior(setting: StudySetting, prior: PublicPrior) -> tuple[Any, dict[str, Any]]:
    """Train (or load) ``prior`` from the public images; cached by data.

    The images come with the public data's own labels when the split has them
    (:attr:`~mibench_lib.data.MISplit.public_labels`; -1 otherwise).

    It never sees a target, so every target and attack of the setting shares one build. Its cache
    key holds the public data, its keyword arguments (``prior_kwargs[prior.name]``) and the
    study's model seed.
    """
    r = setting.recipe
    kwargs = dict(r.get("prior_kwargs", {}).get(prior.name, {}))
    split = setting.split
    public = split.public
    if split.public_labels is not None:  # the public data's own classes, never private ones
        public = ImageSet(public.data, split.public_labels)
    config = {
        "prior": prior.name,
        "data": data_fingerprint(public),
        "kwargs": kwargs,
        "seed": r["model_seed"],
    }

    def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
        t0 = time.perf_counter()
        tensors, meta = prior.build(
            public, seed=r["model_seed"], device=setting.device, progress=setting.progress, **kwargs
        )
        return tensors, {**meta, "build_s": time.perf_counter() - t0}

    tensors, meta, _ = setting.cache.get_or_build(f"public_{prior.name}", config, build)
    return prior.load(tensors, meta, setting.device), meta


def _needs(
    setting: StudySetting,
    name: str,
    target: nn.Module | None,
    defense: Defense | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The artifacts attack ``name`` takes as keyword arguments, built or loaded now.

    Returns:
        The keyword arguments and what its target priors cost (None when it has none):
        ``{"prior_queries": target queries, "prior_build_s": seconds their builds took}``.
    """
    if name in BASELINES:
        return ({"generator": setting.prior.generator} if name == BASELINE else {}), None
    spec = SPECS[name]
    kwargs = {need: PUBLIC_ARTIFACTS[need](setting) for need in spec.public_needs}
    for public_prior in spec.public_priors:
        kwargs[public_prior.name], _ = build_public_prior(setting, public_prior)
    if not spec.target_priors:
        return kwargs, None  # e.g. MIFace never waits for the GAN
    if target is None:
        raise ValueError(
            f"attack {name!r} trains priors with the target's answers: pass the target"
        )
    cost = {"prior_queries": 0, "prior_build_s": 0.0}
    # a white-box attacker holds the model: its priors never go through an output defense
    through = defense if spec.access != "white-box" else None
    for prior in spec.target_priors:
        kwargs[prior.name], meta = build_target_prior(setting, prior, target, defense=through)
        cost["prior_queries"] += int(meta["queries"])
        cost["prior_build_s"] += float(meta.get("build_s", float("nan")))
    return kwargs, cost


def run_attack(
    setting: StudySetting,
    name: str,
    oracle: TargetOracle | None,
    *,
    seed: int,
    target: nn.Module | None = None,
    defense: Defense | None = None,
) -> InversionResult:
    """Run attack ``name`` (or a baseline of :data:`BASELINES`, which take no oracle) with ``seed``.

    Every artifact the run uses is built or loaded *before* the seed is set: building one draws
    its initialisation from the global generator, so a lazily built GAN would otherwise shift the
    draws of a stochastic target (MID samples at inference) depending on whether this process had
    already loaded it.
    """
    kwargs, prior_cost = _needs(setting, name, target, defense)
    rng = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # stochastic targets (MID samples at inference) draw from it
    if name == BASELINE:
        return random_latent_baseline(kwargs["generator"], setting.labels, rng=rng, truncation=1.0)
    if name == "blank_image":
        return blank_image_baseline(setting.labels, shape=setting.split.image_shape)
    if name == "mean_public":
        return mean_public_baseline(mean_public_image(setting.split)[None], setting.labels)
    result = SPECS[name].run(
        oracle, setting.labels, rng=rng, **kwargs, **setting.attack_kwargs.get(name, {})
    )
    if prior_cost is not None:
        result.extras.update(prior_cost)
    return result


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
        reference_cache=setting.reference_cache,
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
            reference_cache=setting.reference_cache,
        )
        row["acc1_selected"] = sel_scores["acc1"]
    # what its target priors cost (queries, build seconds), reported apart from the attack's own
    for key in ("prior_queries", "prior_build_s"):
        if key in result.extras:
            row[key] = result.extras[key]
    if "found_start" in result.extras:  # BREP-MI: entries the target never labelled at the start
        row["start_found"] = float(result.extras["found_start"].float().mean())
    if "stopped_by_budget" in result.extras:  # a query-access search the oracle's budget ended
        row["stopped_by_budget"] = bool(result.extras["stopped_by_budget"])
    if result.attack in SPECS and SPECS[result.attack].threat_model == "partial":
        row.update(partial_scores(setting, result))
    return row


def hole_psnr(images: Tensor, reference: Tensor, mask: Tensor) -> Tensor:
    """PSNR (dB, peak 1) of ``images`` against ``reference`` over the hidden pixels only: (N,).

    ``mask`` is (N, 1, H, W), 1 where a pixel was known and 0 in the hole; identical holes give
    ``inf``.

    Example:
        >>> ref = torch.zeros(1, 1, 4, 4); mask = torch.ones(1, 1, 4, 4); mask[..., 1:3, 1:3] = 0
        >>> round(float(hole_psnr(ref + 0.1, ref, mask)[0]), 3)
        20.0
    """
    hole = (1 - mask).expand_as(images)
    err = ((images - reference) ** 2 * hole).flatten(1).sum(1)
    count = hole.flatten(1).sum(1).clamp_min(1)
    return -10 * torch.log10(err / count)


def partial_scores(setting: StudySetting, result: InversionResult) -> dict[str, Any]:
    """What a partial-image run recovered of the hidden pixels: PSNR in the hole, label found.

    The reconstructions are compared with the private images the attacker held masked
    (:func:`private_originals`), entry by entry.
    """
    originals = private_originals(setting)
    masked = mask_images(originals)
    if result.images.shape != originals.shape:
        raise ValueError(
            f"{result.attack}: a partial-image attack returns one image per entry "
            f"{tuple(originals.shape)}, got {tuple(result.images.shape)}"
        )
    psnr = hole_psnr(result.images.float(), originals, masked.mask)
    row: dict[str, Any] = {"psnr_hole": float(psnr[torch.isfinite(psnr)].mean())}
    if "pseudo_label_correct" in result.extras:
        row["pseudo_label_acc"] = float(result.extras["pseudo_label_correct"].float().mean())
    return row


def attack_and_score(
    setting: StudySetting,
    name: str,
    target: nn.Module,
    *,
    seed: int,
    tag: str,
    oracle: TargetOracle | None = None,
    defense: Defense | None = None,
    budget: int | None = None,
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
        defense: The output defense ``oracle`` deploys (its target priors are trained through
            the same release).
        budget: Query budget of the default oracle (None: ``query_budgets[name]`` or unlimited);
            reported as ``query_budget``.
    """
    if name in BASELINES:
        access, oracle = "none", None
    else:
        if oracle is None:
            budget = setting.query_budgets.get(name) if budget is None else budget
            oracle = TargetOracle(target, access=ATTACK_ACCESS[name], budget=budget)
        access = oracle.access
    # Scoring models are resolved before the run is seeded (see run_attack).
    _ = (setting.evaluator, setting.face)
    partial = name in SPECS and SPECS[name].threat_model == "partial"
    head = {
        "attack": name,
        "seed": seed,
        "access": access,
        "family": PARTIAL_FAMILY if partial else FAMILY[access],
    }
    if oracle is not None and oracle.budget is not None:
        head["query_budget"] = oracle.budget
    try:
        result = run_attack(setting, name, oracle, seed=seed, target=target, defense=defense)
    except QueryBudgetExceeded as err:
        # The budget is part of the threat model: running out is a result of this run, not a
        # failure of the study. Nothing was reconstructed, so every metric is missing.
        return {
            **head,
            "budget_exhausted": True,
            "queries": oracle.queries if oracle is not None else 0,
            "unavailable": f"query budget exhausted: {err}",
        }
    row = {**head, **score(setting, result, target), "budget_exhausted": False}
    if setting.out_dir is not None:
        save_file(
            {"images": result.images.contiguous(), "labels": result.labels.contiguous()},
            setting.out_dir / "reconstructions" / f"{tag}.safetensors",
        )
    return row
