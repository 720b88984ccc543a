"""Label-only model inversion via knowledge transfer (LOKT): Nguyen, Chandrasegaran,
Abdollahzadeh and Cheung, "Label-Only Model Inversion Attacks via Knowledge Transfer", NeurIPS
2023, https://arxiv.org/abs/2310.19342 (project page https://ngoc-nguyen-0.github.io/lokt/).

Threat model: the attacker sees only the target's top-1 labels. Every label is spent on a
target-dependent prior (:data:`LOKT_TACGAN`); the attack stage (:func:`lokt_attack`) never
queries the target.

Algorithm. Three stages build the prior, one is the attack.

1. **T-ACGAN** (target-labelled ACGAN). A conditional generator ``G(z, y)`` (PLG-MI's SN-ResNet
   generator with class-conditional BatchNorm, ``z ~ N(0, I)`` of 128 dimensions, uniform ``y``)
   and a discriminator with two heads on one SN-ResNet trunk: realness ``D_adv(x)`` (a logit) and
   a K-way class head ``D_cls(x)``. The public images are unlabelled. Each iteration is one
   generator step then ``n_dis = 5`` discriminator steps (batch 128, Adam 2e-4, betas (0, 0.9),
   BCE GAN loss):

       L_G = BCE(D_adv(G(z, y)), 1) + alpha * CE(D_cls(G(z, y)), y)
       L_D = BCE(D_adv(x_pub), 1) + BCE(D_adv(G(z', y')), 0) + alpha * CE(D_cls(G(z', y')), y_hat)

   with ``y_hat = argmax T(G(z', y'))`` the **target's label** of each fake (not ``y'``): the
   class head learns the target's decision on generated images, and the generator learns to
   draw images the class head (hence the target) assigns to ``y``. ``alpha = 1.5``. The first
   ``warmup_iterations`` (official 1,000 with CelebA as public data) run without the class
   terms and without a single query; then ``iterations`` (official 19,000) with them. Every
   discriminator step of the class phase labels its ``batch_size`` fakes: the T-ACGAN costs
   ``iterations * n_dis * batch_size`` labels (official 12,160,000).
2. **Surrogate data.** For every class ``c``, ``samples_per_class`` (official 2 x 250) latents
   ``z`` give ``G(z, c)`` (generator in eval mode); the target labels each image. Stored:
   ``(z, c, y_hat)``, ``num_classes * samples_per_class`` labels.
3. **Surrogates.** Classifiers trained on ``(G(z, c), y_hat)`` with SGD (lr 0.1, momentum 0.9,
   weight decay 5e-4), a cosine schedule over the epochs (200), batches of 256, ``30,000 /
   256`` batches per epoch drawn from the stored pairs, and the loss
   ``CE(S(x), y_hat) / 2 + CE(S(aug(x)), y_hat) / 2`` (``aug``: resized crop 0.8-1, colour
   jitter 0.2 with probability 1/2, horizontal flip, rotation by up to 5 degrees, per image).
4. **Attack** (:func:`lokt_attack`): PLG-MI's search with the T-ACGAN generator at fixed ``y``
   and the surrogates in place of the target: for every label entry, ``samples = 5`` latents
   are optimised by Adam (lr 0.1, 600 steps) on the max-margin loss of two augmented views,
   summed over the views and averaged over the surrogates; ``z`` is not clamped.

Relation to the official code (ngoc-nguyen-0/LOKT_neurips2023 at b751417: ``train_tacgan.py``,
``create_dataset.py``, ``train_surrogate_model.py``, ``plg_tacgan.py``, ``loader.py``
``load_cgan``, ``models/discriminators/snresnet64.py`` ``SNResNetConditionalDiscriminator``).
Defaults are the official ones (README command: ``--alpha=1.5``); deliberate differences:

- Networks. The generator is :class:`~mibench_lib.attacks.plg_mi.ConditionalResNetGenerator`
  (the official ``ResNetGenerator``; output ``(tanh + 1) / 2`` in [0, 1], not ``tanh``: see
  :mod:`mibench_lib.attacks.plg_mi`; depth follows the resolution). The discriminator
  (:class:`TACGANDiscriminator`) reuses PLG-MI's SN-ResNet blocks (at 64 px the official
  ``block1``-``block5``, widths ``num_features * (1, 2, 4, 8, 16)``), then ReLU, a sum over
  space and two plain linear heads with Xavier initialisation, as officially (the realness
  head's spectral norm is commented out there). It returns the realness *logit*; the official
  head ends in a sigmoid fed to ``BCELoss``: here ``binary_cross_entropy_with_logits``, the same
  loss without ``BCELoss``'s clamp of the log at -100 (reached only at saturation).
- Labels. ``y_hat`` is read through :func:`~mibench_lib.attacks._query.released_scores` (its
  argmax): a label oracle gives the label itself, and behind an output defense the T-ACGAN learns
  from what the defense releases. Labels are computed without autograd; the target is never
  differentiated.
- Queries. The official script also sends the class phase's fakes through the target for
  logging (``target acc``): these are the same labels the class head is trained on, so no extra
  query; ``meta["target_agreement"]`` logs the fraction ``y_hat == y``. The official create-data
  script asks for 2 batches of 250 per class; here ``label_batch_size`` images per oracle call
  (memory only, same count).
- Surrogates. The official ones are ImageNet-initialised DenseNet-121/161/169. Nothing
  pretrained can be downloaded, and the benchmark's targets take 8-64 px images of one or three
  channels, so the surrogates are three randomly initialised networks of different architectures
  chosen by input size (:func:`default_surrogate_archs`), or any names of the zoo
  (:data:`mibench_lib.models.MODELS`) and of LOMMA's :data:`~mibench_lib.attacks.lomma.SURROGATE_ARCHITECTURES`
  through ``surrogate_archs``. The official epoch is ``int(30000 / batch)`` batches from an
  endless shuffled sampler (not a pass over the data); here ``surrogate_images_per_epoch //
  surrogate_batch_size`` batches from consecutive random permutations of the stored pairs. The
  official loader re-generates the images of every batch from the stored ``z`` with the
  generator in eval mode; that is deterministic, so the images are generated once and reused
  (same values; the per-batch regeneration is kept when they would take more than 1 GiB).
  The official script evaluates each epoch's surrogate on the private test set for logging only;
  nothing here reads private data.
- The discriminator's class head can serve as an extra surrogate (the official ``'D'`` model id;
  not in the README's ``'0,1,2'``): ``use_discriminator=True`` in the attack.
- Randomness. Every draw of the build (latents, conditioning labels, real-batch order, surrogate
  batch order) comes from a CPU ``torch.Generator`` seeded with ``seed``; module initialisation,
  dropout and kornia's augmentation draws come from torch's global CPU generator seeded inside
  ``torch.random.fork_rng`` (the caller's state is restored). The official loaders reseed NumPy
  from entropy every epoch; nothing there is reproducible.
- Budget. The prior's oracle has no budget in the studies. When it has one, the class phase stops
  at the first iteration the budget cannot pay while keeping the surrogate dataset's labels in
  reserve (``meta["stopped_by_budget"]``); a budget below the dataset's labels raises
  :class:`~mibench_lib.oracle.QueryBudgetExceeded` before any training.
- Attack: see :func:`lokt_attack`.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib._checks import check_int, check_labels, check_real
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._query import affordable, released_scores
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec, TargetPrior
from mibench_lib.attacks.lomma import SURROGATE_ARCHITECTURES, SurrogateCNN
from mibench_lib.attacks.plg_mi import (
    ConditionalResNetGenerator,
    _as_float,
    _betas,
    _blocks_for,
    _DiscriminatorBlock,
    _EpochSampler,
    _OptimizedBlock,
    _square_shape,
    make_augmentation,
    max_margin_loss,
)
from mibench_lib.data._types import ImageSet
from mibench_lib.oracle import QueryBudgetExceeded, TargetOracle
from mibench_lib.progress import tqdm

__all__ = [
    "LOKT_TACGAN",
    "SPEC",
    "LOKTPrior",
    "TACGANDiscriminator",
    "build_lokt_tacgan",
    "default_surrogate_archs",
    "load_lokt_tacgan",
    "lokt_attack",
]

#: Official surrogate data: two batches of 250 generated images per class.
OFFICIAL_SAMPLES_PER_CLASS = 500

#: Images in an official surrogate "epoch" (``N_batch = int(30000 / batch_size)``).
OFFICIAL_IMAGES_PER_EPOCH = 30000

_CACHE_LIMIT_BYTES = 2**30


# -- networks -----------------------------------------------------------------------------------
class TACGANDiscriminator(nn.Module):
    """T-ACGAN's discriminator: an SN-ResNet trunk with a realness head and a class head.

    The trunk is :class:`~mibench_lib.attacks.plg_mi.ProjectionDiscriminator`'s (``log2(H) - 1``
    downsampling residual blocks, channels ``num_features`` doubling per block, ReLU, sum over
    space); the heads are plain linear layers with Xavier initialisation (official
    ``SNResNetConditionalDiscriminator``: ``l6`` and ``l_y``).

    Args:
        num_classes: K, classes of the class head (the target's).
        image_shape: (C, H, H) of the images, H a power of two >= 4.
        num_features: Channels of the first block (official 64).

    Example:
        >>> d = TACGANDiscriminator(3, image_shape=(1, 8, 8), num_features=4)
        >>> realness, logits = d(torch.rand(2, 1, 8, 8))
        >>> realness.shape, logits.shape
        (torch.Size([2]), torch.Size([2, 3]))
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
        k = _blocks_for(h, 2, "TACGANDiscriminator")
        ch = [num_features * 2**i for i in range(k)]
        self.blocks = nn.Sequential(
            _OptimizedBlock(c, ch[0]), *(_DiscriminatorBlock(ch[i - 1], ch[i]) for i in range(1, k))
        )
        self.realness = nn.Linear(ch[-1], 1)
        self.classifier = nn.Linear(ch[-1], num_classes)
        nn.init.xavier_uniform_(self.realness.weight)
        nn.init.xavier_uniform_(self.classifier.weight)
        self.num_classes = int(num_classes)
        self.input_shape = (c, h, h)

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, F): the sum over space of the last block's ReLU'd output."""
        return F.relu(self.blocks(x)).sum(dim=(2, 3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) in [0, 1] -> (realness logits (N,), class logits (N, K))."""
        h = self.features(x)
        return self.realness(h).squeeze(1), self.classifier(h)


class _ClassHead(nn.Module):
    """The discriminator's class head as a classifier (images -> K logits)."""

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.discriminator = discriminator

    def forward(self, x: Tensor) -> Tensor:
        return self.discriminator(x)[1]


@dataclass(frozen=True, eq=False)
class LOKTPrior:
    """What :func:`lokt_attack` receives (what :data:`LOKT_TACGAN` loads).

    Attributes:
        generator: The T-ACGAN generator, (M, latent_dim) latents and (M,) classes -> images in
            [0, 1]; eval mode, no gradients.
        discriminator: The T-ACGAN discriminator, images -> (realness logits, class logits).
        surrogates: The surrogate classifiers (images in [0, 1] -> K logits), eval mode.
        architectures: Their architecture names.
    """

    generator: ConditionalResNetGenerator
    discriminator: TACGANDiscriminator
    surrogates: tuple[nn.Module, ...]
    architectures: tuple[str, ...] = ()

    @property
    def latent_dim(self) -> int:
        """Size of the latents."""
        return self.generator.latent_dim

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.generator.num_classes


# -- surrogates ---------------------------------------------------------------------------------
def default_surrogate_archs(input_shape: Sequence[int]) -> tuple[str, ...]:
    """Three surrogate architectures of different families that take images of ``input_shape``.

    - RGB, at least 32 px (the face settings): ``resnet18``, ``resnet34``, ``resnet50`` (the zoo's
      ImageNet-style networks standing in for DenseNet-121/161/169, randomly initialised);
    - otherwise, at least 16 px (digits): ``mnist_resnet``, ``mnist_eval`` (VGG-style) and
      LOMMA's ``lomma_b1`` CNN (none of them the default target's ``mnist_cnn``);
    - smaller images: ``mnist_resnet``, ``lomma_b0``, ``lomma_b1``.

    Example:
        >>> default_surrogate_archs((1, 32, 32))
        ('mnist_resnet', 'mnist_eval', 'lomma_b1')
    """
    c, h, w = (int(s) for s in input_shape)
    if c == 3 and min(h, w) >= 32:
        return ("resnet18", "resnet34", "resnet50")
    if min(h, w) >= 16:
        return ("mnist_resnet", "mnist_eval", "lomma_b1")
    return ("mnist_resnet", "lomma_b0", "lomma_b1")


def _make_surrogate(name: str, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    from mibench_lib.models import MODELS  # the zoo imports much; only builds and loads need it

    shape = tuple(int(s) for s in input_shape)
    if name in SURROGATE_ARCHITECTURES:
        return SurrogateCNN(num_classes, input_shape=shape, **SURROGATE_ARCHITECTURES[name])
    if name in MODELS:
        return MODELS[name](num_classes, input_shape=shape)
    raise ValueError(
        f"surrogate_archs: unknown architecture {name!r}; known: "
        f"{sorted(SURROGATE_ARCHITECTURES)} and the zoo's {sorted(MODELS)}"
    )


# -- the prior ----------------------------------------------------------------------------------
def _labels(oracle: TargetOracle, images: Tensor, chunk: int) -> Tensor:
    """The target's top-1 labels of ``images`` (one query each, no autograd), on the CPU."""
    return released_scores(oracle, images.detach(), chunk=chunk).argmax(dim=1).cpu()


def _bce(logits: Tensor, value: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, value))


def _apply(params: list[nn.Parameter], loss: Tensor, opt: torch.optim.Optimizer) -> None:
    # unused parameters (the class head during the warm-up) get no gradient and Adam skips them,
    # as officially (``zero_grad`` leaves a never-set gradient at None)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt.step()


def build_lokt_tacgan(
    oracle: TargetOracle,
    public: ImageSet,
    *,
    num_classes: int,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    warmup_iterations: int = 1000,
    iterations: int = 19000,
    batch_size: int = 128,
    n_dis: int = 5,
    lr: float = 2e-4,
    betas: Sequence[float] = (0.0, 0.9),
    alpha: float = 1.5,
    latent_dim: int = 128,
    gen_features: int = 64,
    dis_features: int = 64,
    bottom_width: int = 4,
    samples_per_class: int = OFFICIAL_SAMPLES_PER_CLASS,
    surrogate_archs: Sequence[str] | None = None,
    surrogate_epochs: int = 200,
    surrogate_batch_size: int = 256,
    surrogate_images_per_epoch: int = OFFICIAL_IMAGES_PER_EPOCH,
    surrogate_lr: float = 0.1,
    surrogate_momentum: float = 0.9,
    surrogate_weight_decay: float = 5e-4,
    flip: bool = True,
    label_batch_size: int = 250,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Train LOKT's T-ACGAN and surrogates from the target's labels (see the module docstring).

    Queries (images labelled by the oracle, none during the warm-up):
    ``iterations * n_dis * batch_size + num_classes * samples_per_class``.

    Args:
        oracle: Oracle of the target at any access level (only the argmax of its answers is
            read; a ``"label"`` oracle is the threat model).
        public: Unlabelled public images of the target's input shape (labels are not read).
        num_classes: K, the target's number of classes.
        seed: Seeds every random draw of the build.
        device: Where the networks train.
        progress: Progress bars over the GAN iterations and the surrogate epochs.
        warmup_iterations: Iterations without the class losses and without queries (official
            1,000 with CelebA as public data; 2,000 FFHQ, 3,000 FaceScrub, 6,000 PubFig).
        iterations: Iterations with the class losses after the warm-up (official 19,000).
        batch_size: Fakes per generator and discriminator step, reals per discriminator step
            (official 128).
        n_dis: Discriminator steps per generator step (official 5).
        lr: Adam learning rate of both networks (official 2e-4).
        betas: Adam betas of both networks (official (0.0, 0.9)).
        alpha: Weight of both class losses (official README 1.5).
        latent_dim: Size of ``z`` (official 128).
        gen_features: Generator width (channels of its last block; official 64).
        dis_features: Discriminator width (channels of its first block; official 64).
        bottom_width: Side of the generator's first feature map (official 4).
        samples_per_class: Generated images labelled per class for the surrogates (official 500).
        surrogate_archs: Surrogate architectures (zoo names or LOMMA's ``lomma_b0/b1/b2``);
            ``None``: :func:`default_surrogate_archs` of the input shape.
        surrogate_epochs: Epochs per surrogate (official 200); the cosine schedule spans them.
        surrogate_batch_size: Surrogate batch (official 256).
        surrogate_images_per_epoch: Images per surrogate epoch (official 30,000):
            ``surrogate_images_per_epoch // surrogate_batch_size`` SGD steps.
        surrogate_lr: SGD learning rate (official 0.1).
        surrogate_momentum: SGD momentum (official 0.9).
        surrogate_weight_decay: SGD weight decay (official 5e-4).
        flip: Horizontal flips in the surrogates' augmentation (official True; False for classes
            that are not mirror-symmetric such as digits; a study that sets it says so).
        label_batch_size: Images per oracle call when labelling the surrogate data (official 250;
            memory only).

    Returns:
        ``(tensors, meta)``: the weights (``"generator."``, ``"discriminator."``,
        ``"surrogate{i}."``), the surrogate data (``"data.z"``, ``"data.y_cond"``,
        ``"data.y_hat"``); the settings, loss histories (window means: ``"d_loss"``,
        ``"g_loss"``, ``"g_cls_loss"``, ``"d_cls_loss"``, ``"target_agreement"``: the fraction of
        fakes the target labels ``y``), ``"d_class_targets"`` (how often each class was D's class
        target), ``"tacgan_queries"``, ``"dataset_queries"``, ``"dataset_agreement"``,
        ``"surrogate_loss"``, ``"surrogate_fit"`` (each surrogate's accuracy on the stored
        labels), ``"class_iterations_run"`` and ``"stopped_by_budget"``.

    Raises:
        ValueError: a bad argument, ``num_classes`` other than the oracle's, public images of
            another shape than the target's input, an unsupported image size, an unknown
            surrogate architecture.
        QueryBudgetExceeded: the oracle's budget cannot pay the surrogate data.
    """
    check_int("num_classes", num_classes, 2)
    if num_classes != oracle.num_classes:
        raise ValueError(
            f"num_classes must be the target's ({oracle.num_classes}), got {num_classes}"
        )
    check_int("warmup_iterations", warmup_iterations, 0)
    check_int("iterations", iterations, 0)
    check_int("surrogate_epochs", surrogate_epochs, 0)
    for name, value in (
        ("batch_size", batch_size),
        ("n_dis", n_dis),
        ("latent_dim", latent_dim),
        ("gen_features", gen_features),
        ("dis_features", dis_features),
        ("bottom_width", bottom_width),
        ("samples_per_class", samples_per_class),
        ("surrogate_batch_size", surrogate_batch_size),
        ("label_batch_size", label_batch_size),
    ):
        check_int(name, value, 1)
    check_int("surrogate_images_per_epoch", surrogate_images_per_epoch, surrogate_batch_size)
    check_real("lr", lr, strict=True)
    check_real("alpha", alpha)
    check_real("surrogate_lr", surrogate_lr, strict=True)
    check_real("surrogate_weight_decay", surrogate_weight_decay)
    if not (isinstance(surrogate_momentum, numbers.Real) and 0 <= surrogate_momentum < 1):
        raise ValueError(f"surrogate_momentum must lie in [0, 1), got {surrogate_momentum!r}")
    beta_pair = _betas(betas)
    if not isinstance(public, ImageSet):
        raise TypeError(f"public must be an ImageSet, got {type(public).__name__}")
    if len(public) < 1:
        raise ValueError("public must hold at least one image")
    image_shape = tuple(int(s) for s in oracle.input_shape)
    if tuple(public.image_shape) != image_shape:
        raise ValueError(
            f"public images have shape {tuple(public.image_shape)}, but the target takes "
            f"{image_shape}"
        )
    _square_shape(image_shape)
    _blocks_for(image_shape[1], bottom_width, "generator")
    _blocks_for(image_shape[1], 2, "discriminator")
    if surrogate_archs is None:
        archs = default_surrogate_archs(image_shape)
    elif isinstance(surrogate_archs, str) or len(surrogate_archs) < 1:
        raise ValueError(
            f"surrogate_archs must be a non-empty sequence of names, got {surrogate_archs!r}"
        )
    else:
        archs = tuple(str(a) for a in surrogate_archs)
    reserve = num_classes * samples_per_class
    if affordable(oracle, reserve) < reserve:
        raise QueryBudgetExceeded(
            f"the oracle's budget ({oracle.remaining} queries left) cannot pay LOKT's surrogate "
            f"data ({num_classes} classes x {samples_per_class} = {reserve} labels)"
        )
    device = torch.device(device)
    rng = torch.Generator().manual_seed(seed)
    start_queries = oracle.queries

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # initialisation, dropout, kornia's draws
        surrogates = [_make_surrogate(a, num_classes, image_shape) for a in archs]
        gen = ConditionalResNetGenerator(
            num_classes,
            latent_dim=latent_dim,
            image_shape=image_shape,  # type: ignore[arg-type]
            num_features=gen_features,
            bottom_width=bottom_width,
        ).to(device)
        dis = TACGANDiscriminator(
            num_classes,
            image_shape=image_shape,  # type: ignore[arg-type]
            num_features=dis_features,
        ).to(device)

        # -- 1. T-ACGAN
        gan_log = _train_tacgan(
            oracle,
            public,
            gen,
            dis,
            rng,
            device=device,
            progress=progress,
            warmup_iterations=warmup_iterations,
            iterations=iterations,
            batch_size=batch_size,
            n_dis=n_dis,
            lr=lr,
            betas=beta_pair,
            alpha=float(alpha),
            reserve=reserve,
            label_chunk=max(label_batch_size, batch_size),
        )
        tacgan_queries = oracle.queries - start_queries

        # -- 2. surrogate data: (z, y_cond, y_hat), labelled by the target
        gen.eval()
        z_data = torch.randn(reserve, latent_dim, generator=rng)
        y_cond = torch.arange(num_classes).repeat_interleave(samples_per_class)
        y_hat = torch.empty(reserve, dtype=torch.int64)
        with torch.no_grad():
            for lo in range(0, reserve, label_batch_size):
                part = slice(lo, min(reserve, lo + label_batch_size))
                x = gen(z_data[part].to(device), y_cond[part].to(device))
                y_hat[part] = _labels(oracle, x, label_batch_size)
        dataset_queries = oracle.queries - start_queries - tacgan_queries

        # -- 3. surrogates
        sur_log = _train_surrogates(
            surrogates,
            gen,
            z_data,
            y_cond,
            y_hat,
            rng,
            device=device,
            progress=progress,
            epochs=surrogate_epochs,
            batch_size=surrogate_batch_size,
            images_per_epoch=surrogate_images_per_epoch,
            lr=surrogate_lr,
            momentum=surrogate_momentum,
            weight_decay=surrogate_weight_decay,
            flip=bool(flip),
        )

    tensors: dict[str, Tensor] = {}
    for prefix, module in (("generator.", gen), ("discriminator.", dis)):
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().cpu()
    for i, s in enumerate(surrogates):
        for k, v in s.state_dict().items():
            tensors[f"surrogate{i}.{k}"] = v.detach().cpu()
    tensors["data.z"] = z_data
    tensors["data.y_cond"] = y_cond
    tensors["data.y_hat"] = y_hat
    meta = {
        "num_classes": int(num_classes),
        "image_shape": list(image_shape),
        "latent_dim": int(latent_dim),
        "gen_features": int(gen_features),
        "dis_features": int(dis_features),
        "bottom_width": int(bottom_width),
        "surrogate_archs": list(archs),
        "warmup_iterations": int(warmup_iterations),
        "iterations": int(iterations),
        "batch_size": int(batch_size),
        "n_dis": int(n_dis),
        "lr": float(lr),
        "betas": list(beta_pair),
        "alpha": float(alpha),
        "samples_per_class": int(samples_per_class),
        "surrogate_epochs": int(surrogate_epochs),
        "surrogate_batch_size": int(surrogate_batch_size),
        "surrogate_images_per_epoch": int(surrogate_images_per_epoch),
        "surrogate_lr": float(surrogate_lr),
        "flip": bool(flip),
        "tacgan_queries": int(tacgan_queries),
        "dataset_queries": int(dataset_queries),
        "dataset_agreement": float((y_hat == y_cond).float().mean()),
        **gan_log,
        **sur_log,
    }
    return tensors, meta


def _train_tacgan(
    oracle: TargetOracle,
    public: ImageSet,
    gen: ConditionalResNetGenerator,
    dis: TACGANDiscriminator,
    rng: torch.Generator,
    *,
    device: torch.device,
    progress: bool,
    warmup_iterations: int,
    iterations: int,
    batch_size: int,
    n_dis: int,
    lr: float,
    betas: tuple[float, float],
    alpha: float,
    reserve: int,
    label_chunk: int,
) -> dict[str, Any]:
    """The T-ACGAN loop (warm-up, then the class phase); returns its logs for the metadata."""
    num_classes, latent_dim = gen.num_classes, gen.latent_dim
    gen.train()
    dis.train()
    g_params, d_params = list(gen.parameters()), list(dis.parameters())
    opt_g = torch.optim.Adam(g_params, lr=lr, betas=betas)
    opt_d = torch.optim.Adam(d_params, lr=lr, betas=betas)
    sampler = _EpochSampler(len(public), rng)
    total = warmup_iterations + iterations
    log_every = max(1, total // 300)
    keys = ("d_loss", "g_loss", "g_cls_loss", "d_cls_loss", "target_agreement")
    history: dict[str, list[float | None]] = {k: [] for k in keys}
    window = dict.fromkeys(keys, 0.0)
    d_targets = torch.zeros(num_classes, dtype=torch.int64)
    cost = n_dis * batch_size
    stopped, class_run = False, 0

    def draw() -> tuple[Tensor, Tensor]:
        z = torch.randn(batch_size, latent_dim, generator=rng).to(device)
        y = torch.randint(0, num_classes, (batch_size,), generator=rng).to(device)
        return z, y

    for it in tqdm(range(total), desc="LOKT T-ACGAN", disable=not progress, leave=False):
        cls = it >= warmup_iterations
        if cls and affordable(oracle, cost + reserve) < cost + reserve:
            stopped = True  # the budget keeps the surrogate data's labels in reserve
            break
        # one generator step
        z, y = draw()
        adv, logits = dis(gen(z, y))
        loss_g = _bce(adv, 1.0)
        if cls:
            g_cls = F.cross_entropy(logits, y)
            loss_g = loss_g + alpha * g_cls
            window["g_cls_loss"] += float(g_cls.detach())
        _apply(g_params, loss_g, opt_g)
        window["g_loss"] += float(loss_g.detach())
        # n_dis discriminator steps: unlabelled reals vs fresh fakes labelled by the target
        for _ in range(n_dis):
            real = _as_float(public.data[sampler.next(batch_size)]).to(device)
            z, y = draw()
            with torch.no_grad():
                fake = gen(z, y)  # train mode, as officially: BN statistics move
            adv_fake, logits_fake = dis(fake)
            adv_real, _ = dis(real)
            loss_d = _bce(adv_fake, 0.0) + _bce(adv_real, 1.0)
            if cls:
                y_hat = _labels(oracle, fake, label_chunk)
                d_targets += torch.bincount(y_hat, minlength=num_classes)
                d_cls = F.cross_entropy(logits_fake, y_hat.to(device))
                loss_d = loss_d + alpha * d_cls
                window["d_cls_loss"] += float(d_cls.detach()) / n_dis
                window["target_agreement"] += float((y_hat == y.cpu()).float().mean()) / n_dis
            _apply(d_params, loss_d, opt_d)
            window["d_loss"] += float(loss_d.detach()) / n_dis
        class_run += int(cls)
        if (it + 1) % log_every == 0 or it + 1 == total:
            count = (it % log_every) + 1
            for k in keys:
                history[k].append(window[k] / count)
                window[k] = 0.0
            if not cls:  # no class terms yet: nothing was labelled
                for k in ("g_cls_loss", "d_cls_loss", "target_agreement"):
                    history[k][-1] = None
    return {
        **history,
        "log_every": int(log_every),
        "d_class_targets": d_targets.tolist(),
        "class_iterations_run": int(class_run),
        "stopped_by_budget": bool(stopped),
    }


def _train_surrogates(
    surrogates: list[nn.Module],
    gen: ConditionalResNetGenerator,
    z_data: Tensor,
    y_cond: Tensor,
    y_hat: Tensor,
    rng: torch.Generator,
    *,
    device: torch.device,
    progress: bool,
    epochs: int,
    batch_size: int,
    images_per_epoch: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    flip: bool,
) -> dict[str, Any]:
    """Train every surrogate on the generated pairs; return the last epoch's losses and fits."""
    n = z_data.shape[0]
    image_bytes = n * math.prod(gen.output_shape) * 4
    cached: Tensor | None = None
    if image_bytes <= _CACHE_LIMIT_BYTES:
        with torch.no_grad():
            cached = torch.cat(
                [
                    gen(z_data[lo : lo + 512].to(device), y_cond[lo : lo + 512].to(device))
                    for lo in range(0, n, 512)
                ]
            )

    def images(idx: Tensor) -> Tensor:
        if cached is not None:
            return cached[idx.to(device)]
        with torch.no_grad():
            return gen(z_data[idx].to(device), y_cond[idx].to(device))

    augment = make_augmentation(tuple(gen.output_shape[1:]), color_jitter_p=0.5, flip=flip)
    steps = images_per_epoch // batch_size
    losses, fits = [], []
    bar = tqdm(
        total=len(surrogates) * epochs * steps,
        desc="LOKT surrogates",
        disable=not progress,
        leave=False,
    )
    for model in surrogates:
        model.to(device).train()
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
        sampler = _EpochSampler(n, rng)
        epoch_loss = float("nan")
        for _ in range(epochs):
            total = 0.0
            for _ in range(steps):
                idx = sampler.next(batch_size)
                x = images(idx)
                with torch.no_grad():
                    x_aug = augment(x)
                y = y_hat[idx].to(device)
                loss = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(x_aug), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                bar.update(1)
            sched.step()
            epoch_loss = total / steps
        model.eval()
        correct = 0
        with torch.no_grad():
            for lo in range(0, n, 512):
                idx = torch.arange(lo, min(n, lo + 512))
                correct += int((model(images(idx)).argmax(1).cpu() == y_hat[idx]).sum())
        losses.append(epoch_loss)
        fits.append(correct / n)
    bar.close()
    return {"surrogate_loss": losses, "surrogate_fit": fits}


def load_lokt_tacgan(
    tensors: Mapping[str, Tensor], meta: Mapping[str, Any], device: torch.device | str = "cpu"
) -> LOKTPrior:
    """Rebuild :class:`LOKTPrior` from :func:`build_lokt_tacgan`'s tensors and metadata.

    Every network comes back on ``device``, in eval mode, without gradients.
    """
    device = torch.device(device)
    k = int(meta["num_classes"])
    shape = tuple(int(s) for s in meta["image_shape"])

    def state(prefix: str) -> dict[str, Tensor]:
        return {key[len(prefix) :]: v for key, v in tensors.items() if key.startswith(prefix)}

    gen = ConditionalResNetGenerator(
        k,
        latent_dim=int(meta["latent_dim"]),
        image_shape=shape,  # type: ignore[arg-type]
        num_features=int(meta["gen_features"]),
        bottom_width=int(meta["bottom_width"]),
    )
    gen.load_state_dict(state("generator."))
    dis = TACGANDiscriminator(k, image_shape=shape, num_features=int(meta["dis_features"]))  # type: ignore[arg-type]
    dis.load_state_dict(state("discriminator."))
    archs = tuple(str(a) for a in meta["surrogate_archs"])
    surrogates = []
    for i, name in enumerate(archs):
        model = _make_surrogate(name, k, shape)
        model.load_state_dict(state(f"surrogate{i}."))
        surrogates.append(model)
    for module in (gen, dis, *surrogates):
        module.to(device).eval().requires_grad_(False)
    return LOKTPrior(gen, dis, tuple(surrogates), archs)


#: LOKT's T-ACGAN and surrogates, trained from the target's hard labels (cached per target).
LOKT_TACGAN = TargetPrior(
    "lokt_tacgan",
    "label",
    build_lokt_tacgan,
    load_lokt_tacgan,
    quick={
        "warmup_iterations": 1,
        "iterations": 2,
        "batch_size": 8,
        "n_dis": 2,
        "latent_dim": 8,
        "gen_features": 4,
        "dis_features": 4,
        "samples_per_class": 4,
        "surrogate_archs": ("lomma_b0",),
        "surrogate_epochs": 1,
        "surrogate_batch_size": 8,
        "surrogate_images_per_epoch": 16,
    },
)


# -- the attack ---------------------------------------------------------------------------------
def lokt_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    lokt_tacgan: LOKTPrior,
    steps: int = 600,
    lr: float = 0.1,
    views: int = 2,
    samples: int = 5,
    flip: bool = True,
    use_discriminator: bool = False,
    batch_size: int | None = None,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """Invert ``labels`` with LOKT's surrogates: PLG-MI's latent search on the T-ACGAN generator.

    For every label entry, ``samples`` latents ``z ~ N(0, I)`` are optimised by Adam (``z``
    only, ``y`` fixed to the label, every network frozen in eval mode) to minimise

        (1 / S) sum_{s} sum_{v < views} max_margin(S_s(aug_v(G(z, y))), y)

    over the ``S`` surrogates, each view drawn independently per image and per surrogate
    (official ``plg_tacgan.py``: two ``aug_list`` calls per surrogate; here one kornia call per
    surrogate over the stacked views, the same distribution); ``z`` is not clamped (the official
    clamp is commented out). Per-latent losses are summed, not averaged over the batch (see
    :func:`~mibench_lib.attacks.plg_mi.plg_mi_attack`). Latents are laid out sample-major:
    latent ``s * N + i`` is sample ``s`` of entry ``i``; all are returned (the official 5 seeds
    per identity). The official script runs the seeds one after another, re-seeding everything
    per seed; here all latents are drawn from ``rng`` and searched in one batch.

    **The target is never queried**: the oracle serves only its settings (classes, input shape);
    ``queries`` is 0 (``oracle.queries`` does not move) and a budget never stops the search
    (``extras["stopped_by_budget"]`` is False). A study scores the images with its evaluator.

    Args:
        oracle: Oracle of the target, at any access level (label-only is the threat model).
        labels: (N,) int64 class ids in ``[0, K)``; repeats allowed.
        lokt_tacgan: The :data:`LOKT_TACGAN` prior built for this target (a :class:`LOKTPrior`:
            ``generator`` with ``latent_dim`` and ``num_classes``, ``surrogates``,
            ``discriminator``), on the attack's device.
        steps: Adam steps (official 600; 0 returns the initial draws).
        lr: Adam learning rate (official 0.1).
        views: Augmented views per latent, surrogate and step (official 2).
        samples: Latents per label entry (official 5, one per seed).
        flip: Horizontal flips among the views' augmentations (official True).
        use_discriminator: Add the T-ACGAN discriminator's class head as one more surrogate
            (official option ``'D'``, not in the README's run).
        batch_size: Most latents optimised together; ``None``: all. Chunks run one after another,
            each with its own Adam state.
        rng: CPU generator for the latents and the seed of kornia's augmentation draws (torch's
            global CPU generator, seeded inside ``torch.random.fork_rng``).
        on_step: Progress hook ``on_step(step, steps, info)``, every 10 steps and at the last, with
            the mean per-latent loss of the current chunk.

    Returns:
        InversionResult with images (N * samples, C, H, W) on the CPU in [0, 1], labels
        (``labels`` repeated ``samples`` times), the final latents, ``losses`` (mean per-latent
        loss at each step, before the update), ``queries`` 0 and ``extras``:

        - ``"surrogate_prob"``: (M,) the surrogates' mean probability of the label on each
          returned (unaugmented) image;
        - ``"margin"``: (M,) the surrogates' mean max-margin loss on it;
        - ``"sample"``: (M,) sample index of each image;
        - ``"stopped_by_budget"``: False.

    Raises:
        TypeError: ``lokt_tacgan`` without a generator module or surrogates.
        ValueError: bad labels or arguments, or a prior built for another number of classes or
            image shape.

    Example:
        >>> from mibench_lib.testing import build_target_prior, tiny_classifier, tiny_digits
        >>> target = tiny_classifier()
        >>> prior, _ = build_target_prior(LOKT_TACGAN, target, tiny_digits()[0][:64])
        >>> oracle = TargetOracle(target, access="label")
        >>> res = lokt_attack(oracle, torch.tensor([0, 3]), lokt_tacgan=prior, steps=2,
        ...                   samples=2, rng=torch.Generator().manual_seed(0))
        >>> res.images.shape, res.labels.tolist(), res.queries, oracle.queries
        (torch.Size([4, 1, 8, 8]), [0, 3, 0, 3], 0, 0)
    """
    check_labels(labels, oracle.num_classes)
    check_int("steps", steps, 0)
    check_real("lr", lr, strict=True)
    check_int("views", views, 1)
    check_int("samples", samples, 1)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    generator, models = _check_prior(lokt_tacgan, oracle, bool(use_discriminator))

    start_queries, t0 = oracle.queries, time.perf_counter()
    device = next(iter(generator.parameters())).device
    n = labels.numel()
    m = samples * n
    y = labels.repeat(samples).to(device)  # sample-major, matching z below
    z_init = torch.randn(m, generator.latent_dim, generator=rng)  # CPU: device-independent
    aug_seed = int(torch.randint(0, 2**62, (), generator=rng))
    augment = make_augmentation(tuple(oracle.input_shape[1:]), flip=bool(flip))
    chunk = m if batch_size is None else batch_size
    loss_sums = torch.zeros(steps, dtype=torch.float64)
    finals: list[tuple[Tensor, ...]] = []

    with torch.random.fork_rng(devices=[]), eval_mode(generator, *models):
        torch.default_generator.manual_seed(aug_seed)
        for lo in range(0, m, chunk):
            part = slice(lo, min(m, lo + chunk))
            finals.append(
                _search(
                    generator,
                    models,
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
    z, images, prob, margin = (torch.cat(parts) for parts in zip(*finals, strict=True))
    return InversionResult(
        attack="lokt",
        images=images.cpu(),
        labels=y.cpu(),
        latents=z.cpu(),
        losses=(loss_sums / m).tolist(),
        queries=oracle.queries - start_queries,
        wall_time_s=time.perf_counter() - t0,
        extras={
            "surrogate_prob": prob.cpu(),
            "margin": margin.cpu(),
            "sample": torch.arange(samples).repeat_interleave(n),
            "stopped_by_budget": False,
        },
    )


def _search(
    generator: nn.Module,
    models: Sequence[nn.Module],
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

    Returns the chunk's final (latents, images, mean surrogate probabilities, mean margins).
    """
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    y_views = y.repeat(views)
    for step in range(steps):
        images = generator(z, y)
        stacked = images.repeat(views, 1, 1, 1)
        per_latent = torch.zeros_like(z[:, 0])
        for model in models:  # a fresh augmentation draw per surrogate, as officially
            logits = model(augment(stacked))
            per_latent = per_latent + max_margin_loss(logits, y_views).view(views, -1).sum(0)
        per_latent = per_latent / len(models)
        (grad,) = torch.autograd.grad(per_latent.sum(), z)  # w.r.t. z only
        z.grad = grad
        opt.step()
        loss_sums[step] += float(per_latent.detach().double().sum())
        if on_step is not None and ((step + 1) % 10 == 0 or step + 1 == steps):
            on_step(step + 1, steps, {"loss": float(per_latent.detach().mean())})

    with torch.no_grad():
        z = z.detach()
        images = generator(z, y)
        probs = torch.stack([F.softmax(model(images).float(), 1) for model in models])
        prob = probs.mean(0).gather(1, y[:, None]).squeeze(1)
        margin = torch.stack([max_margin_loss(model(images), y) for model in models]).mean(0)
    return z, images, prob, margin


def _check_prior(
    prior: object, oracle: TargetOracle, use_discriminator: bool
) -> tuple[nn.Module, list[nn.Module]]:
    """The generator and the classifiers the search uses, checked on 2 latents (no query)."""
    generator = getattr(prior, "generator", None)
    surrogates = getattr(prior, "surrogates", None)
    if not isinstance(generator, nn.Module) or not isinstance(surrogates, Sequence):
        raise TypeError(
            "lokt_tacgan must be a LOKTPrior (what LOKT_TACGAN.load returns): a 'generator' "
            f"module and a sequence of 'surrogates', got {type(prior).__name__}"
        )
    models = list(surrogates)
    if use_discriminator:
        dis = getattr(prior, "discriminator", None)
        if not isinstance(dis, nn.Module):
            raise TypeError("use_discriminator=True needs lokt_tacgan.discriminator (a module)")
        models.append(_ClassHead(dis))
    if not models or not all(isinstance(s, nn.Module) for s in models):
        raise TypeError("lokt_tacgan.surrogates must be a non-empty sequence of nn.Module")
    for attr in ("latent_dim", "num_classes"):
        value = getattr(generator, attr, None)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise TypeError(
                f"lokt_tacgan.generator must have a positive integer {attr!r}, got {value!r}"
            )
    if generator.num_classes != oracle.num_classes:
        raise ValueError(
            f"lokt_tacgan was built for {generator.num_classes} classes, but the target has "
            f"{oracle.num_classes}: build it for this target"
        )
    shape = tuple(oracle.input_shape)
    z = torch.randn(2, generator.latent_dim, generator=torch.Generator().manual_seed(0))
    y = torch.arange(2) % generator.num_classes
    dev = next(iter(generator.parameters())).device
    with eval_mode(generator, *models), torch.no_grad():
        out = generator(z.to(dev), y.to(dev))
        if not isinstance(out, Tensor) or tuple(out.shape) != (2, *shape):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"lokt_tacgan.generator must make images of the target's shape {(2, *shape)}, "
                f"got {got}: build it for this target"
            )
        for i, model in enumerate(models):
            logits = model(out)
            if not isinstance(logits, Tensor) or tuple(logits.shape) != (2, oracle.num_classes):
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(
                    f"surrogate {i} must map images to (N, {oracle.num_classes}) logits, got {got}"
                )
    return generator, models


#: What the study engine needs to know: label access, every query spent on the prior.
SPEC = AttackSpec(
    "lokt",
    lokt_attack,
    access="label",
    needs=(LOKT_TACGAN,),
    quick={"steps": 3, "samples": 1},
    queries_in_attack=False,
)
