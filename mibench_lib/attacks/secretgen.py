"""SecretGen: Yuan, Chen, Ji, Li and Xu, "SecretGen: Privacy Recovery on Pre-trained Models via
Distribution Discrimination", ECCV 2022, https://arxiv.org/abs/2207.12263 (black-box start).

Threat model (``"partial"``). The attacker holds a private image whose centre is hidden
(:class:`~mibench_lib.attacks._masked.MaskedImages`) and may query the target for probabilities;
it fills the hole so that the filled image shows the right identity. This is not comparable with
full-reconstruction attacks, which start from a label alone.

Algorithm. Two stages.

1. **Inpainting GAN** (a :class:`PublicPrior`, :data:`SECRETGEN_INPAINTER`; public data only, the
   target is never queried). A generator ``G(x_hole, hole, z)`` takes the image with its hole
   pre-filled with the public mean pixel, the hole mask (1 in the hole) and ``z ~ N(0, I)`` in
   R^100, and proposes pixels for the hole; its output is *composited*: known pixels from the input,
   generated ones in the hole. A global critic ``D_G`` scores whole composited images, a local
   critic ``D_L`` a random ``patch x patch`` crop (one offset per batch, anywhere in the image;
   half the side: 32 of 64). Every batch makes three updates in this order, each with fresh
   latents:

       D_L:  -(mean D_L(real crop) - mean D_L(fake crop)) + 10 * GP(D_L)
       D_G:  -(mean D_G(real) - mean D_G(fake)) + 10 * GP(D_G)
       G:    (-mean D_L(crop G(z1)) - mean D_G(G(z1))) / 2
             - 0.5 * mean|V(G(z1)) - V(G(z2))| / mean|z2 - z1|

   (WGAN-GP: the gradient-norm penalty on random interpolations of real and fake). The last term
   rewards fills that differ when their latents differ (mode-seeking diversity). Adam 4e-3, betas
   (0.5, 0.999) for all three networks, batch 64, 100 epochs, centre mask.

2. **Black-box recovery** (:func:`secretgen_attack`). *Distribution discrimination* picks a start
   latent per image: ``candidates = 200`` latents ``z ~ N(0, I)`` clamped to [-1, 1] fill the hole;
   the target answers every filled image and ``cutouts = 16`` copies of it, each with one cell of a
   fixed 4 x 4 grid (16 x 16 of 64) replaced by the mean pixel: 17 queries per latent. The
   pseudo-label is the class with the highest probability averaged over all latents and views,
   among the classes that were the top-1 of some filled image; the start is the latent whose
   filled image gave that class the highest top-1 probability (``"ini-bb"``). With
   ``label_known=True`` (``"full-bb"``) the given label replaces the pseudo-label and the cut-outs
   are not queried (1 query per latent). Then the start latent moves by the critics' realism alone,

       loss_i = -D_L(random crop of fill_i) - D_G(fill_i),

   1,500 steps of Nesterov momentum (0.9, step 0.01), ``z`` clamped to [-1, 1] after each step:
   **no further query**. The output is the composited fill of the final latent.

Queries: ``N * candidates * (1 + cutouts)`` (``"ini-bb"``) or ``N * candidates``
(``"full-bb"``), all in the start; the realism search makes none.

Relation to the official code (AI-secure SecretGen, vendored in MIBench at
``src/modelinversion/attack/SecretGen``: ``stage1.py``, ``stage2.py``, ``models.py``,
``discri.py``, ``losses.py``, ``utils.py``):

- Architectures. :class:`InpaintingGenerator` follows ``InversionNet`` at any side divisible by 4:
  a context encoder (conv-ReLU-BatchNorm, two stride-2 convolutions to H/4, then dilated
  convolutions with dilations 2, 4, ... below H/4), a latent branch (linear, then up to two
  transposed convolutions to H/4) joined at the bottleneck, and a decoder (two transposed
  convolutions, two convolutions, sigmoid). At 64 px with ``width = 32`` every channel count is
  the official one; the official dilation 16, which at a 16 x 16 bottleneck reads only padding
  besides its centre tap, is dropped. :class:`WGANCritic` is ``DGWGAN``/``DLWGAN`` at any size
  (stride-2 conv blocks, InstanceNorm after the first, down to 4 x 4 or below, then a convolution
  over the remaining map): at 64 px with ``critic_width = 64`` the official global and local
  critics. Images enter the critics in [0, 1], as officially.
- Mean pixel. The official fixed CelebA mean (0.5189, 0.4346, 0.3886) becomes the per-channel
  mean of the public images, computed in the build and stored with the prior (the attack uses it
  for the hole pre-fill and the cut-outs).
- Diversity feature ``V``. The official black-box run (``--bb``) uses a public IR-50 face
  embedding at 112 px. Here ``V`` is the global critic's last hidden feature map: public by
  construction, no further network to train, and computed anyway (the official step also runs
  both critics on the second fill and discards the result). The target is never used.
- Reconstruction loss. Officially the L1 loss between the fill and the true hole is computed
  but never added to the generator loss (a bug, or a deliberate choice: the paper's stage 1 is
  adversarial only). ``reconstruction_weight = 0.0`` (default) keeps that; a positive weight adds
  ``weight * sum |fill - truth| over the hole / batch`` (the official ``completion_network_loss``).
  The loss is recorded in the history either way.
- Data order. The official loader is not shuffled (batches follow CelebA's file order) and skips
  batches under 8 images; here each epoch is a seeded permutation in batches of ``batch_size``,
  the last one kept if it has at least ``min(8, batch_size)`` images. Everything random (weights,
  orders, latents, patch offsets, penalty interpolations) follows ``seed``, on the CPU.
- The official ``freeze``/``unfreeze`` becomes gradients with respect to the updated network only;
  fakes of critic steps are generated without a graph. Values are the same.
- Stage 2 step scaling. The official realism loss is the mean over its batch of 64 images, so
  each latent gets 1/64 of its own gradient; here the per-entry losses are summed and divided by
  :data:`OFFICIAL_BATCH` = 64, so every entry moves as officially whatever the number of entries.
- Start selection. Official and kept: the confidence of a latent is the top-1 probability of its
  filled image (cut-outs only enter the average). With ``label_known``, when no latent's filled
  image has the given label as top-1, the official code draws a fresh unclamped ``randn`` start;
  here the latent with the highest probability of the label is taken instead (no extra draw).
  Ties (equal averages, equal confidences) go to the lowest class index and the earliest latent.
- Cut-outs: the official ``define_trans`` grid (the ``--cutout_size 8`` option is never used);
  ``cutouts`` must be a square ``g * g`` and the cells have side ``H // g`` unless
  ``cutout_size`` is given (each cell then starts at the grid position and has that side).
- Budget (an addition). When the oracle's budget cannot pay for every candidate, each image gets
  as many candidates as fit, in turn (image 0 first), at least one each while the budget lasts;
  an image that gets none keeps its first candidate latent, unqueried, with pseudo-label -1 (or
  the given label), and the realism search still runs (it is free). ``stopped_by_budget`` is then
  True.
- Evaluation (top-1/top-5 of an evaluator, PSNR over the *whole* image in ``calc_psnr``) is the
  study's business; :func:`hole_psnr` gives the PSNR over the hidden pixels only.
- Not reproduced: the white-box variants (``ini-wb``, ``full``: top-5 starts and 100 x NLL of the
  target), the ``pii``/``gmi``/``abl`` ablations, and the virtual-dataset export.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mibench_lib._checks import check_int, check_labels, check_real
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._masked import MaskedImages, center_mask
from mibench_lib.attacks._query import affordable, released_scores
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec, PublicPrior
from mibench_lib.data._types import ImageSet
from mibench_lib.oracle import TargetOracle
from mibench_lib.progress import tqdm

__all__ = [
    "OFFICIAL_BATCH",
    "SECRETGEN_INPAINTER",
    "InpaintingGenerator",
    "SecretGenInpainter",
    "WGANCritic",
    "build_secretgen_inpainter",
    "composite",
    "cutout_views",
    "gradient_penalty",
    "hole_psnr",
    "load_secretgen_inpainter",
    "pseudo_labels",
    "secretgen_attack",
    "select_start",
]

#: Images per batch in the official stage 2; its batch-mean realism loss divides each latent's
#: gradient by this number.
OFFICIAL_BATCH = 64


# ----------------------------------------------------------------------------------- networks
def _conv_relu_bn(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """The official context block: conv -> ReLU -> BatchNorm (normalisation after the ReLU)."""
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation), nn.ReLU(), nn.BatchNorm2d(cout)
    )


def _up(cin: int, cout: int) -> nn.Sequential:
    """Transposed conv (kernel 5, stride 2: doubles the side) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 5, 2, padding=2, output_padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


def _twos(n: int) -> int:
    """How many times 2 divides ``n`` (n >= 1)."""
    k = 0
    while n % 2 == 0:
        n //= 2
        k += 1
    return k


class InpaintingGenerator(nn.Module):
    """SecretGen's inpainting generator: (pre-filled image, hole mask, z) -> proposed pixels.

    Context encoder on the image and its hole mask (C + 1 channels) down to H/4; latent branch
    from ``z`` up to H/4; the two are concatenated at the bottleneck and decoded back to H with a
    sigmoid. Only the hole of its output is used (see :func:`composite`).

    Args:
        image_shape: (C, H, W) with H == W divisible by 4.
        latent_dim: Size of ``z`` (official 100).
        width: Channels of the first context convolution (official 32); the bottleneck has
            ``4 * width`` context and ``4 * width`` latent channels.

    Example:
        >>> g = InpaintingGenerator((1, 8, 8), latent_dim=4, width=2).eval()
        >>> g(torch.rand(3, 1, 8, 8), torch.zeros(3, 1, 8, 8), torch.randn(3, 4)).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self, image_shape: tuple[int, int, int], *, latent_dim: int = 100, width: int = 32
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        if h != w or h % 4 or h < 8:
            raise ValueError(
                f"InpaintingGenerator needs square images with a side divisible by 4 and >= 8, "
                f"got {tuple(image_shape)}"
            )
        check_int("latent_dim", latent_dim)
        check_int("width", width)
        b = h // 4  # bottleneck side
        dilated = [d for d in (2, 4, 8, 16) if d < b]
        self.context = nn.Sequential(
            _conv_relu_bn(c + 1, width, 5),
            _conv_relu_bn(width, 2 * width, 3, stride=2),
            _conv_relu_bn(2 * width, 2 * width, 3),
            _conv_relu_bn(2 * width, 4 * width, 3, stride=2),
            _conv_relu_bn(4 * width, 4 * width, 3),
            _conv_relu_bn(4 * width, 4 * width, 3),
            *(_conv_relu_bn(4 * width, 4 * width, 3, dilation=d) for d in dilated),
        )
        n_up = min(2, _twos(b))
        s0, c0 = b // 2**n_up, 4 * width * 2**n_up
        self.latent = nn.Sequential(
            nn.Linear(latent_dim, c0 * s0 * s0, bias=False),
            nn.BatchNorm1d(c0 * s0 * s0),
            nn.ReLU(),
            nn.Unflatten(1, (c0, s0, s0)),
            *(_up(c0 // 2**i, c0 // 2 ** (i + 1)) for i in range(n_up)),
        )
        self.decoder = nn.Sequential(
            _up(8 * width, 4 * width),
            _up(4 * width, 2 * width),
            nn.Conv2d(2 * width, width, 3, 1, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, c, 3, 1, 1),
            nn.Sigmoid(),
        )
        self.image_shape = (c, h, w)
        self.latent_dim = int(latent_dim)

    def forward(self, prefilled: Tensor, hole: Tensor, z: Tensor) -> Tensor:
        """(N, C, H, W) image with its hole pre-filled, (N, 1, H, W) hole (1 = hidden), (N, d) z
        -> (N, C, H, W) proposal in [0, 1] (use only its hole)."""
        context = self.context(torch.cat([prefilled, hole], dim=1))
        return self.decoder(torch.cat([context, self.latent(z)], dim=1))


class WGANCritic(nn.Module):
    """SecretGen's WGAN critic (``DGWGAN`` / ``DLWGAN``) at any square size.

    A stride-2 conv (kernel 5) + LeakyReLU(0.2), then stride-2 conv-InstanceNorm-LeakyReLU blocks
    doubling the channels while the side exceeds 4, then one convolution over the whole remaining
    map to a score. At 64 px with ``width = 64`` this is the official global critic (64, 128,
    256, 512 channels), at 32 px the official local critic (64, 128, 256).

    Args:
        input_shape: (C, S, S).
        width: Channels of the first block (official 64).

    Example:
        >>> d = WGANCritic((1, 4, 4), width=2)
        >>> feature, score = d(torch.rand(5, 1, 4, 4))
        >>> feature.shape, score.shape
        (torch.Size([5, 2, 2, 2]), torch.Size([5]))
    """

    def __init__(self, input_shape: tuple[int, int, int], *, width: int = 64) -> None:
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        if h != w or h < 2:
            raise ValueError(f"WGANCritic needs square inputs of side >= 2, got {input_shape}")
        check_int("width", width)
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(c, width, 5, 2, 2), nn.LeakyReLU(0.2))]
        side, ch = (h + 1) // 2, width
        while side > 4:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(ch, 2 * ch, 5, 2, 2),
                    nn.InstanceNorm2d(2 * ch, affine=True),
                    nn.LeakyReLU(0.2),
                )
            )
            side, ch = (side + 1) // 2, 2 * ch
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(ch, 1, side)
        self.input_shape = (c, h, w)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, S, S) in [0, 1] -> (last hidden feature map, (N,) scores)."""
        feature = self.blocks(x)
        return feature, self.head(feature).flatten()


@dataclass(frozen=True)
class SecretGenInpainter:
    """What :data:`SECRETGEN_INPAINTER` loads: the stage-1 networks, frozen, in eval mode.

    Attributes:
        generator: :class:`InpaintingGenerator`.
        global_critic: :class:`WGANCritic` on whole images.
        local_critic: :class:`WGANCritic` on ``patch_size`` crops.
        mean_pixel: (C,) public mean pixel (the hole pre-fill and the cut-out fill).
        patch_size: Side of the local critic's crops.
    """

    generator: InpaintingGenerator
    global_critic: WGANCritic
    local_critic: WGANCritic
    mean_pixel: Tensor
    patch_size: int


# ------------------------------------------------------------------------------------ helpers
def composite(
    generator: nn.Module, images: Tensor, mask: Tensor, z: Tensor, mean_pixel: Tensor
) -> Tensor:
    """The generator's fill, composited: known pixels of ``images``, generated ones in the hole.

    The generator sees ``images`` with the hole (``mask == 0``) set to ``mean_pixel`` and the hole
    mask; outside the hole the output *is* ``images``, bit for bit.

    Args:
        generator: ``generator(prefilled, hole, z)`` -> (N, C, H, W).
        images: (N, C, H, W) in [0, 1] (hole values are ignored).
        mask: (N, 1, H, W), 1 = known, 0 = hole.
        z: (N, latent_dim).
        mean_pixel: (C,).

    Example:
        >>> g = InpaintingGenerator((1, 8, 8), latent_dim=2, width=2).eval()
        >>> x, m = torch.rand(2, 1, 8, 8), center_mask(8, 8).expand(2, 1, 8, 8)
        >>> out = composite(g, x, m, torch.zeros(2, 2), torch.tensor([0.5]))
        >>> bool(torch.equal(out[m.expand_as(out) == 1], x[m.expand_as(x) == 1]))
        True
    """
    known = mask.bool().expand_as(images)
    fill = mean_pixel.to(images).view(1, -1, 1, 1).expand_as(images)
    prefilled = torch.where(known, images, fill)
    out = generator(prefilled, 1.0 - mask.to(images), z)
    return torch.where(known, images, out)


def _crop(x: Tensor, top: int, left: int, size: int) -> Tensor:
    return x[:, :, top : top + size, left : left + size]


def _patch_offset(side: int, patch: int, rng: torch.Generator | None) -> tuple[int, int]:
    """One random (top, left) for a ``patch`` crop of a ``side`` image (the official
    ``gen_hole_area``: one offset for the whole batch)."""
    top, left = torch.randint(0, side - patch + 1, (2,), generator=rng).tolist()
    return int(top), int(left)


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """WGAN-GP: mean over the batch of (||grad_x D(x)||_2 - 1)^2 at x = fake + alpha (real - fake).

    ``alpha`` is (N,) in [0, 1]; the graph is kept (create_graph) so the penalty trains the critic.

    Example:
        >>> lin = nn.Linear(4, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[3.0, 4.0, 0.0, 0.0]]))
        >>> critic = lambda x: (None, lin(x.flatten(1)).flatten())
        >>> gradient_penalty(critic, torch.rand(2, 1, 2, 2), torch.rand(2, 1, 2, 2), torch.rand(2)).item()
        16.0
    """
    x = (fake + alpha.view(-1, *[1] * (fake.ndim - 1)) * (real - fake)).detach().requires_grad_()
    _, score = critic(x)
    (g,) = torch.autograd.grad(score.sum(), x, create_graph=True)
    return ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def _mean_pixel(public: ImageSet, chunk: int = 1024) -> Tensor:
    """(C,) mean of every pixel of the public images, channel by channel (float64 sums)."""
    total = torch.zeros(public.image_shape[0], dtype=torch.float64)
    for lo in range(0, len(public), chunk):
        x = public[torch.arange(lo, min(lo + chunk, len(public)))][0]
        total += x.double().sum(dim=(0, 2, 3))
    h, w = public.image_shape[1:]
    return (total / (len(public) * h * w)).float()


def _update(
    name: str, opt: torch.optim.Optimizer, params: list[nn.Parameter], loss: Tensor
) -> None:
    """One Adam update of ``params`` only (``name``: which network, for instrumentation)."""
    grads = torch.autograd.grad(loss, params)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt.step()
    opt.zero_grad(set_to_none=True)


def _make_networks(
    image_shape: tuple[int, int, int],
    *,
    latent_dim: int,
    width: int,
    critic_width: int,
    patch_size: int,
) -> tuple[InpaintingGenerator, WGANCritic, WGANCritic]:
    c = image_shape[0]
    return (
        InpaintingGenerator(image_shape, latent_dim=latent_dim, width=width),
        WGANCritic(image_shape, width=critic_width),
        WGANCritic((c, patch_size, patch_size), width=critic_width),
    )


# ------------------------------------------------------------------- stage 1 (a public prior)
def build_secretgen_inpainter(
    public: ImageSet,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    latent_dim: int = 100,
    width: int = 32,
    critic_width: int = 64,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 4e-3,
    betas: Sequence[float] = (0.5, 0.999),
    gp_weight: float = 10.0,
    diversity_weight: float = 0.5,
    reconstruction_weight: float = 0.0,
    mask_fraction: float = 0.5,
    patch_fraction: float = 0.5,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Train SecretGen's inpainting GAN (stage 1) on public images: no target, no oracle.

    Per batch, in this order: one local-critic update, one global-critic update, one generator
    update (each on fresh latents; see the module docstring for the losses). The hole is the
    centre square of side ``mask_fraction`` (:func:`~mibench_lib.attacks._masked.center_mask`,
    the study's mask), the local critic's crops have side ``round(patch_fraction * H)``.

    Args:
        public: Public images (labels never read), (C, H, W) with H == W divisible by 4.
        seed: Seeds the weights, the data orders, the latents, the crops and the penalties.
        device: Where to train.
        progress: Show a progress bar.
        latent_dim: Size of ``z`` (official 100).
        width: :class:`InpaintingGenerator` width (official 32).
        critic_width: First-block channels of both critics (official 64).
        epochs: Passes over the public set (official 100).
        batch_size: Images per batch (official 64); at most ``len(public)``.
        lr: Adam learning rate of the three networks (official 4e-3).
        betas: Adam betas (official (0.5, 0.999)).
        gp_weight: WGAN-GP weight (official 10).
        diversity_weight: Weight of the diversity term (official 0.5).
        reconstruction_weight: Weight of the L1 hole reconstruction loss (official 0: computed,
            never added).
        mask_fraction: Side of the hidden centre square, as a fraction of H (official 0.5).
        patch_fraction: Side of the local critic's crops, as a fraction of H (official 0.5).

    Returns:
        ``(tensors, meta)``: state dicts as ``"G.<key>"``, ``"DG.<key>"``, ``"DL.<key>"`` and the
        ``"mean_pixel"``; metadata (sizes, update counts, histories subsampled to at most 200
        entries, wall time).

    Raises:
        ValueError: a bad size or hyperparameter, fewer public images than ``batch_size``.

    Example:
        >>> from mibench_lib.testing import build_public_prior, tiny_digits
        >>> inp = build_public_prior(SECRETGEN_INPAINTER, tiny_digits()[0][:32])
        >>> inp.generator.image_shape, inp.patch_size, inp.mean_pixel.shape
        ((1, 8, 8), 4, torch.Size([1]))
    """
    if not isinstance(public, ImageSet):
        raise TypeError(f"public must be an ImageSet, got {type(public).__name__}")
    for name, value in (
        ("latent_dim", latent_dim),
        ("width", width),
        ("critic_width", critic_width),
        ("epochs", epochs),
        ("batch_size", batch_size),
    ):
        check_int(name, value)
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (BatchNorm), got {batch_size}")
    if batch_size > len(public):
        raise ValueError(
            f"batch_size must be at most the number of public images ({len(public)}), got "
            f"{batch_size}"
        )
    check_real("lr", lr, strict=True)
    beta_pair = tuple(float(b) for b in betas)
    if len(beta_pair) != 2 or not all(0 <= b < 1 for b in beta_pair):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    check_real("gp_weight", gp_weight)
    check_real("diversity_weight", diversity_weight)
    check_real("reconstruction_weight", reconstruction_weight)
    for name, value in (("mask_fraction", mask_fraction), ("patch_fraction", patch_fraction)):
        if not (isinstance(value, numbers.Real) and 0 < value < 1):
            raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    image_shape = tuple(int(s) for s in public.image_shape)
    side = image_shape[1]
    patch = max(2, round(patch_fraction * side))
    sizes = {
        "latent_dim": int(latent_dim),
        "width": int(width),
        "critic_width": int(critic_width),
        "patch_size": int(patch),
    }
    device = torch.device(device)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG untouched
        torch.manual_seed(seed)
        generator, d_global, d_local = _make_networks(image_shape, **sizes)  # type: ignore[arg-type]
    nets = (generator, d_global, d_local)
    for net in nets:
        net.to(device).train()
    mean_pixel = _mean_pixel(public)
    mask = center_mask(side, side, fraction=mask_fraction).to(device)
    hole = 1.0 - mask

    rng = torch.Generator().manual_seed(seed)
    params = {k: list(n.parameters()) for k, n in zip(("G", "DG", "DL"), nets)}
    opts = {k: torch.optim.Adam(p, lr=lr, betas=beta_pair) for k, p in params.items()}
    min_batch = min(8, batch_size)
    per_epoch = len(public) // batch_size + (len(public) % batch_size >= min_batch)
    history: dict[str, list[float]] = {
        k: [] for k in ("d_local", "d_global", "g_loss", "gan", "diversity", "reconstruction")
    }
    counts = {"DL": 0, "DG": 0, "G": 0}
    bar = tqdm(total=epochs * per_epoch, desc="SecretGen inpainter", disable=not progress)

    def fill(x: Tensor, z: Tensor) -> Tensor:
        return composite(generator, x, mask.expand(len(x), 1, side, side), z, mean_pixel)

    def latents(n: int) -> Tensor:
        return torch.randn(n, latent_dim, generator=rng).to(device)

    for _ in range(epochs):
        order = torch.randperm(len(public), generator=rng)
        for b in range(per_epoch):
            x = public[order[b * batch_size : (b + 1) * batch_size]][0].to(device)
            n = len(x)
            # local critic on a random crop of real and composited fake
            with torch.no_grad():
                fake = fill(x, latents(n))
            top, left = _patch_offset(side, patch, rng)
            real_c, fake_c = _crop(x, top, left, patch), _crop(fake, top, left, patch)
            alpha = torch.rand(n, generator=rng).to(device)
            wd = d_local(real_c)[1].mean() - d_local(fake_c)[1].mean()
            loss_dl = -wd + gp_weight * gradient_penalty(d_local, real_c, fake_c, alpha)
            _update("DL", opts["DL"], params["DL"], loss_dl)
            # global critic on whole images
            with torch.no_grad():
                fake = fill(x, latents(n))
            alpha = torch.rand(n, generator=rng).to(device)
            wd = d_global(x)[1].mean() - d_global(fake)[1].mean()
            loss_dg = -wd + gp_weight * gradient_penalty(d_global, x, fake, alpha)
            _update("DG", opts["DG"], params["DG"], loss_dg)
            # generator: realism for both critics, diversity between two latents
            z1 = latents(n)
            out1 = fill(x, z1)
            top, left = _patch_offset(side, patch, rng)
            feat1, score_g = d_global(out1)
            gan = (-d_local(_crop(out1, top, left, patch))[1].mean() - score_g.mean()) / 2
            recon = ((out1 - x) * hole).abs().sum() / n
            z2 = latents(n)
            feat2, _ = d_global(fill(x, z2))
            diversity = (feat1 - feat2).abs().mean() / (z2 - z1).abs().mean()
            loss_g = gan - diversity_weight * diversity
            if reconstruction_weight:
                loss_g = loss_g + reconstruction_weight * recon
            _update("G", opts["G"], params["G"], loss_g)
            for key, value in (
                ("d_local", loss_dl),
                ("d_global", loss_dg),
                ("g_loss", loss_g),
                ("gan", gan),
                ("diversity", diversity),
                ("reconstruction", recon),
            ):
                history[key].append(float(value.detach()))
            for key in counts:
                counts[key] += 1
            bar.update(1)
    bar.close()
    for net in nets:
        net.eval()
    tensors = {
        **{f"G.{k}": v for k, v in generator.state_dict().items()},
        **{f"DG.{k}": v for k, v in d_global.state_dict().items()},
        **{f"DL.{k}": v for k, v in d_local.state_dict().items()},
        "mean_pixel": mean_pixel,
    }
    meta = {
        **sizes,
        "image_shape": list(image_shape),
        "mask_fraction": float(mask_fraction),
        "epochs": int(epochs),
        "updates": counts,
        "reconstruction_weight": float(reconstruction_weight),
        "history": {k: v[:: max(1, len(v) // 200)] for k, v in history.items()},
        "wall_time_s": time.perf_counter() - t0,
    }
    return tensors, meta


def load_secretgen_inpainter(
    tensors: Mapping[str, Tensor], meta: Mapping[str, Any], device: Any
) -> SecretGenInpainter:
    """Rebuild :func:`build_secretgen_inpainter`'s networks: frozen, in eval mode, on ``device``."""
    image_shape = tuple(int(s) for s in meta["image_shape"])
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten: no draw kept
        nets = _make_networks(
            image_shape,  # type: ignore[arg-type]
            latent_dim=int(meta["latent_dim"]),
            width=int(meta["width"]),
            critic_width=int(meta["critic_width"]),
            patch_size=int(meta["patch_size"]),
        )
    for prefix, net in zip(("G.", "DG.", "DL."), nets):
        net.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        net.to(device).eval().requires_grad_(False)
    return SecretGenInpainter(
        *nets, mean_pixel=tensors["mean_pixel"].to(device), patch_size=int(meta["patch_size"])
    )


#: SecretGen's stage 1: the inpainting GAN, trained from public images only (no target).
SECRETGEN_INPAINTER = PublicPrior(
    "secretgen_inpainter",
    build_secretgen_inpainter,
    load_secretgen_inpainter,
    quick={"latent_dim": 8, "width": 2, "critic_width": 4, "epochs": 1, "batch_size": 16},
)


# ------------------------------------------------------------- stage 2: distribution discrimination
def _cutout_cells(side: int, cutouts: int, cutout_size: int | None) -> list[tuple[int, int, int]]:
    """(top, left, size) of each cut-out: the cells of a fixed g x g grid (``cutouts = g * g``)."""
    if cutouts == 0:
        return []
    g = math.isqrt(cutouts)
    step = side // g
    size = step if cutout_size is None else cutout_size
    return [(i * step, j * step, size) for i in range(g) for j in range(g)]


def cutout_views(
    images: Tensor, mean_pixel: Tensor, cells: Sequence[tuple[int, int, int]]
) -> Tensor:
    """``images`` with one cell set to ``mean_pixel``, for every cell: (len(cells) * N, C, H, W),
    cell-major (the official ``FixedCutOut``).

    Example:
        >>> v = cutout_views(torch.ones(2, 1, 4, 4), torch.tensor([0.0]), [(0, 0, 2), (2, 2, 2)])
        >>> v.shape, v.sum(dim=(1, 2, 3)).tolist()
        (torch.Size([4, 1, 4, 4]), [12.0, 12.0, 12.0, 12.0])
    """
    views = []
    fill = mean_pixel.to(images).view(1, -1, 1, 1)
    for top, left, size in cells:
        v = images.clone()
        v[:, :, top : top + size, left : left + size] = fill
        views.append(v)
    return torch.cat(views) if views else images[:0]


def pseudo_labels(top1: Tensor, valid: Tensor, mean_scores: Tensor) -> Tensor:
    """SecretGen's distribution discrimination: one pseudo-label per image.

    The class with the highest averaged score among the classes that were the top-1 of some
    (valid) filled image; ties go to the lowest class index; -1 where an image has no valid
    candidate.

    Args:
        top1: (N, M) top-1 class of each candidate's filled image.
        valid: (N, M) bool, the candidates that were queried.
        mean_scores: (N, K) scores averaged over the candidates and views.

    Example:
        >>> top1 = torch.tensor([[2, 2, 0], [1, 1, 1]])
        >>> mean = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.5, 0.3]])
        >>> pseudo_labels(top1, torch.ones(2, 3, dtype=torch.bool), mean).tolist()
        [2, 1]
    """
    n, k = mean_scores.shape
    seen = torch.zeros(n, k, dtype=torch.bool)
    rows = torch.arange(n)[:, None].expand_as(top1)
    seen[rows[valid], top1[valid]] = True
    masked = torch.where(seen, mean_scores.double(), -math.inf)
    out = masked.argmax(dim=1)
    out[~valid.any(dim=1)] = -1
    return out


def select_start(
    scores: Tensor, valid: Tensor, classes: Tensor, *, fallback: bool = True
) -> tuple[Tensor, Tensor]:
    """The start candidate of each image: the most confident candidate of its class.

    Among the valid candidates whose filled image has ``classes[i]`` as top-1, the one with the
    highest score of that class (= its top-1 confidence; the earliest on ties). With ``fallback``,
    an image with no such candidate takes the valid candidate with the highest score of its class;
    an image with no valid candidate (or a class of -1) takes candidate 0 with a nan score.

    Args:
        scores: (N, M, K) released scores of the candidates' filled images.
        valid: (N, M) bool.
        classes: (N,) class per image (-1: none).
        fallback: Use the highest-score fallback (otherwise such images get candidate 0, nan).

    Returns:
        ``(index (N,), score (N,))``.

    Example:
        >>> s = torch.tensor([[[0.6, 0.4], [0.9, 0.1], [0.2, 0.8]]])
        >>> select_start(s, torch.ones(1, 3, dtype=torch.bool), torch.tensor([0]))
        (tensor([1]), tensor([0.9000]))
    """
    n, m, _ = scores.shape
    cls = classes.clamp_min(0)
    p = scores.gather(2, cls.view(n, 1, 1).expand(n, m, 1)).squeeze(2).double()
    ok = valid & (classes[:, None] >= 0)
    is_top = ok & (scores.argmax(dim=2) == cls[:, None])
    best = torch.where(is_top, p, -math.inf).argmax(dim=1)
    if fallback:
        alt = torch.where(ok, p, -math.inf).argmax(dim=1)
        best = torch.where(is_top.any(dim=1), best, alt)
        has = ok.any(dim=1)
    else:
        has = is_top.any(dim=1)
    best = torch.where(has, best, torch.zeros_like(best))
    score = p.gather(1, best[:, None]).squeeze(1).float()
    return best, torch.where(has, score, torch.full_like(score, math.nan))


def hole_psnr(images: Tensor, reference: Tensor, mask: Tensor) -> Tensor:
    """PSNR (dB, peak 1) of ``images`` against ``reference`` over the hidden pixels only.

    Args:
        images: (N, C, H, W) in [0, 1].
        reference: (N, C, H, W) in [0, 1], the true images.
        mask: (N, 1, H, W), 1 = known, 0 = hidden.

    Returns:
        (N,) float: ``10 log10(1 / MSE)`` with the MSE over every channel of the hidden pixels;
        ``inf`` where they are equal.

    Raises:
        ValueError: shapes that disagree, or a mask without hidden pixels.

    Example:
        >>> ref = torch.zeros(1, 1, 4, 4)
        >>> m = torch.ones(1, 1, 4, 4); m[..., 1:3, 1:3] = 0
        >>> hole_psnr(ref + 0.1 * (1 - m) + 0.5 * m, ref, m).tolist()  # known pixels ignored
        [20.0]
    """
    if images.shape != reference.shape or images.ndim != 4:
        raise ValueError(
            f"images and reference must have one (N, C, H, W) shape, got {tuple(images.shape)} "
            f"and {tuple(reference.shape)}"
        )
    n, c, h, w = images.shape
    if tuple(mask.shape) != (n, 1, h, w):
        raise ValueError(f"mask must have shape ({n}, 1, {h}, {w}), got {tuple(mask.shape)}")
    hidden = (1.0 - mask.double()).expand(n, c, h, w)
    count = hidden.sum(dim=(1, 2, 3))
    if bool((count == 0).any()):
        raise ValueError("every mask must hide at least one pixel")
    mse = ((images.double() - reference.double()) ** 2 * hidden).sum(dim=(1, 2, 3)) / count
    return (10 * torch.log10(1.0 / mse)).float()


# ------------------------------------------------------------------------------ the attack
def secretgen_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    masked_private: MaskedImages,
    secretgen_inpainter: SecretGenInpainter,
    candidates: int = 200,
    cutouts: int = 16,
    cutout_size: int | None = None,
    steps: int = 1500,
    step_size: float = 0.01,
    momentum: float = 0.9,
    label_known: bool = False,
    query_batch: int | None = 4096,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """Fill the hidden centre of each masked private image with SecretGen's black-box recovery.

    Start by distribution discrimination (the only queries), then move each latent by the
    critics' realism alone (no queries); see the module docstring.

    Args:
        oracle: The target at access ``"probabilities"`` (any release works: every answer is read
            through :func:`~mibench_lib.attacks._query.released_scores`; a label release gives
            one-hot scores).
        labels: (N,) int64 true class of each masked image (what the study scores against;
            read by the attack only with ``label_known``).
        masked_private: The N masked images (same order as ``labels``), of the target's shape.
        secretgen_inpainter: The stage-1 networks (:data:`SECRETGEN_INPAINTER`), on the oracle's
            device, for images of the target's shape.
        candidates: Latents tried per image in the start (official ``--num`` 200).
        cutouts: Cut-out views per latent, a square g * g (official 16: a 4 x 4 grid); 0 queries
            the filled images only.
        cutout_size: Side of each cut-out; ``None``: the grid cell, ``H // g`` (official 16 of
            64).
        steps: Realism steps (official ``--max_iter`` 1500; 0 keeps the start).
        step_size: Nesterov step (official 0.01).
        momentum: Nesterov momentum (official 0.9).
        label_known: ``False``: ``"ini-bb"``, the pseudo-label picks the start. ``True``:
            ``"full-bb"``, ``labels`` pick the start and no cut-out is queried.
        query_batch: Most images per oracle call, in whole latents (each latent's filled image
            and its cut-outs go in one call, so a call holds at least ``1 + cutouts`` images);
            ``None``: one call. Calls are in image-major order of (image, candidate).
        rng: CPU generator for the candidate latents and the local critic's crops.
        on_step: Progress hook ``on_step(step, steps, info)`` every 10 realism steps and at the
            last, with the mean realism loss (``"loss"``) and the mean |z|.

    Returns:
        InversionResult with the N composited fills (equal to the masked images outside the
        hole, bit for bit), ``labels`` as given, the final latents, ``losses`` (mean realism
        loss per step, before its update), ``queries`` and ``extras``:

        - ``"pseudo_labels"``: (N,) int64 pseudo-label (-1: no candidate could be queried;
          the given label with ``label_known``);
        - ``"pseudo_label_correct"``: (N,) bool, pseudo-label == label;
        - ``"start_scores"``: (N,) the start's released score of its class (nan: not queried);
        - ``"start_index"``, ``"candidates_used"``: (N,) int64;
        - ``"mode"``: ``"ini-bb"`` or ``"full-bb"``; ``"stopped_by_budget"``: bool.

    Raises:
        ValueError: bad labels or arguments, masked images or an inpainter of another shape
            than the target's input.
        TypeError: ``masked_private`` or ``secretgen_inpainter`` of the wrong type.

    Example:
        >>> from mibench_lib.attacks._masked import mask_images
        >>> from mibench_lib.testing import build_public_prior, tiny_classifier, tiny_digits
        >>> x = tiny_digits()[0]
        >>> inp = build_public_prior(SECRETGEN_INPAINTER, x[:32])
        >>> oracle = TargetOracle(tiny_classifier(), access="probabilities")
        >>> res = secretgen_attack(oracle, torch.tensor([0, 3]), masked_private=mask_images(x[40:42]),
        ...                        secretgen_inpainter=inp, candidates=3, steps=2,
        ...                        rng=torch.Generator().manual_seed(0))
        >>> res.images.shape, res.queries, res.extras["pseudo_labels"].shape
        (torch.Size([2, 1, 8, 8]), 102, torch.Size([2]))
    """
    check_labels(labels, oracle.num_classes)
    n = labels.numel()
    if not isinstance(masked_private, MaskedImages):
        raise TypeError(f"masked_private must be MaskedImages, got {type(masked_private).__name__}")
    if len(masked_private) != n:
        raise ValueError(
            f"masked_private must hold one image per label entry ({n}), got {len(masked_private)}"
        )
    shape = tuple(int(s) for s in oracle.input_shape)
    if tuple(masked_private.images.shape[1:]) != shape:
        raise ValueError(
            f"masked_private images of shape {tuple(masked_private.images.shape[1:])} do not fit "
            f"the target's input shape {shape}"
        )
    if not isinstance(secretgen_inpainter, SecretGenInpainter):
        raise TypeError(
            f"secretgen_inpainter must be a SecretGenInpainter (the 'secretgen_inpainter' "
            f"public prior), got {type(secretgen_inpainter).__name__}"
        )
    generator = secretgen_inpainter.generator
    if tuple(generator.image_shape) != shape:
        raise ValueError(
            f"secretgen_inpainter was built for images of shape {tuple(generator.image_shape)}, "
            f"the target takes {shape}"
        )
    check_int("candidates", candidates)
    check_int("cutouts", cutouts, 0)
    if cutouts and math.isqrt(cutouts) ** 2 != cutouts:
        raise ValueError(f"cutouts must be 0 or a square (4, 9, 16, ...), got {cutouts}")
    side = shape[1]
    if cutouts and math.isqrt(cutouts) > side:
        raise ValueError(f"cutouts must be at most {side * side} (a {side}-px grid), got {cutouts}")
    if cutout_size is not None and not (
        not isinstance(cutout_size, bool)
        and isinstance(cutout_size, numbers.Integral)
        and 1 <= cutout_size <= side
    ):
        raise ValueError(
            f"cutout_size must be None or an integer in [1, {side}], got {cutout_size!r}"
        )
    check_int("steps", steps, 0)
    check_real("step_size", step_size, strict=True)
    if not (isinstance(momentum, numbers.Real) and not isinstance(momentum, bool)
            and 0 <= momentum < 1):  # fmt: skip
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not isinstance(label_known, bool):
        raise ValueError(f"label_known must be a bool, got {label_known!r}")
    if query_batch is not None:
        check_int("query_batch", query_batch)

    t0, q0 = time.perf_counter(), oracle.queries
    device = secretgen_inpainter.mean_pixel.device
    d_global, d_local = secretgen_inpainter.global_critic, secretgen_inpainter.local_critic
    mean_pixel, patch = secretgen_inpainter.mean_pixel, secretgen_inpainter.patch_size
    images = masked_private.images.to(device).float()
    mask = masked_private.mask.to(device).float()
    dim, k = generator.latent_dim, oracle.num_classes
    cells = [] if label_known else _cutout_cells(side, cutouts, cutout_size)
    per_z = 1 + len(cells)

    # ---- start: distribution discrimination (the only queries)
    z_all = torch.randn(n, candidates, dim, generator=rng).clamp_(-1, 1)
    units = min(n * candidates, affordable(oracle, n * candidates * per_z) // per_z)
    stopped = units < n * candidates
    used = torch.full((n,), units // n, dtype=torch.int64)
    used[: units % n] += 1
    valid = torch.arange(candidates)[None, :] < used[:, None]  # (N, M)
    scores = torch.zeros(n, candidates, k)
    view_sums = torch.zeros(n, k, dtype=torch.float64)
    pairs = valid.nonzero()  # (P, 2) rows (image, candidate), image-major
    per_call = max(1, (query_batch or max(1, len(pairs) * per_z)) // per_z)
    with eval_mode(generator, d_global, d_local), torch.no_grad():
        for lo in range(0, len(pairs), per_call):
            i, j = pairs[lo : lo + per_call].T
            fills = composite(generator, images[i], mask[i], z_all[i, j].to(device), mean_pixel)
            views = torch.cat([fills, cutout_views(fills, mean_pixel, cells)])
            answer = released_scores(oracle, views).float().cpu()  # (per_z * m, K), view-major
            scores[i, j] = answer[: len(i)]
            view_sums.index_add_(0, i, answer.view(per_z, len(i), k).sum(0).double())
    if label_known:
        classes = labels.cpu().clone()
    else:
        mean_scores = view_sums / (used.clamp_min(1) * per_z)[:, None]
        classes = pseudo_labels(scores.argmax(dim=2), valid, mean_scores)
    start, start_scores = select_start(scores, valid, classes)
    z = z_all[torch.arange(n), start].to(device)

    # ---- realism search: critics only, no queries
    losses: list[float] = []
    velocity = torch.zeros_like(z)
    with eval_mode(generator, d_global, d_local):
        for step in range(1, steps + 1):
            z.requires_grad_(True)
            fills = composite(generator, images, mask, z, mean_pixel)
            top, left = _patch_offset(side, patch, rng)
            per_entry = -d_local(_crop(fills, top, left, patch))[1] - d_global(fills)[1]
            (grad,) = torch.autograd.grad(per_entry.sum() / OFFICIAL_BATCH, z)
            with torch.no_grad():
                previous = velocity
                velocity = momentum * velocity - step_size * grad
                z = (z + (-momentum * previous + (1 + momentum) * velocity)).clamp(-1, 1)
            losses.append(float(per_entry.detach().mean()))
            if on_step is not None and (step % 10 == 0 or step == steps):
                on_step(step, steps, {"loss": losses[-1], "z_abs": float(z.abs().mean())})
        with torch.no_grad():
            out = composite(generator, images, mask, z.detach(), mean_pixel)
    pseudo = classes.to(torch.int64)
    return InversionResult(
        attack="secretgen",
        images=out.cpu(),
        labels=labels.cpu(),
        latents=z.detach().cpu(),
        losses=losses,
        queries=oracle.queries - q0,
        wall_time_s=time.perf_counter() - t0,
        extras={
            "pseudo_labels": pseudo,
            "pseudo_label_correct": pseudo == labels.cpu(),
            "start_scores": start_scores,
            "start_index": start,
            "candidates_used": used,
            "mode": "full-bb" if label_known else "ini-bb",
            "stopped_by_budget": bool(stopped),
        },
    )


#: What the study engine needs to know: probabilities, the masked images and the inpainting GAN.
SPEC = AttackSpec(
    "secretgen",
    secretgen_attack,
    access="probabilities",
    needs=("masked_private", SECRETGEN_INPAINTER),
    quick={"candidates": 4, "steps": 3},
    threat_model="partial",
)
