"""Knowledge-enriched distributional model inversion (KEDMI): Chen, Jia, McCauley and Liu,
"Knowledge-Enriched Distributional Model Inversion Attacks", ICCV 2021,
https://arxiv.org/abs/2010.04092.

Algorithm. Two stages.

1. **Inversion-specific GAN** (a :class:`TargetPrior`, built once per target). The
   discriminator ``D`` is a K-way classifier (K = the target's classes) with no explicit fake
   class: ``D(x) = (f(x), l(x))``, a feature vector and K logits, and its realness is
   ``P(real | x) = sigmoid(logsumexp_k l_k(x))``. A minibatch-discrimination layer between the
   feature and the logits lets ``D`` compare each image with the rest of its batch. ``D`` learns
   the target's **soft labels** ``p_T(x) = softmax(T(x))`` on public images:

       L_D = CE_soft(l(x_lab), p_T(x_lab))
             + w_unl * [ -log sigmoid(lse l(x_unl)) - log(1 - sigmoid(lse l(G(z)))) ]

   with ``x_lab`` and ``x_unl`` two independently drawn public batches and ``w_unl = 0.5``. The
   generator ``G`` (GMI's DCGAN generator, sigmoid output) matches ``D``'s features of a third
   public batch and is pushed to images ``D`` classifies confidently:

       L_G = mean_j | mean_batch f_j(G(z)) - mean_batch f_j(x_unl2) | + 1e-4 * sum_batch H(softmax l(G(z)))

   One generator step follows every ``n_critic = 5`` discriminator steps; both use Adam
   (2e-4, betas (0.5, 0.999)) on batches of 64 for 120 epochs. The target is queried once per
   public image, up front, for its soft labels (see :func:`build_kedmi_gan`).

2. **Distributional recovery** (:func:`kedmi_attack`, white-box). For every label entry ``i``
   the attack learns a Gaussian ``N(mu_i, diag(exp(log_var_i)))`` over ``G``'s latents, starting
   from ``mu = 0`` and ``log_var = 1``. Each step draws ``z_i = mu_i + exp(log_var_i / 2) * eps_i``
   (reparameterisation, fresh ``eps`` per step) and descends, with Adam (lr 0.02) on
   ``(mu, log_var)``,

       L_i = -log sigmoid(lse l(G(z_i))) + lambda_iden * CE(T(G(z_i)), y_i)

   for 2,400 steps. The result is ``samples = 5`` fresh draws per entry from the learned
   Gaussian; the official evaluation reports the accuracy averaged over the draws.

Relation to the official code (SCccc21/Knowledge-Enriched-DMI: ``k+1_gan.py``, ``discri.py``,
``utils.py``, ``attack.py`` ``dist_inversion``, ``recovery.py``):

- Architectures. The generator is this library's
  :class:`~mibench_lib.generators.dcgan.DCGANGenerator` (4x4 transposed convolutions; the
  official one is GMI's with 5x5 kernels); ``width = 32`` matches the official ``dim = 64``
  (see that class). The discriminator follows ``MinibatchDiscriminator`` at any power-of-two
  resolution: one stride-2 conv-InstanceNorm-LeakyReLU block per halving down to 4x4 (kernel 5,
  the last one kernel 3), channels ``critic_width * (1, 2, 4, 4, ...)``, so at 64 px with
  ``critic_width = 64`` it is the official 64-128-256-256 trunk with a 4,096-d feature. The
  minibatch discrimination (64 kernels of 50 dimensions, ``exp(-L1)`` similarities summed over
  the other images, not averaged) and the linear head are the official ones. As officially,
  ``D`` takes images in [0, 1] as they are.
- Soft labels are the target's probabilities on each public image, queried **once** for the
  whole public set before training (the official script re-runs the target on every labelled
  batch, the same values, ``epochs`` times over). The access level is ``"probabilities"``:
  ``softmax(T(x))`` is all the method reads (the official ``softXEnt`` applies the softmax to
  the target's logits).
- Data order. Officially each epoch is one pass of a shuffled labelled loader, and the two
  unlabelled batches come from two further shuffled loaders of the same data (``drop_last``
  everywhere). Here the three orders are three permutations per epoch drawn from one CPU
  generator seeded with ``seed`` (the generator's latents too); the second unlabelled batch is
  drawn at every step and used only at generator steps, as officially. The step counter that
  schedules generator steps runs across epochs, as officially.
- The official ``freeze``/``unfreeze`` of ``requires_grad`` flags becomes gradients taken with
  respect to the network being updated only; the fakes of a discriminator step are generated
  without a graph. Values are the same.
- The config key ``unlabel_weight: 10`` is never read officially (0.5 is hard-coded); 0.5 is the
  default of ``unlabelled_weight`` here.
- Recovery, step scaling. The official loss is the batch **mean** of the prior and of the
  cross-entropy over its batch of 60 identities (one draw each), so each ``(mu_i, log_var_i)``
  gets ``1 / 60`` of its own loss gradient. Here the per-entry losses are summed and divided by
  the fixed ``loss_divisor = 60``, so every entry gets exactly the official gradient whatever
  this run's number of labels or ``batch_size`` (Adam is nearly invariant to a constant loss
  scale anyway; the fixed divisor also keeps its ``eps`` regime the official one). The prior is
  computed on all images of a chunk in one discriminator batch, as officially on the batch of 60;
  through minibatch discrimination an image's realness depends slightly on the other images in
  its chunk, so the number of labels per call and ``batch_size`` can change the search a little
  (as the official batch of 60 identities does).
- Clipping. The official ``dist_inversion`` clamps a detached copy of ``z`` after the step and
  never uses it, so neither the search nor the final draws are clipped; ``clip=None`` (default)
  is that behaviour. ``clip=c`` clamps every sampled ``z`` to ``[-c, c]`` before ``G`` inside the
  graph (coordinates outside get no gradient), in the search and in the final draws: the KEDMI
  path of LOMMA (Re-thinking_MI ``attack.py``, ``clipz=True``, ``clip_range=1``).
- Randomness. The official draws use ``torch.randn_like`` on the GPU; here every ``eps`` is drawn
  from ``rng`` on the CPU, chunk by chunk and step by step, then the final draws, so results are
  seed-deterministic and device-independent. The output is ``samples`` draws (official 5,
  ``num_seeds``), laid out sample-major; the official loop over "seeds" re-draws from the same
  learned Gaussian without re-seeding.
- The identity term may be replaced (``identity_loss``), e.g. by LOMMA's logit loss with its
  feature regulariser; the default is the official cross-entropy.
- Not reproduced (bugs): the non-distributional ``inversion`` ends on an undefined
  ``seed_var`` (NameError), and the useless clamp above. The evaluation (FaceNet at 112 px,
  success images) is a study's business, not the attack's.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib._checks import check_int, check_labels, check_real
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec, TargetPrior
from mibench_lib.byo import check_generator, check_target
from mibench_lib.data._types import ImageSet
from mibench_lib.generators.dcgan import DCGANGenerator
from mibench_lib.oracle import AccessDenied, TargetOracle
from mibench_lib.progress import tqdm

__all__ = [
    "KEDMIGAN",
    "KEDMI_GAN",
    "OFFICIAL_BATCH",
    "KEDMIDiscriminator",
    "MinibatchDiscrimination",
    "build_kedmi_gan",
    "discriminator_loss",
    "entropy",
    "fake_loss",
    "feature_matching_loss",
    "generator_loss",
    "kedmi_attack",
    "load_kedmi_gan",
    "query_soft_labels",
    "realness_loss",
    "soft_cross_entropy",
]

#: Identities per batch in the official recovery (``recovery.py``: 300 identities, 5 batches of
#: 60); its batch-mean losses divide each entry's gradient by this number.
OFFICIAL_BATCH = 60

#: Signature of a replacement identity loss: ``(images (M, C, H, W), labels (M,)) -> (M,)``.
IdentityLoss = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------------- networks
class MinibatchDiscrimination(nn.Module):
    """Salimans et al.'s minibatch discrimination: append each row's closeness to the others.

    ``M = x @ T`` is reshaped to ``(N, kernels, kernel_dims)``; for row ``i`` and kernel ``b``,
    ``o_ib = sum_{j != i} exp(-||M_ib - M_jb||_1)`` (a sum, not a mean, as in KEDMI's code).
    ``T`` starts from N(0, 1).

    Args:
        in_features: Size A of the input rows.
        kernels: Number B of kernels (KEDMI: 64).
        kernel_dims: Dimension C of each kernel (KEDMI: 50).

    Example:
        >>> mbd = MinibatchDiscrimination(6, 4, 3)
        >>> mbd(torch.randn(5, 6)).shape
        torch.Size([5, 10])
    """

    def __init__(self, in_features: int, kernels: int = 64, kernel_dims: int = 50) -> None:
        super().__init__()
        self.in_features, self.kernels, self.kernel_dims = in_features, kernels, kernel_dims
        self.T = nn.Parameter(torch.randn(in_features, kernels, kernel_dims))

    def forward(self, x: Tensor) -> Tensor:
        """(N, A) -> (N, A + B): the input with its B closeness scores appended."""
        m = (x @ self.T.view(self.in_features, -1)).view(-1, self.kernels, self.kernel_dims)
        m = m.transpose(0, 1)  # (B, N, C)
        # (B, N, N) L1 distances; cdist never materialises the (N, N, B, C) differences
        dist = torch.cdist(m, m, p=1)
        closeness = torch.exp(-dist).sum(2) - 1  # minus the row's own exp(0)
        return torch.cat([x, closeness.T], dim=1)


def _num_halvings(size: int) -> int:
    n = math.log2(size / 4)
    if size < 8 or n != int(n):
        raise ValueError(f"resolution must be a power of two >= 8, got {size}")
    return int(n)


class KEDMIDiscriminator(nn.Module):
    """KEDMI's K-way discriminator: conv trunk -> feature -> minibatch discrimination -> K logits.

    The trunk has one stride-2 conv-InstanceNorm-LeakyReLU(0.2) block per halving from H down to
    4 x 4 (kernel 5, padding 2; the last block kernel 3, padding 1), with
    ``width * min(2**i, 4)`` channels in block ``i``; the feature is the flattened 4 x 4 output.
    At 64 px with ``width = 64`` this is the official trunk (64, 128, 256, 256 channels, a
    4,096-d feature). Images in [0, 1] enter as they are, as officially.

    Args:
        input_shape: (C, H, W) with H == W a power of two >= 8.
        num_classes: K, the target's number of classes.
        width: Channels of the first block (official ``dim`` 64).
        mbd_kernels: Minibatch-discrimination kernels (official 64).
        mbd_kernel_dims: Their dimension (official 50).

    Raises:
        ValueError: non-square images, a side that is not a power of two >= 8, or a size below 1.

    Example:
        >>> d = KEDMIDiscriminator((1, 16, 16), num_classes=5, width=4, mbd_kernels=3, mbd_kernel_dims=2)
        >>> feature, logits = d(torch.rand(3, 1, 16, 16))
        >>> feature.shape, logits.shape
        (torch.Size([3, 128]), torch.Size([3, 5]))
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        width: int = 64,
        mbd_kernels: int = 64,
        mbd_kernel_dims: int = 50,
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        if h != w:
            raise ValueError(f"KEDMIDiscriminator needs square images, got {tuple(input_shape)}")
        n = _num_halvings(h)
        for name, value in (
            ("num_classes", num_classes),
            ("width", width),
            ("mbd_kernels", mbd_kernels),
            ("mbd_kernel_dims", mbd_kernel_dims),
        ):
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        blocks: list[nn.Module] = []
        cin = c
        for i in range(n):
            cout = width * min(2**i, 4)
            k, p = (3, 1) if i == n - 1 else (5, 2)
            blocks += [
                nn.Conv2d(cin, cout, k, 2, p),
                nn.InstanceNorm2d(cout, affine=True),
                nn.LeakyReLU(0.2),
            ]
            cin = cout
        self.trunk = nn.Sequential(*blocks, nn.Flatten())
        self.feature_dim = cin * 16
        self.mbd = MinibatchDiscrimination(self.feature_dim, mbd_kernels, mbd_kernel_dims)
        self.head = nn.Linear(self.feature_dim + mbd_kernels, num_classes)
        self.input_shape = (c, h, w)
        self.num_classes = int(num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) in [0, 1] -> (features (N, F), logits (N, K)); rows interact (MBD)."""
        feature = self.trunk(x)
        return feature, self.head(self.mbd(feature))


@dataclass(frozen=True)
class KEDMIGAN:
    """The inversion-specific GAN :func:`kedmi_attack` takes (what :data:`KEDMI_GAN` loads).

    Attributes:
        generator: (N, latent_dim) -> (N, C, H, W) in [0, 1], with ``latent_dim``; frozen, eval.
        discriminator: (N, C, H, W) -> (features (N, F), logits (N, K)); frozen, eval.
    """

    generator: nn.Module
    discriminator: nn.Module


# ------------------------------------------------------------------------------------- losses
def realness_loss(logits: Tensor) -> Tensor:
    """-log P(real) = -log sigmoid(logsumexp(logits)) per image: the attack's prior term.

    (N, K) -> (N,). Adding a constant c > 0 to every logit lowers it (a softmax over the K
    classes alone would not see the shift).

    Example:
        >>> l = torch.tensor([[0.0, 1.0]])
        >>> bool(realness_loss(l + 1.0) < realness_loss(l))
        True
    """
    return F.softplus(-torch.logsumexp(logits, dim=1))


def fake_loss(logits: Tensor) -> Tensor:
    """-log(1 - P(real)) = softplus(logsumexp(logits)) per image: D's loss on a fake, (N,)."""
    return F.softplus(torch.logsumexp(logits, dim=1))


def soft_cross_entropy(logits: Tensor, probs: Tensor) -> Tensor:
    """-sum_k p_k log softmax(logits)_k per row, (N, K) x (N, K) -> (N,): the labelled loss."""
    return -(probs * F.log_softmax(logits, dim=1)).sum(dim=1)


def entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits), summed over the batch (KEDMI's ``HLoss``): a scalar."""
    return -(F.softmax(logits, dim=1) * F.log_softmax(logits, dim=1)).sum()


def feature_matching_loss(fake_features: Tensor, real_features: Tensor) -> Tensor:
    """Mean over feature dimensions of |batch mean on fakes - batch mean on reals|: a scalar."""
    return (fake_features.mean(dim=0) - real_features.mean(dim=0)).abs().mean()


def discriminator_loss(
    discriminator: nn.Module,
    labelled: Tensor,
    soft_labels: Tensor,
    unlabelled: Tensor,
    fake: Tensor,
    *,
    unlabelled_weight: float = 0.5,
) -> tuple[Tensor, dict[str, float]]:
    """KEDMI's discriminator loss on one step's three batches (each its own D batch).

    ``mean CE_soft(l(labelled), soft_labels) + unlabelled_weight * (mean -log P(real | unlabelled)
    + mean -log(1 - P(real | fake)))``.

    Returns:
        The scalar loss and its parts as floats (``"labelled"``, ``"unlabelled"``).
    """
    _, out_lab = discriminator(labelled)
    _, out_unl = discriminator(unlabelled)
    _, out_fake = discriminator(fake)
    lab = soft_cross_entropy(out_lab, soft_labels).mean()
    unl = realness_loss(out_unl).mean() + fake_loss(out_fake).mean()
    return lab + unlabelled_weight * unl, {"labelled": lab.item(), "unlabelled": unl.item()}


def generator_loss(
    discriminator: nn.Module, fake: Tensor, real: Tensor, *, entropy_weight: float = 1e-4
) -> tuple[Tensor, dict[str, float]]:
    """KEDMI's generator loss: feature matching against ``real`` + ``entropy_weight`` * entropy.

    ``real``'s features carry no gradient. Returns the scalar loss and its parts as floats
    (``"feature_matching"``, ``"entropy"``).
    """
    feat_fake, out_fake = discriminator(fake)
    with torch.no_grad():
        feat_real, _ = discriminator(real)
    fm, ent = feature_matching_loss(feat_fake, feat_real), entropy(out_fake)
    return fm + entropy_weight * ent, {"feature_matching": fm.item(), "entropy": ent.item()}


# -------------------------------------------------------------------------- the GAN (a prior)
def query_soft_labels(
    oracle: TargetOracle, images: Tensor | ImageSet, *, batch_size: int = 256
) -> Tensor:
    """The target's probabilities on ``images``, one query per image, in batches, on the CPU.

    Args:
        oracle: At access ``"probabilities"`` (or richer: ``"logits"`` and ``"white-box"``
            answers are put through a softmax).
        images: (N, C, H, W) in [0, 1], or an :class:`~mibench_lib.data.ImageSet` (read batch
            by batch, so uint8 sets are never converted whole; labels ignored).
        batch_size: Images per query batch.

    Returns:
        (N, K) float32 probabilities.

    Raises:
        AccessDenied: ``"top-k"`` or ``"label"`` access (soft labels need every probability).
    """
    if oracle.access not in ("probabilities", "logits", "white-box"):
        raise AccessDenied(
            f"KEDMI's GAN learns the target's soft labels: it needs an oracle at access "
            f"'probabilities' (or richer), got {oracle.access!r}"
        )
    out = []
    with torch.no_grad():
        for lo in range(0, len(images), batch_size):
            answer = oracle(_rows(images, slice(lo, lo + batch_size))).detach().float()
            out.append(answer if oracle.access == "probabilities" else F.softmax(answer, dim=1))
    return torch.cat(out).cpu()


def _rows(images: Tensor | ImageSet, index: Tensor | slice) -> Tensor:
    """Rows ``index`` of a tensor or an ImageSet, as float images in [0, 1]."""
    return images[index][0] if isinstance(images, ImageSet) else images[index]


def _make_networks(
    image_shape: tuple[int, int, int],
    num_classes: int,
    *,
    latent_dim: int,
    width: int,
    critic_width: int,
    mbd_kernels: int,
    mbd_kernel_dims: int,
) -> tuple[DCGANGenerator, KEDMIDiscriminator]:
    generator = DCGANGenerator(latent_dim, image_shape, width=width)
    discriminator = KEDMIDiscriminator(
        image_shape,
        num_classes,
        width=critic_width,
        mbd_kernels=mbd_kernels,
        mbd_kernel_dims=mbd_kernel_dims,
    )
    return generator, discriminator


def build_kedmi_gan(
    oracle: TargetOracle,
    public: ImageSet,
    *,
    num_classes: int,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    latent_dim: int = 100,
    width: int = 32,
    critic_width: int = 64,
    mbd_kernels: int = 64,
    mbd_kernel_dims: int = 50,
    epochs: int = 120,
    batch_size: int = 64,
    lr: float = 2e-4,
    betas: Sequence[float] = (0.5, 0.999),
    n_critic: int = 5,
    unlabelled_weight: float = 0.5,
    entropy_weight: float = 1e-4,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Train KEDMI's inversion-specific GAN on public images labelled by the target's soft labels.

    The target is queried exactly once per public image, before training, for its probabilities
    (so the build makes ``len(public)`` queries); nothing else reaches it. Each epoch runs
    ``len(public) // batch_size`` discriminator steps (incomplete batches dropped, as
    officially), with a generator step after every ``n_critic``-th discriminator step (counted
    across epochs). Everything random (initial weights, data orders, latents) follows ``seed``;
    the caller's global random state is left as it was.

    Args:
        oracle: The target at access ``"probabilities"`` (its queries are counted by the study).
        public: Unlabelled public images (labels are never read), of the target's input shape.
        num_classes: K, the target's number of classes (the discriminator's logits).
        seed: Seeds the weights, the data orders and the latents.
        device: Where to train.
        progress: Show a progress bar.
        latent_dim: Latent size of the generator (official 100).
        width: :class:`~mibench_lib.generators.dcgan.DCGANGenerator` width (32 = the official
            ``dim`` 64).
        critic_width: Channels of the discriminator's first block (official 64).
        mbd_kernels: Minibatch-discrimination kernels (official 64).
        mbd_kernel_dims: Their dimension (official 50).
        epochs: Passes over the public set (official 120).
        batch_size: Images per batch (official 64); at most ``len(public)``.
        lr: Adam learning rate of both networks (official 2e-4).
        betas: Adam betas (official (0.5, 0.999)).
        n_critic: Discriminator steps per generator step (official 5).
        unlabelled_weight: Weight of the real/fake terms in the discriminator loss (official 0.5).
        entropy_weight: Weight of the fakes' summed softmax entropy in the generator loss
            (official 1e-4).

    Returns:
        ``(tensors, meta)``: the state dicts as ``"G.<key>"`` and ``"D.<key>"`` tensors, and
        JSON-able metadata (architecture sizes for :func:`load_kedmi_gan`, step counts, queries,
        loss histories subsampled to at most 200 entries, wall time).

    Raises:
        AccessDenied: an oracle below ``"probabilities"`` access.
        ValueError: public images of another shape than the target's, fewer public images than
            ``batch_size``, ``num_classes`` unlike the oracle's, or a bad size or hyperparameter.

    Example:
        >>> from mibench_lib.testing import build_target_prior, tiny_classifier, tiny_digits
        >>> gan, queries = build_target_prior(KEDMI_GAN, tiny_classifier(), tiny_digits()[0][:64])
        >>> queries, gan.generator.latent_dim, gan.discriminator.num_classes
        (64, 8, 4)
    """
    if not isinstance(public, ImageSet):
        raise TypeError(f"public must be an ImageSet, got {type(public).__name__}")
    if tuple(public.image_shape) != tuple(oracle.input_shape):
        raise ValueError(
            f"public images of shape {tuple(public.image_shape)} do not fit the target's input "
            f"shape {tuple(oracle.input_shape)}"
        )
    if num_classes != oracle.num_classes:
        raise ValueError(
            f"num_classes must be the target's ({oracle.num_classes}), got {num_classes!r}"
        )
    for name, value in (
        ("latent_dim", latent_dim),
        ("width", width),
        ("critic_width", critic_width),
        ("mbd_kernels", mbd_kernels),
        ("mbd_kernel_dims", mbd_kernel_dims),
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("n_critic", n_critic),
    ):
        check_int(name, value)
    if batch_size > len(public):
        raise ValueError(
            f"batch_size must be at most the number of public images ({len(public)}), got "
            f"{batch_size}"
        )
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    beta_pair = tuple(float(b) for b in betas)
    if len(beta_pair) != 2 or not all(0 <= b < 1 for b in beta_pair):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    check_real("unlabelled_weight", unlabelled_weight)
    check_real("entropy_weight", entropy_weight)
    sizes = {
        "latent_dim": int(latent_dim),
        "width": int(width),
        "critic_width": int(critic_width),
        "mbd_kernels": int(mbd_kernels),
        "mbd_kernel_dims": int(mbd_kernel_dims),
    }
    image_shape = tuple(int(s) for s in oracle.input_shape)
    device = torch.device(device)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG untouched
        torch.manual_seed(seed)
        generator, discriminator = _make_networks(image_shape, num_classes, **sizes)
    generator.to(device).train()
    discriminator.to(device).train()

    soft = query_soft_labels(oracle, public).to(device)  # the only queries: one per image
    queries = len(public)

    rng = torch.Generator().manual_seed(seed)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=beta_pair)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=beta_pair)
    g_params = list(generator.parameters())
    d_params = list(discriminator.parameters())
    per_epoch = len(public) // batch_size
    history: dict[str, list[float]] = {
        k: [] for k in ("d_loss", "labelled", "unlabelled", "g_loss", "feature_matching")
    }
    d_steps = g_steps = 0
    bar = tqdm(total=epochs * per_epoch, desc="KEDMI GAN", disable=not progress, leave=False)
    for _ in range(epochs):
        orders = [torch.randperm(len(public), generator=rng) for _ in range(3)]
        for b in range(per_epoch):
            lab_i, unl_i, unl2_i = (o[b * batch_size : (b + 1) * batch_size] for o in orders)
            x_lab, x_unl = _rows(public, lab_i).to(device), _rows(public, unl_i).to(device)
            z = torch.randn(batch_size, latent_dim, generator=rng).to(device)
            with torch.no_grad():
                fake = generator(z)
            d_loss, d_parts = discriminator_loss(
                discriminator, x_lab, soft[lab_i.to(device)], x_unl, fake,
                unlabelled_weight=unlabelled_weight,
            )  # fmt: skip
            _adam_step(opt_d, d_params, d_loss)
            d_steps += 1
            history["d_loss"].append(d_loss.item())
            history["labelled"].append(d_parts["labelled"])
            history["unlabelled"].append(d_parts["unlabelled"])
            if d_steps % n_critic == 0:
                z = torch.randn(batch_size, latent_dim, generator=rng).to(device)
                g_loss, g_parts = generator_loss(
                    discriminator,
                    generator(z),
                    _rows(public, unl2_i).to(device),
                    entropy_weight=entropy_weight,
                )
                _adam_step(opt_g, g_params, g_loss)
                g_steps += 1
                history["g_loss"].append(g_loss.item())
                history["feature_matching"].append(g_parts["feature_matching"])
            bar.update(1)
            bar.set_postfix(d=f"{history['d_loss'][-1]:.3f}", lab=f"{d_parts['labelled']:.3f}")
    bar.close()
    generator.eval()
    discriminator.eval()
    tensors = {
        **{f"G.{k}": v for k, v in generator.state_dict().items()},
        **{f"D.{k}": v for k, v in discriminator.state_dict().items()},
    }
    meta = {
        **sizes,
        "num_classes": int(num_classes),
        "image_shape": list(image_shape),
        "epochs": int(epochs),
        "discriminator_steps": d_steps,
        "generator_steps": g_steps,
        "queries": queries,
        "history": {k: v[:: max(1, len(v) // 200)] for k, v in history.items()},
        "wall_time_s": time.perf_counter() - t0,
    }
    return tensors, meta


def _adam_step(opt: torch.optim.Optimizer, params: list[nn.Parameter], loss: Tensor) -> None:
    """One update of ``params`` only (gradients w.r.t. them alone: the other network gets none)."""
    grads = torch.autograd.grad(loss, params)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt.step()
    opt.zero_grad(set_to_none=True)


def load_kedmi_gan(tensors: Mapping[str, Tensor], meta: Mapping[str, Any], device: Any) -> KEDMIGAN:
    """Rebuild the trained GAN from :func:`build_kedmi_gan`'s output: frozen, in eval mode.

    Args:
        tensors: The ``"G.<key>"`` and ``"D.<key>"`` state-dict tensors.
        meta: Its metadata (architecture sizes, classes, image shape).
        device: Where to put both networks.
    """
    generator, discriminator = _make_networks(
        tuple(int(s) for s in meta["image_shape"]),  # type: ignore[arg-type]
        int(meta["num_classes"]),
        latent_dim=int(meta["latent_dim"]),
        width=int(meta["width"]),
        critic_width=int(meta["critic_width"]),
        mbd_kernels=int(meta["mbd_kernels"]),
        mbd_kernel_dims=int(meta["mbd_kernel_dims"]),
    )
    for prefix, net in (("G.", generator), ("D.", discriminator)):
        net.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith(prefix)})
        net.to(device).eval().requires_grad_(False)
    return KEDMIGAN(generator, discriminator)


#: KEDMI's inversion-specific GAN, trained per target from its soft labels on public data.
KEDMI_GAN = TargetPrior(
    "kedmi_gan",
    "probabilities",
    build_kedmi_gan,
    load_kedmi_gan,
    quick={
        "latent_dim": 8,
        "width": 4,
        "critic_width": 4,
        "mbd_kernels": 4,
        "mbd_kernel_dims": 3,
        "epochs": 2,
        "batch_size": 16,
        "n_critic": 2,
    },
)


# ------------------------------------------------------------------------------ the attack
def kedmi_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    kedmi_gan: KEDMIGAN,
    steps: int = 2400,
    lr: float = 0.02,
    lambda_iden: float = 100.0,
    samples: int = 5,
    clip: float | None = None,
    identity_loss: IdentityLoss | None = None,
    batch_size: int | None = None,
    loss_divisor: float = OFFICIAL_BATCH,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """Invert ``labels`` by fitting one latent Gaussian per entry under KEDMI's GAN prior.

    All ``len(labels)`` Gaussians are fitted together (one draw each per step), or in
    consecutive chunks of ``batch_size`` entries (each chunk runs all ``steps``); then
    ``samples`` fresh draws of every fitted Gaussian are generated. Outputs are sample-major:
    image ``s * N + i`` is draw ``s`` of entry ``i``.

    The target and the generator are checked first against the contracts of
    :mod:`mibench_lib.byo`, and the discriminator on two images (no queries, random state
    untouched), so a wrong network fails before the search.

    Args:
        oracle: White-box oracle of the target, (M, C, H, W) in [0, 1] -> (M, K) logits.
        labels: (N,) int64 class ids in ``[0, K)``; repeats allowed (one Gaussian each).
        kedmi_gan: The target's inversion-specific GAN (:data:`KEDMI_GAN`), on the oracle's
            device: ``.generator`` (latents -> images in [0, 1], ``latent_dim``) and
            ``.discriminator`` (images -> (features, K logits)). Run in eval mode, never updated.
        steps: Optimisation steps (official 2400 in ``recovery.py``; 0 keeps the start).
        lr: Adam learning rate on ``mu`` and ``log_var`` (official 0.02).
        lambda_iden: Weight of the identity loss against the prior (official 100).
        samples: Draws per entry returned (official 5).
        clip: ``None`` (official): latents are never clipped. A number ``c > 0``: every sampled
            latent is clamped to ``[-c, c]`` before the generator, in the search (no gradient
            through clamped coordinates) and in the returned draws (LOMMA's KEDMI path: 1).
        identity_loss: ``None``: per-image cross-entropy of ``oracle(images)`` against the
            labels (official). Or a callable ``identity_loss(images, labels) -> (M,)`` per-image
            losses, differentiable w.r.t. ``images``; it must reach the target through the
            oracle itself (so its queries are counted), e.g. LOMMA's logit loss with its feature
            regulariser. Each entry's loss is ``prior + lambda_iden * identity_loss``.
        batch_size: Most entries searched at once; ``None``: all (fastest on a CPU). The
            discriminator scores each chunk as one batch, so its minibatch discrimination sees
            the chunk (see the module docstring).
        loss_divisor: The per-entry losses are summed and divided by this number before the
            gradient: each entry gets the official gradient (the mean over the official batch of
            :data:`OFFICIAL_BATCH` = 60 identities) whatever the size of this run's batch.
        rng: CPU generator for every ``eps`` (moved to the oracle's device afterwards).
        on_step: Progress hook ``on_step(step, steps, info)``, called every 10 steps and at the
            last one, with the mean total, prior and identity losses and the mean sigma (of the
            current chunk).

    Returns:
        InversionResult with ``samples * N`` images (C, H, W) on the CPU in [0, 1],
        sample-major, their labels (``labels.repeat(samples)``), the latents of the draws,
        ``losses`` (mean per-entry loss at each step, before its update), ``queries`` (images
        sent to the oracle: ``(steps + samples) * N`` with the default identity loss, the last
        ``samples * N`` scoring the draws) and ``extras``:

        - ``"mu"``, ``"log_var"``: (N, latent_dim) the fitted Gaussians;
        - ``"target_prob"``: (samples * N,) target probability of the label for each image;
        - ``"sample"``: (samples * N,) draw index of each image.

    Raises:
        AccessDenied: the oracle is not white-box.
        ValueError: bad labels, negative ``steps``/``lambda_iden``, a non-positive
            ``lr``/``loss_divisor``/``clip``, ``samples`` or ``batch_size`` below 1, an
            ``identity_loss`` that does not return one loss per image, or networks that
            break their contracts (e.g. a discriminator without K logits).
        TypeError: a ``kedmi_gan`` without ``generator``/``discriminator`` modules, a generator
            without ``latent_dim``, a target without its attributes, an ``identity_loss`` that
            is not callable.
        QueryBudgetExceeded: the oracle's budget runs out.

    Example:
        >>> from mibench_lib.oracle import TargetOracle
        >>> from mibench_lib.testing import build_target_prior, tiny_classifier, tiny_digits
        >>> target = tiny_classifier()
        >>> gan, _ = build_target_prior(KEDMI_GAN, target, tiny_digits()[0][:64])
        >>> res = kedmi_attack(TargetOracle(target), torch.tensor([0, 3]), kedmi_gan=gan,
        ...                    steps=2, samples=3, rng=torch.Generator().manual_seed(0))
        >>> res.images.shape, res.labels.tolist(), res.queries
        (torch.Size([6, 1, 8, 8]), [0, 3, 0, 3, 0, 3], 10)
    """
    if not oracle.is_white_box:
        raise AccessDenied(
            f"kedmi_attack needs the target's gradients (a 'white-box' oracle), got access "
            f"{oracle.access!r}"
        )
    check_labels(labels, oracle.num_classes)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    check_real("lambda_iden", lambda_iden)
    check_int("samples", samples)
    if clip is not None and not (isinstance(clip, numbers.Real) and clip > 0):
        raise ValueError(f"clip must be None or a positive number, got {clip!r}")
    if identity_loss is not None and not callable(identity_loss):
        raise TypeError(f"identity_loss must be None or callable, got {identity_loss!r}")
    if batch_size is not None:
        check_int("batch_size", batch_size)
    if not (isinstance(loss_divisor, numbers.Real) and math.isfinite(loss_divisor)):
        raise ValueError(f"loss_divisor must be a positive number, got {loss_divisor!r}")
    if loss_divisor <= 0:
        raise ValueError(f"loss_divisor must be a positive number, got {loss_divisor!r}")
    # every network against its contract before any work (no queries, no random draws used)
    check_target(oracle.module)
    generator, discriminator = _check_kedmi_gan(kedmi_gan, oracle.input_shape, oracle.num_classes)

    start_queries, t0 = oracle.queries, time.perf_counter()
    device = oracle.device
    n, dim = labels.numel(), int(generator.latent_dim)
    y = labels.to(device)
    chunk = n if batch_size is None else batch_size
    loss_sums = torch.zeros(steps, dtype=torch.float64)
    iden_fn = identity_loss or _cross_entropy_loss(oracle)
    search = _Search(
        generator,
        discriminator,
        iden_fn,
        steps=steps,
        lr=lr,
        lambda_iden=float(lambda_iden),
        clip=clip,
        loss_divisor=float(loss_divisor),
        rng=rng,
        on_step=on_step,
    )
    mus, log_vars = [], []
    with eval_mode(generator, discriminator, oracle.module):
        for lo in range(0, n, chunk):
            mu, log_var = search.run(y[lo : lo + chunk], dim, device, loss_sums)
            mus.append(mu)
            log_vars.append(log_var)
        mu, log_var = torch.cat(mus), torch.cat(log_vars)
        with torch.no_grad():
            eps = torch.randn(samples, n, dim, generator=rng).to(device)
            z = _sample(mu, log_var, eps.reshape(samples * n, dim), clip=clip, repeat=samples)
            y_all = y.repeat(samples)
            images, probs = [], []
            for lo in range(0, samples * n, chunk):
                x = generator(z[lo : lo + chunk])
                logits = oracle(x).float()  # scoring the draws: counted as queries
                probs.append(F.softmax(logits, 1).gather(1, y_all[lo : lo + chunk, None])[:, 0])
                images.append(x)
    return InversionResult(
        attack="kedmi",
        images=torch.cat(images).clamp(0, 1).cpu(),
        labels=y_all.cpu(),
        latents=z.cpu(),
        losses=(loss_sums / n).tolist(),
        queries=oracle.queries - start_queries,
        wall_time_s=time.perf_counter() - t0,
        extras={
            "mu": mu.cpu(),
            "log_var": log_var.cpu(),
            "target_prob": torch.cat(probs).cpu(),
            "sample": torch.arange(samples).repeat_interleave(n),
        },
    )


def _check_kedmi_gan(
    kedmi_gan: object, image_shape: tuple[int, int, int], num_classes: int
) -> tuple[nn.Module, nn.Module]:
    """The GAN's generator (byo contract) and discriminator ((features, K logits)) checked."""
    for attr in ("generator", "discriminator"):
        if not isinstance(getattr(kedmi_gan, attr, None), nn.Module):
            raise TypeError(
                f"kedmi_gan must have a {attr!r} nn.Module (a KEDMIGAN, built by the "
                f"'kedmi_gan' target prior), got {type(kedmi_gan).__name__}"
            )
    generator: nn.Module = kedmi_gan.generator  # type: ignore[attr-defined]
    discriminator: nn.Module = kedmi_gan.discriminator  # type: ignore[attr-defined]
    check_generator(generator, image_shape=image_shape)
    x = torch.rand(2, *image_shape, generator=torch.Generator().manual_seed(0))
    device = next(iter((*discriminator.parameters(), *discriminator.buffers())), x).device
    name = type(discriminator).__name__
    with eval_mode(discriminator), torch.no_grad(), torch.random.fork_rng(devices=[]):
        try:
            out = discriminator(x.to(device))
        except Exception as err:
            raise ValueError(
                f"discriminator {name} failed on 2 images of shape {tuple(x.shape)}: "
                f"{type(err).__name__}: {err}"
            ) from err
    ok = (
        isinstance(out, tuple)
        and len(out) == 2
        and all(isinstance(t, Tensor) for t in out)
        and out[0].ndim == 2
        and out[0].shape[0] == 2
        and tuple(out[1].shape) == (2, num_classes)
    )
    if not ok:
        got = (
            tuple(tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in out)
            if isinstance(out, tuple)
            else getattr(out, "shape", type(out).__name__)
        )
        raise ValueError(
            f"discriminator {name} must map (N, C, H, W) images to (features (N, F), logits "
            f"(N, {num_classes})), the target's {num_classes} classes; on 2 images it returned "
            f"{got}"
        )
    return generator, discriminator


def _cross_entropy_loss(oracle: TargetOracle) -> IdentityLoss:
    def loss(images: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(oracle(images).float(), labels, reduction="none")

    return loss


def _sample(
    mu: Tensor, log_var: Tensor, eps: Tensor, *, clip: float | None, repeat: int = 1
) -> Tensor:
    """z = mu + exp(log_var / 2) * eps (rows of mu/log_var repeated ``repeat`` times), clamped."""
    z = mu.repeat(repeat, 1) + torch.exp(0.5 * log_var).repeat(repeat, 1) * eps
    return z if clip is None else z.clamp(-clip, clip)


@dataclass
class _Search:
    """The distributional search of one chunk of entries (shared settings)."""

    generator: nn.Module
    discriminator: nn.Module
    identity_loss: IdentityLoss
    steps: int
    lr: float
    lambda_iden: float
    clip: float | None
    loss_divisor: float
    rng: torch.Generator | None
    on_step: StepCallback | None

    def run(
        self, y: Tensor, dim: int, device: torch.device, loss_sums: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Fit ``(mu, log_var)`` for the entries ``y``; add each step's summed loss to ``loss_sums``."""
        m = y.numel()
        mu = torch.zeros(m, dim, device=device, requires_grad=True)
        log_var = torch.ones(m, dim, device=device, requires_grad=True)
        opt = torch.optim.Adam([mu, log_var], lr=self.lr)
        for step in range(self.steps):
            eps = torch.randn(m, dim, generator=self.rng).to(device)
            images = self.generator(_sample(mu, log_var, eps, clip=self.clip))
            _, logits = self.discriminator(images)
            prior = realness_loss(logits.float())
            iden = self.identity_loss(images, y)
            if not isinstance(iden, Tensor) or tuple(iden.shape) != (m,):
                got = tuple(iden.shape) if isinstance(iden, Tensor) else type(iden).__name__
                raise ValueError(
                    f"identity_loss must return one loss per image, shape ({m},), got {got}"
                )
            per_entry = prior + self.lambda_iden * iden
            # sum over entries / fixed divisor: an entry's gradient ignores the batch size;
            # w.r.t. (mu, log_var) only, so frozen networks never accumulate gradients
            grads = torch.autograd.grad(per_entry.sum() / self.loss_divisor, (mu, log_var))
            mu.grad, log_var.grad = grads
            opt.step()
            loss_sums[step] += float(per_entry.detach().double().sum())
            if self.on_step is not None and ((step + 1) % 10 == 0 or step + 1 == self.steps):
                self.on_step(
                    step + 1,
                    self.steps,
                    {
                        "loss": float(per_entry.detach().mean()),
                        "prior_loss": float(prior.detach().mean()),
                        "iden_loss": float(iden.detach().mean()),
                        "sigma": float(torch.exp(0.5 * log_var.detach()).mean()),
                    },
                )
        return mu.detach(), log_var.detach()


#: What the study engine needs to know: access level and the target-dependent GAN.
SPEC = AttackSpec(
    "kedmi",
    kedmi_attack,
    access="white-box",
    needs=(KEDMI_GAN,),
    quick={"steps": 3, "samples": 1},
)
