"""DeepInversion: Yin, Molchanov, Alvarez, Li, Mallya, Hoiem, Jha and Kautz, "Dreaming to Distill:
Data-free Knowledge Transfer via DeepInversion", CVPR 2020, https://arxiv.org/abs/1912.08795.

Algorithm. No generator: a batch of images, one per label entry (all labels in one batch), is
optimised directly in the target's *normalised* input space ``v = (x - mean) / std``, starting from
``v ~ N(0, 1)``. At every iteration the whole batch is first augmented, a random circular shift
``torch.roll`` by ``(dh, dw)`` with ``dh, dw`` uniform in ``[-jitter, jitter]`` and, with
probability 1/2, a horizontal flip (one draw for the whole batch), and **every** loss is computed on
the augmented batch ``v'`` (the BatchNorm hooks see it too, since they run inside the target's
forward pass on it):

    L = main_loss_multiplier * CE(T(v' * std + mean), y)
        + r_feature * sum_l w_l (||mu_l(v') - running_mean_l||_2 + ||var_l(v') - running_var_l||_2)
        + tv_l2 * TV_L2(v') + tv_l1 * TV_L1(v') + l2 * mean_i ||v'_i||_2

- ``CE`` is the batch-mean cross-entropy of the target's logits.
- ``R_feature`` (the DeepInversion prior) runs over the target's ``nn.BatchNorm2d`` layers, in
  ``module.modules()`` order: ``mu_l`` and ``var_l`` are the per-channel mean and *biased*
  variance over (N, H, W) of the layer's **input** in this forward pass, compared with the
  layer's running statistics by plain (not squared) L2 norms; ``w_0 = first_bn_multiplier`` for
  the first such layer and 1 for the others.
- ``TV_L2`` is the sum of the Frobenius norms, over the whole batch, of the **four** neighbour
  differences (horizontal, vertical and both diagonals); ``TV_L1`` is the sum of their mean
  absolute values; the image prior ``l2`` weighs the batch mean of each image's L2 norm.

The pixels are updated by Adam (betas ``(0.5, 0.9)``) with a cosine learning-rate schedule after a
linear warm-up: ``lr * (t + 1) / warmup`` for ``t < warmup``, then
``lr * (1 + cos(pi * (t - warmup) / (iterations - warmup))) / 2``. After every step ``v`` is
clipped to the valid pixel range ``[-mean / std, (1 - mean) / std]`` per channel. The batch with
the lowest total loss over all iterations is returned, mapped back to pixels ``v * std + mean``
and clamped to [0, 1].

Relation to the official code (NVlabs/DeepInversion: ``deepinversion.py``,
``imagenet_inversion.py``, ``utils/utils.py``; the CIFAR-10 script
``cifar10/deepinversion_cifar10.py``):

- Defaults are the ImageNet code's ``setting_id=1`` (2k iterations at full resolution, Adam betas
  (0.5, 0.9), clipping) with the coefficients of the README's run (``r_feature=0.01``, ``lr=0.25``,
  jitter 30, flip) and the script defaults ``first_bn_multiplier=10``, ``tv_l2=1e-4``,
  ``tv_l1=0``, ``l2=1e-5``, ``main_loss_multiplier=1`` (the argparse default of ``r_feature`` is
  0.05 and of ``lr`` 0.2). :data:`OFFICIAL_SETTINGS` lists this and the other reproducible
  settings (ImageNet ``setting_id=2``; the CIFAR-10 paper parameters).
- Not implemented: the README's ``setting_id=0`` (2k iterations on the batch average-pooled to
  half resolution, jitter halved, then 1k at full resolution). Its first stage sends
  half-resolution images to the target; the target contract (:mod:`mibench_lib.byo`) fixes one
  ``input_shape``, which the oracle enforces, and many targets (fixed-size linear heads) cannot
  take another size. Upsampling the pooled batch back would be a different method, so it is not
  offered under this name.
- Pixels are parameterised as in the official code (normalised space, noise start, clipping),
  but the target here takes images in [0, 1] and normalises them itself (e.g. through
  :func:`mibench_lib.byo.as_target`'s ``mean``/``std``); each query is ``v' * std + mean``. With
  ``mean``/``std`` equal to the target's own normalisation this is the official computation.
  The official code hard-codes the ImageNet statistics (``utils.clip``, ``utils.denormalize``);
  here they are arguments, defaulting to ImageNet's (3 channels).
- The kept batch ("best_inputs") is the batch whose loss was the lowest, i.e. the batch the loss
  was computed on, before that iteration's update. The ImageNet code compares the loss of the
  batch before the update but stores the batch *after* the update and clip (off by one step);
  the CIFAR script stores a reference (``inputs.data``) that the optimiser then overwrites in
  place, so it effectively returns the last batch.
- Randomness (initial noise, shifts and flips) comes from ``rng`` (a CPU ``torch.Generator``)
  instead of Python's ``random`` and a global ``torch.manual_seed``; the noise is drawn first,
  then per iteration the two shifts and the flip (drawn even with ``flip=False``).
- The gradient is taken with respect to the pixels only (``torch.autograd.grad``): the official
  ``loss.backward()`` also fills the teacher's parameter gradients (then zeroed), which changes
  nothing in the update. No FP16/APEX path.
- BatchNorm hooks are removed when the attack returns (the CIFAR script leaks them across calls,
  NVlabs/DeepInversion#35), the target runs in eval mode (its running statistics are never
  updated) and every submodule's train/eval flag is restored afterwards.
- A target without ``nn.BatchNorm2d`` layers runs without the BN prior, as in the official code
  (its ``R_feature`` is then an empty sum, 0); ``extras["bn_layers"]`` reports the number of
  layers used (0 then). As officially, ``BatchNorm1d``/``BatchNorm3d`` layers are not used. A
  ``BatchNorm2d`` without running statistics (``track_running_stats=False``) raises a
  ``ValueError`` (the official hook would fail on its missing ``running_var``).
- Adaptive DeepInversion (the competition term ``adi_scale * (1 - JS(student, teacher))``, off by
  default in the official code) is not implemented: it needs a student network, which no study
  setting provides. (Officially its "JS" is ``KL(M || P) + KL(M || Q)`` with clamped
  probabilities, not the Jensen-Shannon divergence.)
- Labels are the caller's list (the official ImageNet code uses 42 hand-picked classes twice).
  The BN statistics are batch statistics, so the result depends on the batch composition: the
  official runs use batches of 84 (README), 152 (paper) and 256 (CIFAR-10); a study states its
  batch (the number of label entries per call).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib._checks import check_int, check_labels
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec
from mibench_lib.byo import check_target
from mibench_lib.oracle import AccessDenied, TargetOracle

__all__ = ["OFFICIAL_SETTINGS", "deepinversion_attack"]

#: deepinversion.py, setting_id=1, with the README's coefficients (r_feature 0.01, lr 0.25)
_IMAGENET_SETTING1: dict[str, Any] = {
    "iterations": 2000,
    "lr": 0.25,
    "betas": (0.5, 0.9),
    "schedule": "cosine",
    "warmup": 100,
    "clip": True,
    "jitter": 30,
    "flip": True,
    "r_feature": 0.01,
    "first_bn_multiplier": 10.0,
    "tv_l2": 1e-4,
    "tv_l1": 0.0,
    "l2": 1e-5,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}

#: Keyword arguments reproducing the official runs that fit the target contract (see the module
#: docstring for ``setting_id=0``, which does not). ``"imagenet_setting1"`` equals the defaults.
OFFICIAL_SETTINGS: dict[str, dict[str, Any]] = {
    "imagenet_setting1": _IMAGENET_SETTING1,
    # deepinversion.py, setting_id=2: "the closest to the paper experiments for ResNet50"
    "imagenet_setting2": {
        **_IMAGENET_SETTING1,
        "iterations": 20000,
        "betas": (0.9, 0.999),
        "clip": False,
    },
    # cifar10/README.md "parameters from the paper": Adam(lr 0.05) with torch's default betas and
    # no schedule or clipping, 2 px jitter, no flip, r_feature 10 without a first-BN multiplier,
    # TV-L2 2.5e-5, no L2; the teacher's CIFAR-10 normalisation.
    "cifar10": {
        "iterations": 2000,
        "lr": 0.05,
        "betas": (0.9, 0.999),
        "schedule": "constant",
        "warmup": 0,
        "clip": False,
        "jitter": 2,
        "flip": False,
        "r_feature": 10.0,
        "first_bn_multiplier": 1.0,
        "tv_l2": 2.5e-5,
        "tv_l1": 0.0,
        "l2": 0.0,
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2023, 0.1994, 0.2010),
    },
}


def deepinversion_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    iterations: int = 2000,
    lr: float = 0.25,
    betas: Sequence[float] = (0.5, 0.9),
    schedule: Literal["cosine", "constant"] = "cosine",
    warmup: int = 100,
    clip: bool = True,
    jitter: int = 30,
    flip: bool = True,
    r_feature: float = 0.01,
    first_bn_multiplier: float = 10.0,
    tv_l2: float = 1e-4,
    tv_l1: float = 0.0,
    l2: float = 1e-5,
    main_loss_multiplier: float = 1.0,
    mean: Sequence[float] | float = (0.485, 0.456, 0.406),
    std: Sequence[float] | float = (0.229, 0.224, 0.225),
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """Invert ``labels`` by optimising one batch of pixels against the target and its BN statistics.

    The target is checked first against the contract of :func:`mibench_lib.byo.check_target`
    (one forward pass on a tiny batch, not counted as queries and leaving every random state as
    it was), so a wrong model fails before the first query. Every forward pass of the target
    goes through the oracle: one query per image per iteration, nothing else.

    Args:
        oracle: White-box oracle of the target, (M, C, H, W) in [0, 1] -> (M, K) logits.
        labels: (N,) int64 class ids in ``[0, K)``; repeats allowed (one image each). All N images
            form one batch, whose statistics the BN prior matches.
        iterations: Optimisation steps (official 2000 at full resolution), at least 1.
        lr: Peak Adam learning rate in normalised pixel units (README 0.25; argparse 0.2).
        betas: Adam's (beta1, beta2), each in [0, 1) (official (0.5, 0.9); setting 2 and
            CIFAR-10: (0.9, 0.999)).
        schedule: ``"cosine"``: linear warm-up over ``warmup`` steps from ``lr / warmup``, then
            cosine decay towards 0 (official ImageNet); ``"constant"``: ``lr`` throughout
            (official CIFAR-10; ``warmup`` ignored).
        warmup: Warm-up steps of the cosine schedule (official 100); 0 starts the decay at once.
        clip: Clip the pixels to the valid range after every step (official True; False in
            ImageNet setting 2 and CIFAR-10, where the queries may then leave [0, 1]; the returned
            images are clamped to [0, 1] either way).
        jitter: Largest circular shift in pixels, per axis (official 30 at 224 px; CIFAR 2).
        flip: Random horizontal flip with probability 1/2 (official True; CIFAR False).
        r_feature: Weight of the BN-statistics prior (README 0.01; argparse 0.05; CIFAR 10).
        first_bn_multiplier: Extra weight of the first ``BatchNorm2d`` layer (official 10; the
            CIFAR script has none, i.e. 1).
        tv_l2: Weight of the L2-norm total variation over four directions (official 1e-4;
            CIFAR 2.5e-5).
        tv_l1: Weight of the mean-absolute total variation (official 0).
        l2: Weight of the batch mean of each image's L2 norm (official 1e-5; CIFAR 0).
        main_loss_multiplier: Weight of the cross-entropy (official 1).
        mean: Per-channel mean of the normalised space the pixels are optimised in (one number
            for every channel, or C numbers); the target's own normalisation. Official ImageNet
            ``(0.485, 0.456, 0.406)``.
        std: Per-channel standard deviation of that space, positive; official ImageNet
            ``(0.229, 0.224, 0.225)``.
        rng: CPU generator for the initial noise, the shifts and the flips (the noise is moved to
            the oracle's device); ``None`` uses torch's global generator.
        on_step: Progress hook ``on_step(step, iterations, info)``, called every 10 steps and at
            the last one, with that step's total loss, its terms (unweighted) and learning rate.

    Returns:
        InversionResult with images (N, C, H, W) on the CPU in [0, 1] (the lowest-loss batch),
        labels, ``latents=None``, ``losses`` (total loss of each iteration, computed on its
        augmented batch before its update), ``queries`` (exactly ``iterations * N``) and
        ``extras``:

        - ``"best_step"``: iteration (0-based) whose batch is returned, the argmin of ``losses``;
        - ``"best_loss"``: its loss;
        - ``"ce"``, ``"r_feature"``, ``"tv_l2"``, ``"tv_l1"``, ``"l2"``: per-iteration unweighted
          terms (``r_feature`` with the first layer's multiplier applied);
        - ``"lr"``: the learning rate of each iteration;
        - ``"bn_layers"``: number of ``BatchNorm2d`` layers in the BN prior (0: no BN prior).

    Raises:
        AccessDenied: the oracle is not white-box (the attack needs the target's gradients and
            its BatchNorm statistics).
        ValueError: bad labels, ``iterations < 1``, a non-positive ``lr``, bad ``betas``, an
            unknown ``schedule``, a negative ``warmup``/``jitter``/loss weight, ``mean``/``std``
            that do not match the target's channels (or a non-positive ``std``), a
            ``BatchNorm2d`` without running statistics, or a target that breaks its contract
            (:func:`mibench_lib.byo.check_target`).
        QueryBudgetExceeded: the oracle's budget runs out.

    Example:
        >>> from mibench_lib.oracle import TargetOracle
        >>> from mibench_lib.testing import tiny_classifier
        >>> res = deepinversion_attack(TargetOracle(tiny_classifier()), torch.tensor([0, 3]),
        ...                            iterations=4, jitter=1, mean=0.5, std=0.5,
        ...                            rng=torch.Generator().manual_seed(0))
        >>> res.images.shape, res.queries, res.extras["bn_layers"]
        (torch.Size([2, 1, 8, 8]), 8, 2)
    """
    if not oracle.is_white_box:
        raise AccessDenied(
            f"deepinversion_attack needs the target's gradients and BatchNorm statistics "
            f"(a 'white-box' oracle), got access {oracle.access!r}"
        )
    check_labels(labels, oracle.num_classes)
    channels = oracle.input_shape[0]
    check_int("iterations", iterations, 1)
    check_int("warmup", warmup, 0)
    check_int("jitter", jitter, 0)
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    beta_pair = _betas(betas)
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    for name, value in (
        ("r_feature", r_feature),
        ("first_bn_multiplier", first_bn_multiplier),
        ("tv_l2", tv_l2),
        ("tv_l1", tv_l1),
        ("l2", l2),
        ("main_loss_multiplier", main_loss_multiplier),
    ):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    mean_t = _channel_stats("mean", mean, channels)
    std_t = _channel_stats("std", std, channels)
    if (std_t <= 0).any():
        raise ValueError(f"std must be positive, got {std!r}")
    check_target(oracle.module)  # before any work: no queries, no random state used
    bn = _BatchNormPrior(oracle.module)  # refuses BN layers without running statistics

    start_queries, t0 = oracle.queries, time.perf_counter()
    device = oracle.device
    n = labels.numel()
    y = labels.to(device)
    mean_t = mean_t.view(1, channels, 1, 1).to(device)
    std_t = std_t.view(1, channels, 1, 1).to(device)
    low, high = -mean_t / std_t, (1 - mean_t) / std_t  # the pixel range [0, 1], normalised

    # drawn on CPU for device-independence, then moved
    v = torch.randn(n, *oracle.input_shape, generator=rng).to(device).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr, betas=beta_pair, eps=1e-8)
    history: dict[str, list[float]] = {
        k: [] for k in ("loss", "ce", "r_feature", "tv_l2", "tv_l1", "l2", "lr")
    }
    best_v, best_loss, best_step = v.detach().clone(), math.inf, 0

    with eval_mode(oracle.module), bn.hooked():
        for step in range(iterations):
            lr_t = _learning_rate(step, lr, warmup, iterations, schedule)
            for group in opt.param_groups:
                group["lr"] = lr_t
            # one shift and one flip for the whole batch, applied before every loss
            dh, dw = torch.randint(-jitter, jitter + 1, (2,), generator=rng).tolist()
            coin = float(torch.rand((), generator=rng))  # drawn even when flip is off
            v_jit = torch.roll(v, shifts=(dh, dw), dims=(2, 3))
            if flip and coin > 0.5:
                v_jit = torch.flip(v_jit, dims=(3,))

            bn.reset()
            logits = oracle(v_jit * std_t + mean_t)  # the only forward pass: counted
            ce = F.cross_entropy(logits.float(), y)
            r_feat = bn.loss(first_bn_multiplier, like=ce)
            tv1, tv2 = _image_prior_losses(v_jit)
            norm2 = v_jit.flatten(1).norm(dim=1).mean()
            loss = (
                main_loss_multiplier * ce
                + r_feature * r_feat
                + tv_l2 * tv2
                + tv_l1 * tv1
                + l2 * norm2
            )
            # w.r.t. the pixels only: the target's parameters never accumulate gradients
            (grad,) = torch.autograd.grad(loss, v)

            value = float(loss.detach())
            if value < best_loss:  # the batch this loss was computed on, before its update
                best_v, best_loss, best_step = v.detach().clone(), value, step
            terms = {
                "loss": value,
                "ce": float(ce.detach()),
                "r_feature": float(r_feat.detach()),
                "tv_l2": float(tv2.detach()),
                "tv_l1": float(tv1.detach()),
                "l2": float(norm2.detach()),
                "lr": float(lr_t),
            }
            for key, item in terms.items():
                history[key].append(item)

            v.grad = grad
            opt.step()
            if clip:
                with torch.no_grad():
                    v.copy_(torch.minimum(torch.maximum(v, low), high))
            if on_step is not None and ((step + 1) % 10 == 0 or step + 1 == iterations):
                on_step(step + 1, iterations, terms)

    images = (best_v * std_t + mean_t).clamp(0.0, 1.0)
    losses = history.pop("loss")
    return InversionResult(
        attack="deepinversion",
        images=images.cpu(),
        labels=labels.cpu(),
        latents=None,
        losses=losses,
        queries=oracle.queries - start_queries,
        wall_time_s=time.perf_counter() - t0,
        extras={
            "best_step": best_step,
            "best_loss": best_loss,
            **history,
            "bn_layers": len(bn.layers),
        },
    )


def _betas(betas: object) -> tuple[float, float]:
    """``betas`` as a pair of floats in [0, 1) (a list from a parameter file is accepted)."""
    if (
        not isinstance(betas, Sequence)
        or isinstance(betas, str)
        or len(betas) != 2
        or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas)
    ):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    return float(betas[0]), float(betas[1])


def _channel_stats(name: str, value: object, channels: int) -> Tensor:
    """One number or ``channels`` numbers as a float tensor of ``channels`` values."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.full((channels,), float(value))
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    ):
        if len(value) != channels:
            raise ValueError(
                f"{name} must be a single number or one number per channel of the target "
                f"({channels}), got {len(value)}: {value!r}; pass the target's own "
                f"normalisation (e.g. {name}=0.5 for a target computing x * 2 - 1)"
            )
        out = torch.tensor([float(v) for v in value])
        if not torch.isfinite(out).all():
            raise ValueError(f"{name} must be finite, got {value!r}")
        return out
    raise ValueError(f"{name} must be a number or a sequence of numbers, got {value!r}")


def _learning_rate(step: int, lr: float, warmup: int, iterations: int, schedule: str) -> float:
    """Official ``utils.lr_cosine_policy(lr, warmup, iterations)`` at ``step``, or ``lr``."""
    if schedule == "constant":
        return lr
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (iterations - warmup))) * lr


def _image_prior_losses(v: Tensor) -> tuple[Tensor, Tensor]:
    """(TV_L1, TV_L2) of a batch: official ``get_image_prior_losses``, four directions.

    TV_L2 sums the Frobenius norms of the differences over the *whole batch*; TV_L1 sums their
    mean absolute values (the official ``(|d| / 255).mean() * 255``).
    """
    diffs = (
        v[:, :, :, :-1] - v[:, :, :, 1:],  # horizontal
        v[:, :, :-1, :] - v[:, :, 1:, :],  # vertical
        v[:, :, 1:, :-1] - v[:, :, :-1, 1:],  # anti-diagonal
        v[:, :, :-1, :-1] - v[:, :, 1:, 1:],  # diagonal
    )
    tv_l1 = sum((d.abs().mean() for d in diffs), v.new_zeros(()))
    tv_l2 = sum((d.norm() for d in diffs), v.new_zeros(()))
    return tv_l1, tv_l2


class _BatchNormPrior:
    """R_feature over a target's ``BatchNorm2d`` layers, read by forward hooks on their inputs.

    The hooks are registered only inside :meth:`hooked` and always removed on exit. They read the
    running statistics without changing them (the target runs in eval mode).
    """

    def __init__(self, module: nn.Module) -> None:
        self.layers: list[nn.BatchNorm2d] = []
        for name, layer in module.named_modules():
            if isinstance(layer, nn.BatchNorm2d):
                if layer.running_mean is None or layer.running_var is None:
                    raise ValueError(
                        f"BatchNorm2d layer {name!r} of the target has no running statistics "
                        "(track_running_stats=False): DeepInversion's BN prior compares each "
                        "layer's batch statistics with its running statistics"
                    )
                self.layers.append(layer)
        self._terms: list[Tensor | None] = [None] * len(self.layers)

    @contextmanager
    def hooked(self) -> Iterator[None]:
        handles = [
            layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, index: int) -> Callable[..., None]:
        def hook(layer: nn.BatchNorm2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0]  # the layer's input, not its (normalised) output
            mu = x.mean(dim=(0, 2, 3))
            var = x.var(dim=(0, 2, 3), correction=0)  # biased, over (N, H, W)
            self._terms[index] = torch.linalg.vector_norm(
                layer.running_var.detach() - var
            ) + torch.linalg.vector_norm(layer.running_mean.detach() - mu)

        return hook

    def reset(self) -> None:
        """Forget the previous forward pass's terms."""
        self._terms = [None] * len(self.layers)

    def loss(self, first_bn_multiplier: float, *, like: Tensor) -> Tensor:
        """Sum of the terms of the last forward pass, the first layer's times the multiplier."""
        total = like.new_zeros(())
        for i, term in enumerate(self._terms):
            if term is not None:
                total = total + (first_bn_multiplier if i == 0 else 1.0) * term.float()
        return total


#: What the study engine needs to know: access level (no public artifacts).
SPEC = AttackSpec(
    "deepinversion",
    deepinversion_attack,
    access="white-box",
    quick={"iterations": 3, "mean": 0.5, "std": 0.5},
)
