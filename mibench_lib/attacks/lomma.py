"""LOMMA: Nguyen, Tran, Wang, Ho, Cheung and Ding, "Re-thinking Model Inversion Attacks Against
Deep Neural Networks", CVPR 2023, https://arxiv.org/abs/2304.01669.

LOMMA is not a new search but a better objective plugged into an existing one (GMI or KEDMI):

1. **Logit loss.** The identity term becomes ``-logit_y`` on the raw logits instead of the
   cross-entropy, whose gradient ``p - e_y`` vanishes as the softmax saturates; the logit loss
   keeps pushing with gradient ``-e_y``.
2. **Feature regulariser.** Raising the logit alone can drive the image off the natural-image
   manifold, so ``lam * mean_d (f_T(x)_d - mu_pub,d)^2`` pulls the target's penultimate features
   ``f_T(x)`` (the input of its last linear layer) towards ``mu_pub``, their mean over the public
   images.
3. **Model augmentation.** Three surrogate models are distilled from the target on the public
   images (KL divergence at temperature 1 between the student's and the target's softmax), and the
   identity loss is averaged over the target and the surrogates, so that the reconstruction does not
   overfit the target's idiosyncrasies.

Per image, with ``M`` the models used (the target alone, or the target and the surrogates):

    identity(x, y) = (1 / |M|) sum_{m in M} l(m(x), y)  [+ lam * mean_d (f_T(x)_d - mu_pub,d)^2]

and the base attack minimises ``prior + lambda_iden * identity`` (official ``lambda_iden = 100``:
each of the four models weighs 25, the regulariser ``100 * lam``). The four variants of the
paper's ablation (:data:`VARIANTS`, computed by :func:`lomma_identity_loss`):

============ ============================ ================= ===========
variant      per-model loss ``l``          models            regulariser
============ ============================ ================= ===========
``baseline`` cross-entropy                target            no
``aug``      cross-entropy                target+surrogates no
``logit``    ``-logit_y``                 target            yes
``ours``     ``-logit_y``                 target+surrogates yes
============ ============================ ================= ===========

``baseline`` is the base attack unchanged (bit-identical to :func:`~mibench_lib.attacks.gmi.gmi_attack`
with the same arguments). The surrogates and ``mu_pub`` are a target prior,
:data:`LOMMA_SURROGATES` (built once per target through a white-box oracle, its queries counted,
then cached); the attacks are :func:`lomma_gmi_attack` (GMI: Nesterov momentum on ``z``, 5
restarts, ``z`` clamped to [-1, 1]) and :func:`lomma_kedmi_attack` (KEDMI: Adam on the
per-identity Gaussian ``(mu, log sigma^2)``, one seed, every sampled ``z`` clamped to [-1, 1]).
Both take 2,400 steps at learning rate 0.02 (official ``recovery.py`` and attack configs).

Relation to the official code (sutd-visual-computing-group/Re-thinking_MI: ``attack.py``,
``recovery.py``, ``engine.py`` ``train_augmodel``, ``utils.py`` ``get_attack_model``, the CelebA
configs):

- Surrogates. The official ones are ImageNet-pretrained EfficientNet-B0/B1/B2. Nothing pretrained
  can be downloaded here, and the study's targets take 8-64 px images of one or three channels,
  so the defaults are three randomly initialised CNNs of one family scaled like B0/B1/B2
  (:data:`SURROGATE_ARCHITECTURES`: B1 deeper than B0, B2 deeper and wider), which accept any
  input size; any zoo architecture (:data:`mibench_lib.models.MODELS`, e.g. ``"resnet18"`` for
  64 px faces) can be named instead through ``architectures``. Distillation follows the official
  recipe: SGD (lr 0.01, momentum 0.9, weight decay 1e-4), batches of 64 with the last partial
  batch dropped, 20 epochs, ``KL(softmax(t / T) || softmax(s / T)) / T^2`` summed over classes and
  averaged over the batch at ``T = 1`` (the official code divides by ``T^2``; the same at
  ``T = 1``). Its ``StepLR(step_size=20, gamma=0.5)``, stepped once per epoch, first changes the
  learning rate after the 20th and last epoch, so it is omitted.
- Teacher queries. The official loop asks the target for every public batch of every epoch (20
  queries per public image). Its public loader applies no augmentation and the target runs in eval
  mode, so every epoch gets the same answers: here each public image is sent to the oracle once,
  and the stored answers serve all epochs and all three students (the same training signal at a
  twentieth of the queries). The study counts these queries as the prior's.
- ``mu_pub`` is the mean target feature over **all** public images, read from that same single
  pass. The official ``get_act_reg`` averages over a random ~5,000 of them (shuffled batches of 50
  until 101 batches, 5,050 images); the mean over all is the same quantity with less noise and
  costs no extra query. The official code also stores the features' standard deviation (as
  ``fea_logvar``) and draws a sample around the mean in ``reg_loss``, but then overwrites the
  sample with the mean: the official regulariser is deterministic mean matching, as here. (MIBench
  draws a fresh feature target from ``N(mu, sigma)`` each step, a different method.)
- Features are the input of the target's last linear layer, read by forward pre-hooks during the
  counted oracle query of each step (one query per latent per step, no extra pass). For the
  official targets this is their ``fc_layer`` input, which they return as ``feature``.
- GMI path: the official per-latent step. ``recovery.py`` attacks batches of 60 identities and
  minimises batch means, so each latent moves by ``lr / 60`` times its own loss gradient: here
  ``loss_divisor=60`` with the sum of per-latent losses (see :mod:`mibench_lib.attacks.gmi`),
  whatever the number of labels and restarts batched together. The five official seeds run one
  after another; here the restarts are batched and drawn from ``rng``. The official evaluation
  scores every seed's images (accuracy averaged over the five), with no selection, so
  ``select="all"`` is the default; ``extras["selected"]`` still marks GMI's best-logit restart.
- KEDMI path: see :mod:`mibench_lib.attacks.kedmi`; LOMMA's ``dist_inversion`` clamps each
  sampled ``z`` to [-1, 1] before the generator (``clipz=True``), hence ``clip=1.0``.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib._checks import check_int, check_real
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec, TargetPrior
from mibench_lib.attacks.gmi import gmi_attack
from mibench_lib.attacks.kedmi import KEDMI_GAN, KEDMIGAN, kedmi_attack
from mibench_lib.byo import check_target
from mibench_lib.data._types import ImageSet
from mibench_lib.generators.base import Generator
from mibench_lib.models.base import Classifier
from mibench_lib.oracle import AccessDenied, TargetOracle
from mibench_lib.progress import tqdm

__all__ = [
    "LOMMA_SURROGATES",
    "SPECS",
    "SPEC_GMI",
    "SPEC_KEDMI",
    "SURROGATE_ARCHITECTURES",
    "VARIANTS",
    "LOMMASurrogates",
    "SurrogateCNN",
    "Variant",
    "build_lomma_surrogates",
    "distillation_loss",
    "feature_regulariser",
    "load_lomma_surrogates",
    "logit_loss",
    "lomma_gmi_attack",
    "lomma_identity_loss",
    "lomma_kedmi_attack",
]


# -- the objective ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """How one variant of the ablation composes its identity loss.

    Attributes:
        loss: Per-model loss: ``"ce"`` (cross-entropy) or ``"logit"`` (``-logit_y``).
        surrogates: Average the per-model loss over the target and the surrogates (model
            augmentation) instead of using the target alone.
        regulariser: Add ``lam`` times the feature regulariser of the target's features (the
            official code adds it exactly when the logit loss is used).
    """

    loss: Literal["ce", "logit"]
    surrogates: bool
    regulariser: bool


#: The paper's ablation, as ``recovery.py`` (``init_attack_args``) composes it.
VARIANTS: dict[str, Variant] = {
    "baseline": Variant("ce", surrogates=False, regulariser=False),
    "aug": Variant("ce", surrogates=True, regulariser=False),
    "logit": Variant("logit", surrogates=False, regulariser=True),
    "ours": Variant("logit", surrogates=True, regulariser=True),
}


def logit_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """LOMMA's identity loss per image: minus the raw logit of the label.

    The official code applies ``nn.NLLLoss`` to raw logits, which is this loss averaged over the
    batch. Its gradient with respect to the logits is ``-e_y`` whatever the logits (the
    cross-entropy's is ``softmax - e_y``, which vanishes as the softmax saturates).

    Args:
        logits: (M, K) raw logits.
        labels: (M,) int64 labels in ``[0, K)``.

    Returns:
        (M,) losses ``-logits[i, labels[i]]``.

    Example:
        >>> logit_loss(torch.tensor([[1.0, 3.0], [2.0, -1.0]]), torch.tensor([1, 1]))
        tensor([-3.,  1.])
    """
    return -logits.gather(1, labels[:, None]).squeeze(1)


def feature_regulariser(features: Tensor, feature_mean: Tensor) -> Tensor:
    """Per-image squared distance of the target's features to their public mean, per dimension.

    ``mean_d (features[i, d] - feature_mean[d])^2``: the official ``reg_loss`` is its mean over
    the batch (``torch.mean`` over images and dimensions).

    Args:
        features: (M, D) penultimate features of the target.
        feature_mean: (D,) mean feature over the public images (``mu_pub``).

    Returns:
        (M,) losses, 0 where the features equal the mean.

    Example:
        >>> feature_regulariser(torch.tensor([[1.0, 2.0], [3.0, 2.0]]), torch.tensor([1.0, 2.0]))
        tensor([0., 2.])
    """
    return (features - feature_mean).pow(2).mean(dim=1)


def lomma_identity_loss(
    logits: Sequence[Tensor],
    labels: Tensor,
    *,
    variant: str = "ours",
    features: Tensor | None = None,
    feature_mean: Tensor | None = None,
    lam: float = 1.0,
) -> Tensor:
    """The identity loss of each image under one of LOMMA's :data:`VARIANTS`.

    Target-only variants use ``logits[0]``; the augmented ones average the per-model loss over
    every entry of ``logits`` (the official attack uses the target and three surrogates, so each
    weighs 1/4). Variants with the regulariser add ``lam * feature_regulariser(features,
    feature_mean)`` on the target's features (never the surrogates').

    Args:
        logits: (M, K) logits of the target first, then of the surrogates.
        labels: (M,) int64 labels.
        variant: A key of :data:`VARIANTS`.
        features: (M, D) target features; needed by variants with the regulariser.
        feature_mean: (D,) public mean of the target features; needed with ``features``.
        lam: Weight of the regulariser (official 1.0), >= 0.

    Returns:
        (M,) per-image identity losses (the base attack multiplies them by ``lambda_iden``).

    Raises:
        ValueError: an unknown variant, a negative ``lam``, no surrogate logits for an augmented
            variant, or missing or mis-shaped features for one with the regulariser.

    Example:
        >>> t, s = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 4.0]])
        >>> y = torch.tensor([0])
        >>> lomma_identity_loss([t, s], y, variant="aug", lam=0.0)  # CE averaged over 2 models
        tensor([2.0725])
        >>> lomma_identity_loss([t, s], y, variant="ours", features=torch.ones(1, 3),
        ...                     feature_mean=torch.zeros(3), lam=0.5)  # (-2 + 0) / 2 + 0.5 * 1
        tensor([-0.5000])
    """
    spec = _variant(variant)
    _check_lam(lam)
    if len(logits) < 1:
        raise ValueError("logits must hold at least the target's logits")
    if spec.surrogates and len(logits) < 2:
        raise ValueError(
            f"variant {variant!r} averages over the target and its surrogates: pass the "
            f"surrogates' logits after the target's, got {len(logits)} logits tensor"
        )
    used = logits if spec.surrogates else logits[:1]
    per_model = [
        F.cross_entropy(out, labels, reduction="none")
        if spec.loss == "ce"
        else logit_loss(out, labels)
        for out in used
    ]
    iden = per_model[0] if len(per_model) == 1 else torch.stack(per_model).mean(dim=0)
    if not spec.regulariser:
        return iden
    if features is None or feature_mean is None:
        raise ValueError(
            f"variant {variant!r} regularises the target's features: pass features and feature_mean"
        )
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features must have shape (M, D) = ({labels.shape[0]}, D), got {tuple(features.shape)}"
        )
    if feature_mean.shape != (features.shape[1],):
        raise ValueError(
            f"feature_mean has {tuple(feature_mean.shape)} entries but the target's features "
            f"have {features.shape[1]} dimensions; were the surrogates built for another target?"
        )
    return iden + lam * feature_regulariser(features, feature_mean)


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> Tensor:
    """The official distillation loss: ``KL(teacher || student)`` at ``temperature``, batch mean.

    ``sum_k p_t log(p_t / p_s) / T^2`` averaged over the batch, ``p = softmax(logits / T)``
    (official ``KLDivLoss(reduction='sum') / T^2 / batch``; most code multiplies by ``T^2``
    instead, the same at the official ``T = 1``).

    Args:
        student_logits: (B, K) logits of the surrogate being trained.
        teacher_logits: (B, K) the target's logits for the same images.
        temperature: Softmax temperature ``T > 0`` (official 1).

    Returns:
        Scalar loss, 0 when the two softmax outputs agree.

    Example:
        >>> x = torch.tensor([[1.0, -2.0, 0.5]])
        >>> float(distillation_loss(x, x)), float(distillation_loss(x + 3.0, x))
        (0.0, 0.0)
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True)
    return kl / (temperature * temperature) / student_logits.shape[0]


# -- surrogate models (the target prior) -------------------------------------------------------------
class SurrogateCNN(Classifier):
    """A small CNN of any input size: ``stages`` x [strided conv, ``convs_per_stage - 1`` convs].

    Every convolution is 3x3 with BatchNorm and ReLU; the first of each stage halves the
    resolution and the stages double the width (``width``, ``2 width``, ...). Global average
    pooling then gives ``width * 2^(stages - 1)`` features, so any (C, H, W) works (down to 1x1).

    Args:
        num_classes: Classes of the head.
        input_shape: (C, H, W) of the images, in [0, 1] (mapped to [-1, 1] inside).
        width: Channels of the first stage.
        convs_per_stage: Convolutions per stage (depth).
        stages: Number of stages.

    Example:
        >>> SurrogateCNN(4, input_shape=(1, 8, 8))(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        num_classes: int,
        *,
        input_shape: tuple[int, int, int],
        width: int = 16,
        convs_per_stage: int = 1,
        stages: int = 3,
    ) -> None:
        super().__init__(num_classes, width * 2 ** (stages - 1), input_shape)
        layers: list[nn.Module] = []
        cin = self.input_shape[0]
        for stage in range(stages):
            cout = width * 2**stage
            for k in range(convs_per_stage):
                layers += [
                    nn.Conv2d(cin, cout, 3, 2 if k == 0 else 1, 1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(),
                ]
                cin = cout
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, feature_dim)."""
        return self.body(x * 2 - 1)


#: The default surrogates: one family scaled like EfficientNet-B0/B1/B2 (B1 deeper, B2 also
#: wider), :class:`SurrogateCNN` keyword arguments by name.
SURROGATE_ARCHITECTURES: dict[str, dict[str, int]] = {
    "lomma_b0": {"width": 16, "convs_per_stage": 1},
    "lomma_b1": {"width": 16, "convs_per_stage": 2},
    "lomma_b2": {"width": 24, "convs_per_stage": 2},
}


@dataclass(frozen=True)
class LOMMASurrogates:
    """What the LOMMA attacks receive: the distilled surrogates and the public feature mean.

    Attributes:
        models: Surrogate classifiers (images in [0, 1] -> logits over the target's classes), in
            eval mode on the attack's device; never updated by an attack.
        feature_mean: (D,) mean of the target's penultimate features over the public images.
    """

    models: tuple[nn.Module, ...]
    feature_mean: Tensor


def _build_surrogate(name: str, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """A fresh surrogate of architecture ``name`` (ours, or a zoo name)."""
    from mibench_lib.models import MODELS  # the zoo imports much; only builds need it

    shape = tuple(int(s) for s in input_shape)
    if name in SURROGATE_ARCHITECTURES:
        return SurrogateCNN(num_classes, input_shape=shape, **SURROGATE_ARCHITECTURES[name])
    if name in MODELS:
        return MODELS[name](num_classes, input_shape=shape)
    raise ValueError(
        f"architectures: unknown surrogate architecture {name!r}; known: "
        f"{sorted(SURROGATE_ARCHITECTURES)} and the zoo's {sorted(MODELS)}"
    )


def build_lomma_surrogates(
    oracle: TargetOracle,
    public: ImageSet,
    *,
    num_classes: int,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    architectures: Sequence[str] = ("lomma_b0", "lomma_b1", "lomma_b2"),
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    temperature: float = 1.0,
    query_batch_size: int = 256,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Distil LOMMA's surrogates from the target on the public images; compute ``mu_pub``.

    The target answers every public image once (``len(public)`` queries, in chunks of
    ``query_batch_size``), its penultimate features read from the input of its last linear layer
    during those same queries. The stored logits are the teachers' answers for every epoch of
    every student; ``mu_pub`` is the mean feature. Each surrogate then trains on the public
    images alone with :func:`distillation_loss` (official recipe; see the module docstring).

    Args:
        oracle: White-box oracle of the target (its features are read during the queries).
        public: The attacker's public images (labels unused).
        num_classes: The target's number of classes (the study passes it; must match the oracle).
        seed: Seeds the surrogates' initialisation (global RNG, forked, so the caller's state is
            untouched) and their batch order (a CPU generator).
        device: Where the surrogates train.
        progress: Show a progress bar over the distillation steps.
        architectures: Surrogate architectures: keys of :data:`SURROGATE_ARCHITECTURES` or of the
            zoo (:data:`mibench_lib.models.MODELS`). Official: three (EfficientNet-B0/B1/B2).
        epochs: Distillation epochs per surrogate (official 20).
        batch_size: Distillation batch (official 64); the last partial batch of each epoch is
            dropped, as in the official loader.
        lr: SGD learning rate (official config 0.01).
        momentum: SGD momentum (official 0.9).
        weight_decay: SGD weight decay (official 1e-4).
        temperature: Distillation temperature (official 1).
        query_batch_size: Public images per oracle call (memory only).

    Returns:
        ``(tensors, meta)``: the surrogates' weights (``"surrogate{i}.<key>"``) and
        ``"feature_mean"``; the architecture names, sizes, the final epoch's mean distillation
        loss and the top-1 agreement with the target on the public images of each surrogate,
        and ``"teacher_queries"``.

    Raises:
        AccessDenied: the oracle is not white-box (the features are read inside the target).
        TypeError: a target without a linear layer (no penultimate features to read).
        ValueError: bad hyperparameters, an unknown architecture, ``num_classes`` other than
            the oracle's, or fewer public images than ``batch_size``.
    """
    if not oracle.is_white_box:
        raise AccessDenied(
            f"LOMMA's surrogates need the target's penultimate features (a 'white-box' oracle), "
            f"got access {oracle.access!r}"
        )
    if num_classes != oracle.num_classes:
        raise ValueError(
            f"num_classes={num_classes} but the target has {oracle.num_classes} classes"
        )
    if isinstance(architectures, str) or len(architectures) < 1:
        raise ValueError(
            f"architectures must be a non-empty sequence of names, got {architectures!r}"
        )
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    check_int("query_batch_size", query_batch_size, 1)
    check_real("lr", lr, strict=True)
    check_real("weight_decay", weight_decay)
    check_real("temperature", temperature, strict=True)
    if not (isinstance(momentum, numbers.Real) and 0 <= momentum < 1):
        raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
    n = len(public)
    if n < batch_size:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {n} public images: the official loader drops "
            "the last partial batch, so no step would be taken"
        )
    device = torch.device(device)
    input_shape = oracle.input_shape
    target = oracle.module
    _require_linear(target)
    # the students before any query: an architecture that cannot take the images fails first
    with torch.random.fork_rng(devices=_cuda_index(device)):
        torch.manual_seed(seed)
        students = [
            _build_surrogate(name, num_classes, input_shape).to(device) for name in architectures
        ]

    # the target's answers: one query per public image, features read during the same queries
    logits_parts, feature_sum = [], None
    with eval_mode(target), torch.no_grad():
        for lo in range(0, n, query_batch_size):
            x = _images(public, torch.arange(lo, min(n, lo + query_batch_size)))
            with _penultimate(target) as read:
                out = oracle(x.to(oracle.device)).float()
            feats = read().double()
            feature_sum = feats.sum(0) if feature_sum is None else feature_sum + feats.sum(0)
            logits_parts.append(out.to(device))
    teacher = torch.cat(logits_parts)
    feature_mean = (feature_sum / n).float()

    rng = torch.Generator().manual_seed(seed)
    steps_per_epoch = n // batch_size
    bar = tqdm(
        total=len(students) * epochs * steps_per_epoch,
        desc="LOMMA surrogates (distillation)",
        disable=not progress,
        leave=False,
    )
    kd_losses, agreement = [], []
    with torch.random.fork_rng(devices=_cuda_index(device)):
        torch.manual_seed(seed)  # dropout in zoo students
        for student in students:
            opt = torch.optim.SGD(
                student.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
            )
            student.train()
            for _ in range(epochs):
                order = torch.randperm(n, generator=rng)
                epoch_loss = 0.0
                for b in range(steps_per_epoch):
                    idx = order[b * batch_size : (b + 1) * batch_size]
                    x = _images(public, idx).to(device)
                    loss = distillation_loss(student(x), teacher[idx.to(device)], temperature)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    epoch_loss += float(loss.detach())
                    bar.update(1)
                bar.set_postfix(kd=f"{epoch_loss / steps_per_epoch:.4f}")
            kd_losses.append(epoch_loss / steps_per_epoch)
            student.eval()
            agreement.append(_agreement(student, public, teacher, query_batch_size, device))
    bar.close()

    tensors: dict[str, Tensor] = {"feature_mean": feature_mean.cpu()}
    for i, student in enumerate(students):
        for key, value in student.state_dict().items():
            tensors[f"surrogate{i}.{key}"] = value.detach().cpu()
    meta = {
        "architectures": list(architectures),
        "num_classes": int(num_classes),
        "input_shape": list(input_shape),
        "feature_dim": int(feature_mean.numel()),
        "public_images": n,
        "teacher_queries": n,
        "epochs": int(epochs),
        "kd_loss": kd_losses,
        "agreement": agreement,
    }
    return tensors, meta


def load_lomma_surrogates(
    tensors: Mapping[str, Tensor], meta: Mapping[str, Any], device: torch.device | str
) -> LOMMASurrogates:
    """Rebuild :class:`LOMMASurrogates` from :func:`build_lomma_surrogates`' output.

    The surrogates come back in eval mode with gradients off, on ``device``.
    """
    models = []
    for i, name in enumerate(meta["architectures"]):
        model = _build_surrogate(name, int(meta["num_classes"]), meta["input_shape"])
        prefix = f"surrogate{i}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        model.load_state_dict(state, strict=True)
        models.append(model.to(device).eval().requires_grad_(False))
    return LOMMASurrogates(tuple(models), tensors["feature_mean"].to(device).float())


#: The target prior both LOMMA attacks take: distilled surrogates and the public feature mean.
LOMMA_SURROGATES = TargetPrior(
    "lomma_surrogates",
    "white-box",
    build_lomma_surrogates,
    load_lomma_surrogates,
    quick={"epochs": 1, "batch_size": 16},
)


# -- the attacks -------------------------------------------------------------------------------------
def lomma_gmi_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    generator: Generator,
    discriminator: nn.Module,
    lomma_surrogates: LOMMASurrogates,
    variant: str = "ours",
    lam: float = 1.0,
    steps: int = 2400,
    lr: float = 0.02,
    loss_divisor: int = 60,
    momentum: float = 0.9,
    lambda_iden: float = 100.0,
    restarts: int = 5,
    clip: float = 1.0,
    select: Literal["best", "all"] = "all",
    batch_size: int | None = None,
    start_latents: Tensor | None = None,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """LOMMA on GMI: GMI's latent search with LOMMA's identity loss.

    Runs :func:`~mibench_lib.attacks.gmi.gmi_attack` (prior ``-D(G(z))``, Nesterov momentum,
    ``z`` clamped to ``[-clip, clip]``, restarts batched) with the identity loss of ``variant``
    (:func:`lomma_identity_loss`): each step sends the images to the oracle once (the target's
    features are read during that query) and through every surrogate. No gradient reaches the
    surrogates' parameters (the search differentiates with respect to the latents only) and
    they run in eval mode. The defaults are LOMMA's official GMI settings.

    Args:
        oracle: White-box oracle of the target, (M, C, H, W) in [0, 1] -> (M, K) logits.
        labels: (N,) int64 class ids in ``[0, K)``; repeats allowed.
        generator: Public GAN generator (see :func:`~mibench_lib.attacks.gmi.gmi_attack`).
        discriminator: Its WGAN critic.
        lomma_surrogates: The :data:`LOMMA_SURROGATES` prior built for this target.
        variant: ``"baseline"``, ``"aug"``, ``"logit"`` or ``"ours"`` (:data:`VARIANTS`).
            ``"baseline"`` is plain GMI (bit-identical).
        lam: Weight of the feature regulariser inside the identity loss (official 1.0).
        steps: Optimisation steps (official 2400).
        lr: Nesterov learning rate (official 0.02).
        loss_divisor: Per-latent step ``lr / loss_divisor``; official 60, the identities of one
            official batch whose mean loss it minimises.
        momentum: Nesterov momentum (official 0.9).
        lambda_iden: Weight of the identity loss (official 100).
        restarts: Random starts per label (official 5 seeds).
        clip: Latent clamp after every step (official 1).
        select: ``"all"`` (default, the official evaluation scores every seed) returns every
            restart, restart-major; ``"best"`` keeps each label's restart with the highest target
            logit.
        batch_size: Most latents per forward pass (``None``: all).
        start_latents: Start points instead of random draws (see ``gmi_attack``).
        rng: CPU generator for the initial latents.
        on_step: Progress hook ``on_step(step, steps, info)`` (GMI's).

    Returns:
        GMI's :class:`InversionResult` with ``attack="lomma_gmi"``, ``losses`` the mean
        per-latent ``-D + lambda_iden * identity``, ``queries`` exactly ``(steps + 1) * N *
        restarts`` (one query per latent per step, then the selection pass), and
        ``extras["variant"]`` besides GMI's extras.

    Raises:
        AccessDenied: the oracle is not white-box.
        TypeError: a target without a linear layer for a variant with the regulariser, or
            ``lomma_surrogates`` that is not a :class:`LOMMASurrogates`.
        ValueError: an unknown variant, a negative ``lam``, surrogates that do not take the
            target's images or return its classes, a ``feature_mean`` that does not match the
            target's features (at the first step), or any of GMI's argument errors.

    Example:
        >>> from mibench_lib.oracle import TargetOracle
        >>> from mibench_lib.testing import (build_target_prior, tiny_classifier, tiny_digits,
        ...                                  tiny_discriminator, tiny_generator)
        >>> target = tiny_classifier()
        >>> surrogates, _ = build_target_prior(LOMMA_SURROGATES, target, tiny_digits()[0][:64])
        >>> res = lomma_gmi_attack(TargetOracle(target), torch.tensor([0, 3]),
        ...                        generator=tiny_generator(), discriminator=tiny_discriminator(),
        ...                        lomma_surrogates=surrogates, steps=2, restarts=2,
        ...                        rng=torch.Generator().manual_seed(0))
        >>> res.attack, res.images.shape, res.queries
        ('lomma_gmi', torch.Size([4, 1, 8, 8]), 12)
    """
    iden = _identity_for("lomma_gmi_attack", oracle, lomma_surrogates, variant, lam)
    with eval_mode(*lomma_surrogates.models):
        result = gmi_attack(
            oracle,
            labels,
            generator=generator,
            discriminator=discriminator,
            steps=steps,
            lr=lr,
            loss_divisor=loss_divisor,
            momentum=momentum,
            lambda_iden=lambda_iden,
            restarts=restarts,
            clip=clip,
            select=select,
            batch_size=batch_size,
            start_latents=start_latents,
            identity_loss=iden,
            rng=rng,
            on_step=on_step,
        )
    return dataclasses.replace(
        result, attack="lomma_gmi", extras={**result.extras, "variant": variant}
    )


def lomma_kedmi_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    kedmi_gan: KEDMIGAN,
    lomma_surrogates: LOMMASurrogates,
    variant: str = "ours",
    lam: float = 1.0,
    steps: int = 2400,
    lr: float = 0.02,
    lambda_iden: float = 100.0,
    samples: int = 5,
    clip: float | None = 1.0,
    batch_size: int | None = None,
    loss_divisor: float = 60,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """LOMMA on KEDMI: KEDMI's distributional search with LOMMA's identity loss.

    Runs :func:`~mibench_lib.attacks.kedmi.kedmi_attack` (one Gaussian ``N(mu, exp(log_var))``
    per label over the latents of KEDMI's GAN, Adam on ``(mu, log_var)``, prior
    ``-log sigmoid(logsumexp D(G(z)))``) with the identity loss of ``variant``
    (:func:`lomma_identity_loss`), and every sampled latent clamped to ``[-clip, clip]`` as in
    LOMMA's ``dist_inversion`` (``clipz=True``). Each step queries the oracle once per label
    (features read during that query) and runs every surrogate; no gradient reaches the
    surrogates' parameters and they run in eval mode. Defaults are LOMMA's official KEDMI
    settings (one seed per identity, i.e. one Gaussian, and 5 draws from it for evaluation).

    Args:
        oracle: White-box oracle of the target, (M, C, H, W) in [0, 1] -> (M, K) logits.
        labels: (N,) int64 class ids in ``[0, K)``; repeats allowed (one Gaussian each).
        kedmi_gan: The target's inversion-specific GAN (:data:`~mibench_lib.attacks.kedmi.KEDMI_GAN`).
        lomma_surrogates: The :data:`LOMMA_SURROGATES` prior built for this target.
        variant: ``"baseline"``, ``"aug"``, ``"logit"`` or ``"ours"`` (:data:`VARIANTS`).
            ``"baseline"`` is KEDMI with the clamp (bit-identical to ``kedmi_attack(...,
            clip=clip)``).
        lam: Weight of the feature regulariser inside the identity loss (official 1.0).
        steps: Optimisation steps (official 2400).
        lr: Adam learning rate on ``(mu, log_var)`` (official 0.02).
        lambda_iden: Weight of the identity loss (official 100).
        samples: Draws per label returned (official evaluation: 5).
        clip: Every sampled latent is clamped to ``[-clip, clip]`` (LOMMA: 1); ``None``: never
            (KEDMI's own code).
        batch_size: Most labels searched at once (``None``: all).
        loss_divisor: The per-label losses are summed and divided by it (official batch 60).
        rng: CPU generator for every draw.
        on_step: Progress hook ``on_step(step, steps, info)`` (KEDMI's).

    Returns:
        KEDMI's :class:`InversionResult` (``samples * N`` images, sample-major) with
        ``attack="lomma_kedmi"``, ``losses`` the mean per-label ``prior + lambda_iden *
        identity``, ``queries`` exactly ``(steps + samples) * N``, and ``extras["variant"]``
        besides KEDMI's extras.

    Raises:
        AccessDenied: the oracle is not white-box.
        TypeError: a target without a linear layer for a variant with the regulariser, a
            ``lomma_surrogates`` that is not a :class:`LOMMASurrogates`, or a bad ``kedmi_gan``.
        ValueError: an unknown variant, a negative ``lam``, surrogates that do not fit the
            target, a ``feature_mean`` that does not match its features (at the first step), or
            any of KEDMI's argument errors.

    Example:
        >>> from mibench_lib.oracle import TargetOracle
        >>> from mibench_lib.testing import build_target_prior, tiny_classifier, tiny_digits
        >>> target, public = tiny_classifier(), tiny_digits()[0][:64]
        >>> gan, _ = build_target_prior(KEDMI_GAN, target, public)
        >>> surrogates, _ = build_target_prior(LOMMA_SURROGATES, target, public)
        >>> res = lomma_kedmi_attack(TargetOracle(target), torch.tensor([0, 3]), kedmi_gan=gan,
        ...                          lomma_surrogates=surrogates, steps=2, samples=3,
        ...                          rng=torch.Generator().manual_seed(0))
        >>> res.attack, res.images.shape, res.queries
        ('lomma_kedmi', torch.Size([6, 1, 8, 8]), 10)
    """
    iden = _identity_for("lomma_kedmi_attack", oracle, lomma_surrogates, variant, lam)
    with eval_mode(*lomma_surrogates.models):
        result = kedmi_attack(
            oracle,
            labels,
            kedmi_gan=kedmi_gan,
            steps=steps,
            lr=lr,
            lambda_iden=lambda_iden,
            samples=samples,
            clip=clip,
            identity_loss=iden,
            batch_size=batch_size,
            loss_divisor=loss_divisor,
            rng=rng,
            on_step=on_step,
        )
    return dataclasses.replace(
        result, attack="lomma_kedmi", extras={**result.extras, "variant": variant}
    )


# -- helpers -----------------------------------------------------------------------------------------
class _IdentityLoss:
    """``identity_loss(images, labels)`` for the base attacks: one oracle query per call."""

    def __init__(
        self, oracle: TargetOracle, surrogates: LOMMASurrogates, variant: str, lam: float
    ) -> None:
        self.oracle, self.surrogates, self.variant, self.lam = oracle, surrogates, variant, lam
        self.spec = VARIANTS[variant]

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        features = None
        if self.spec.regulariser:
            with _penultimate(self.oracle.module) as read:
                logits = self.oracle(images)  # the only target pass: counted
            features = read()
        else:
            logits = self.oracle(images)
        outputs = [logits]
        if self.spec.surrogates:
            outputs += [model(images) for model in self.surrogates.models]
        return lomma_identity_loss(
            outputs,
            labels,
            variant=self.variant,
            features=features,
            feature_mean=self.surrogates.feature_mean,
            lam=self.lam,
        )


def _identity_for(
    attack: str, oracle: TargetOracle, surrogates: object, variant: str, lam: float
) -> _IdentityLoss:
    """Check the oracle's access and the LOMMA arguments (no query); build the identity loss."""
    if not oracle.is_white_box:
        raise AccessDenied(
            f"{attack} needs the target's gradients and features (a 'white-box' oracle), got "
            f"access {oracle.access!r}"
        )
    spec = _variant(variant)
    _check_lam(lam)
    if not isinstance(surrogates, LOMMASurrogates):
        raise TypeError(
            f"lomma_surrogates must be a LOMMASurrogates (the {LOMMA_SURROGATES.name!r} prior "
            f"built for this target), got {type(surrogates).__name__}"
        )
    check_target(oracle.module)  # the target's own contract first, with its fix
    if spec.regulariser:
        _require_linear(oracle.module)
    mean = surrogates.feature_mean
    if not (isinstance(mean, Tensor) and mean.ndim == 1 and torch.isfinite(mean).all()):
        raise ValueError("lomma_surrogates.feature_mean must be a finite (D,) tensor")
    if spec.surrogates:
        if len(surrogates.models) < 1:
            raise ValueError(f"variant {variant!r} needs at least one surrogate model, got none")
        for i, model in enumerate(surrogates.models):
            _check_surrogate(i, model, oracle.num_classes, oracle.input_shape)
    return _IdentityLoss(oracle, surrogates, variant, lam)


def _check_surrogate(
    index: int, model: object, num_classes: int, input_shape: tuple[int, ...]
) -> None:
    """One eval-mode pass on 2 blank images: (2, K) logits, or a ValueError naming the model."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"surrogate {index} is a {type(model).__name__}, not an nn.Module")
    device = next(model.parameters(), torch.zeros(())).device
    with eval_mode(model), torch.no_grad(), torch.random.fork_rng(devices=_cuda_index(device)):
        try:
            out = model(torch.zeros(2, *input_shape, device=device))
        except Exception as err:
            raise ValueError(
                f"surrogate {index} ({type(model).__name__}) fails on the target's "
                f"{tuple(input_shape)} images: {err}"
            ) from err
    if not isinstance(out, Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"surrogate {index} ({type(model).__name__}) must return (N, {num_classes}) logits "
            f"for the target's classes, returned {shape}; were the surrogates built for another "
            "target?"
        )


@contextmanager
def _penultimate(target: nn.Module) -> Iterator[Callable[[], Tensor]]:
    """Read the input of the last ``nn.Linear`` the target calls during one forward pass.

    Forward pre-hooks on every linear layer keep the latest input, so after the pass the reader
    returns the input of the layer called last (the classification head), flattened to (N, D),
    whatever the order in which the modules were registered. The hooks are removed on exit.
    """
    seen: list[Tensor] = []

    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        seen[:] = [inputs[0]]

    handles = [m.register_forward_pre_hook(hook) for m in target.modules() if _is_linear(m)]

    def read() -> Tensor:
        if not seen:
            raise TypeError(
                f"LOMMA reads the target's penultimate features as the input of the last "
                f"nn.Linear it calls; target {type(target).__name__} called none"
            )
        return seen[0].flatten(1)

    try:
        yield read
    finally:
        for handle in handles:
            handle.remove()


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


def _require_linear(target: nn.Module) -> None:
    if not any(_is_linear(m) for m in target.modules()):
        raise TypeError(
            f"LOMMA's feature regulariser needs the target's penultimate features, read as the "
            f"input of its last nn.Linear layer; target {type(target).__name__} has no nn.Linear "
            "(use variant 'baseline' or 'aug', which need no features)"
        )


def _images(public: ImageSet, idx: Tensor) -> Tensor:
    """Public images ``idx`` as float32 in [0, 1] (uint8 storage converted per batch)."""
    x = public.data[idx]
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def _agreement(
    student: nn.Module, public: ImageSet, teacher: Tensor, chunk: int, device: torch.device
) -> float:
    """Top-1 agreement of a student with the stored teacher answers (no query)."""
    n, same = len(public), 0
    for lo in range(0, n, chunk):
        idx = torch.arange(lo, min(n, lo + chunk))
        pred = student(_images(public, idx).to(device)).argmax(1)
        same += int((pred == teacher[idx.to(device)].argmax(1)).sum())
    return same / n


def _cuda_index(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _variant(variant: object) -> Variant:
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
    return VARIANTS[variant]


def _check_lam(lam: object) -> None:
    check_real("lam", lam)


#: LOMMA on GMI: what the study engine needs to know.
SPEC_GMI = AttackSpec(
    "lomma_gmi",
    lomma_gmi_attack,
    access="white-box",
    needs=("generator", "discriminator", LOMMA_SURROGATES),
    quick={"steps": 3, "restarts": 2, "select": "best"},
)

#: LOMMA on KEDMI: KEDMI's GAN and the surrogates, both trained with the target's answers.
SPEC_KEDMI = AttackSpec(
    "lomma_kedmi",
    lomma_kedmi_attack,
    access="white-box",
    needs=(KEDMI_GAN, LOMMA_SURROGATES),
    quick={"steps": 3, "samples": 1},
)

#: Every LOMMA attack (the registry includes ``*lomma.SPECS``).
SPECS: tuple[AttackSpec, ...] = (SPEC_GMI, SPEC_KEDMI)
