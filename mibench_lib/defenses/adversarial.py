"""PGD adversarial training: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning
Models Resistant to Adversarial Attacks", ICLR 2018, https://arxiv.org/abs/1706.06083.

Algorithm. Training solves ``min_theta E[max_{||delta|| <= eps} CE(f(x + delta), y)]``: each batch is
replaced by projected-gradient-descent (PGD) adversarial examples crafted against the current
model, and the loss is the cross-entropy on those examples only (a clean/adversarial mix is a
different method). PGD starts at a uniformly random point of the eps-ball, takes ``steps`` ascent
steps of size ``alpha`` on the cross-entropy (L-inf: the sign of the gradient; L2: the gradient
divided by its L2 norm) and after each step projects back onto the eps-ball around ``x``
intersected with the pixel box ``[0, 1]``.

Paper settings (reference): MNIST L-inf ``eps = 0.3``, ``alpha = 0.01``, 40 steps (training) and
100 steps with restarts (evaluation); CIFAR-10 L-inf ``eps = 8/255``, ``alpha = 2/255``, 7 steps.
40 PGD steps per batch are too slow for CPU runs, so :func:`adversarial_training_defense` defaults
to 10 training steps with ``alpha = 2.5 eps / steps`` (the step-size rule of Madry's group's
``robustness`` library), keeps ``eps = 0.3``, and evaluates with a stronger 20-step attack; studies
set ``steps`` and ``alpha`` explicitly to match the paper.

Model mode while crafting. PGD examples are crafted with the model in eval mode (BatchNorm uses
its running statistics and is not updated by the attack's forward passes; dropout is off; every
image's gradient is its own), then the model goes back to train mode for the training forward
pass. This follows torchattacks and matches how the attack runs at test time; Madry's original code
and the ``robustness`` library craft in train mode, where BatchNorm normalises with the statistics
of the (partly adversarial) batch and its running statistics absorb every attack iterate.

The training loop computes logits on the clean batch before calling the loss; the loss ignores
them, so gradients come from adversarial examples only, but that clean forward pass in train mode
does update BatchNorm running statistics (a small departure from pure adversarial training for
BatchNorm models).

Expected effect on model inversion: adversarial training raises robust accuracy and may *help*
inversion, since robust models have perceptually aligned input gradients (Mejia et al., 2019);
the adversarial-robustness study measures it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib._checks import check_images
from mibench_lib.data._types import ImageSet
from mibench_lib.defenses._defense import Defense
from mibench_lib.models.train import accuracy

__all__ = ["adversarial_training_defense", "pgd_attack", "robust_accuracy"]

NORMS: tuple[str, ...] = ("linf", "l2")


def _check_pgd_args(*, eps: float, alpha: float, steps: int, norm: str) -> None:
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _per_sample_norm(t: Tensor) -> Tensor:
    """(N, ...) -> (N, 1, ..., 1) L2 norms, kept away from 0."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))


def _project(x_adv: Tensor, x: Tensor, *, eps: float, norm: str) -> Tensor:
    """Nearest point of the eps-ball around ``x`` (then clipped to [0, 1]).

    Clipping to the pixel box after the ball projection keeps the ball constraint: ``x`` lies in
    [0, 1], so clipping only moves each coordinate of ``x_adv`` towards ``x``.
    """
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _random_start(x: Tensor, *, eps: float, norm: str, rng: torch.Generator | None) -> Tensor:
    """A random point of the eps-ball around ``x`` (drawn on the CPU, then moved), inside [0, 1].

    L-inf: uniform in the cube. L2: a uniformly random direction scaled by a radius uniform in
    [0, eps] (as torchattacks' PGDL2; not uniform in volume).
    """
    if norm == "linf":
        delta = (torch.rand(x.shape, generator=rng) * 2 - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=rng)
        radius = torch.rand(x.shape[0], generator=rng).view(-1, *([1] * (x.ndim - 1))) * eps
        delta = direction / _per_sample_norm(direction) * radius
    return _project(x + delta.to(x.device, x.dtype), x, eps=eps, norm=norm)


def _pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str,
    random_start: bool,
    rng: torch.Generator | None,
    track: bool,
) -> tuple[Tensor, Tensor | None]:
    """PGD iterates from the start ``x_0`` to ``x_steps`` in the model's current mode.

    Returns the last iterate and, when ``track``, an (N,) bool mask: some iterate
    ``x_0, ..., x_steps`` was misclassified (predictions come from the forward passes the attack
    runs anyway, plus one for the last iterate).
    """
    x = x.detach()
    x_adv = _random_start(x, eps=eps, norm=norm, rng=rng) if random_start else x.clone()
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device) if track else None
    with torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            if fooled is not None:
                fooled |= logits.argmax(1) != y
            # sum: each image's ascent direction is the gradient of its own loss
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_adv)
            with torch.no_grad():
                if norm == "linf":
                    stepped = x_adv + alpha * grad.sign()
                else:
                    stepped = x_adv + alpha * grad / _per_sample_norm(grad)
                x_adv = _project(stepped, x, eps=eps, norm=norm)
    if fooled is not None:
        with torch.no_grad():
            fooled |= model(x_adv).argmax(1) != y
    return x_adv.detach(), fooled


def pgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float = 0.3,
    alpha: float = 0.01,
    steps: int = 40,
    norm: str = "linf",
    random_start: bool = True,
    rng: torch.Generator | None = None,
) -> Tensor:
    """Untargeted PGD adversarial examples (Madry et al., 2018); defaults are the paper's MNIST ones.

    Maximises the cross-entropy of the true labels inside ``{x' : ||x' - x|| <= eps} ∩ [0, 1]^d``.
    The model is put in eval mode while crafting and returned to its previous mode afterwards;
    its parameters get no gradients.

    Args:
        model: Classifier, (N, C, H, W) in [0, 1] -> (N, K) logits.
        x: (N, C, H, W) clean images in [0, 1], on the model's device.
        y: (N,) int64 true labels.
        eps: Radius of the ball (>= 0), in pixel units of [0, 1].
        alpha: Step size (> 0): the L-inf step moves every pixel by ``alpha``; the L2 step has
            L2 norm ``alpha``.
        steps: Number of ascent steps (>= 0; 0 returns the start point).
        norm: ``"linf"`` or ``"l2"``.
        random_start: Start from a uniformly random point of the ball (else from ``x``).
        rng: CPU generator of the random start (None: torch's global generator).

    Returns:
        (N, C, H, W) adversarial images (the last iterate), detached, with
        ``||x_adv - x|| <= eps`` and values in [0, 1].

    Raises:
        ValueError: bad images, a negative ``eps`` or ``steps``, a non-positive ``alpha``, an
            unknown norm.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> x = torch.rand(2, 1, 8, 8)
        >>> x_adv = pgd_attack(tiny_classifier(), x, torch.tensor([0, 1]), eps=0.1, alpha=0.05,
        ...                    steps=3, rng=torch.Generator().manual_seed(0))
        >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-7)
        True
    """
    check_images(x, name="x")
    _check_pgd_args(eps=eps, alpha=alpha, steps=steps, norm=norm)
    was_training = model.training
    model.eval()
    try:
        x_adv, _ = _pgd(
            model,
            x,
            y,
            eps=eps,
            alpha=alpha,
            steps=steps,
            norm=norm,
            random_start=random_start,
            rng=rng,
            track=False,
        )
    finally:
        model.train(was_training)
    return x_adv


def robust_accuracy(
    model: nn.Module,
    data: ImageSet,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 20,
    alpha: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> float:
    """Fraction of ``data`` classified correctly on the clean image and on every PGD iterate.

    An image counts as robust only if the model is right on the clean image and on every iterate
    of every restart (any misclassified iterate is a valid adversarial example inside the ball,
    so this is never weaker than checking the last iterate). With one seed the random starts do
    not depend on ``steps``, so more steps (same ``alpha``) never raise the result, and
    ``eps = 0`` gives exactly the clean accuracy.

    Args:
        model: Classifier, (N, C, H, W) in [0, 1] -> (N, K) logits; evaluated in eval mode (its
            mode is restored afterwards).
        data: Labelled test images.
        eps, norm, steps: The attack (see :func:`pgd_attack`).
        alpha: Step size; None means ``2.5 * eps / steps``.
        restarts: Independent random starts per image (>= 1).
        random_start: Start from a random point of the ball (else from the clean image).
        batch_size: Images per attack batch.
        device: Where to run (default: the model's device).
        seed: Seeds the random starts (CPU generator), so the number is reproducible.

    Returns:
        Robust accuracy in [0, 1].

    Raises:
        ValueError: empty data, bad attack arguments, ``restarts`` or ``batch_size`` < 1.
    """
    if len(data) == 0:
        raise ValueError("cannot compute robust accuracy on an empty set")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if alpha is None:
        alpha = 2.5 * eps / steps if steps and eps > 0 else 1.0  # any step does nothing at eps 0
    _check_pgd_args(eps=eps, alpha=alpha, steps=steps, norm=norm)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    robust = 0
    try:
        for i in range(0, len(data), batch_size):
            x = data.images[i : i + batch_size].to(device)
            y = data.labels[i : i + batch_size].to(device)
            with torch.no_grad():
                broken = model(x).argmax(1) != y
            for _ in range(restarts):
                _, fooled = _pgd(
                    model,
                    x,
                    y,
                    eps=eps,
                    alpha=alpha,
                    steps=steps,
                    norm=norm,
                    random_start=random_start,
                    rng=rng,
                    track=True,
                )
                broken |= fooled
            robust += int((~broken).sum())
    finally:
        model.train(was_training)
    return robust / len(data)


def adversarial_training_defense(
    *,
    eps: float = 0.3,
    alpha: float | None = None,
    steps: int = 10,
    norm: str = "linf",
    eval_steps: int = 20,
    eval_restarts: int = 1,
    seed: int = 0,
) -> Defense:
    """PGD adversarial training (Madry et al., 2018): train on PGD examples of every batch.

    Args:
        eps: Radius of the threat model (>= 0; paper MNIST L-inf: 0.3).
        alpha: Training step size; None means ``2.5 * eps / steps`` (paper MNIST: 0.01 with 40
            steps).
        steps: PGD steps per training batch (>= 1; paper MNIST: 40).
        norm: ``"linf"`` or ``"l2"``.
        eval_steps: Steps of the (stronger) evaluation attack in ``after_training``, with step
            size ``2.5 * eps / eval_steps``.
        eval_restarts: Random restarts of the evaluation attack.
        seed: Seeds the random starts; the training stream restarts from it at every ``build``
            (i.e. every training run), the evaluation uses it as is.

    Returns:
        A :class:`Defense` named ``"adversarial"`` (knob ``"eps"``) whose ``loss`` crafts PGD
        examples with the model in eval mode and returns the mean cross-entropy on them (the
        clean logits the loop passes in are not used), and whose ``after_training`` reports
        ``clean_acc``, ``robust_acc`` (see :func:`robust_accuracy`), ``eps``, ``norm``,
        ``eval_steps``, ``eval_alpha`` and ``eval_restarts``.

    Raises:
        ValueError: a value out of range or an unknown norm.

    Example:
        >>> d = adversarial_training_defense(eps=0.1, steps=5)
        >>> d.knob_value, d.config["alpha"]
        (0.1, 0.05)
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if eval_steps < 1:
        raise ValueError(f"eval_steps must be >= 1, got {eval_steps}")
    if eval_restarts < 1:
        raise ValueError(f"eval_restarts must be >= 1, got {eval_restarts}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    train_alpha = alpha if alpha is not None else (2.5 * eps / steps if eps > 0 else 1.0)
    eval_alpha = 2.5 * eps / eval_steps if eps > 0 else 1.0
    _check_pgd_args(eps=eps, alpha=train_alpha, steps=steps, norm=norm)

    state: dict[str, torch.Generator] = {"rng": torch.Generator().manual_seed(seed)}

    def build(model: nn.Module) -> nn.Module:
        state["rng"] = torch.Generator().manual_seed(seed)  # same starts for every training run
        return model

    def loss(
        logits: Tensor, labels: Tensor, *, model: nn.Module, images: Tensor, epoch: int
    ) -> Tensor:
        x_adv = pgd_attack(
            model,
            images,
            labels,
            eps=eps,
            alpha=train_alpha,
            steps=steps,
            norm=norm,
            random_start=True,
            rng=state["rng"],
        )
        return F.cross_entropy(model(x_adv), labels)

    def after_training(
        model: nn.Module, test_set: ImageSet, device: torch.device
    ) -> Mapping[str, Any]:
        return {
            "clean_acc": accuracy(model, test_set, device=device),
            "robust_acc": robust_accuracy(
                model,
                test_set,
                eps=eps,
                norm=norm,
                steps=eval_steps,
                alpha=eval_alpha,
                restarts=eval_restarts,
                device=device,
                seed=seed,
            ),
            "eps": eps,
            "norm": norm,
            "eval_steps": eval_steps,
            "eval_alpha": eval_alpha,
            "eval_restarts": eval_restarts,
        }

    return Defense(
        "adversarial",
        config={
            "eps": eps,
            "alpha": train_alpha,
            "steps": steps,
            "norm": norm,
            "seed": seed,
            # not part of the weights, but of the report stored with them
            "eval_steps": eval_steps,
            "eval_restarts": eval_restarts,
        },
        knob="eps",
        build=build,
        loss=loss,
        after_training=after_training,
    )
