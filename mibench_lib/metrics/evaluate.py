"""One call that scores a set of reconstructions with every MIBench metric.

The reference set is the private training images of the attacked classes only (the classes present
in ``labels``). Features are extracted once per model and shared: the evaluator's features serve
delta_eval and, unless Inception weights are given, FID and PRDC; accuracies reuse one pass of
logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mibench_lib._checks import check_images
from mibench_lib.data._types import ImageSet
from mibench_lib.metrics._errors import MetricUnavailable
from mibench_lib.metrics.accuracy import accuracy_from_logits
from mibench_lib.metrics.features import extract_features, predict_logits
from mibench_lib.metrics.fid import frechet_distance, load_inception_pool3
from mibench_lib.metrics.knn_distance import knn_distance
from mibench_lib.metrics.prdc import PRDC_KEYS, class_mean_prdc


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
    strict: bool = True,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    reference_cache: dict[tuple[Any, ...], Tensor] | None = None,
) -> dict[str, Any]:
    """Acc@1, Acc@5, delta_eval, delta_face, FID, precision, recall, density, coverage, target acc.

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
        inception_weights: Local torchvision ``inception_v3`` state dict; when given, FID and
            PRDC use Inception-v3 pool3 features instead of the evaluator's.
        k: Neighbourhood size of PRDC.
        strict: Raise :class:`MetricUnavailable` when a metric cannot be computed; with
            ``False``, record it as NaN and give the reason under ``unavailable``.
        batch_size: Images per forward pass.
        device: Where the models run (each is moved back afterwards); ``None`` keeps theirs.
        reference_cache: A dict the caller keeps across calls that score against the same
            ``private_train`` with the same, unchanged models: the private images' features are
            computed once per model and set of classes instead of at every call (a study scores
            hundreds of runs against one reference set).

    Returns:
        ``acc1``, ``acc5``, ``delta_eval``, ``fid``, ``precision``, ``recall``, ``density``,
        ``coverage`` (floats); ``delta_face`` with ``face_model``; ``target_acc`` with ``target``;
        ``fid_features``: ``"inception"`` or ``"evaluator"``, the feature space of FID and PRDC;
        and with ``strict=False``, ``unavailable``: metric name -> reason (empty when all were
        computed).

    Raises:
        ValueError: malformed images or labels, or a label outside ``label_map``.
        MetricUnavailable: with ``strict=True``, the first metric that cannot be computed.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> private = ImageSet(torch.rand(12, 1, 8, 8), torch.arange(6).repeat(2))
        >>> out = evaluate_reconstructions(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 1, 2]),
        ...     evaluator=tiny_classifier(num_classes=6), private_train=private, strict=False)
        >>> out["fid_features"], sorted(out["unavailable"])
        ('evaluator', ['coverage', 'density', 'precision', 'recall'])
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

    def features(model: nn.Module) -> tuple[Tensor, Tensor]:
        if len(reference) == 0:
            raise MetricUnavailable(
                f"private_train has no image of the attacked classes {labels.unique().tolist()}"
            )
        key = (id(model), tuple(labels.unique().tolist()), len(private_train))
        if reference_cache is not None and key in reference_cache:
            real = reference_cache[key]
        else:
            real = extract_features(model, reference, name="private images", **options)
            if reference_cache is not None:
                reference_cache[key] = real
        return real, extract_features(model, images, name="reconstructions", **options)

    evaluator_features = cache(lambda: features(evaluator))

    @cache
    def fid_space() -> tuple[Tensor, Tensor]:
        if inception_weights is None:
            return evaluator_features()
        return features(load_inception_pool3(inception_weights))

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

    def prdc() -> dict[str, float]:
        real, fake = fid_space()
        return class_mean_prdc(real, reference.labels, fake, labels, k=k)

    groups: list[tuple[tuple[str, ...], Callable[[], dict[str, float]]]] = [
        (("acc1",), lambda: {"acc1": accuracy_from_logits(logits(), labels, label_map=label_map)}),
        (("acc5",), acc5),
        (("delta_eval",), delta(evaluator_features, "delta_eval")),
        (("fid",), lambda: {"fid": frechet_distance(*fid_space())}),
        (PRDC_KEYS, prdc),
    ]
    if face_model is not None:
        face_features = cache(lambda: features(face_model))
        groups.insert(3, (("delta_face",), delta(face_features, "delta_face")))
    if target is not None:
        groups.append(
            (("target_acc",), lambda: {"target_acc": _target_acc(target, images, labels, options)})
        )

    out: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for keys, compute in groups:
        try:
            out.update(compute())
        except MetricUnavailable as err:  # recorded next to the NaN, or re-raised when strict
            if strict:
                raise
            out.update(dict.fromkeys(keys, math.nan))
            unavailable.update(dict.fromkeys(keys, str(err)))
    out["fid_features"] = "evaluator" if inception_weights is None else "inception"
    if not strict:
        out["unavailable"] = unavailable
    return out


def _target_acc(
    target: nn.Module, images: Tensor, labels: Tensor, options: dict[str, Any]
) -> float:
    return accuracy_from_logits(predict_logits(target, images, **options), labels, top_k=1)
