"""Precision, recall, density and coverage (PRDC) of reconstructions against private images.

Naeem et al., "Reliable Fidelity and Diversity Metrics for Generative Models", ICML 2020,
https://arxiv.org/abs/2002.09797. Every sample gets a ball whose radius is the Euclidean distance
to its k-th nearest *other* sample of the same set (real radii r_i, fake radii s_j). With real
features X (N of them) and fake features Y (M), and strict inequalities as in the authors' code:

- precision = (1/M) sum_j 1[ exists i: ||Y_j - X_i|| < r_i ]   (fakes inside the real manifold)
- recall    = (1/N) sum_i 1[ exists j: ||X_i - Y_j|| < s_j ]   (reals inside the fake manifold)
- density   = 1/(k M) sum_j sum_i 1[ ||Y_j - X_i|| < r_i ]     (how many real balls hold each
  fake; 1 in expectation for identical distributions, unbounded above)
- coverage  = (1/N) sum_i 1[ min_j ||X_i - Y_j|| < r_i ]       (reals with a fake in their ball)

In model inversion the comparison is made per attacked class (real = that class's private training
images, fake = its reconstructions) and the four values are averaged over classes, as in the
Plug-and-Play attack's evaluation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mibench_lib.metrics._errors import MetricUnavailable

PRDC_KEYS: tuple[str, ...] = ("precision", "recall", "density", "coverage")


def _pairwise(a: Tensor, b: Tensor) -> Tensor:
    """Exact Euclidean distances in float64 (no matmul expansion, so ties survive round-off)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _radii(feats: Tensor, k: int) -> Tensor:
    """Distance of each row to its k-th nearest other row: the (k+1)-th smallest, self included."""
    return _pairwise(feats, feats).kthvalue(k + 1, dim=1).values


def _check(feats: Tensor, name: str, k: int, where: str) -> None:
    if feats.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(feats.shape)}")
    if feats.shape[0] < k + 1:
        raise MetricUnavailable(
            f"PRDC with k={k} needs at least {k + 1} samples per set{where}, "
            f"{name} has {feats.shape[0]}"
        )
    if not torch.isfinite(feats).all():
        raise MetricUnavailable(f"{name}{where} contains non-finite values")


def prdc(real: Tensor, fake: Tensor, *, k: int = 3, where: str = "") -> dict[str, float]:
    """Precision, recall, density and coverage of one fake feature set against one real set.

    Args:
        real: (N, D) real features, N >= k + 1.
        fake: (M, D) fake features, M >= k + 1.
        k: Neighbourhood size of the radii (the paper's default is 5; MIBench and the PPA
            evaluation use 3).
        where: Context appended to error messages (e.g. " for class 4").

    Returns:
        ``{"precision", "recall", "density", "coverage"}``; all in [0, 1] except density >= 0.

    Raises:
        ValueError: bad shapes or ``k < 1``.
        MetricUnavailable: fewer than k + 1 samples on a side, non-finite features, or every real
            radius is 0 (all real samples identical: no real ball has any volume).

    Example:
        >>> real = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
        >>> fake = torch.tensor([[0.5], [2.6], [20.0], [20.5]])
        >>> prdc(real, fake, k=1)
        {'precision': 0.5, 'recall': 0.6, 'density': 0.75, 'coverage': 0.6}
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check(real, "real features", k, where)
    _check(fake, "fake features", k, where)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape[1]}, fake {fake.shape[1]}")
    real, fake = real.double(), fake.to(real.device).double()
    real_radii, fake_radii = _radii(real, k), _radii(fake, k)
    if not (real_radii > 0).any():
        raise MetricUnavailable(f"all real features{where} coincide: every real radius is 0")
    dist = _pairwise(real, fake)  # (N, M)
    in_real_ball = dist < real_radii.unsqueeze(1)  # [i, j]: fake j inside real i's ball
    in_fake_ball = dist < fake_radii.unsqueeze(0)  # [i, j]: real i inside fake j's ball
    return {
        "precision": float(in_real_ball.any(dim=0).double().mean()),
        "recall": float(in_fake_ball.any(dim=1).double().mean()),
        "density": float(in_real_ball.sum(dim=0).double().mean() / k),
        "coverage": float((dist.min(dim=1).values < real_radii).double().mean()),
    }


def prdc_per_class(
    real_feats: Tensor,
    real_labels: Tensor,
    fake_feats: Tensor,
    fake_labels: Tensor,
    *,
    k: int = 3,
) -> dict[int, dict[str, float]]:
    """:func:`prdc` separately for every class present among the fakes.

    Args:
        real_feats: (N, D) features of the private training images.
        real_labels: (N,) int64 private class of each.
        fake_feats: (M, D) features of the reconstructions.
        fake_labels: (M,) int64 private class each reconstruction should depict.
        k: Neighbourhood size.

    Returns:
        Class id -> its four values, in increasing class order.

    Raises:
        ValueError: shape mismatches.
        MetricUnavailable: a class with fewer than k + 1 samples on either side (named).
    """
    for name, feats, labels in (
        ("real", real_feats, real_labels),
        ("fake", fake_feats, fake_labels),
    ):
        if labels.ndim != 1 or feats.ndim != 2 or labels.shape[0] != feats.shape[0]:
            raise ValueError(
                f"{name}_feats (N, D) and {name}_labels (N,) disagree: "
                f"{tuple(feats.shape)} and {tuple(labels.shape)}"
            )
    real_labels = real_labels.to(real_feats.device)
    fake_labels = fake_labels.to(fake_feats.device)
    return {
        c: prdc(
            real_feats[real_labels == c], fake_feats[fake_labels == c], k=k, where=f" for class {c}"
        )
        for c in fake_labels.unique().tolist()  # a loop over classes; samples are batched
    }


def class_mean_prdc(
    real_feats: Tensor,
    real_labels: Tensor,
    fake_feats: Tensor,
    fake_labels: Tensor,
    *,
    k: int = 3,
) -> dict[str, float]:
    """The MIBench PRDC: :func:`prdc_per_class`, then an unweighted mean over the attacked classes.

    Args and Raises are those of :func:`prdc_per_class`.

    Returns:
        ``{"precision", "recall", "density", "coverage"}`` averaged over classes.

    Example:
        >>> real = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
        >>> fake = torch.tensor([[0.5], [0.6], [30.0], [31.0]])
        >>> class_mean_prdc(real, torch.tensor([0, 0, 1, 1]), fake, torch.tensor([0, 0, 1, 1]), k=1)
        {'precision': 0.5, 'recall': 0.0, 'density': 1.0, 'coverage': 0.5}
    """
    per_class = prdc_per_class(real_feats, real_labels, fake_feats, fake_labels, k=k)
    return {key: sum(v[key] for v in per_class.values()) / len(per_class) for key in PRDC_KEYS}
