"""Pseudo label-guided model inversion (PLG-MI): Yuan, Chen, Xu, Luo, Zhang and Yang, "Pseudo
Label-Guided Model Inversion Attack via Conditional Generative Adversarial Network", AAAI 2023,
https://arxiv.org/abs/2302.09814.

Algorithm. Three stages; the first two build a target-dependent prior (:data:`PLG_CGAN`), the
third is the attack (:func:`plg_mi_attack`).

1. *Top-n selection* (:func:`top_n_pseudo_labels`). Every public image is sent to the target once;
   for each class ``c`` independently, the ``top_n`` public images with the highest softmax
   probability ``p_c`` become class ``c``'s pseudo-labelled training images. An image may serve
   several classes; this is not an argmax labelling.
2. *Pseudo label-guided conditional GAN*. A ResNet generator ``G(z, y)`` with class-conditional
   BatchNorm (``z ~ N(0, I)``) and a spectrally normalised ResNet discriminator with a projection
   head, ``D(x, y) = psi(h(x)) + <embed(y), h(x)>`` (:class:`ProjectionDiscriminator`), are trained
   with the hinge loss on the union of the top-n sets. Each iteration is one generator step then
   ``n_dis`` discriminator steps. The generator step draws ``z`` and uniform labels ``y`` and
   minimises

       -mean D(G(z, y), y) + alpha * mean max_margin(T(aug(G(z, y))), y)

   through the white-box target ``T`` (``aug``: random resized crop, colour jitter with
   probability 1/2, horizontal flip, rotation by up to 5 degrees, drawn per image). Each
   discriminator step minimises ``mean relu(1 - D(x, y_x)) + mean relu(1 + D(G(z, y), y))`` on a
   batch of pseudo-labelled public images ``(x, y_x)`` (dequantised by uniform noise in
   ``[0, 1/256)``) and fresh fakes; it never involves the target.
3. *Reconstruction* (:func:`plg_mi_attack`). For each label entry, ``samples`` latents
   ``z ~ N(0, I)`` are optimised by Adam with the generator frozen and ``y`` fixed to the label,
   minimising the max-margin loss summed over ``views`` independently augmented views of
   ``G(z, y)`` (:func:`max_margin_loss`: ``-logit_y + max_{j != y} logit_j`` on raw logits). No
   discriminator or prior term, no clamp on ``z``. All labels and samples form one batch.

Relation to the official code (LetheSec/PLG-MI-Attack: ``top_n_selection.py``, ``train_cgan.py``,
``losses.py``, ``reconstruct.py``, ``models/generators/resnet64.py``,
``models/discriminators/snresnet64.py``, ``links/conditional_batchnorm.py``). Defaults are the
README's: ``top_n=30``, batch 64, Adam 2e-4 with betas (0.0, 0.9), ``n_dis=5``, ``alpha=0.2``,
latent 128, 64 features, bottom width 4, 30,000 iterations (MIBench trains 150,000; pass
``iterations=150000`` to match it); the attack runs 600 Adam steps at lr 0.1 with two views and 5
seeds per identity. Deliberate differences:

- Pixel range. The official generator ends in ``tanh`` and its output goes to ``D`` next to real
  images in [0, 1] and straight into ``T`` (trained on [0, 1]): the adversarial game pushes
  it to draw in the upper half of ``tanh``'s range. Here the generator ends in
  ``(tanh + 1) / 2``, so its whole range is the [0, 1] that ``D``, ``T`` and the benchmark use.
- Size. The official networks are fixed at 64x64 RGB. Here the depth follows the resolution
  (``log2(H / bottom_width)`` generator blocks, ``log2(H) - 1`` discriminator blocks, so both end
  at 2x2 / start at 4x4 as at 64 px), the channel widths halve/double per block as officially
  (``num_features * 16`` ... ``num_features`` at 64 px), and the last 1x1 convolution (the
  official kernel size) outputs the target's channels. Widths are arguments (CPU sizes go in
  parameter files). Square images whose side is ``bottom_width * 2^k`` (k >= 1) are supported.
- Initialisation. The official generator's ``_initialize`` is never called (and would fail), so
  PyTorch's defaults apply, as here; the discriminator's Xavier initialisation (gain sqrt(2) in
  the residual convolutions) is reproduced. Spectral norm uses
  ``torch.nn.utils.parametrizations.spectral_norm`` (one power iteration per training forward
  pass, like the deprecated ``torch.nn.utils.spectral_norm`` the official code uses; its start
  vectors get 15 power iterations at registration).
- Randomness. Everything is seeded from the study's ``seed`` (official 46): latents, labels, the
  real-batch order (epoch permutations; the official sampler re-seeds NumPy from entropy every
  epoch, so its order is not reproducible) and the dequantisation noise come from a CPU
  ``torch.Generator``; module initialisation and kornia's augmentation draws come from torch's
  global CPU generator, seeded inside ``torch.random.fork_rng`` so the caller's random state is
  left as it was. Kornia samples its parameters on the CPU, so results do not depend on the
  device's random generator.
- Queries. The official loop also sends every discriminator step's fakes to the target, without
  gradient, only to log a "target acc"; that logging is dropped, so the build queries the target
  ``len(public)`` times for the top-n selection (in batches of ``label_batch_size``, official
  350) and ``batch_size`` times per generator step, nothing else. With ``alpha=0`` the generator
  steps do not query it at all.
- The discriminator steps' fakes are computed without autograd (the official code builds the
  graph and then zeroes the generator's gradients): same values, same BatchNorm statistics.
- Top-n ties are broken by ``torch.topk`` (the official priority queue's order differs only on
  exactly equal probabilities). The max-margin loss masks the label's logit instead of the
  official ``argsort``; value and gradient agree except on ties.
- Reconstruction. The official script runs the 5 seeds one after another (each re-seeding
  everything) over batches of 60 identities; here all ``labels x samples`` latents are drawn from
  ``rng`` and optimised in one batch (or ``batch_size`` chunks). The ``views`` augmented copies
  are drawn by one kornia call over the stacked batch and sent to the target in one query batch
  (officially two calls of one view each: the same distribution, per-image draws either way). The
  per-latent losses are summed, not averaged over the batch: a latent's gradient then does not
  depend on how many share its batch (Adam's update is invariant to that scale but for its
  ``eps``). Chunking with ``batch_size`` changes which augmentation draw each image gets, not the
  search. Colour jitter is always applied in the attack and with probability 1/2 in training, as
  officially (kornia 0.6.6 there, whose ``ColorJitter`` already followed torchvision's
  definition, as the installed kornia's does).
- Evaluation (the official evaluator at 112 px, FID on evaluator-selected "successful" images,
  KNN distance) is not part of the attack; the final target query on the unaugmented images
  (official ``score = T(fake)``) gives ``extras["target_prob"]``. The official protocol attacks
  300 identities (5 batches of 60) with 5 seeds each; here the caller's labels, ``samples`` each.
- Addition: ``flip=False`` drops the horizontal flip from both augmentations (official: always
  on), for classes that are not mirror-symmetric such as digits; a study that sets it says so.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from mibench_lib._checks import check_int, check_labels, check_real
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec, TargetPrior
from mibench_lib.byo import check_target
from mibench_lib.data._types import ImageSet
from mibench_lib.oracle import AccessDenied, TargetOracle
from mibench_lib.progress import tqdm

__all__ = [
    "PLGGAN",
    "PLG_CGAN",
    "SPEC",
    "ConditionalResNetGenerator",
    "ProjectionDiscriminator",
    "build_plg_cgan",
    "load_plg_cgan",
    "make_augmentation",
    "max_margin_loss",
    "plg_mi_attack",
    "top_n_pseudo_labels",
]


# -- stage 1: top-n selection -------------------------------------------------------------------
def top_n_pseudo_labels(probs: Tensor, n: int) -> Tensor:
    """For every class, the ``n`` images with the highest probability of that class.

    Each class is ranked on its own column, so an image can be among the top ``n`` of several
    classes (and an image may be chosen for a class it is not the argmax of).

    Args:
        probs: (P, K) class probabilities of P public images (the target's softmax).
        n: Images kept per class, ``1 <= n <= P`` (official 30).

    Returns:
        (K, n) int64 indices into the P images; row ``c`` holds class ``c``'s images in
        decreasing order of ``probs[:, c]``.

    Raises:
        ValueError: ``probs`` not a 2-D float tensor, or ``n`` out of range.

    Example:
        >>> p = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.1, 0.9]])
        >>> top_n_pseudo_labels(p, 2)  # image 1 serves both classes
        tensor([[0, 1],
                [2, 1]])
    """
    if not isinstance(probs, Tensor) or probs.ndim != 2 or not probs.is_floating_point():
        shape = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise ValueError(f"probs must be a (P, K) float tensor, got {shape}")
    check_int("n", n, 1)
    if n > probs.shape[0]:
        raise ValueError(
            f"n (top_n) must be at most the number of public images, {probs.shape[0]}, got {n}"
        )
    return probs.topk(n, dim=0).indices.T.contiguous()


# -- losses and augmentations -------------------------------------------------------------------
def max_margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-image max-margin loss ``-logit_y + max_{j != y} logit_j`` on raw logits.

    Unchanged when a constant is added to all logits of an image; its gradient touches exactly
    two logits per image (the label's and the largest other one). The official loss is the batch
    mean of this; callers reduce.

    Args:
        logits: (N, K) raw logits, K >= 2.
        labels: (N,) int64 labels in ``[0, K)``.

    Returns:
        (N,) float losses (negative once the label wins).

    Example:
        >>> max_margin_loss(torch.tensor([[2.0, 0.5, 1.0]]), torch.tensor([0]))
        tensor([-1.])
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, K) with K >= 2, got {tuple(logits.shape)}")
    logits = logits.float()
    label = logits.gather(1, labels[:, None]).squeeze(1)
    mask = F.one_hot(labels, logits.shape[1]).bool()
    others = logits.masked_fill(mask, -math.inf).max(dim=1).values
    return others - label


def make_augmentation(
    size: int | tuple[int, int], *, color_jitter_p: float = 1.0, flip: bool = True
) -> nn.Module:
    """The official random augmentation, drawn independently per image (kornia).

    RandomResizedCrop to ``size`` (scale 0.8-1, aspect ratio 1), ColorJitter (brightness 0.2,
    contrast 0.2) with probability ``color_jitter_p`` (official: 1 in the attack, 0.5 in cGAN
    training), horizontal flip (p 0.5), rotation by up to 5 degrees (p 0.5). Kornia draws its
    parameters from torch's global CPU generator.

    Args:
        size: Output (H, W) (or one side of a square): the target's input size.
        color_jitter_p: Probability of the colour jitter.
        flip: Include the horizontal flip (official True; a study may drop it for classes that
            are not mirror-symmetric, such as digits, and say so).

    Returns:
        A module mapping (N, C, H, W) in [0, 1] to augmented (N, C, H, W) images, differentiable.

    Example:
        >>> make_augmentation(8)(torch.rand(3, 1, 8, 8)).shape
        torch.Size([3, 1, 8, 8])
    """
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return K.container.ImageSequential(
        K.RandomResizedCrop(hw, scale=(0.8, 1.0), ratio=(1.0, 1.0)),
        K.ColorJitter(brightness=0.2, contrast=0.2, p=color_jitter_p),
        *([K.RandomHorizontalFlip()] if flip else []),
        K.RandomRotation(5.0),
    )


# -- stage 2: the conditional GAN ---------------------------------------------------------------
class _ConditionalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm without its own affine parameters, then a per-class gain and shift.

    The gains start at 1 and the shifts at 0 (official), so an untrained generator ignores ``y``.
    """

    def __init__(self, num_classes: int, num_features: int) -> None:
        super().__init__(num_features, affine=False)
        self.weights = nn.Embedding(num_classes, num_features)
        self.biases = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.weights.weight)
        nn.init.zeros_(self.biases.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        out = super().forward(x)
        return self.weights(y)[:, :, None, None] * out + self.biases(y)[:, :, None, None]


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class _GeneratorBlock(nn.Module):
    """Pre-activation residual block: (cBN, ReLU, x2 upsample, conv3) -> (cBN, ReLU, conv3)."""

    def __init__(self, in_ch: int, out_ch: int, num_classes: int) -> None:
        super().__init__()
        self.b1 = _ConditionalBatchNorm2d(num_classes, in_ch)
        self.c1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.b2 = _ConditionalBatchNorm2d(num_classes, out_ch)
        self.c2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.c_sc = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.c1(_upsample(F.relu(self.b1(x, y))))
        h = self.c2(F.relu(self.b2(h, y)))
        return self.c_sc(_upsample(x)) + h


def _blocks_for(side: int, base: int, what: str) -> int:
    """k such that ``side == base * 2**k``, k >= 1."""
    k = 0
    while base * 2 ** (k + 1) <= side:
        k += 1
    if k < 1 or base * 2**k != side:
        raise ValueError(
            f"{what}: image side must be {base} * 2^k with k >= 1 (e.g. 8, 16, 32, 64), got {side}"
        )
    return k


class ConditionalResNetGenerator(nn.Module):
    """ResNet generator with class-conditional BatchNorm: (z, y) -> images in [0, 1].

    ``linear(z) -> (16F.., bottom_width, bottom_width)`` then ``k`` upsampling residual blocks
    (channels halving down to ``num_features``), BatchNorm, ReLU, a 1x1 convolution to the image
    channels and ``(tanh + 1) / 2``. At 64 px with the defaults this is the official
    ``ResNetGenerator`` (but for the output range and channels; see the module docstring).

    Args:
        num_classes: Number of classes ``y`` can take.
        latent_dim: Size of ``z`` (official 128).
        image_shape: (C, H, H) of the images, H = ``bottom_width * 2^k``, k >= 1.
        num_features: Channels of the last block (official 64).
        bottom_width: Side of the first feature map (official 4).

    Example:
        >>> g = ConditionalResNetGenerator(3, latent_dim=8, image_shape=(1, 8, 8), num_features=4)
        >>> g(torch.randn(2, 8), torch.tensor([0, 2])).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        num_classes: int,
        *,
        latent_dim: int = 128,
        image_shape: tuple[int, int, int] = (3, 64, 64),
        num_features: int = 64,
        bottom_width: int = 4,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes, 1)
        check_int("latent_dim", latent_dim, 1)
        check_int("num_features", num_features, 1)
        check_int("bottom_width", bottom_width, 1)
        c, h, w = _square_shape(image_shape)
        k = _blocks_for(h, bottom_width, "ConditionalResNetGenerator")
        self.num_classes, self.latent_dim = int(num_classes), int(latent_dim)
        self.output_shape = (c, h, w)
        self.num_features, self.bottom_width = int(num_features), int(bottom_width)
        ch = [num_features * 2 ** (k - i) for i in range(k + 1)]
        self.l1 = nn.Linear(latent_dim, ch[0] * bottom_width**2)
        self.blocks = nn.ModuleList(
            _GeneratorBlock(ch[i], ch[i + 1], num_classes) for i in range(k)
        )
        self.b_out = nn.BatchNorm2d(num_features)
        self.conv_out = nn.Conv2d(num_features, c, 1, 1)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        """(N, latent_dim) latents and (N,) int64 classes -> (N, C, H, W) images in [0, 1]."""
        h = self.l1(z).view(z.shape[0], -1, self.bottom_width, self.bottom_width)
        for block in self.blocks:
            h = block(h, y)
        h = F.relu(self.b_out(h))
        return (torch.tanh(self.conv_out(h)) + 1) / 2


def _sn_conv(in_ch: int, out_ch: int, kernel: int, gain: float) -> nn.Module:
    conv = nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2)
    nn.init.xavier_uniform_(conv.weight, gain=gain)
    return spectral_norm(conv)


class _DiscriminatorBlock(nn.Module):
    """Pre-activation residual block (ReLU, SN-conv3) x2, average-pooled; SN 1x1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.c1 = _sn_conv(in_ch, in_ch, 3, math.sqrt(2))
        self.c2 = _sn_conv(in_ch, out_ch, 3, math.sqrt(2))
        self.c_sc = _sn_conv(in_ch, out_ch, 1, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c2(F.relu(self.c1(F.relu(x))))
        return F.avg_pool2d(self.c_sc(x), 2) + F.avg_pool2d(h, 2)


class _OptimizedBlock(nn.Module):
    """The first block: SN-conv3, ReLU, SN-conv3, average pool; shortcut pool then SN 1x1."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.c1 = _sn_conv(in_ch, out_ch, 3, math.sqrt(2))
        self.c2 = _sn_conv(out_ch, out_ch, 3, math.sqrt(2))
        self.c_sc = _sn_conv(in_ch, out_ch, 1, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        h = F.avg_pool2d(self.c2(F.relu(self.c1(x))), 2)
        return self.c_sc(F.avg_pool2d(x, 2)) + h


class ProjectionDiscriminator(nn.Module):
    """SN-ResNet discriminator with a projection head: ``D(x, y) = psi(h) + <embed(y), h>``.

    ``h = h(x)`` (:meth:`features`) is the ReLU'd output of ``log2(H) - 1`` downsampling residual
    blocks (channels ``num_features`` doubling per block; the last map is 2x2), summed over space.
    ``psi`` is a spectrally normalised linear layer and ``embed`` a spectrally normalised class
    embedding. At 64 px this is the official ``SNResNetProjectionDiscriminator``.

    Args:
        num_classes: Number of classes.
        image_shape: (C, H, H) of the images, H a power of two >= 4.
        num_features: Channels of the first block (official 64).

    Example:
        >>> d = ProjectionDiscriminator(3, image_shape=(1, 8, 8), num_features=4)
        >>> d(torch.rand(2, 1, 8, 8), torch.tensor([0, 2])).shape
        torch.Size([2])
    """

    def __init__(
        self,
        num_classes: int,
        *,
        image_shape: tuple[int, int, int] = (3, 64, 64),
        num_features: int = 64,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes, 1)
        check_int("num_features", num_features, 1)
        c, h, _ = _square_shape(image_shape)
        k = _blocks_for(h, 2, "ProjectionDiscriminator")
        ch = [num_features * 2**i for i in range(k)]
        self.blocks = nn.Sequential(
            _OptimizedBlock(c, ch[0]), *(_DiscriminatorBlock(ch[i - 1], ch[i]) for i in range(1, k))
        )
        linear = nn.Linear(ch[-1], 1)
        nn.init.xavier_uniform_(linear.weight)
        self.linear = spectral_norm(linear)
        embed = nn.Embedding(num_classes, ch[-1])
        nn.init.xavier_uniform_(embed.weight)
        self.embed = spectral_norm(embed)

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, F) the sum over space of the last block's ReLU'd output."""
        return F.relu(self.blocks(x)).sum(dim=(2, 3))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """(N, C, H, W) images in [0, 1] and (N,) classes -> (N,) unbounded scores."""
        h = self.features(x)
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


@dataclass(frozen=True, eq=False)
class PLGGAN:
    """What :func:`plg_mi_attack` receives: the trained conditional generator, frozen.

    Attributes:
        generator: (N, latent_dim) latents and (N,) classes -> (N, C, H, W) images in [0, 1];
            eval mode, parameters without gradients.
    """

    generator: ConditionalResNetGenerator

    @property
    def latent_dim(self) -> int:
        """Size of the latents."""
        return self.generator.latent_dim

    @property
    def num_classes(self) -> int:
        """Number of classes the generator is conditioned on."""
        return self.generator.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of its images."""
        return self.generator.output_shape


def _generator_loss(
    generator: nn.Module,
    discriminator: nn.Module,
    oracle: TargetOracle,
    augment: nn.Module,
    z: Tensor,
    y: Tensor,
    alpha: float,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(total, adversarial, inversion) losses of one generator step; the target is skipped at
    ``alpha == 0`` (inversion then ``None``)."""
    fake = generator(z, y)
    adversarial = -discriminator(fake, y).mean()
    if alpha == 0:
        return adversarial, adversarial, None
    inversion = max_margin_loss(oracle(augment(fake)), y).mean()
    return adversarial + alpha * inversion, adversarial, inversion


def _discriminator_loss(
    discriminator: nn.Module, real: Tensor, y_real: Tensor, fake: Tensor, y_fake: Tensor
) -> Tensor:
    """Hinge loss ``mean relu(1 - D(real)) + mean relu(1 + D(fake))``."""
    d_fake = discriminator(fake, y_fake)
    d_real = discriminator(real, y_real)
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


class _EpochSampler:
    """Endless batches of indices: consecutive draws from fresh random permutations."""

    def __init__(self, n: int, rng: torch.Generator) -> None:
        self.n, self.rng = n, rng
        self.order, self.pos = torch.randperm(n, generator=rng), 0

    def next(self, size: int) -> Tensor:
        out = []
        while size > 0:
            if self.pos == self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.rng), 0
            take = min(size, self.n - self.pos)
            out.append(self.order[self.pos : self.pos + take])
            self.pos += take
            size -= take
        return torch.cat(out)


def build_plg_cgan(
    oracle: TargetOracle,
    public: ImageSet,
    *,
    num_classes: int,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    top_n: int = 30,
    iterations: int = 30000,
    batch_size: int = 64,
    n_dis: int = 5,
    lr: float = 2e-4,
    betas: Sequence[float] = (0.0, 0.9),
    alpha: float = 0.2,
    latent_dim: int = 128,
    gen_features: int = 64,
    dis_features: int = 64,
    bottom_width: int = 4,
    flip: bool = True,
    label_batch_size: int = 350,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Train PLG-MI's pseudo label-guided conditional GAN for the target behind ``oracle``.

    Stage 1 labels the public images with :func:`top_n_pseudo_labels` (one query per image,
    without autograd); stage 2 trains the conditional GAN on the ``num_classes * top_n``
    pseudo-labelled images (see the module docstring), back-propagating the generator's
    max-margin loss through the white-box target. The target runs in eval mode and never
    accumulates gradients; its queries are ``len(public) + iterations * batch_size`` (only the
    first term when ``alpha == 0``).

    Args:
        oracle: White-box oracle of the target, (M, C, H, W) in [0, 1] -> (M, K) logits.
        public: Unlabelled public images (labels are not read), of the target's input shape.
        num_classes: K, the target's number of classes.
        seed: Seeds every random draw of the build (official 46).
        device: Where the GAN trains.
        progress: Show a progress bar over the iterations.
        top_n: Public images per class (official 30).
        iterations: Generator steps (official README 30,000; MIBench 150,000).
        batch_size: Latents per generator and discriminator step, real images per
            discriminator step (official 64).
        n_dis: Discriminator steps per generator step (official 5).
        lr: Adam learning rate of both networks (official 2e-4).
        betas: Adam betas of both networks (official (0.0, 0.9)).
        alpha: Weight of the max-margin loss through the target in the generator loss
            (official 0.2); 0 trains a plain cGAN on the pseudo-labelled images.
        latent_dim: Size of ``z`` (official 128).
        gen_features: Generator width (channels of its last block; official 64).
        dis_features: Discriminator width (channels of its first block; official 64).
        bottom_width: Side of the generator's first feature map (official 4).
        flip: Horizontal flips among the generator step's augmentations (official True; see
            :func:`make_augmentation`).
        label_batch_size: Public images per query batch of the top-n selection (official 350;
            changes memory only).

    Returns:
        ``(tensors, meta)``: the generator's state dict under ``"generator."`` keys, and its
        architecture, the settings and the loss histories (means over windows of
        ``meta["log_every"]`` iterations: ``"d_loss"``, ``"g_loss"`` (total), ``"adv_loss"``,
        ``"inv_loss"`` (``None`` when ``alpha == 0``)), plus pseudo-label statistics
        (``"unique_images"`` among the ``K * top_n`` picks, ``"mean_top_prob"``).

    Raises:
        AccessDenied: the oracle is not white-box.
        ValueError: a bad argument, ``num_classes`` other than the oracle's, public images of
            another shape than the target's input, an unsupported image size, or a target that
            breaks its contract (:func:`mibench_lib.byo.check_target`).
    """
    if not oracle.is_white_box:
        raise AccessDenied(
            f"the PLG-MI cGAN back-propagates through the target (a 'white-box' oracle), got "
            f"access {oracle.access!r}"
        )
    check_int("num_classes", num_classes, 2)
    if num_classes != oracle.num_classes:
        raise ValueError(
            f"num_classes must be the target's ({oracle.num_classes}), got {num_classes}"
        )
    check_int("iterations", iterations, 0)
    for name, value, low in (
        ("top_n", top_n, 1),
        ("batch_size", batch_size, 1),
        ("n_dis", n_dis, 1),
        ("latent_dim", latent_dim, 1),
        ("gen_features", gen_features, 1),
        ("dis_features", dis_features, 1),
        ("bottom_width", bottom_width, 1),
        ("label_batch_size", label_batch_size, 1),
    ):
        check_int(name, value, low)
    check_real("lr", lr, strict=True)
    check_real("alpha", alpha)
    beta_pair = _betas(betas)
    if not isinstance(public, ImageSet):
        raise TypeError(f"public must be an ImageSet, got {type(public).__name__}")
    if tuple(public.image_shape) != tuple(oracle.input_shape):
        raise ValueError(
            f"public images have shape {tuple(public.image_shape)}, but the target takes "
            f"{tuple(oracle.input_shape)}"
        )
    if top_n > len(public):
        raise ValueError(f"top_n must be at most the {len(public)} public images, got {top_n}")
    image_shape = tuple(int(s) for s in oracle.input_shape)
    _square_shape(image_shape)
    _blocks_for(image_shape[1], bottom_width, "generator")
    _blocks_for(image_shape[1], 2, "discriminator")
    check_target(oracle.module)
    device = torch.device(device)

    rng = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]), eval_mode(oracle.module):
        torch.default_generator.manual_seed(seed)  # module initialisation and kornia's draws
        # -- stage 1: one query per public image, no autograd
        probs = []
        with torch.no_grad():
            for lo in range(0, len(public), label_batch_size):
                x = _as_float(public.data[lo : lo + label_batch_size]).to(device)
                probs.append(F.softmax(oracle(x).float(), dim=1).cpu())
        prob = torch.cat(probs)
        index = top_n_pseudo_labels(prob, top_n)  # (K, n)
        train_x = public.data[index.flatten()]  # uint8 or float, CPU
        train_y = torch.arange(num_classes).repeat_interleave(top_n)

        # -- stage 2: the conditional GAN
        gen = ConditionalResNetGenerator(
            num_classes,
            latent_dim=latent_dim,
            image_shape=image_shape,
            num_features=gen_features,
            bottom_width=bottom_width,
        ).to(device)
        dis = ProjectionDiscriminator(
            num_classes, image_shape=image_shape, num_features=dis_features
        ).to(device)
        gen.train()
        dis.train()
        g_params, d_params = list(gen.parameters()), list(dis.parameters())
        opt_g = torch.optim.Adam(g_params, lr=lr, betas=beta_pair)
        opt_d = torch.optim.Adam(d_params, lr=lr, betas=beta_pair)
        augment = make_augmentation(image_shape[1], color_jitter_p=0.5, flip=bool(flip))
        sampler = _EpochSampler(len(train_y), rng)
        log_every = max(1, iterations // 300)
        keys = ("d_loss", "g_loss", "adv_loss", "inv_loss")
        history: dict[str, list[float | None]] = {k: [] for k in keys}
        window = dict.fromkeys(keys, 0.0)

        def draw() -> tuple[Tensor, Tensor]:
            z = torch.randn(batch_size, latent_dim, generator=rng).to(device)
            y = torch.randint(0, num_classes, (batch_size,), generator=rng).to(device)
            return z, y

        for it in tqdm(range(iterations), desc="PLG-MI cGAN", disable=not progress, leave=False):
            # one generator step, through D and (alpha > 0) the target
            z, y = draw()
            total, adv, inv = _generator_loss(gen, dis, oracle, augment, z, y, alpha)
            grads = torch.autograd.grad(total, g_params)  # G only: D and T keep no gradients
            for p, g in zip(g_params, grads, strict=True):
                p.grad = g
            opt_g.step()
            window["g_loss"] += float(total.detach())
            window["adv_loss"] += float(adv.detach())
            window["inv_loss"] += 0.0 if inv is None else float(inv.detach())
            # n_dis discriminator steps: pseudo-labelled public images vs fresh fakes, no target
            for _ in range(n_dis):
                z, y = draw()
                with torch.no_grad():
                    fake = gen(z, y)  # train mode, as officially: BN statistics move
                idx = sampler.next(batch_size)
                real = _as_float(train_x[idx])
                real = (real + torch.rand(real.shape, generator=rng) / 256.0).to(device)
                loss_d = _discriminator_loss(dis, real, train_y[idx].to(device), fake, y)
                grads = torch.autograd.grad(loss_d, d_params)
                for p, g in zip(d_params, grads, strict=True):
                    p.grad = g
                opt_d.step()
                window["d_loss"] += float(loss_d.detach()) / n_dis
            if (it + 1) % log_every == 0 or it + 1 == iterations:
                count = (it % log_every) + 1
                for k in keys:
                    history[k].append(window[k] / count)
                    window[k] = 0.0
                if alpha == 0:
                    history["inv_loss"][-1] = None  # the target was not queried

    state = {f"generator.{k}": v.detach().cpu() for k, v in gen.state_dict().items()}
    meta = {
        "num_classes": int(num_classes),
        "latent_dim": int(latent_dim),
        "image_shape": list(image_shape),
        "gen_features": int(gen_features),
        "bottom_width": int(bottom_width),
        "dis_features": int(dis_features),
        "top_n": int(top_n),
        "iterations": int(iterations),
        "batch_size": int(batch_size),
        "n_dis": int(n_dis),
        "lr": float(lr),
        "betas": list(beta_pair),
        "alpha": float(alpha),
        "flip": bool(flip),
        "log_every": int(log_every),
        "unique_images": int(index.unique().numel()),
        "mean_top_prob": float(prob.gather(0, index.T).mean()),
        **history,
    }
    return state, meta


def load_plg_cgan(
    tensors: Mapping[str, Tensor], meta: Mapping[str, Any], device: torch.device | str = "cpu"
) -> PLGGAN:
    """Rebuild the trained generator from :func:`build_plg_cgan`'s tensors and metadata.

    Returns:
        A :class:`PLGGAN` whose generator is on ``device``, in eval mode, without gradients.
    """
    gen = ConditionalResNetGenerator(
        int(meta["num_classes"]),
        latent_dim=int(meta["latent_dim"]),
        image_shape=tuple(int(s) for s in meta["image_shape"]),  # type: ignore[arg-type]
        num_features=int(meta["gen_features"]),
        bottom_width=int(meta["bottom_width"]),
    )
    prefix = "generator."
    gen.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    gen.to(torch.device(device)).eval().requires_grad_(False)
    return PLGGAN(gen)


#: The pseudo label-guided conditional GAN, trained through a white-box oracle (cached per target).
PLG_CGAN = TargetPrior(
    "plg_cgan",
    "white-box",
    build_plg_cgan,
    load_plg_cgan,
    quick={
        "top_n": 8,
        "iterations": 2,
        "batch_size": 8,
        "n_dis": 2,
        "latent_dim": 8,
        "gen_features": 4,
        "dis_features": 4,
    },
)


# -- stage 3: reconstruction --------------------------------------------------------------------
def plg_mi_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    plg_cgan: PLGGAN,
    steps: int = 600,
    lr: float = 0.1,
    views: int = 2,
    samples: int = 5,
    flip: bool = True,
    batch_size: int | None = None,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """Invert ``labels`` by optimising the latents of PLG-MI's conditional generator.

    For every label entry, ``samples`` latents ``z ~ N(0, I)`` are optimised (Adam, ``z`` only,
    ``y`` fixed to the label, generator frozen in eval mode) to minimise the max-margin loss of
    the target summed over ``views`` independently augmented views of ``G(z, y)``. Latents are
    laid out sample-major: latent ``s * N + i`` is sample ``s`` of entry ``i``; every one is
    returned (the official protocol: 5 per identity, one per seed).

    The target is checked first against :func:`mibench_lib.byo.check_target`, and the generator
    on two latents (outside the oracle, leaving every random state as it was), so a wrong model
    fails before the first query. Each step sends ``views`` augmented images per latent to the
    oracle; one final query per latent scores the unaugmented images.

    Args:
        oracle: White-box oracle of the target, (M, C, H, W) in [0, 1] -> (M, K) logits.
        labels: (N,) int64 class ids in ``[0, K)``; repeats allowed.
        plg_cgan: The conditional GAN of :data:`PLG_CGAN` trained for this target (any object
            whose ``generator`` maps (M, latent_dim) latents and (M,) classes to (M, C, H, W)
            images in [0, 1] and has ``latent_dim`` and ``num_classes``), on the oracle's device.
        steps: Adam steps (official 600; 0 returns the initial draws).
        lr: Adam learning rate (official 0.1).
        views: Augmented views per latent and step whose losses are summed (official 2).
        samples: Latents per label entry (official 5, one per seed).
        flip: Horizontal flips among the views' augmentations (official True; see
            :func:`make_augmentation`).
        batch_size: Most latents optimised together; ``None``: all of them. Chunks run one after
            another, each with its own Adam state.
        rng: CPU generator for the initial latents and the seed of the augmentation draws
            (kornia draws from torch's global CPU generator, seeded from ``rng`` inside
            ``torch.random.fork_rng``; the caller's global state is restored).
        on_step: Progress hook ``on_step(step, steps, info)``, every 10 steps and at the last,
            with the mean per-latent loss of the current chunk.

    Returns:
        InversionResult with images (N * samples, C, H, W) on the CPU in [0, 1], labels
        (``labels`` repeated ``samples`` times), the final latents, ``losses`` (mean per-latent
        loss, the max-margin summed over views, at each step before the update), ``queries``
        (``(steps * views + 1) * N * samples``) and ``extras``:

        - ``"target_prob"``: (M,) target probability of the label on each returned image;
        - ``"target_logit"``: (M,) its logit;
        - ``"margin"``: (M,) the max-margin loss on the unaugmented image;
        - ``"sample"``: (M,) sample index of each image.

    Raises:
        AccessDenied: the oracle is not white-box.
        TypeError: ``plg_cgan`` without a generator module, ``latent_dim`` or ``num_classes``.
        ValueError: bad labels or arguments, a generator for another number of classes or
            image shape, or a target that breaks its contract.
        QueryBudgetExceeded: the oracle's budget runs out.

    Example:
        >>> from mibench_lib.oracle import TargetOracle
        >>> from mibench_lib.testing import build_target_prior, tiny_classifier, tiny_digits
        >>> target = tiny_classifier()
        >>> cgan, _ = build_target_prior(PLG_CGAN, target, tiny_digits()[0][:64])
        >>> res = plg_mi_attack(TargetOracle(target), torch.tensor([0, 3]), plg_cgan=cgan,
        ...                     steps=2, samples=2, rng=torch.Generator().manual_seed(0))
        >>> res.images.shape, res.labels.tolist(), res.queries
        (torch.Size([4, 1, 8, 8]), [0, 3, 0, 3], 20)
    """
    if not oracle.is_white_box:
        raise AccessDenied(
            f"plg_mi_attack needs the target's gradients (a 'white-box' oracle), got access "
            f"{oracle.access!r}"
        )
    check_labels(labels, oracle.num_classes)
    check_int("steps", steps, 0)
    check_real("lr", lr, strict=True)
    check_int("views", views, 1)
    check_int("samples", samples, 1)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    check_target(oracle.module)  # before any work: no queries, no random state used
    generator = _check_cgan(plg_cgan, oracle)

    start_queries, t0 = oracle.queries, time.perf_counter()
    device = oracle.device
    n = labels.numel()
    m = samples * n
    y = labels.repeat(samples).to(device)  # sample-major, matching z below
    z_init = torch.randn(m, generator.latent_dim, generator=rng)  # on CPU: device-independent
    aug_seed = int(torch.randint(0, 2**62, (), generator=rng))
    augment = make_augmentation(tuple(oracle.input_shape[1:]), flip=bool(flip))
    chunk = m if batch_size is None else batch_size
    loss_sums = torch.zeros(steps, dtype=torch.float64)
    finals: list[tuple[Tensor, ...]] = []

    with torch.random.fork_rng(devices=[]), eval_mode(generator, oracle.module):
        torch.default_generator.manual_seed(aug_seed)
        for lo in range(0, m, chunk):
            part = slice(lo, min(m, lo + chunk))
            finals.append(
                _search(
                    oracle,
                    generator,
                    augment,
                    z_init[part].to(device),
                    y[part],
                    loss_sums,
                    steps=steps,
                    lr=lr,
                    views=views,
                    on_step=on_step,
                )
            )
    z, images, logit, prob, margin = (torch.cat(parts) for parts in zip(*finals, strict=True))
    return InversionResult(
        attack="plg_mi",
        images=images.cpu(),
        labels=y.cpu(),
        latents=z.cpu(),
        losses=(loss_sums / m).tolist(),
        queries=oracle.queries - start_queries,
        wall_time_s=time.perf_counter() - t0,
        extras={
            "target_prob": prob.cpu(),
            "target_logit": logit.cpu(),
            "margin": margin.cpu(),
            "sample": torch.arange(samples).repeat_interleave(n),
        },
    )


def _search(
    oracle: TargetOracle,
    generator: nn.Module,
    augment: nn.Module,
    z0: Tensor,
    y: Tensor,
    loss_sums: Tensor,
    *,
    steps: int,
    lr: float,
    views: int,
    on_step: StepCallback | None,
) -> tuple[Tensor, ...]:
    """Optimise one chunk of latents; add each step's summed loss to ``loss_sums``.

    Returns the chunk's final (latents, images, label logits, label probabilities, margins).
    """
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    y_views = y.repeat(views)
    for step in range(steps):
        images = generator(z, y)
        # all views in one kornia call (parameters drawn per image) and one query batch
        logits = oracle(augment(images.repeat(views, 1, 1, 1)))
        per_latent = max_margin_loss(logits, y_views).view(views, -1).sum(dim=0)
        # Sum, not mean: a latent's gradient does not depend on its batch. Gradient w.r.t. z
        # only: the generator and the target never accumulate parameter gradients.
        (grad,) = torch.autograd.grad(per_latent.sum(), z)
        z.grad = grad
        opt.step()
        loss_sums[step] += float(per_latent.detach().double().sum())
        if on_step is not None and ((step + 1) % 10 == 0 or step + 1 == steps):
            on_step(step + 1, steps, {"loss": float(per_latent.detach().mean())})

    with torch.no_grad():
        z = z.detach()
        images = generator(z, y)
        logits = oracle(images).float()  # the final scoring pass: counted
        logit = logits.gather(1, y[:, None]).squeeze(1)
        prob = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
        margin = max_margin_loss(logits, y)
    return z, images, logit, prob, margin


def _check_cgan(plg_cgan: object, oracle: TargetOracle) -> nn.Module:
    """The conditional generator of ``plg_cgan``, checked on 2 latents outside the oracle."""
    generator = getattr(plg_cgan, "generator", None)
    if not isinstance(generator, nn.Module):
        raise TypeError(
            "plg_cgan must be a PLGGAN (what PLG_CGAN.load returns) or an object whose "
            f"'generator' is an nn.Module mapping (z, y) to images, got {type(plg_cgan).__name__}"
        )
    for attr in ("latent_dim", "num_classes"):
        value = getattr(generator, attr, None)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise TypeError(
                f"plg_cgan.generator must have a positive integer {attr!r} attribute, got {value!r}"
            )
    if generator.num_classes != oracle.num_classes:
        raise ValueError(
            f"plg_cgan was trained for {generator.num_classes} classes, but the target has "
            f"{oracle.num_classes}: build it for this target"
        )
    shape = tuple(oracle.input_shape)
    z = torch.randn(2, generator.latent_dim, generator=torch.Generator().manual_seed(0))
    y = torch.arange(2) % generator.num_classes
    dev = next(iter(generator.parameters()), torch.empty(0)).device
    with eval_mode(generator), torch.no_grad():
        out = generator(z.to(dev), y.to(dev))
    if not isinstance(out, Tensor) or tuple(out.shape) != (2, *shape):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"plg_cgan.generator must make images of the target's shape (N, {', '.join(map(str, shape))}), "
            f"got {got}: build it for this target"
        )
    if not torch.isfinite(out).all() or float(out.min()) < -1e-5 or float(out.max()) > 1 + 1e-5:
        raise ValueError("plg_cgan.generator must return finite images in [0, 1]")
    return generator


# -- small helpers ------------------------------------------------------------------------------
def _betas(betas: object) -> tuple[float, float]:
    if (
        not isinstance(betas, Sequence)
        or isinstance(betas, str)
        or len(betas) != 2
        or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas)
    ):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    return float(betas[0]), float(betas[1])


def _square_shape(shape: object) -> tuple[int, int, int]:
    if (
        not isinstance(shape, Sequence)
        or len(shape) != 3
        or not all(isinstance(s, numbers.Integral) and s >= 1 for s in shape)
        or shape[1] != shape[2]
    ):
        raise ValueError(f"image_shape must be a square (C, H, H), got {shape!r}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _as_float(x: Tensor) -> Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


#: What the study engine needs to know: access level and the target prior it trains.
SPEC = AttackSpec(
    "plg_mi",
    plg_mi_attack,
    access="white-box",
    needs=(PLG_CGAN,),
    quick={"steps": 3, "samples": 1},
)
