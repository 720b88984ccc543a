"""One call that scores a set of reconstructions with every MIBench metric.

The reference set is the private training images of the attacked classes only (the classes present
in ``labels``). Features are extracted once per model and shared: the evaluator's features serve
delta_eval, ``fid_eval`` and, unless FID-Inception weights are given, PRDC; the FID-Inception
features serve ``fid_inception`` and then PRDC; accuracies reuse one pass of logits.

FID is reported under two names that say which feature space it was computed in: ``fid_eval``
(the evaluator's penultimate features; never comparable with a published FID) and
``fid_inception`` (the FID-Inception network, as in published work; NaN without its weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mibench_lib._checks import check_images
from mibench_lib.data._types import ImageSet
from mibench_lib.metrics._errors import MetricUnavailable
from mibench_lib.metrics.accuracy import accuracy_from_logits
from mibench_lib.metrics.features import extract_features, predict_logits
from mibench_lib.metrics.fid import FIDInceptionV3, frechet_distance, load_fid_inception
from mibench_lib.metrics.knn_distance import knn_distance
from mibench_lib.metrics.prdc import PRDC_KEYS, Variant, class_mean_prdc, prdc_keys

#: Why ``fid_inception`` is NaN when no weights file is given.
NO_INCEPTION_WEIGHTS = (
    "no inception_weights given (the FID-Inception file pt_inception-2015-12-05-6726825d.pth); "
    "fid_eval is the evaluator-feature FID, not comparable with published FIDs"
)


def _weights_identity(weights: str | Path) -> tuple[str, int, int]:
    """(resolved path, mtime, size) of a weights file; a missing file gets (path, -1, -1)."""
    path = Path(weights).expanduser().resolve()
    try:
        stat = path.stat()
    except OSError:  # missing or unreadable: the loader reports it
        return str(path), -1, -1
    return str(path), stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=2)
def _cached_fid_inception(path: str, mtime_ns: int, size: int) -> FIDInceptionV3:
    """One FID-Inception network per weights file (and version of it) per process."""
    return load_fid_inception(path)


def evaluate_reconstructions(
    images: Tensor,
    labels: Tensor,
    *,
    evaluator: nn.Module,
    private_train: ImageSet,
    label_map: Tensor | None = None,
    target: nn.Module | None = None,
    face_model: nn.Module | None = None,
    inception_weights: str | Path | None = None,
    k: int = 3,
    prdc_variant: Variant = "naeem",
    strict: bool = True,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    reference_cache: dict[tuple[Any, ...], Tensor] | None = None,
) -> dict[str, Any]:
    """Acc@1, Acc@5, delta_eval, delta_face, both FIDs, precision, recall, density, coverage, target acc.

    Args:
        images: (N, C, H, W) reconstructions in [0, 1] (e.g. ``InversionResult.images``).
        labels: (N,) int64 private class each reconstruction should depict.
        evaluator: Independent evaluation classifier (never seen by the attack), with
            ``features(x)`` and logits in its own label space.
        private_train: The target's training images, labelled with private class ids; only the
            attacked classes are used.
        label_map: (K,) int64 evaluator class of each private class; only the accuracies use it
            (feature distances compare private images class by class).
        target: The attacked classifier; adds ``target_acc`` (top-1 of the target itself).
        face_model: Second, independent feature extractor exposing ``features(x)`` on images in
            [0, 1] (a face-recognition network, or an evaluator of another architecture); adds
            ``delta_face``.
        inception_weights: Local FID-Inception weights file (``pt_inception-2015-12-05-6726825d.pth``
            of pytorch-fid / torch-fidelity, see :func:`~mibench_lib.metrics.load_fid_inception`);
            adds ``fid_inception`` and moves PRDC into that feature space. Without it,
            ``fid_inception`` is NaN and PRDC uses the evaluator's features.
        k: Neighbourhood size of PRDC.
        prdc_variant: ``"naeem"`` (reference definition; keys ``precision`` ...) or ``"mibench"``
            (the MIBench toolbox's variant, see :mod:`mibench_lib.metrics.prdc`; keys
            ``precision_mibench`` ...).
        strict: Raise :class:`MetricUnavailable` when a requested metric cannot be computed; with
            ``False``, record it as NaN and give the reason under ``unavailable``. An unrequested
            ``fid_inception`` (no weights given) is NaN either way, and never raises.
        batch_size: Images per forward pass.
        device: Where the models run (each is moved back afterwards); ``None`` keeps theirs.
        reference_cache: A dict the caller keeps across calls that score against the same
            ``private_train`` with the same, unchanged models: the private images' features are
            computed once per model and set of classes instead of at every call (a study scores
            hundreds of runs against one reference set).

    Returns:
        ``acc1``, ``acc5``, ``delta_eval``, ``fid_eval``, ``fid_inception``, ``precision``,
        ``recall``, ``density``, ``coverage`` (floats; the PRDC keys end in ``_mibench`` for that
        variant); ``delta_face`` with ``face_model``; ``target_acc`` with ``target``;
        ``prdc_features``: ``"inception"`` or ``"evaluator"``, the feature space of PRDC;
        ``prdc_skipped``: the classes PRDC skipped for too few samples and why (``"; "``-joined,
        ``""`` when none; PRDC is the mean over the other classes); and with ``strict=False``,
        ``unavailable``: metric name -> reason (empty when all were computed).

    Raises:
        ValueError: malformed images or labels, or a label outside ``label_map``.
        MetricUnavailable: with ``strict=True``, the first metric that cannot be computed.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> private = ImageSet(torch.rand(12, 1, 8, 8), torch.arange(6).repeat(2))
        >>> out = evaluate_reconstructions(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 1, 2]),
        ...     evaluator=tiny_classifier(num_classes=6), private_train=private, strict=False)
        >>> out["prdc_features"], sorted(out["unavailable"])
        ('evaluator', ['coverage', 'density', 'fid_inception', 'precision', 'recall'])
        >>> out["unavailable"]["precision"]  # doctest: +ELLIPSIS
        'PRDC skipped every class: PRDC (naeem) with k=3 needs at least 4 samples per set for class 0, ...'
        >>> math.isfinite(out["fid_eval"]), math.isnan(out["fid_inception"])
        (True, True)
    """
    check_images(images)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.dtype != torch.int64:
        raise ValueError(
            f"labels must be int64 of shape ({images.shape[0]},), "
            f"got {labels.dtype} of shape {tuple(labels.shape)}"
        )
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"labels must be private class ids >= 0, got {int(labels.min())}")
    labels = labels.cpu()  # features and logits come back on the CPU
    reference = private_train.subset(torch.isin(private_train.labels, labels.unique()))
    options = {"batch_size": batch_size, "device": device}

    @cache
    def logits() -> Tensor:
        return predict_logits(evaluator, images, **options)

    def features(model: nn.Module, model_key: Any = None) -> tuple[Tensor, Tensor]:
        if len(reference) == 0:
            raise MetricUnavailable(
                f"private_train has no image of the attacked classes {labels.unique().tolist()}"
            )
        model_key = id(model) if model_key is None else model_key
        key = (model_key, tuple(labels.unique().tolist()), len(private_train))
        if reference_cache is not None and key in reference_cache:
            real = reference_cache[key]
        else:
            real = extract_features(model, reference, name="private images", **options)
            if reference_cache is not None:
                reference_cache[key] = real
        return real, extract_features(model, images, name="reconstructions", **options)

    evaluator_features = cache(lambda: features(evaluator))

    @cache
    def inception_features() -> tuple[Tensor, Tensor]:
        if inception_weights is None:
            raise MetricUnavailable(NO_INCEPTION_WEIGHTS)
        identity = _weights_identity(inception_weights)
        # keyed by the weights file, not id(): a network evicted from the cache could share an id
        return features(_cached_fid_inception(*identity), ("fid-inception", *identity))

    prdc_space = evaluator_features if inception_weights is None else inception_features
    prdc_names = prdc_keys(prdc_variant)  # also rejects an unknown variant before any work
    prdc_skipped = ""

    def acc5() -> dict[str, float]:
        num_classes = logits().shape[1]
        if num_classes < 5:
            raise MetricUnavailable(
                f"Acc@5 needs an evaluator with >= 5 classes, it has {num_classes}"
            )
        return {"acc5": accuracy_from_logits(logits(), labels, top_k=5, label_map=label_map)}

    def delta(
        feats: Callable[[], tuple[Tensor, Tensor]], key: str
    ) -> Callable[[], dict[str, float]]:
        def compute() -> dict[str, float]:
            real, fake = feats()
            return {key: float(knn_distance(fake, labels, real, reference.labels).mean())}

        return compute

    def fid_in(feats: Callable[[], tuple[Tensor, Tensor]], key: str) -> Callable[[], dict]:
        return lambda: {key: frechet_distance(*feats())}

    def prdc() -> dict[str, float]:
        nonlocal prdc_skipped
        real, fake = prdc_space()
        result = class_mean_prdc(real, reference.labels, fake, labels, k=k, variant=prdc_variant)
        prdc_skipped = "; ".join(result["skipped"].values())
        return {name: result[key] for name, key in zip(prdc_names, PRDC_KEYS)}

    # (result keys, how to compute them, whether the caller asked for them)
    groups: list[tuple[tuple[str, ...], Callable[[], dict[str, float]], bool]] = [
        (
            ("acc1",),
            lambda: {"acc1": accuracy_from_logits(logits(), labels, label_map=label_map)},
            True,
        ),
        (("acc5",), acc5, True),
        (("delta_eval",), delta(evaluator_features, "delta_eval"), True),
        (("fid_eval",), fid_in(evaluator_features, "fid_eval"), True),
        (
            ("fid_inception",),
            fid_in(inception_features, "fid_inception"),
            inception_weights is not None,
        ),
        (prdc_names, prdc, True),
    ]
    if face_model is not None:
        face_features = cache(lambda: features(face_model))
        groups.insert(3, (("delta_face",), delta(face_features, "delta_face"), True))
    if target is not None:
        groups.append(
            (
                ("target_acc",),
                lambda: {"target_acc": _target_acc(target, images, labels, options)},
                True,
            )
        )

    out: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for keys, compute, requested in groups:
        try:
            out.update(compute())
        except MetricUnavailable as err:  # recorded next to the NaN, or re-raised when strict
            if strict and requested:
                raise
            out.update(dict.fromkeys(keys, math.nan))
            unavailable.update(dict.fromkeys(keys, str(err)))
    out["prdc_features"] = "evaluator" if inception_weights is None else "inception"
    out["prdc_skipped"] = prdc_skipped
    if not strict:
        out["unavailable"] = unavailable
    return out


def _target_acc(
    target: nn.Module, images: Tensor, labels: Tensor, options: dict[str, Any]
) -> float:
    return accuracy_from_logits(predict_logits(target, images, **options), labels, top_k=1)
