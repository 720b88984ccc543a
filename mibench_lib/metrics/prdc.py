"""Precision, recall, density and coverage (PRDC) of reconstructions against private images.

The reference definition (``variant="naeem"``, the default) is that of Naeem et al., "Reliable
Fidelity and Diversity Metrics for Generative Models", ICML 2020, https://arxiv.org/abs/2002.09797,
and of its authors' ``prdc`` package (the tests check the two agree). Every sample gets a ball whose
radius is the Euclidean distance to its k-th nearest *other* sample of the same set (real radii
r_i, fake radii s_j). With real features X (N of them) and fake features Y (M), and strict
inequalities as in the authors' code:

- precision = (1/M) sum_j 1[ exists i: ||Y_j - X_i|| < r_i ]   (fakes inside the real manifold)
- recall    = (1/N) sum_i 1[ exists j: ||X_i - Y_j|| < s_j ]   (reals inside the fake manifold)
- density   = 1/(k M) sum_j sum_i 1[ ||Y_j - X_i|| < r_i ]     (how many real balls hold each
  fake; 1 in expectation for identical distributions, unbounded above)
- coverage  = (1/N) sum_i 1[ min_j ||X_i - Y_j|| < r_i ]       (reals with a fake in their ball)

``variant="mibench"`` reproduces the PRDC of the MIBench toolbox (Model-Inversion-Attack-ToolBox,
``ImageFidPRDCMetric``), which differs in four ways; use it only to compare with numbers produced
by that toolbox:

- precision tests each fake against the ball of its *nearest* real only:
  (1/M) sum_j 1[ d(Y_j, X_nn(j)) <= r_nn(j) ], nn(j) the real nearest to Y_j. A fake that lies in
  the ball of a farther real with a larger radius counts for Naeem et al., not here, so this
  precision is never larger than theirs.
- recall likewise tests each real against the ball of its nearest fake only.
- density is divided by k times the number of *reals*: 1/(k N) sum_j sum_i 1[...], i.e. Naeem's
  density times M / N. With 5 fakes and 27 reals it is 5.4 times smaller, and it is no longer 1 in
  expectation for identical distributions.
- balls are closed (``<=``); coverage is otherwise the same as Naeem's.

In model inversion the comparison is made per attacked class (real = that class's private training
images, fake = its reconstructions) and the four values are averaged over classes, as in the
Plug-and-Play attack's and MIBench's evaluations. A class with too few samples for a k-NN radius is
skipped, as MIBench does, and reported; the mean is over the remaining classes. Naeem's definition
needs k + 1 samples per set; MIBench skips every class with at most k + 1 samples, so its variant
here needs k + 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from mibench_lib.metrics._errors import MetricUnavailable

PRDC_KEYS: tuple[str, ...] = ("precision", "recall", "density", "coverage")

#: The PRDC definitions :func:`prdc` implements.
PRDC_VARIANTS: tuple[str, ...] = ("naeem", "mibench")

Variant = Literal["naeem", "mibench"]


def prdc_keys(variant: Variant = "naeem") -> tuple[str, ...]:
    """Result names of a variant: the plain names for Naeem et al., ``*_mibench`` for MIBench's.

    Example:
        >>> prdc_keys("mibench")
        ('precision_mibench', 'recall_mibench', 'density_mibench', 'coverage_mibench')
    """
    _check_variant(variant)
    return PRDC_KEYS if variant == "naeem" else tuple(f"{key}_mibench" for key in PRDC_KEYS)


def min_samples(k: int, variant: Variant = "naeem") -> int:
    """Fewest samples per set (and per class) for which ``variant`` gives a value."""
    _check_variant(variant)
    return k + 1 if variant == "naeem" else k + 2


def _check_variant(variant: str) -> None:
    if variant not in PRDC_VARIANTS:
        raise ValueError(f"variant must be one of {list(PRDC_VARIANTS)}, got {variant!r}")


def _pairwise(a: Tensor, b: Tensor) -> Tensor:
    """Exact Euclidean distances in float64 (no matmul expansion, so ties survive round-off)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _radii(feats: Tensor, k: int) -> Tensor:
    """Distance of each row to its k-th nearest other row: the (k+1)-th smallest, self included."""
    return _pairwise(feats, feats).kthvalue(k + 1, dim=1).values


def _check_shape(feats: Tensor, name: str) -> None:
    if feats.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(feats.shape)}")


def _check(feats: Tensor, name: str, k: int, variant: Variant, where: str) -> None:
    _check_shape(feats, name)
    needed = min_samples(k, variant)
    if feats.shape[0] < needed:
        raise MetricUnavailable(
            f"PRDC ({variant}) with k={k} needs at least {needed} samples per set{where}, "
            f"{name} has {feats.shape[0]}"
        )
    if not torch.isfinite(feats).all():
        raise MetricUnavailable(f"{name}{where} contains non-finite values")


def _naeem(dist: Tensor, real_radii: Tensor, fake_radii: Tensor, k: int) -> dict[str, float]:
    in_real_ball = dist < real_radii.unsqueeze(1)  # [i, j]: fake j inside real i's ball
    in_fake_ball = dist < fake_radii.unsqueeze(0)  # [i, j]: real i inside fake j's ball
    return {
        "precision": float(in_real_ball.any(dim=0).double().mean()),
        "recall": float(in_fake_ball.any(dim=1).double().mean()),
        "density": float(in_real_ball.sum(dim=0).double().mean() / k),
        "coverage": float((dist.min(dim=1).values < real_radii).double().mean()),
    }


def _mibench(dist: Tensor, real_radii: Tensor, fake_radii: Tensor, k: int) -> dict[str, float]:
    nearest_real_dist, nearest_real = dist.min(dim=0)  # per fake j
    nearest_fake_dist, nearest_fake = dist.min(dim=1)  # per real i
    in_real_ball = dist <= real_radii.unsqueeze(1)
    return {
        "precision": float((nearest_real_dist <= real_radii[nearest_real]).double().mean()),
        "recall": float((nearest_fake_dist <= fake_radii[nearest_fake]).double().mean()),
        "density": float(in_real_ball.sum(dim=1).double().mean() / k),  # mean over the N reals
        "coverage": float(in_real_ball.any(dim=1).double().mean()),
    }


def prdc(
    real: Tensor,
    fake: Tensor,
    *,
    k: int = 3,
    variant: Variant = "naeem",
    where: str = "",
) -> dict[str, float]:
    """Precision, recall, density and coverage of one fake feature set against one real set.

    Args:
        real: (N, D) real features, N >= k + 1 (k + 2 for ``variant="mibench"``).
        fake: (M, D) fake features, same minimum.
        k: Neighbourhood size of the radii (the paper's default is 5; MIBench and the PPA
            evaluation use 3).
        variant: ``"naeem"`` (the reference definition, see the module docstring) or
            ``"mibench"`` (the MIBench toolbox's nearest-ball variant, for comparison with it).
        where: Context appended to error messages (e.g. " for class 4").

    Returns:
        ``{"precision", "recall", "density", "coverage"}``; all in [0, 1] except density >= 0.

    Raises:
        ValueError: bad shapes, ``k < 1`` or an unknown variant.
        MetricUnavailable: too few samples on a side, non-finite features, or every real radius is
            0 (all real samples identical: no real ball has any volume).

    Example:
        >>> real = torch.tensor([[0.0], [1.0], [5.0], [9.0]])
        >>> fake = torch.tensor([[1.6], [2.5], [20.0]])
        >>> prdc(real, fake, k=1)
        {'precision': 0.6666666666666666, 'recall': 0.75, 'density': 1.0, 'coverage': 0.5}
        >>> prdc(real, fake, k=1, variant="mibench")
        {'precision': 0.3333333333333333, 'recall': 0.25, 'density': 0.75, 'coverage': 0.5}
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check_variant(variant)
    _check(real, "real features", k, variant, where)
    _check(fake, "fake features", k, variant, where)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape[1]}, fake {fake.shape[1]}")
    real, fake = real.double(), fake.to(real.device).double()
    real_radii, fake_radii = _radii(real, k), _radii(fake, k)
    if not (real_radii > 0).any():
        raise MetricUnavailable(f"all real features{where} coincide: every real radius is 0")
    dist = _pairwise(real, fake)  # (N, M)
    compute = _naeem if variant == "naeem" else _mibench
    return compute(dist, real_radii, fake_radii, k)


@dataclass(frozen=True)
class ClassPRDC:
    """PRDC class by class: the classes that could be scored, and those that were skipped.

    Attributes:
        values: Class id -> its four values, in increasing class order.
        skipped: Class id -> why it has no value (too few samples on a side, or all of its real
            samples coincide), in increasing class order.
    """

    values: dict[int, dict[str, float]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)

    def mean(self) -> dict[str, float]:
        """Unweighted mean of each value over the scored classes.

        Raises:
            MetricUnavailable: every class was skipped (the message gives each reason).
        """
        if not self.values:
            reasons = "; ".join(self.skipped.values()) or "no class to score"
            raise MetricUnavailable(f"PRDC skipped every class: {reasons}")
        n = len(self.values)
        return {key: sum(v[key] for v in self.values.values()) / n for key in PRDC_KEYS}


def prdc_per_class(
    real_feats: Tensor,
    real_labels: Tensor,
    fake_feats: Tensor,
    fake_labels: Tensor,
    *,
    k: int = 3,
    variant: Variant = "naeem",
) -> ClassPRDC:
    """:func:`prdc` separately for every class present among the fakes, skipping classes it can't score.

    Args:
        real_feats: (N, D) features of the private training images.
        real_labels: (N,) int64 private class of each.
        fake_feats: (M, D) features of the reconstructions.
        fake_labels: (M,) int64 private class each reconstruction should depict.
        k: Neighbourhood size.
        variant: ``"naeem"`` or ``"mibench"`` (see :func:`prdc`).

    Returns:
        The values of the scored classes and the reason for each skipped one: a class with fewer
        than :func:`min_samples` real or fake samples, or whose real samples all coincide.

    Raises:
        ValueError: shape mismatches, ``k < 1`` or an unknown variant.
        MetricUnavailable: non-finite features (on either side, whatever the class).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check_variant(variant)
    for name, feats, labels in (
        ("real", real_feats, real_labels),
        ("fake", fake_feats, fake_labels),
    ):
        _check_shape(feats, f"{name}_feats")
        if labels.ndim != 1 or labels.shape[0] != feats.shape[0]:
            raise ValueError(
                f"{name}_feats (N, D) and {name}_labels (N,) disagree: "
                f"{tuple(feats.shape)} and {tuple(labels.shape)}"
            )
        if not torch.isfinite(feats).all():
            raise MetricUnavailable(f"{name} features contain non-finite values")
    real_labels = real_labels.to(real_feats.device)
    fake_labels = fake_labels.to(fake_feats.device)
    out = ClassPRDC()
    for c in fake_labels.unique().tolist():  # a loop over classes; samples are batched
        try:
            out.values[c] = prdc(
                real_feats[real_labels == c],
                fake_feats[fake_labels == c],
                k=k,
                variant=variant,
                where=f" for class {c}",
            )
        except MetricUnavailable as err:  # this class only: recorded, the others still count
            out.skipped[c] = str(err)
    return out


def class_mean_prdc(
    real_feats: Tensor,
    real_labels: Tensor,
    fake_feats: Tensor,
    fake_labels: Tensor,
    *,
    k: int = 3,
    variant: Variant = "naeem",
) -> dict[str, Any]:
    """:func:`prdc_per_class`, then an unweighted mean over the classes that could be scored.

    Args are those of :func:`prdc_per_class`.

    Returns:
        ``precision``, ``recall``, ``density``, ``coverage`` averaged over the scored classes;
        ``classes``: the scored class ids; ``skipped``: class id -> reason for the others.

    Raises:
        ValueError: as :func:`prdc_per_class`.
        MetricUnavailable: non-finite features, or every class was skipped.

    Example:
        >>> real = torch.tensor([[0.0], [1.0], [10.0], [11.0], [20.0]])
        >>> fake = torch.tensor([[0.5], [0.6], [30.0], [31.0], [20.0]])
        >>> out = class_mean_prdc(real, torch.tensor([0, 0, 1, 1, 2]), fake,
        ...                       torch.tensor([0, 0, 1, 1, 2]), k=1)
        >>> {key: out[key] for key in PRDC_KEYS}
        {'precision': 0.5, 'recall': 0.0, 'density': 1.0, 'coverage': 0.5}
        >>> out["classes"], out["skipped"]
        ([0, 1], {2: 'PRDC (naeem) with k=1 needs at least 2 samples per set for class 2, real features has 1'})
    """
    per_class = prdc_per_class(
        real_feats, real_labels, fake_feats, fake_labels, k=k, variant=variant
    )
    return {**per_class.mean(), "classes": list(per_class.values), "skipped": per_class.skipped}
