"""Seeded, stratified splits and the two split protocols every loader ends in.

- :func:`digit_split`: the GMI/KEDMI MNIST protocol. Private classes are digits 0-4, the public
  (attacker) data are digits 5-9 with labels hidden, and the evaluator is trained on all 10 digits,
  so a reconstruction that looks like a public digit counts as a failure.
- :func:`identity_split`: the face protocol. Private identities are split per identity into train
  and test; the evaluator is trained on the same private identities (its label space is the
  target's); public images come from disjoint identities or another dataset.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

from mibench_lib.data._types import ImageSet, MISplit

K = TypeVar("K", bound=Hashable)

#: Digits whose images are private (the target's classes) in the digit protocol.
PRIVATE_DIGITS: tuple[int, ...] = (0, 1, 2, 3, 4)
#: Digits whose images form the attacker's public data in the digit protocol.
PUBLIC_DIGITS: tuple[int, ...] = (5, 6, 7, 8, 9)


def check_fraction(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` lies in (0, 1), or [0, 1) when ``allow_zero``."""
    lo_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (lo_ok and value < 1.0):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value}")


def num_test(n: int, test_fraction: float) -> int:
    """Images of a class of size ``n`` that go to the test side.

    ``round(test_fraction * n)`` (halves rounded up), but at least 1 and at most ``n - 1`` when
    ``test_fraction > 0``, so every class appears on both sides; 0 when ``test_fraction == 0``.

    Example:
        >>> num_test(500, 0.2), num_test(30, 0.1), num_test(3, 0.1), num_test(7, 0.0)
        (100, 3, 1, 0)
    """
    if test_fraction == 0.0:
        return 0
    return min(max(int(test_fraction * n + 0.5), 1), n - 1)


def check_splittable(
    counts: Mapping[Any, int], *, test_fraction: float, what: str = "class"
) -> None:
    """Raise ``ValueError`` naming every class too small to split (fewer than 2 images).

    Called before loading images, so a bad configuration fails in milliseconds, not after an hour.

    Args:
        counts: Class (or identity) -> number of images.
        test_fraction: Fraction that goes to the test side; 0 needs only 1 image per class.
        what: Noun used in the message (``"identity"``, ``"digit"``).
    """
    need = 2 if test_fraction > 0 else 1
    small = {k: n for k, n in counts.items() if n < need}
    if small:
        shown = ", ".join(f"{k!s} ({n})" for k, n in list(small.items())[:5])
        raise ValueError(
            f"{len(small)} {what}(s) have fewer than {need} images and cannot be split into train "
            f"and test with test_fraction={test_fraction}: {shown}"
        )


def stratified_split(
    labels: Tensor, *, test_fraction: float, rng: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Split indices class by class into seeded, stratified train and test parts.

    Each class is permuted by ``rng``; its first :func:`num_test` entries go to test, the rest
    to train.

    Classes are visited in increasing label order and all draws come from ``rng`` on the CPU, so
    the split depends only on the labels and the generator's seed.

    Args:
        labels: (N,) int64 class ids.
        test_fraction: In [0, 1).
        rng: CPU generator, e.g. ``torch.Generator().manual_seed(split_seed)``.

    Returns:
        (train_idx, test_idx): sorted int64 indices into ``labels``, disjoint, covering all N.

    Raises:
        ValueError: ``test_fraction`` outside [0, 1) or a class with too few images.

    Example:
        >>> tr, te = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1]), test_fraction=0.25,
        ...                           rng=torch.Generator().manual_seed(0))
        >>> len(tr), len(te)
        (4, 2)
    """
    check_fraction("test_fraction", test_fraction, allow_zero=True)
    classes, counts = labels.unique(return_counts=True)
    check_splittable({int(c): int(n) for c, n in zip(classes, counts)}, test_fraction=test_fraction)
    train, test = [], []
    for c in classes.tolist():
        idx = torch.nonzero(labels == c).squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=rng)]
        k = num_test(idx.numel(), test_fraction)
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def rank_identities(counts: Mapping[K, int]) -> list[K]:
    """Identities by decreasing image count, ties broken by increasing identity key.

    Example:
        >>> rank_identities({7: 3, 2: 5, 4: 3})
        [2, 4, 7]
    """
    return sorted(counts, key=lambda k: (-counts[k], k))


def check_disjoint(private: Iterable[Any], public: Iterable[Any], *, what: str) -> None:
    """Raise ``ValueError`` if the private and public collections share an element.

    Args:
        private: Identities (or files) of the private set.
        public: Identities (or files) of the public set.
        what: Noun for the message, e.g. ``"identities"``.
    """
    shared = set(private) & set(public)
    if shared:
        shown = ", ".join(sorted(map(str, shared))[:5])
        raise ValueError(
            f"private and public data must be disjoint, but {len(shared)} {what} are in both: "
            f"{shown}"
        )


def digit_split(
    name: str,
    images: Tensor,
    digits: Tensor,
    *,
    test_fraction: float,
    evaluator_holdout: float,
    split_seed: int,
    info: Mapping[str, Any],
) -> MISplit:
    """Build the digit protocol's :class:`MISplit` from labelled digit images.

    - private = digits 0-4 (labels 0..4), stratified train/test split by ``test_fraction``;
    - public = every image of digits 5-9, labels -1;
    - evaluator_train = private_train + a stratified ``1 - evaluator_holdout`` of the public images
      with their true digits; evaluator_test = private_test + the held-out public images;
      10 evaluator classes, ``private_to_evaluator = [0, 1, 2, 3, 4]``.

    Both splits draw from one generator seeded with ``split_seed`` (private first, then public).

    Args:
        name: Dataset key stored in the split.
        images: (N, C, H, W) float images in [0, 1].
        digits: (N,) int64 digit labels in 0..9, every digit present.
        test_fraction: Private test fraction, in (0, 1).
        evaluator_holdout: Fraction of each public digit held out of evaluator training, in [0, 1).
        split_seed: Seed of the split.
        info: Provenance merged into ``MISplit.info``.

    Returns:
        The :class:`MISplit`.

    Raises:
        ValueError: A fraction out of range or a digit missing from ``digits``.
    """
    check_fraction("test_fraction", test_fraction)
    check_fraction("evaluator_holdout", evaluator_holdout, allow_zero=True)
    present = set(digits.unique().tolist())
    if present != set(range(10)):
        raise ValueError(f"digit labels must cover 0..9 exactly, got {sorted(present)}")
    rng = torch.Generator().manual_seed(split_seed)
    is_private = digits < len(PRIVATE_DIGITS)
    priv_idx = torch.nonzero(is_private).squeeze(1)
    pub_idx = torch.nonzero(~is_private).squeeze(1)
    private = ImageSet(images[priv_idx], digits[priv_idx])
    public_true = ImageSet(images[pub_idx], digits[pub_idx])

    tr, te = stratified_split(private.labels, test_fraction=test_fraction, rng=rng)
    private_train, private_test = private.subset(tr), private.subset(te)
    etr, ete = stratified_split(public_true.labels, test_fraction=evaluator_holdout, rng=rng)
    k = len(PRIVATE_DIGITS)
    return MISplit(
        name=name,
        private_train=private_train,
        private_test=private_test,
        public=public_true.unlabelled(),
        evaluator_train=ImageSet.concat(private_train, public_true.subset(etr)),
        evaluator_test=ImageSet.concat(private_test, public_true.subset(ete)),
        num_classes=k,
        evaluator_num_classes=10,
        private_to_evaluator=torch.arange(k, dtype=torch.int64),
        class_names=[str(d) for d in PRIVATE_DIGITS],
        info={
            **info,
            "split_seed": split_seed,
            "test_fraction": test_fraction,
            "evaluator_holdout": evaluator_holdout,
            "private_digits": list(PRIVATE_DIGITS),
            "public_digits": list(PUBLIC_DIGITS),
            "evaluator": "trained on all 10 digits: private train + held-in public images with "
            "their true digits; a reconstruction classified as 5-9 is a failure",
        },
        public_labels=public_true.labels.clone(),
    )


def identity_split(
    name: str,
    private: ImageSet,
    public: ImageSet,
    *,
    class_names: list[str],
    test_fraction: float,
    split_seed: int,
    info: Mapping[str, Any],
    public_labels: Tensor | None = None,
) -> MISplit:
    """Build the face protocol's :class:`MISplit` from private and public images.

    The private images get a seeded per-identity train/test split; the evaluator uses the same
    split and label space.

    Args:
        name: Dataset key stored in the split.
        private: Private images, labels 0..K-1 (every label present).
        public: Public images, labels all -1.
        class_names: Name of each private label (length K).
        test_fraction: Per-identity test fraction, in (0, 1).
        split_seed: Seed of the split.
        info: Provenance merged into ``MISplit.info``.
        public_labels: (len(public),) public identity of each public image (0..P-1, identities
            disjoint from the private ones), or None when unknown (FFHQ).

    Returns:
        The :class:`MISplit` with ``private_to_evaluator = arange(K)``.

    Raises:
        ValueError: Bad fraction, labels not 0..K-1, public labels not all -1, shape mismatch.
    """
    check_fraction("test_fraction", test_fraction)
    k = len(class_names)
    if set(private.labels.unique().tolist()) != set(range(k)):
        raise ValueError(f"private labels must cover 0..{k - 1} (one per class name)")
    if len(public) and not bool((public.labels == -1).all()):
        raise ValueError("public labels must all be -1 (attackers may not use them)")
    if len(public) and public.image_shape != private.image_shape:
        raise ValueError(
            f"public images have shape {public.image_shape}, private ones {private.image_shape}"
        )
    if public_labels is not None and tuple(public_labels.shape) != (len(public),):
        raise ValueError(
            f"public_labels must have shape ({len(public)},), got {tuple(public_labels.shape)}"
        )
    rng = torch.Generator().manual_seed(split_seed)
    tr, te = stratified_split(private.labels, test_fraction=test_fraction, rng=rng)
    train, test = private.subset(tr), private.subset(te)
    return MISplit(
        name=name,
        private_train=train,
        private_test=test,
        public=public,
        public_labels=None if public_labels is None else public_labels.long().clone(),
        evaluator_train=train,
        evaluator_test=test,
        num_classes=k,
        evaluator_num_classes=k,
        private_to_evaluator=torch.arange(k, dtype=torch.int64),
        class_names=list(class_names),
        info={
            **info,
            "split_seed": split_seed,
            "test_fraction": test_fraction,
            "evaluator": "trained on the private identities (same split and label space as the "
            "target)",
        },
    )
