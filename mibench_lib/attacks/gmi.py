"""Generative model inversion (GMI): Zhang et al., "The Secret Revealer: Generative Model-Inversion
Attacks Against Deep Neural Networks", CVPR 2020, https://arxiv.org/abs/1911.07135.

Algorithm ("secret revelation"). A WGAN-GP generator ``G`` and critic ``D`` trained on public data
only act as a prior over natural images. For a target label ``y`` the attack searches the latent
space of ``G`` for

    z* = argmin_z  -D(G(z)) + lambda_iden * CE(T(G(z)), y)

where the first term is the prior loss (the raw, unbounded critic score) and the second the
identity loss on the white-box target ``T``. The search is gradient descent with Nesterov momentum,
and ``z`` is clamped to ``[-clip, clip]`` after every step. It starts from ``restarts`` random
draws ``z ~ N(0, I)`` per label; for each label the restart whose final image gets the highest
target logit for ``y`` is kept.

Relation to the official code (``Celeba/attack.py`` and ``MNIST/attack.py`` of the authors'
repository; the two ``inversion`` functions differ only in the defaults below and the selection):

- The hand-written Nesterov rule there (``v <- m v - lr g``; ``z <- z - m v_prev + (1 + m) v``)
  is algebraically the update of ``torch.optim.SGD(momentum=m, nesterov=True)``, which is used here.
- Step scaling. Both scripts minimise the batch **mean** of the prior loss and of the
  cross-entropy over one batch of identities (one latent each, restarts run one after another),
  so each latent receives ``1 / B`` of its own loss gradient, ``B`` being that batch's size. The
  CelebA script attacks ``B = 100`` identities (0..99) at ``lr = 0.02``; the MNIST script attacks
  ``B = 5`` digits (5..9) at ``lr = 0.01``. The per-latent step coefficient ``lr / B`` is thus
  ``2e-4`` on CelebA and ``2e-3`` on MNIST, ten times larger. Here the per-latent losses are
  summed and divided by the fixed ``loss_divisor``, so with ``(lr, loss_divisor)`` set to one
  script's ``(lr, B)`` (:data:`OFFICIAL_SCALING`) every latent takes exactly that script's step,
  whatever the size of this run's batch (labels times restarts, all restarts batched together).
  A ``"mean"`` over this run's own batch would instead shrink the step as labels, repeats or
  batched restarts are added. The function defaults are the CelebA script's.
- The official restarts are five sequential runs seeded 0..4; here all restarts run in one batch,
  drawn from ``rng`` (or given as ``start_latents``).
- The official selection compares ``score[i, i]`` (row index used as the class, right only for
  labels 0..99 in order) against a running best that starts at 0 (so a restart whose logits are all
  negative is never kept). Here each entry keeps the restart with the largest logit of its own
  label.
- The official "Acc5" counts a label as recovered if any restart succeeds; ``select="all"`` returns
  every restart (with the best one marked) so that a study can report either number.

Other identity losses. ``identity_loss`` replaces the cross-entropy by any per-image loss that
the caller computes from the images and their labels (it queries the oracle itself, so its
queries are counted); the prior term, the optimiser, the clamp, the step scaling and the
selection on the target's logit stay GMI's. LOMMA (:mod:`mibench_lib.attacks.lomma`) plugs in
its logit loss, feature regulariser and surrogate models this way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib._checks import check_labels, check_start_latents
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec
from mibench_lib.byo import check_critic, check_generator, check_target
from mibench_lib.generators.base import Generator
from mibench_lib.oracle import AccessDenied, TargetOracle

#: ``lr`` and ``loss_divisor`` reproducing each official script's per-latent step: the script's
#: learning rate and the number of identities in the batch whose mean loss it minimises
#: (``Celeba/attack.py``: 100 identities at 0.02; ``MNIST/attack.py``: 5 digits at 0.01).
OFFICIAL_SCALING: dict[str, dict[str, float | int]] = {
    "celeba": {"lr": 0.02, "loss_divisor": 100},
    "mnist": {"lr": 0.01, "loss_divisor": 5},
}

#: Per-image identity loss ``identity_loss(images, labels) -> (M,)`` (see :func:`gmi_attack`).
IdentityLoss = Callable[[Tensor, Tensor], Tensor]

__all__ = ["IdentityLoss", "gmi_attack"]


def gmi_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    generator: Generator,
    discriminator: nn.Module,
    steps: int = 1500,
    lr: float = 0.02,
    loss_divisor: int = 100,
    momentum: float = 0.9,
    lambda_iden: float = 100.0,
    restarts: int = 5,
    clip: float = 1.0,
    select: Literal["best", "all"] = "best",
    batch_size: int | None = None,
    start_latents: Tensor | None = None,
    identity_loss: IdentityLoss | None = None,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """Invert ``labels`` by searching the latent space of a public GAN with the target's gradients.

    All ``len(labels) * restarts`` latents are optimised together in one batch, or in consecutive
    chunks of ``batch_size`` latents (each chunk runs all ``steps``). Every latent's update depends
    only on its own loss (see ``loss_divisor``), so chunking changes memory, not the search.
    Latents are laid out restart-major: latent ``r * N + i`` is restart ``r`` of entry ``i``.

    The target, the generator and the critic are checked first against the contracts of
    :mod:`mibench_lib.byo` (one forward pass each on a tiny batch, not counted as queries and
    leaving every random state as it was), so a wrong model fails before the search with an
    error that says how to fix it.

    Args:
        oracle: White-box oracle of the target, (M, C, H, W) in [0, 1] -> (M, K) logits.
        labels: (N,) int64 class ids in ``[0, K)``; repeats allowed (one reconstruction each).
        generator: Public-data GAN generator on the oracle's device, (M, latent_dim) ->
            (M, C, H, W) in [0, 1], with a ``latent_dim`` attribute (see
            :func:`mibench_lib.byo.as_generator`). Run in eval mode, never updated.
        discriminator: Its WGAN critic on the same device, (M, C, H, W) in [0, 1] -> (M,) raw
            scores (see :func:`mibench_lib.byo.as_critic`). Run in eval mode, never updated.
        steps: Optimisation steps (official 1500; 0 keeps the initial draws).
        lr: Learning rate (CelebA script 0.02, MNIST script 0.01; see :data:`OFFICIAL_SCALING`).
        loss_divisor: The per-latent losses are summed and divided by this number before the
            gradient, so each latent moves by ``lr / loss_divisor`` times its own loss gradient
            (through the momentum). Set it to the number of identities in the official batch of
            the setting you reproduce: 100 for the CelebA script (default), 5 for the MNIST
            script, whose mean losses divide by that batch.
        momentum: Nesterov momentum in (0, 1).
        lambda_iden: Weight of the identity (cross-entropy) loss against the prior loss.
        restarts: Random starts per label entry (official 5).
        clip: Latents are clamped to ``[-clip, clip]`` after every step (official 1).
        select: ``"best"`` returns, per entry, the restart with the highest target logit for its
            label (N images). ``"all"`` returns all ``N * restarts`` images, restart-major, with
            labels repeated and ``extras["selected"]`` marking each entry's best restart.
        batch_size: Most latents put through G, D and the target at once; ``None``: all of them
            (fastest on a CPU). Large face configurations (thousands of identities x restarts)
            set it to fit GPU memory.
        start_latents: Start points of the search instead of random draws:
            ``(restarts, N, latent_dim)``, entry ``[r, i]`` being restart ``r`` of label entry
            ``i``; with ``restarts=1`` an ``(N, latent_dim)`` tensor is accepted too. Float32
            (torch's default dtype, as the draws), finite, on any device; copied, never
            modified. Like the draws they are not clamped before the first step. ``None``
            (default) draws them from ``rng``; passing
            ``torch.randn(restarts, N, latent_dim, generator=rng)`` gives exactly the default
            search.
        identity_loss: The identity term of the search. ``None`` (default): GMI's per-latent
            cross-entropy ``CE(oracle(G(z)), y)``. Otherwise a callable
            ``identity_loss(images, labels) -> (M,)`` giving each image's identity loss, for the
            (M, C, H, W) images of the current chunk and their (M,) labels (on the oracle's
            device); the search then minimises ``-D(G(z)) + lambda_iden * identity_loss``. It
            must reach the target only through the oracle (``oracle(images)``, so that its
            queries are counted in ``queries``) and keep the autograd graph to ``images``. The
            final selection still ranks restarts by the target's logit of the label.
        rng: CPU generator for the initial latents (moved to the oracle's device afterwards);
            unused when ``start_latents`` is given.
        on_step: Progress hook ``on_step(step, steps, info)``, called every 10 steps and at the
            last one, with the mean total, prior and identity losses (of the current chunk).

    Returns:
        InversionResult with images (N or N * restarts, C, H, W) on the CPU in [0, 1], their labels,
        the final latents, ``losses`` (mean per-latent loss ``-D + lambda_iden * CE`` at each step,
        before the update; ``identity_loss`` in place of ``CE`` when given), ``queries`` (images
        sent to the oracle: ``(steps + 1) * N * restarts``, the last batch being the selection
        pass, plus whatever else a given ``identity_loss`` queries) and ``extras``:

        - ``"target_prob"``: (M,) target probability of the label for each returned image;
        - ``"target_logit"``: (M,) target logit of the label (the selection score);
        - ``"restart"``: (M,) restart index of each returned image;
        - ``"selected"``: (M,) bool, True for the best restart of each entry (all True for
          ``select="best"``).

    Raises:
        AccessDenied: the oracle is not white-box (GMI needs the target's gradients).
        ValueError: bad labels, a non-positive ``lr``/``loss_divisor``/``clip``/``restarts``,
            ``momentum`` outside
            (0, 1), negative ``steps``/``lambda_iden``, an unknown ``select``, ``start_latents``
            of the wrong shape or dtype, an ``identity_loss`` that is not callable or does not
            return one loss per image, or a target, generator or discriminator that breaks its
            contract (:mod:`mibench_lib.byo`; e.g. a critic that does not return one score per
            image, or a generator whose images are not the target's input shape in [0, 1]).
        TypeError: a target or generator without its attributes (``num_classes`` and
            ``input_shape``; ``latent_dim``).
        QueryBudgetExceeded: the oracle's budget runs out.

    Example:
        >>> from mibench_lib.oracle import TargetOracle
        >>> from mibench_lib.testing import tiny_classifier, tiny_discriminator, tiny_generator
        >>> res = gmi_attack(TargetOracle(tiny_classifier()), torch.tensor([0, 3]),
        ...                  generator=tiny_generator(), discriminator=tiny_discriminator(),
        ...                  steps=2, restarts=2, rng=torch.Generator().manual_seed(0))
        >>> res.images.shape, res.queries
        (torch.Size([2, 1, 8, 8]), 12)
    """
    if not oracle.is_white_box:
        raise AccessDenied(
            f"gmi_attack needs the target's gradients (a 'white-box' oracle), got access "
            f"{oracle.access!r}"
        )
    check_labels(labels, oracle.num_classes)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if loss_divisor <= 0:
        raise ValueError(f"loss_divisor must be positive, got {loss_divisor}")
    if not 0 < momentum < 1:
        raise ValueError(f"momentum must lie in (0, 1) for Nesterov momentum, got {momentum}")
    if lambda_iden < 0:
        raise ValueError(f"lambda_iden must be >= 0, got {lambda_iden}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if clip <= 0:
        raise ValueError(f"clip must be positive, got {clip}")
    if select not in ("best", "all"):
        raise ValueError(f"select must be 'best' or 'all', got {select!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if identity_loss is not None and not callable(identity_loss):
        raise ValueError(
            f"identity_loss must be None or a callable (images, labels) -> per-image losses, "
            f"got {type(identity_loss).__name__}"
        )
    # Every network against its contract before any work (no queries, no random draws used).
    check_target(oracle.module)
    check_generator(generator, image_shape=oracle.input_shape)
    check_critic(discriminator, image_shape=oracle.input_shape)
    n, dim = labels.numel(), generator.latent_dim
    given = None if start_latents is None else _given_starts(start_latents, restarts, n, dim)

    start_queries, t0 = oracle.queries, time.perf_counter()
    device = oracle.device
    y = labels.repeat(restarts).to(device)  # restart-major, matching z below
    # drawn on CPU for device-independence
    z_init = torch.randn(restarts * n, dim, generator=rng) if given is None else given
    m = restarts * n
    chunk = m if batch_size is None else batch_size
    loss_sums = torch.zeros(steps, dtype=torch.float64)
    finals: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    with eval_mode(generator, discriminator, oracle.module):
        for lo in range(0, m, chunk):
            part = slice(lo, min(m, lo + chunk))
            finals.append(
                _search(
                    oracle,
                    generator,
                    discriminator,
                    z_init[part].to(device),
                    y[part],
                    loss_sums,
                    steps=steps,
                    lr=lr,
                    loss_divisor=loss_divisor,
                    momentum=momentum,
                    lambda_iden=lambda_iden,
                    clip=clip,
                    identity_loss=identity_loss,
                    on_step=on_step,
                )
            )
    z, images, score, prob = (torch.cat(parts) for parts in zip(*finals, strict=True))
    losses = (loss_sums / m).tolist()

    best = score.view(restarts, n).argmax(dim=0)  # (N,) best restart per entry
    restart = torch.arange(restarts, device=device).repeat_interleave(n)
    selected = restart == best.repeat(restarts)
    if select == "best":
        keep = best * n + torch.arange(n, device=device)
        images, z, y, score, prob, restart = (t[keep] for t in (images, z, y, score, prob, restart))
        selected = torch.ones(n, dtype=torch.bool, device=device)

    return InversionResult(
        attack="gmi",
        images=images.cpu(),
        labels=y.cpu(),
        latents=z.cpu(),
        losses=losses,
        queries=oracle.queries - start_queries,
        wall_time_s=time.perf_counter() - t0,
        extras={
            "target_prob": prob.cpu(),
            "target_logit": score.cpu(),
            "restart": restart.cpu(),
            "selected": selected.cpu(),
        },
    )


def _given_starts(start_latents: Tensor, restarts: int, n: int, dim: int) -> Tensor:
    """``start_latents`` checked and copied to the restart-major (restarts * n, dim) layout."""
    shape = tuple(getattr(start_latents, "shape", ()))
    if shape == (n, dim) and restarts != 1:
        raise ValueError(
            f"start_latents of shape (N, latent_dim) = {shape} need restarts=1, got "
            f"restarts={restarts}; pass shape (restarts, N, latent_dim) = ({restarts}, {n}, {dim})"
        )
    start_latents = check_start_latents(
        start_latents,
        [(restarts, n, dim), (n, dim)],
        f"(restarts, N, latent_dim) = ({restarts}, {n}, {dim}) (or (N, latent_dim) = ({n}, {dim})"
        " with restarts=1)",
    )
    # a copy: the search updates its latents in place
    return start_latents.detach().reshape(restarts * n, dim).clone()


def _search(
    oracle: TargetOracle,
    generator: Generator,
    discriminator: nn.Module,
    z0: Tensor,
    y: Tensor,
    loss_sums: Tensor,
    *,
    steps: int,
    lr: float,
    loss_divisor: float,
    momentum: float,
    lambda_iden: float,
    clip: float,
    identity_loss: IdentityLoss | None,
    on_step: StepCallback | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Optimise one chunk of latents; add each step's summed loss to ``loss_sums``.

    Returns the final (latents, images, label logits, label probabilities) of the chunk.
    """
    z = z0.requires_grad_(True)
    opt = torch.optim.SGD([z], lr=lr, momentum=momentum, nesterov=True)
    for step in range(steps):
        images = generator(z)
        critic = discriminator(images)
        if critic.shape != (z.shape[0],):
            raise ValueError(
                f"discriminator must return one score per image, shape ({z.shape[0]},), "
                f"got {tuple(critic.shape)}"
            )
        prior = -critic
        if identity_loss is None:
            iden = F.cross_entropy(oracle(images), y, reduction="none")
        else:
            iden = identity_loss(images, y)
            if not isinstance(iden, Tensor) or iden.shape != (z.shape[0],):
                raise ValueError(
                    f"identity_loss must return one loss per image, shape ({z.shape[0]},), got "
                    f"{tuple(iden.shape) if isinstance(iden, Tensor) else type(iden).__name__}"
                )
        per_latent = prior + lambda_iden * iden
        # Sum, not mean: a latent's gradient must not depend on how many latents share the
        # batch. The fixed divisor reproduces the official script's per-latent step.
        # autograd.grad w.r.t. z only: frozen networks never accumulate parameter gradients.
        (grad,) = torch.autograd.grad(per_latent.sum() / loss_divisor, z)
        z.grad = grad
        opt.step()
        with torch.no_grad():
            z.clamp_(-clip, clip)
        loss_sums[step] += float(per_latent.detach().double().sum())
        if on_step is not None and ((step + 1) % 10 == 0 or step + 1 == steps):
            on_step(
                step + 1,
                steps,
                {
                    "loss": float(per_latent.detach().mean()),
                    "prior_loss": float(prior.detach().mean()),
                    "iden_loss": float(iden.detach().mean()),
                },
            )

    with torch.no_grad():
        z = z.detach()
        images = generator(z)
        logits = oracle(images).float()  # the selection pass: counted as queries
        score = logits.gather(1, y[:, None]).squeeze(1)
        prob = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    return z, images, score, prob


#: What the study engine needs to know: access level and public artifacts.
SPEC = AttackSpec(
    "gmi",
    gmi_attack,
    access="white-box",
    needs=("generator", "discriminator"),
    quick={"steps": 3, "restarts": 2},
)
