"""Label smoothing, positive and negative, as a model-inversion defense.

Struppek et al., "Be Careful What You Smooth For: Label Smoothing Can Be a Privacy Shield but Also
a Catalyst for Model Inversion Attacks", ICLR 2024, https://arxiv.org/abs/2310.06549.

The one-hot target is replaced by ``(1 - alpha) * e_y + alpha / C``. Positive ``alpha`` (the usual
regulariser, paper value 0.1) makes the target *more* vulnerable to inversion; negative ``alpha``
(paper default -0.05) puts more than all the mass on the true class and a negative weight on the
others, which the paper finds to lower attack success at a small cost in accuracy.

Paper defaults: ``alpha = -0.05``, 100 training epochs; for negative ``alpha`` a warm-up that keeps
``alpha`` at 0 for the first half of training, ramps it linearly up to ``alpha / 2`` until the first
learning-rate drop (75 % of training) and then uses the full value (see :func:`smoothing_schedule`).
Positive factors are used from the first epoch, without warm-up, as in the official code.

PyTorch's ``F.cross_entropy(label_smoothing=...)`` is not usable for negative factors (it rejects
them or silently drops them, depending on the version), so the loss is written out here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib.defenses._defense import Defense

# Fractions of the training epochs at which the official warm-up starts (epoch 50 of 100) and
# switches to the full factor (epoch 75 of 100, the first learning-rate drop).
WARMUP_START = 0.5
WARMUP_END = 0.75


def smoothed_cross_entropy(logits: Tensor, labels: Tensor, alpha: float) -> Tensor:
    """Cross-entropy against the smoothed target ``(1 - alpha) e_y + alpha / C``, batch mean.

    Per sample, ``-sum_c t_c log p_c = (1 - alpha) * (-log p_y) + alpha * mean_c(-log p_c)``.
    For ``alpha`` in [0, 1] this equals ``F.cross_entropy(logits, labels, label_smoothing=alpha)``;
    for ``alpha < 0`` the target has entries above 1 and below 0 and the loss is unbounded below
    (it keeps pushing the wrong classes' probabilities towards 0), as intended by the method.

    Args:
        logits: (N, C) unnormalised scores, C >= 2.
        labels: (N,) int64 class ids in [0, C) (not range-checked, to avoid a device sync per step).
        alpha: Smoothing factor, finite and <= 1; may be negative.

    Returns:
        Scalar tensor: the mean over the N samples.

    Raises:
        ValueError: ``logits`` not 2-D with >= 2 columns, ``labels`` not (N,) int64, or ``alpha``
            not finite or above 1.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0]])
        >>> labels = torch.tensor([0])
        >>> round(float(smoothed_cross_entropy(logits, labels, 0.0)), 4)
        0.1698
        >>> bool(smoothed_cross_entropy(logits, labels, -0.5) < smoothed_cross_entropy(logits, labels, 0.0))
        True
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, C) with C >= 2, got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],) or labels.dtype != torch.int64:
        raise ValueError(
            f"labels must be int64 of shape ({logits.shape[0]},), "
            f"got {labels.dtype} of shape {tuple(labels.shape)}"
        )
    _check_alpha(alpha)
    log_p = F.log_softmax(logits, dim=1)
    nll = -log_p.gather(1, labels.unsqueeze(1)).squeeze(1)  # -log p_y
    uniform = -log_p.mean(dim=1)  # mean over classes of -log p_c
    return ((1.0 - alpha) * nll + alpha * uniform).mean()


def smoothing_schedule(epoch: int, *, alpha: float, epochs: int, warmup: bool = True) -> float:
    """Smoothing factor used in (0-based) ``epoch`` of an ``epochs``-epoch training run.

    Without warm-up, or for ``alpha >= 0``, the factor is ``alpha`` throughout. For ``alpha < 0``
    with warm-up, with ``s = floor(0.5 E)`` and ``f = floor(0.75 E)`` (``E = epochs``)::

        0                              for epoch < s
        alpha * (epoch + 1 - s) / (E - s)  for s <= epoch < f
        alpha                          for epoch >= f

    With ``E = 100`` this is exactly the official schedule (0 for epochs 0-49, ``alpha / 50`` at 50,
    ``alpha / 2`` at 74, then ``alpha`` from 75, where the first learning-rate drop happens); other
    ``E`` scale the two switch points proportionally. The jump from about ``alpha / 2`` to
    ``alpha`` at ``f`` is kept because the official code has it. Epochs past ``E`` keep ``alpha``.

    Args:
        epoch: 0-based epoch index, >= 0.
        alpha: Final smoothing factor (finite, <= 1).
        epochs: Total number of training epochs E, >= 1.
        warmup: Apply the warm-up to negative factors.

    Returns:
        The factor as a float.

    Raises:
        ValueError: negative ``epoch``, ``epochs < 1``, or a bad ``alpha``.

    Example:
        >>> [smoothing_schedule(e, alpha=-0.05, epochs=100) for e in (0, 49, 74, 75)]
        [0.0, 0.0, -0.025, -0.05]
    """
    _check_alpha(alpha)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if alpha >= 0 or not warmup:
        return float(alpha)
    start = math.floor(WARMUP_START * epochs)
    full = math.floor(WARMUP_END * epochs)
    if epoch < start:
        return 0.0
    if epoch < full:
        return alpha * (epoch + 1 - start) / (epochs - start)
    return float(alpha)


def label_smoothing_defense(
    *, alpha: float = -0.05, train_epochs: int = 100, warmup: bool = True
) -> Defense:
    """Train with (negative) label smoothing: a loss hook for ``train_classifier``.

    Args:
        alpha: Smoothing factor, finite and <= 1. Negative values (paper default -0.05) defend;
            positive ones (paper: 0.1) are the ordinary regulariser, which helps the attacker.
        train_epochs: Number of training epochs E the warm-up schedule is laid over; pass the same
            value as ``train_classifier(epochs=...)``. A study supplies the target's epochs (see
            :data:`mibench_lib.defenses.STUDY_INPUTS`). Recorded as ``config["epochs"]``.
        warmup: Use the official warm-up for negative ``alpha`` (see :func:`smoothing_schedule`);
            training from the first epoch with a negative factor often fails to converge.

    Returns:
        ``Defense("label_smoothing")`` whose ``loss`` is :func:`smoothed_cross_entropy` with the
        factor of the current epoch; knob ``"alpha"``.

    Raises:
        ValueError: ``alpha`` not finite or above 1, or ``train_epochs < 1``.

    Example:
        >>> d = label_smoothing_defense(alpha=-0.05, train_epochs=4)
        >>> logits, labels = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
        >>> float(d.loss(logits, labels, model=None, images=None, epoch=0)) == float(
        ...     torch.nn.functional.cross_entropy(logits, labels))
        True
    """
    _check_alpha(alpha)
    if isinstance(train_epochs, bool) or not isinstance(train_epochs, int) or train_epochs < 1:
        raise ValueError(f"train_epochs must be an integer >= 1, got {train_epochs!r}")

    def loss(
        logits: Tensor, labels: Tensor, *, model: nn.Module, images: Tensor, epoch: int
    ) -> Tensor:
        factor = smoothing_schedule(epoch, alpha=alpha, epochs=train_epochs, warmup=warmup)
        return smoothed_cross_entropy(logits, labels, factor)

    return Defense(
        "label_smoothing",
        # "epochs", not "train_epochs": the key is part of every cached target's identity
        config={"alpha": float(alpha), "epochs": train_epochs, "warmup": bool(warmup)},
        knob="alpha",
        loss=loss,
    )


def _check_alpha(alpha: float) -> None:
    if not math.isfinite(alpha) or alpha > 1:
        raise ValueError(f"alpha must be a finite number <= 1, got {alpha}")
