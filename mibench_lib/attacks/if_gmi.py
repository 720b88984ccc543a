"""Intermediate-feature GMI (IF-GMI): Qiu, Fang, Yu, Chen, Qiu and Xia, "A Closer Look at GAN
Priors: Exploiting Intermediate Features for Enhanced Model Inversion Attacks", ECCV 2024,
https://arxiv.org/abs/2407.13863.

Algorithm. A GAN trained on public data is split into its synthesis stages: the *stem* (layer 0,
which reads only the latent ``w``) and the blocks ``blocks[0..B-1]`` (layers 1..B). IF-GMI does not
stay in the latent space: it walks down the generator, stage by stage, and from stage 1 on
optimises the generator's intermediate features themselves, each time inside an L1 ball around
where the stage started, so that the image can leave the generator's range a little while the
earlier stages keep it near the prior.

1. **Initial selection** (inherited from PPA, Struppek et al., ICML 2022). ``pool`` latents
   ``z ~ N(0, I)`` are drawn and rendered; each is scored, for every class, by the target's
   softmax probability averaged over two views, the image and its horizontal flip. For every
   label entry the ``samples`` highest-scoring latents of its label are kept, best first, without
   replacement: a repeated label takes the next best ones, as in the official loop over the
   target vector (a latent may serve several different labels).
2. **Stage 0** optimises ``w = mapping(z)`` through the whole synthesis.
3. **Stage k >= 1** first computes, with the current ``w`` (and the stage k-1 feature), the output
   of layer ``k - 1`` (the stem for k = 1, ``blocks[k-2]`` after), then makes it a free tensor
   ``f`` optimised **jointly** with ``w`` through ``blocks[k-1:]``. Layer ``k - 1``'s own input
   is no longer optimised. The last possible stage, ``B``, optimises the input of the last
   block.
4. Each stage builds a **fresh** Adam over its tensors and runs ``steps[k]`` steps. Its loss is
   the sum over samples of the **Poincare loss** (PPA) of the target's logits on a randomly
   cropped copy of the images. After every step, ``w - w_k`` and ``f - f_k`` (``w_k``, ``f_k``
   the values at the stage's start) are projected, per sample and over the whole flattened
   tensor, onto the L1 ball of radius ``radii_w[k]`` and ``radii_features[k]`` (Duchi et al.'s
   sort-based Euclidean projection).
5. The images of the **last** stage are returned (see the deviations for the official choice).

Poincare loss (PPA's ``losses/poincare.py``): with ``u = logits / ||logits||_1`` and
``v = clip(onehot(y) - xi, 0, 1)`` (``xi = 1e-4``),
``d(u, v) = arccosh(1 + 2 ||u - v||^2 / ((1 - ||u||^2) (1 - ||v||^2)))``. It is invariant to a
positive rescaling of the logits and falls as the label's logit grows against the others.

Random transform. One ``RandomResizedCrop`` per step, shared by the whole batch as torchvision
draws it for a batch tensor: a square crop whose area is a fraction ``U(crop_scale)`` of the
image (official ``(0.9, 1.0)``, ratio 1), at a uniform position, resized back to the image size
with bilinear interpolation (``antialias=True``, ``align_corners=False``). All crops are drawn
from ``rng`` before the search, so chunking the batch (``batch_size``) does not change them.

Relation to the official code (final-solution/IF-GMI: ``attacks/optimize.py``,
``attacks/initial_selection.py``, ``utils/stylegan.py``, ``losses/poincare.py``, the configs
``configs/ffhq_celeba/*.yaml``); defaults are the FFHQ -> CelebA configuration's
(:data:`OFFICIAL_SETTINGS` lists the others):

- **Generator.** The official prior is a StyleGAN2 whose blocks all read ``w`` (one 512-d vector
  repeated over the layers, ``single_w``) and whose mapping applies truncation (psi 0.5, cutoff 8)
  to the candidates. Here any :class:`~mibench_lib.generators.base.Generator` works: its
  ``mapping`` (identity for the DCGAN prior), its stem as StyleGAN's first block ``b4`` (which
  also reads only ``w``) and its ``blocks`` as the later ones. No truncation: a DCGAN has no
  average latent. With the base class's ``synthesize``, only the stem reads ``w``, so from stage 1
  on ``w`` receives no gradient and stays where stage 0 left it (Adam moves a parameter with zero
  gradient by exactly 0); the joint optimisation matters for generators whose blocks read ``w``.
  ``result.latents`` is then the stage 0 latent, and a later stage's image is *not*
  ``generator(latents)``.
- **Stages.** ``len(steps)`` stages, at most ``num_blocks + 1`` (the official code refuses to go
  past its end layer too). A generator without blocks (a plain module behind
  :func:`mibench_lib.byo.as_generator` with images already in [0, 1]) runs stage 0 only
  (``steps`` of length 1): a PPA-style latent search without final selection. The official
  FFHQ -> CelebA default of 5 stages needs 4 blocks (the DCGAN prior at 64 px); a 32 px DCGAN
  (3 blocks) takes at most 4 stages, e.g. ``steps=(70, 25, 25, 25)``.
- **Radii** are in absolute L1 units of each tensor (the official values were set for StyleGAN's
  512-d ``w`` and its features). A radius of ``math.inf`` disables a projection; the official
  configs use ``0`` for that, which is refused here (it reads as "no movement"). As officially,
  stage 0 projects ``w`` with ``radii_w[0]`` and ``radii_features[0]`` is unused. Adam with
  ``lr`` 0.005 moves a coordinate by at most about ``lr`` per step, so a ball binds only when
  ``lr * steps[k] * numel`` exceeds its radius; with the official radii it seldom does on small
  generators (the per-stage largest ``||delta||_1`` are reported in ``extras``).
- **Transforms.** StyleGAN's 1024 px faces are first center-cropped to 800 and resized to 224
  (in the selection and before every query); these face-specific steps are skipped, and the
  crop works at the target's own resolution. The selection's clip to [-1, 1] is the
  generator's own [0, 1] range here, and the images are not clipped during the search (official
  ``clip: false``). The official crops come from torch's global generator; here from ``rng``
  (one scale draw and, when the crop is smaller than the image, two offset draws per step, up to
  10 attempts as torchvision's, then its center-crop fallback).
- **Loss scaling.** The official loss is the *mean* Poincare loss over the batch on the GPUs
  (4 or 5 per GPU in the configs); here the per-sample losses are *summed*, so every sample's update
  depends on its own loss only, whatever the batch or chunk size. Adam's update does not depend
  on the loss scale except through its ``eps`` (1e-8), so this is the official search.
- **Reported images.** The official script keeps each stage's images from the *start* of its
  last step (before the last update) and reports the stage with the best accuracy of the
  *evaluation* model: a selection by the evaluator, which is optimistic. Here each stage's images
  are rendered from its final tensors, the last stage's are returned, and
  ``keep_stages=True`` returns every stage's images too (so a study can show the progression,
  or pick a stage with the target only).
- The official config key ``attack.num_epochs`` is never read there and has no counterpart.
- Protocol: the official scripts attack every class with 50 samples each; here the caller's
  ``labels`` (each entry gets ``samples`` images, all returned, none selected afterwards).
- The official pool is drawn with NumPy's ``RandomState(seed)``; here from ``rng``, first of
  all draws (``torch.randn(pool, latent_dim, generator=rng)``), then the crops.
- Gradients are taken with respect to the search tensors only (``torch.autograd.grad``), so the
  frozen networks never accumulate parameter gradients; the generator and the target run in eval
  mode (BatchNorm statistics read, never updated).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mibench_lib._checks import check_int, check_labels
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec
from mibench_lib.byo import check_generator, check_target
from mibench_lib.generators.base import Generator
from mibench_lib.oracle import AccessDenied, TargetOracle

__all__ = [
    "OFFICIAL_RADII",
    "OFFICIAL_SETTINGS",
    "if_gmi_attack",
    "poincare_loss",
    "project_l1_ball",
]

#: The official radii (``max_radius_w`` and ``max_radius_mid_vecor``), one per stage.
OFFICIAL_RADII: tuple[float, ...] = (1000, 2000, 3000, 4000, 5000, 6000, 8000, 8000)

#: Keyword arguments of the official configurations (``configs/<prior>_<target data>/*.yaml``);
#: the others (radii, betas (0.1, 0.1), 50 samples) are shared. Their stage counts assume
#: StyleGAN2's 9 synthesis blocks: a generator with fewer blocks takes a shorter ``steps``.
#: ``"ffhq_celeba"`` equals the defaults.
OFFICIAL_SETTINGS: dict[str, dict[str, Any]] = {
    "ffhq_celeba": {"steps": (70, 25, 25, 25, 25), "pool": 5000, "lr": 0.005},
    "metfaces_celeba": {"steps": (70,) + (25,) * 7, "pool": 5000, "lr": 0.005},
    # FFHQ and MetFaces priors alike
    "facescrub": {"steps": (50,) + (10,) * 7, "pool": 2000, "lr": 0.005},
    # no center crop there, a wider crop range and a larger step
    "afhq_stanford_dogs": {
        "steps": (100,) + (10,) * 6,
        "pool": 2000,
        "lr": 0.01,
        "crop_scale": (0.75, 1.0),
    },
}

#: PPA's offset of the one-hot target away from the boundary of the Poincare ball.
_XI = 1e-4

#: torchvision's ``RandomResizedCrop`` tries this many draws before its center-crop fallback.
_CROP_ATTEMPTS = 10


def if_gmi_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    generator: Generator,
    steps: Sequence[int] = (70, 25, 25, 25, 25),
    radii_w: Sequence[float] = OFFICIAL_RADII,
    radii_features: Sequence[float] = OFFICIAL_RADII,
    lr: float = 0.005,
    betas: Sequence[float] = (0.1, 0.1),
    pool: int = 5000,
    samples: int = 50,
    crop_scale: Sequence[float] = (0.9, 1.0),
    keep_stages: bool = False,
    batch_size: int | None = None,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """Invert ``labels`` by optimising a GAN's latent, then its intermediate features, stage by stage.

    All ``samples * len(labels)`` searches run together in one batch, or in consecutive chunks
    of ``batch_size`` (each chunk runs every stage). A sample's update depends only on its own
    loss and the crops are shared by all chunks, so chunking changes memory, not the search.
    Samples are laid out sample-major: sample ``s`` of entry ``i`` is row ``s * N + i``.

    The target and the generator are checked first against the contracts of
    :mod:`mibench_lib.byo` (one forward pass each on a tiny batch, not counted as queries and
    leaving every random state as it was), so a wrong model fails before the first query.

    Args:
        oracle: White-box oracle of the target, (M, C, H, W) in [0, 1] -> (M, K) logits.
        labels: (N,) int64 class ids in ``[0, K)``; repeats allowed (each entry gets its own
            ``samples`` starts: the next best of the pool).
        generator: Public-data :class:`~mibench_lib.generators.base.Generator` on the oracle's
            device (images in [0, 1] of the target's input shape), with ``mapping``, ``stem``,
            ``blocks`` and ``synthesize``; run in eval mode, never updated.
        steps: Adam steps of each stage; its length is the number of stages, at most
            ``generator.num_blocks + 1`` (official FFHQ -> CelebA ``(70, 25, 25, 25, 25)``;
            FaceScrub ``(50, 10, ...)`` over 8 stages). Entries >= 0.
        radii_w: L1 radius around its stage-start value that ``w`` is projected into after every
            step of each stage (official ``(1000, 2000, ..., 8000, 8000)``); at least one entry
            per stage, each positive, ``math.inf`` for none.
        radii_features: The same for the free feature of stages >= 1 (entry 0 is unused).
        lr: Adam's learning rate (official 0.005).
        betas: Adam's ``(beta1, beta2)`` in [0, 1) (official ``(0.1, 0.1)``).
        pool: Latents drawn and scored for the initial selection (official 5000 on CelebA, 2000
            on FaceScrub); at least ``samples`` times the most frequent label's count.
        samples: Searches (and images) per label entry (official 50).
        crop_scale: ``(low, high)`` range, within (0, 1], of the area fraction of each step's
            random square crop (official ``(0.9, 1.0)``; AFHQ -> Stanford Dogs ``(0.75, 1.0)``).
        keep_stages: Also return every stage's images in ``extras["stage_images"]``.
        batch_size: Most samples rendered and sent to the target at once (the selection sends
            two views of each, so twice as many images); ``None``: all of them.
        rng: CPU generator for the pool and the crops (the pool is moved to the oracle's
            device); ``None`` uses torch's global generator.
        on_step: Progress hook ``on_step(step, total, info)`` with ``total = sum(steps)``, called
            every 10 steps and at the last step of every stage, with the stage, the mean
            Poincare loss and label probability of the step's (cropped) images, and the largest
            ``||delta||_1`` of ``w`` and of the feature after the step's projection (of the
            current chunk).

    Returns:
        InversionResult with images ``(samples * N, C, H, W)`` on the CPU in [0, 1] (the last
        stage's), their labels, ``latents`` (the final ``w``), ``losses`` (mean Poincare loss of
        each step over all samples, stages one after another), ``queries`` (exactly
        ``2 * pool + sum(steps) * samples * N``) and ``extras``:

        - ``"sample"``: (M,) sample index of each row;
        - ``"pool_index"``: (M,) index into the pool of each row's start latent;
        - ``"initial_score"``: (M,) its two-view selection score for its label;
        - ``"steps"``: the steps of each stage (to split ``losses``);
        - ``"w_l1"``, ``"feature_l1"``: per stage, the largest ``||delta||_1`` of ``w`` and of
          the feature over all samples at the stage's end (``feature_l1[0]`` is 0);
        - ``"stage_images"`` (with ``keep_stages``): one (M, C, H, W) CPU tensor per stage.

    Raises:
        AccessDenied: the oracle is not white-box (IF-GMI needs the target's gradients).
        ValueError: bad labels, ``steps`` longer than the generator allows or with a negative
            entry, too few or non-positive radii, a non-positive ``lr``, bad ``betas`` or
            ``crop_scale``, a ``pool`` too small for ``samples``, ``samples`` or ``batch_size``
            < 1, or a target or generator that breaks its contract (:mod:`mibench_lib.byo`).
        TypeError: a target or generator without its attributes, or a generator that is not a
            :class:`~mibench_lib.generators.base.Generator` (wrap a plain module with
            :func:`mibench_lib.byo.as_generator`).
        QueryBudgetExceeded: the oracle's budget runs out.

    Example:
        >>> from mibench_lib.oracle import TargetOracle
        >>> from mibench_lib.testing import tiny_classifier, tiny_generator
        >>> res = if_gmi_attack(TargetOracle(tiny_classifier()), torch.tensor([0, 3]),
        ...                     generator=tiny_generator(), steps=(3, 2, 2), pool=16, samples=2,
        ...                     rng=torch.Generator().manual_seed(0))
        >>> res.images.shape, res.queries, res.labels.tolist()
        (torch.Size([4, 1, 8, 8]), 60, [0, 3, 0, 3])
    """
    if not oracle.is_white_box:
        raise AccessDenied(
            f"if_gmi_attack needs the target's gradients (a 'white-box' oracle), got access "
            f"{oracle.access!r}"
        )
    check_labels(labels, oracle.num_classes)
    stage_steps = _int_list("steps", steps, 0)
    if not stage_steps:
        raise ValueError("steps must list at least one stage, got an empty sequence")
    r_w = _radii("radii_w", radii_w, len(stage_steps))
    r_f = _radii("radii_features", radii_features, len(stage_steps))
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    beta_pair = _pair("betas", betas, lambda b: 0 <= b < 1, "two numbers in [0, 1)")
    scale = _pair("crop_scale", crop_scale, lambda s: 0 < s <= 1, "two numbers in (0, 1]")
    if scale[0] > scale[1]:
        raise ValueError(f"crop_scale must be (low, high) with low <= high, got {crop_scale!r}")
    check_int("pool", pool, 1)
    check_int("samples", samples, 1)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    most = int(labels.bincount().max())
    if pool < most * samples:
        raise ValueError(
            f"pool must hold samples x the most frequent label's count = {samples} x {most} = "
            f"{most * samples} distinct starts, got pool={pool}"
        )
    # Every network against its contract before any work (no queries, no random draws used).
    check_target(oracle.module)
    check_generator(generator, image_shape=oracle.input_shape)
    if not isinstance(generator, Generator):
        raise TypeError(
            f"if_gmi_attack optimises a generator's intermediate features, so it needs a "
            f"mibench_lib.generators.base.Generator (stem, blocks, synthesize), got "
            f"{type(generator).__name__}; wrap a plain module with mibench_lib.byo.as_generator "
            "(its stem and at most one block allow 1 or 2 stages)"
        )
    if len(stage_steps) > generator.num_blocks + 1:
        most_stages = generator.num_blocks + 1
        raise ValueError(
            f"steps has {len(stage_steps)} stages but the generator has "
            f"{generator.num_blocks} blocks, so at most {most_stages} stages (0 optimises the "
            f"latent, k >= 1 the input of block k - 1): pass e.g. steps="
            f"{tuple(stage_steps[:most_stages])}"
        )

    start_queries, t0 = oracle.queries, time.perf_counter()
    device = oracle.device
    n, m = labels.numel(), labels.numel() * samples
    chunk = m if batch_size is None else batch_size
    # All draws on the CPU, in a fixed order: the pool, then every step's crop.
    z_pool = torch.randn(pool, generator.latent_dim, generator=rng)
    crops = [_draw_crop(oracle.input_shape[1:], scale, rng) for _ in range(sum(stage_steps))]

    with eval_mode(generator, oracle.module):
        pick, score = _initial_selection(oracle, generator, z_pool, labels, samples, batch_size)
        y = labels.repeat(samples).to(device)  # sample-major, matching pick
        loss_sums = torch.zeros(sum(stage_steps), dtype=torch.float64)
        parts = []
        for lo in range(0, m, chunk):
            rows = slice(lo, min(m, lo + chunk))
            with torch.no_grad():
                w0 = generator.mapping(z_pool[pick[rows]].to(device))
            parts.append(
                _search(
                    oracle,
                    generator,
                    w0,
                    y[rows],
                    loss_sums,
                    crops=crops,
                    steps=stage_steps,
                    radii_w=r_w,
                    radii_features=r_f,
                    lr=float(lr),
                    betas=beta_pair,
                    keep_stages=keep_stages,
                    on_step=on_step,
                )
            )

    w = torch.cat([p[0] for p in parts])
    stage_images = [torch.cat(s) for s in zip(*(p[1] for p in parts), strict=True)]
    w_l1 = [max(s) for s in zip(*(p[2] for p in parts), strict=True)]
    f_l1 = [max(s) for s in zip(*(p[3] for p in parts), strict=True)]
    extras = {
        "sample": torch.arange(samples).repeat_interleave(n),
        "pool_index": pick,
        "initial_score": score,
        "steps": stage_steps,
        "w_l1": w_l1,
        "feature_l1": f_l1,
    }
    if keep_stages:
        extras["stage_images"] = stage_images
    return InversionResult(
        attack="if_gmi",
        images=stage_images[-1],
        labels=y.cpu(),
        latents=w.cpu(),
        losses=(loss_sums / m).tolist(),
        queries=oracle.queries - start_queries,
        wall_time_s=time.perf_counter() - t0,
        extras=extras,
    )


def poincare_loss(logits: Tensor, labels: Tensor, xi: float = _XI) -> Tensor:
    """PPA's Poincare loss of each row: hyperbolic distance of the L1-normalised logits to the label.

    ``u = logits / ||logits||_1``, ``v = clip(onehot(y) - xi, 0, 1)`` and
    ``d = arccosh(1 + 2 ||u - v||^2 / ((1 - ||u||^2) (1 - ||v||^2)))``.

    Args:
        logits: (M, K) raw target scores.
        labels: (M,) int64 class ids.
        xi: Offset keeping the one-hot target inside the unit ball (official 1e-4).

    Returns:
        (M,) distances (not reduced).

    Example:
        >>> logits = torch.tensor([[4.0, 1.0, -1.0], [1.0, 4.0, -1.0]])
        >>> d = poincare_loss(logits, torch.tensor([0, 0]))
        >>> bool(d[0] < d[1]), torch.allclose(d, poincare_loss(3 * logits, torch.tensor([0, 0])))
        (True, True)
    """
    u = logits / logits.abs().sum(dim=1, keepdim=True)
    v = (F.one_hot(labels, logits.shape[1]).to(u.dtype) - xi).clamp(0, 1)
    u2, v2 = u.pow(2).sum(dim=1), v.pow(2).sum(dim=1)
    delta = 2 * (u - v).pow(2).sum(dim=1) / ((1 - u2) * (1 - v2))
    return torch.arccosh(1 + delta)


def project_l1_ball(x: Tensor, radius: float) -> Tensor:
    """Euclidean projection of each row of ``x`` (flattened) onto the L1 ball of ``radius`` at 0.

    Rows already inside the ball are returned unchanged; the others land on its surface
    (Duchi, Shalev-Shwartz, Singer and Chandra, ICML 2008: soft-threshold ``|x|`` by the ``theta``
    that makes the L1 norm equal ``radius``). The threshold is computed in float64.

    Args:
        x: (M, ...) tensor; each of its M rows is projected separately.
        radius: Positive L1 radius; ``math.inf`` returns ``x`` unchanged.

    Returns:
        A new tensor of ``x``'s shape and dtype.

    Example:
        >>> x = torch.tensor([[3.0, 1.0], [0.5, -0.25]])
        >>> p = project_l1_ball(x, 2.0)
        >>> p[0].tolist(), torch.equal(p[1], x[1])
        ([2.0, 0.0], True)
    """
    if math.isinf(radius):
        return x.clone()
    flat = x.reshape(x.shape[0], -1)
    mag = flat.abs().double()
    inside = mag.sum(dim=1) <= radius
    if bool(inside.all()):  # the usual case: no sort needed
        return x.clone()
    mu = mag.sort(dim=1, descending=True).values
    cumsum = mu.cumsum(dim=1)
    j = torch.arange(1, flat.shape[1] + 1, device=x.device, dtype=torch.float64)
    # rho: the largest j with mu_j > (cumsum_j - radius) / j (always >= 1 for radius > 0)
    rho = ((mu * j > cumsum - radius) * j).amax(dim=1)
    theta = (cumsum.gather(1, rho.long()[:, None] - 1).squeeze(1) - radius) / rho
    proj = (mag - theta[:, None]).clamp_min(0) * flat.sign()
    out = torch.where(inside[:, None], flat, proj.to(x.dtype))
    return out.reshape(x.shape)


def _initial_selection(
    oracle: TargetOracle,
    generator: Generator,
    z_pool: Tensor,
    labels: Tensor,
    samples: int,
    batch_size: int | None,
) -> tuple[Tensor, Tensor]:
    """PPA's initial selection: (M,) pool indices, sample-major, and their (M,) scores (CPU).

    Each pool latent is scored by the target's softmax averaged over the image and its horizontal
    flip; the k-th entry of a label (in order) gets that label's ranks ``k * samples`` to
    ``(k + 1) * samples - 1``.
    """
    per = z_pool.shape[0] if batch_size is None else batch_size  # latents per query, 2 views
    scores = []
    with torch.no_grad():
        for lo in range(0, z_pool.shape[0], per):
            x = generator(z_pool[lo : lo + per].to(oracle.device))
            probs = F.softmax(oracle(torch.cat([x, x.flip(-1)])).float(), dim=1)
            scores.append(((probs[: len(x)] + probs[len(x) :]) / 2).cpu())
    score = torch.cat(scores)  # (pool, K)
    n = labels.numel()
    pick = torch.empty(samples, n, dtype=torch.int64)
    labels_cpu = labels.cpu()
    for y in labels_cpu.unique().tolist():
        entries = (labels_cpu == y).nonzero().squeeze(1)
        order = score[:, y].topk(len(entries) * samples).indices  # best first, distinct
        pick[:, entries] = order.view(len(entries), samples).T
    pick = pick.flatten()
    return pick, score[pick, labels_cpu.repeat(samples)]


def _draw_crop(
    size: Sequence[int], scale: tuple[float, float], rng: torch.Generator | None
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of one square RandomResizedCrop (ratio 1), torchvision-style."""
    height, width = int(size[0]), int(size[1])
    for _ in range(_CROP_ATTEMPTS):
        frac = scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=rng))
        side = round(math.sqrt(height * width * frac))
        if 0 < side <= min(height, width):
            if side == height and side == width:
                return 0, 0, side, side
            top = int(torch.randint(0, height - side + 1, (), generator=rng))
            left = int(torch.randint(0, width - side + 1, (), generator=rng))
            return top, left, side, side
    side = min(height, width)  # torchvision's fallback for ratio 1: the central square
    return (height - side) // 2, (width - side) // 2, side, side


def _crop(images: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    """Crop ``box`` and resize back to the image size (bilinear, antialiased); differentiable."""
    top, left, h, w = box
    height, width = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    patch = images[..., top : top + h, left : left + w]
    return F.interpolate(
        patch, size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )


def _stage_feature(generator: Generator, w: Tensor, feature: Tensor | None, k: int) -> Tensor:
    """The free tensor of stage ``k >= 1``: the output of layer ``k - 1`` (stem or a block)."""
    if k == 1:
        return generator.synthesize(w, start=0, stop=0)
    return generator.synthesize(w, start=k - 2, features=feature, stop=k - 1)


def _render(generator: Generator, w: Tensor, feature: Tensor | None, k: int) -> Tensor:
    """Images of stage ``k``: from ``w`` (k = 0) or from its feature through ``blocks[k-1:]``."""
    if k == 0:
        return generator.synthesize(w)
    return generator.synthesize(w, start=k - 1, features=feature)


def _l1_from(x: Tensor, start: Tensor) -> Tensor:
    return (x - start).flatten(1).abs().sum(dim=1)


def _search(
    oracle: TargetOracle,
    generator: Generator,
    w0: Tensor,
    y: Tensor,
    loss_sums: Tensor,
    *,
    crops: Sequence[tuple[int, int, int, int]],
    steps: Sequence[int],
    radii_w: Sequence[float],
    radii_features: Sequence[float],
    lr: float,
    betas: tuple[float, float],
    keep_stages: bool,
    on_step: StepCallback | None,
) -> tuple[Tensor, list[Tensor], list[float], list[float]]:
    """All stages for one chunk; adds each step's summed loss to ``loss_sums``.

    Returns the final ``w``, the final images (CPU) of each stage (``keep_stages``) or of the
    last one, and each stage's largest L1 deviations of ``w`` and of the feature.
    """
    total = sum(steps)
    w = w0.detach().clone()
    feature: Tensor | None = None
    images, w_dev, f_dev = [], [], []
    t = 0
    for k, n_steps in enumerate(steps):
        if k >= 1:
            with torch.no_grad():
                feature = _stage_feature(generator, w, feature, k)
        w_start = w.detach().clone()
        f_start = None if feature is None else feature.detach().clone()
        w = w_start.clone().requires_grad_(True)
        tensors = [w]
        if k >= 1:
            feature = f_start.clone().requires_grad_(True)
            tensors.append(feature)
        opt = torch.optim.Adam(tensors, lr=lr, betas=betas)  # fresh state for every stage
        for s in range(n_steps):
            logits = oracle(_crop(_render(generator, w, feature, k), crops[t]))
            per_sample = poincare_loss(logits.float(), y)
            # Sum, not mean: a sample's update must not depend on its batch (Adam ignores the
            # scale up to eps). Gradients w.r.t. the search tensors only; w gets none from a
            # stage >= 1 whose blocks do not read it (then Adam leaves it where it is).
            grads = torch.autograd.grad(per_sample.sum(), tensors, allow_unused=True)
            for x, g in zip(tensors, grads, strict=True):
                x.grad = torch.zeros_like(x) if g is None else g
            opt.step()
            with torch.no_grad():
                w.copy_(w_start + project_l1_ball(w - w_start, radii_w[k]))
                if k >= 1:
                    feature.copy_(f_start + project_l1_ball(feature - f_start, radii_features[k]))
            loss_sums[t] += float(per_sample.detach().double().sum())
            t += 1
            if on_step is not None and (t % 10 == 0 or s + 1 == n_steps):
                with torch.no_grad():
                    prob = F.softmax(logits.detach().float(), dim=1).gather(1, y[:, None])
                    on_step(
                        t,
                        total,
                        {
                            "stage": float(k),
                            "loss": float(per_sample.detach().mean()),
                            "target_prob": float(prob.mean()),
                            "w_l1": float(_l1_from(w, w_start).max()),
                            "feature_l1": 0.0
                            if k == 0
                            else float(_l1_from(feature, f_start).max()),
                        },
                    )
        with torch.no_grad():
            w = w.detach()
            feature = None if feature is None else feature.detach()
            if keep_stages or k == len(steps) - 1:
                images.append(_render(generator, w, feature, k).cpu())
            w_dev.append(float(_l1_from(w, w_start).max()))
            f_dev.append(0.0 if k == 0 else float(_l1_from(feature, f_start).max()))
    return w, images, w_dev, f_dev


def _int_list(name: str, value: object, low: int) -> list[int]:
    """A sequence of integers >= ``low`` (a list from a parameter file is accepted)."""
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low for v in value
        )
    ):
        raise ValueError(f"{name} must be a sequence of integers >= {low}, got {value!r}")
    return [int(v) for v in value]


def _radii(name: str, value: object, stages: int) -> list[float]:
    """At least ``stages`` positive radii (``math.inf``: no projection)."""
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0 and not math.isnan(v)
            for v in value
        )
    ):
        raise ValueError(
            f"{name} must be a sequence of positive numbers (math.inf for no projection; the "
            f"official 0 for 'none' is not accepted), got {value!r}"
        )
    if len(value) < stages:
        raise ValueError(f"{name} needs one radius per stage ({stages}), got {len(value)}")
    return [float(v) for v in value]


def _pair(name: str, value: object, ok, what: str) -> tuple[float, float]:
    """``value`` as a pair of floats each passing ``ok`` (a list from a parameter file works)."""
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and ok(v) for v in value)
    ):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value[0]), float(value[1])


#: What the study engine needs to know: access level and public artifacts.
SPEC = AttackSpec(
    "if_gmi",
    if_gmi_attack,
    access="white-box",
    needs=("generator",),
    quick={"steps": (2, 1), "pool": 8, "samples": 1},
)
