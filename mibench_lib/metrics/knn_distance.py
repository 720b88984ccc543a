"""KNN distance: how close each reconstruction lies to the nearest real training image of its class.

For a reconstruction x of class c, the distance is min over private training images x' of class c
of ||f(x) - f(x')||^2, with f a fixed feature extractor (Chen et al., "Knowledge-Enriched
Distributional Model Inversion Attacks", ICCV 2021, following Zhang et al., CVPR 2020). MIBench
reports its mean with two extractors: the evaluation model's penultimate layer (delta_eval) and an
independent face-recognition network, or a second evaluator of another architecture (delta_face).
Lower is closer to the private data.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mibench_lib.data._types import ImageSet
from mibench_lib.metrics._errors import MetricUnavailable
from mibench_lib.metrics.features import Images, extract_features


def _check_feature_set(feats: Tensor, labels: Tensor, name: str) -> None:
    if feats.ndim != 2:
        raise ValueError(f"{name}_feats must have shape (N, D), got {tuple(feats.shape)}")
    if labels.ndim != 1 or labels.shape[0] != feats.shape[0]:
        raise ValueError(
            f"{name}_labels must have shape ({feats.shape[0]},), got {tuple(labels.shape)}"
        )
    if labels.dtype != torch.int64:
        raise ValueError(f"{name}_labels must be int64, got {labels.dtype}")


def knn_distance(
    query_feats: Tensor, query_labels: Tensor, ref_feats: Tensor, ref_labels: Tensor
) -> Tensor:
    """Squared L2 distance from each query to the nearest reference feature of the same class.

    Computed class by class in float64 from exact pairwise differences (not the
    ``|a|^2 + |b|^2 - 2ab`` expansion, which loses precision for near-duplicates).

    Args:
        query_feats: (N, D) features of the reconstructions.
        query_labels: (N,) int64 class of each query.
        ref_feats: (M, D) features of the real images.
        ref_labels: (M,) int64 class of each reference.

    Returns:
        (N,) float64 distances; the caller reduces them (delta = mean).

    Raises:
        ValueError: shape or dtype mismatch, or no query.
        MetricUnavailable: some query class has no reference feature (the class is named).

    Example:
        >>> q = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
        >>> r = torch.tensor([[1.0, 2.0], [0.0, 3.0], [5.0, 4.0]])
        >>> knn_distance(q, torch.tensor([0, 1]), r, torch.tensor([0, 0, 1]))
        tensor([5., 1.], dtype=torch.float64)
    """
    _check_feature_set(query_feats, query_labels, "query")
    _check_feature_set(ref_feats, ref_labels, "ref")
    if query_feats.shape[0] == 0:
        raise ValueError("query_feats is empty: at least one query is needed")
    if query_feats.shape[1] != ref_feats.shape[1]:
        raise ValueError(
            f"feature sizes differ: queries have {query_feats.shape[1]}, "
            f"references {ref_feats.shape[1]}"
        )
    query, ref = query_feats.double(), ref_feats.to(query_feats.device).double()
    ref_labels = ref_labels.to(query_labels.device)
    out = torch.empty(query.shape[0], dtype=torch.float64, device=query.device)
    for c in query_labels.unique().tolist():  # a loop over classes; samples are batched
        q_mask, r_mask = query_labels == c, ref_labels == c
        if not r_mask.any():
            raise MetricUnavailable(f"class {c} has no reference features to measure distance to")
        out[q_mask] = _nearest_squared_distance(query[q_mask], ref[r_mask])
    return out


def _nearest_squared_distance(query: Tensor, ref: Tensor, *, max_elements: int = 2**24) -> Tensor:
    """min_j ||query_i - ref_j||^2 from exact differences, in query chunks bounding memory."""
    step = max(1, max_elements // max(1, ref.numel()))
    return torch.cat(
        [
            (q.unsqueeze(1) - ref.unsqueeze(0)).square().sum(dim=2).min(dim=1).values
            for q in query.split(step)
        ]
    )


def feature_knn_distance(
    model: nn.Module,
    images: Images,
    labels: Tensor,
    reference: ImageSet,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Tensor:
    """:func:`knn_distance` in the feature space of ``model`` (delta_eval or delta_face per query).

    Args:
        model: Feature extractor exposing ``features(x)`` (the evaluator for delta_eval, a face
            network or a second evaluator for delta_face).
        images: (N, C, H, W) reconstructions in [0, 1].
        labels: (N,) int64 private class of each reconstruction.
        reference: Private training images with private class labels; restricting it to the
            attacked classes saves time but does not change the result.
        batch_size: Images per forward pass.
        device: Where the model runs; ``None`` keeps its device.

    Returns:
        (N,) float64 squared distances; their mean is the delta of the paper.

    Raises:
        MetricUnavailable: an attacked class has no reference image.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> ref = ImageSet(torch.rand(6, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 2])
        >>> feature_knn_distance(tiny_classifier(), x, y, ref).shape
        torch.Size([2])
    """
    keep = torch.isin(reference.labels, labels.unique())
    missing = sorted(set(labels.unique().tolist()) - set(reference.labels[keep].tolist()))
    if missing:  # check before spending forward passes
        raise MetricUnavailable(f"classes {missing} have no reference images")
    reference = reference.subset(keep)
    query = extract_features(model, images, batch_size=batch_size, device=device)
    ref = extract_features(
        model, reference, batch_size=batch_size, device=device, name="reference images"
    )
    return knn_distance(query, labels, ref, reference.labels)
