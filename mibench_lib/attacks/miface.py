"""MIFace: Fredrikson, Jha and Ristenpart, "Model Inversion Attacks that Exploit Confidence
Information and Basic Countermeasures", CCS 2015, Algorithm 1, https://doi.org/10.1145/2810103.2813677.

Algorithm. The classic pixel-space baseline: gradient descent on the image itself, from the
all-zero image ``x_0 = 0``, on the cost

    c(x) = 1 - softmax(T(x))_y + AuxTerm(x)

with ``AuxTerm = 0`` (no side information) and ``Process`` = identity (the softmax/MLP setting of
the paper, no denoising autoencoder). Each step is ``x_i = clamp(x_{i-1} - lr * grad c(x_{i-1}),
0, 1)``; the clamp keeps images in the valid pixel range (the paper's ``Process`` step is where
such a projection belongs). After step ``i`` a sample stops when

1. ``c(x_i) >= max(c(x_{i-1}), ..., c(x_{i-window}))`` (no progress over the window; in the first
   steps, where fewer than ``window`` earlier costs exist, the max runs over those that exist,
   starting with ``c(x_0)``),
2. ``p_y(x_i) >= threshold``, where ``p_y`` is the target's softmax probability of the label
   ("good enough"; the code compares exactly this), or
3. ``i == max_iter``.

Rule 2 is a deliberate reading of Algorithm 1, which writes the test on the cost,
``c(x_i) <= gamma``, with ``gamma = 0.99`` in the paper's experiments (recalled, not re-read here);
ART's ``MIFace`` also compares its cost ``1 - predict(x)_y`` with ``threshold = 0.99`` (and,
its mask being inverted, keeps such samples running rather than stopping them). Taken literally,
``c <= 0.99`` means ``p_y >= 0.01``, below chance level for any target with fewer than 100
classes: the descent would stop as soon as the label is not nearly ruled out, typically after the
first step (on the tests' 4-class digits target, every label that moved stopped at step 1 with
``p_y`` between 0.07 and 0.95), long before the target predicts it with confidence. Here the
threshold bounds the confidence instead: ``p_y >= threshold``, i.e. ``c <= 1 - threshold`` with
``AuxTerm = 0``. The literal rule ``c <= gamma`` is ``threshold = 1 - gamma`` (0.01 for
``gamma = 0.99``).

The returned image is the lowest-cost iterate ``argmin_i c(x_i)`` (``x_0`` included), not the last.

Batched over samples: stopping is per sample and absorbing (a stopped sample is never queried or
moved again). This follows Algorithm 1, not ART's implementation, which uses the logits as
"probabilities" for logit models, inverts the stop mask (re-activating stopped samples) and returns
the last iterate.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from mibench_lib._checks import check_labels
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec
from mibench_lib.byo import check_target
from mibench_lib.oracle import AccessDenied, TargetOracle

__all__ = ["miface_attack"]


def _cost_and_grad(oracle: TargetOracle, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """c(x) = 1 - p_y(x) per sample, its gradient w.r.t. x and p_y(x) (one query per image)."""
    x = x.detach().requires_grad_(True)
    prob = F.softmax(oracle(x).float(), dim=1).gather(1, y[:, None]).squeeze(1)
    cost = 1.0 - prob
    # Samples are independent in eval mode, so the gradient of the sum is the per-sample gradient;
    # autograd.grad w.r.t. x only leaves the target's parameters without gradients.
    (grad,) = torch.autograd.grad(cost.sum(), x)
    return cost.detach(), grad, prob.detach()


def miface_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    lr: float = 0.1,
    max_iter: int = 5000,
    window: int = 100,
    threshold: float = 0.99,
    batch_size: int | None = None,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """Invert ``labels`` by gradient descent in pixel space from the zero image (Algorithm 1).

    The target is checked first against the contract of :func:`mibench_lib.byo.check_target`
    (one forward pass on a tiny batch, not counted as queries and leaving every random state as
    it was), so a wrong model fails before the descent with an error that says how to fix it.

    Args:
        oracle: White-box oracle of the target, (M, C, H, W) in [0, 1] -> (M, K) logits; the
            cost applies the softmax itself.
        labels: (N,) int64 class ids in ``[0, K)``; repeats allowed (they give identical images,
            since the attack is deterministic).
        lr: Step size lambda (paper and ART 0.1).
        max_iter: Maximum number of steps alpha (0 returns the zero image).
        window: beta: a sample stops when its cost is not below the max of its previous ``window``
            costs (paper and ART 100).
        threshold: A sample stops after the first step at which the target's softmax
            probability of its label is ``>= threshold`` (cost ``<= 1 - threshold``); 0.99 as
            ART's default. Algorithm 1's literal test ``c <= gamma`` is ``threshold = 1 - gamma``.
        batch_size: Most samples descended at once, in consecutive chunks; ``None``: all of
            them. Samples are independent, so chunking changes memory, not the result.
        rng: Unused (the attack is deterministic); accepted for a uniform attack interface.
        on_step: Progress hook ``on_step(step, max_iter, info)``, called every 10 steps and at the
            last one, with the mean current cost and the number of samples still running.

    Returns:
        InversionResult with images (N, C, H, W) on the CPU in [0, 1] (the lowest-cost iterate of
        each sample), labels, ``latents=None``, ``losses`` (mean current cost over all samples
        after each step; stopped samples keep their last cost), ``queries`` (images evaluated:
        ``N`` for ``x_0`` plus one per sample per step it ran) and ``extras``:

        - ``"stop_step"``: (N,) step at which each sample stopped;
        - ``"best_step"``: (N,) step of the returned iterate (0 = the zero image);
        - ``"cost"``: (N,) cost of the returned image, ``1 - p_y``;
        - ``"last_cost"``: (N,) cost of the last iterate.

    Raises:
        AccessDenied: the oracle is not white-box (the attack needs the target's gradients).
        ValueError: bad labels, a non-positive ``lr`` or ``window``, a negative ``max_iter``, a
            ``threshold`` outside (0, 1], or a target that breaks its contract
            (:func:`mibench_lib.byo.check_target`).
        QueryBudgetExceeded: the oracle's budget runs out.

    Example:
        >>> from mibench_lib.oracle import TargetOracle
        >>> from mibench_lib.testing import tiny_classifier
        >>> res = miface_attack(TargetOracle(tiny_classifier()), torch.tensor([1, 2]), max_iter=5)
        >>> res.images.shape, bool((res.extras["stop_step"] <= 5).all())
        (torch.Size([2, 1, 8, 8]), True)
    """
    del rng  # deterministic from x_0 = 0
    if not oracle.is_white_box:
        raise AccessDenied(
            f"miface_attack needs the target's gradients (a 'white-box' oracle), got access "
            f"{oracle.access!r}"
        )
    check_labels(labels, oracle.num_classes)
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    check_target(oracle.module)  # before any work: no queries, no random state used

    start_queries, t0 = oracle.queries, time.perf_counter()
    device = oracle.device
    n = labels.numel()
    y = labels.to(device)
    chunk = max(1, n if batch_size is None else batch_size)
    with eval_mode(oracle.module):
        parts = [
            _descend(oracle, y[lo : lo + chunk], lr, max_iter, window, threshold, on_step)
            for lo in range(0, n, chunk)
        ]
    best_x, best_cost, best_step, stop_step, cost = (
        torch.cat([p[i] for p in parts]) for i in range(5)
    )
    # Mean cost over all samples after each step; a chunk that stopped early keeps its last sum.
    longest = max(len(p[5]) for p in parts)
    sums = [p[5] + [p[5][-1]] * (longest - len(p[5])) if p[5] else [] for p in parts]
    losses = [sum(col) / n for col in zip(*sums, strict=True)] if all(sums) else []

    return InversionResult(
        attack="miface",
        images=best_x.cpu(),
        labels=labels.cpu(),
        latents=None,
        losses=losses,
        queries=oracle.queries - start_queries,
        wall_time_s=time.perf_counter() - t0,
        extras={
            "stop_step": stop_step.cpu(),
            "best_step": best_step.cpu(),
            "cost": best_cost.cpu(),
            "last_cost": cost.cpu(),
        },
    )


def _descend(
    oracle: TargetOracle,
    y: Tensor,
    lr: float,
    max_iter: int,
    window: int,
    threshold: float,
    on_step: StepCallback | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, list[float]]:
    """Algorithm 1 for one chunk of labels.

    Returns (best images, their costs, best steps, stop steps, last costs, summed cost per step).
    """
    n, device = y.numel(), y.device
    x = torch.zeros(n, *oracle.input_shape, device=device)
    cost, grad, _ = _cost_and_grad(oracle, x, y)
    best_x, best_cost = x.clone(), cost.clone()
    best_step = torch.zeros(n, dtype=torch.long, device=device)
    stop_step = torch.full((n,), max_iter, dtype=torch.long, device=device)
    # Ring buffer of the last `window` costs; -inf marks slots not yet filled.
    history = torch.full((n, window), float("-inf"), device=device)
    history[:, 0] = cost
    active = torch.ones(n, dtype=torch.bool, device=device)
    if max_iter == 0:
        stop_step.zero_()
        active.zero_()
    sums: list[float] = []

    for step in range(1, max_iter + 1):
        if not active.any():
            break
        idx = active.nonzero().squeeze(1)
        x_new = (x[idx] - lr * grad[idx]).clamp(0.0, 1.0)
        c_new, g_new, p_new = _cost_and_grad(oracle, x_new, y[idx])
        x[idx], grad[idx], cost[idx] = x_new, g_new, c_new

        no_progress = c_new >= history[idx].max(dim=1).values
        history[idx, step % window] = c_new  # overwrites c_{step - window}, now out of range

        better = c_new < best_cost[idx]
        improved = idx[better]
        best_x[improved], best_cost[improved] = x_new[better], c_new[better]
        best_step[improved] = step

        stop = no_progress | (p_new >= threshold) | (step == max_iter)
        stopped = idx[stop]
        stop_step[stopped] = step
        active[stopped] = False

        sums.append(float(cost.double().sum()))
        if on_step is not None and (step % 10 == 0 or not active.any() or step == max_iter):
            on_step(step, max_iter, {"loss": sums[-1] / n, "active": float(active.sum())})
    return best_x, best_cost, best_step, stop_step, cost, sums


#: What the study engine needs to know: access level and public artifacts.
SPEC = AttackSpec("miface", miface_attack, access="white-box", quick={"max_iter": 5, "window": 3})
