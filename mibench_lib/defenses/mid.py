"""MID: a variational information bottleneck in front of the classifier head.

Wang, Wang, Fu and Grosse, "Improving Robustness to Model Inversion Attacks via Mutual Information
Regularization", AAAI 2021, https://arxiv.org/abs/2009.05241.

The defended model keeps the base network's penultimate features ``h`` (dimension d) but no longer
reads them directly: a linear layer maps ``h`` to 2k numbers, the first k are the mean ``mu`` of a
Gaussian code, the second k give its standard deviation ``std = softplus(s - 5)``, a code
``z = mu + std * eps`` (eps ~ N(0, I)) is drawn, and a fresh linear head reads ``z``. Training
minimises ``CE + beta * KL(N(mu, std^2) || N(0, I))``, a variational upper bound on the mutual
information I(X; Z); the KL is summed over the k code dimensions and averaged over the batch.

Defaults follow the official code (VGG16 on CelebA, run "vib4"): ``beta = 0.003``, ``k = d // 2``
(1024 for VGG16's 2048 features), the ``- 5`` shift (so a fresh layer starts with std near
softplus(-5) = 0.0067, i.e. an almost deterministic code), and eps drawn again at inference: the
released outputs of the official model are random. Here that is ``sample_at_inference=True``; with
``False`` the model releases the deterministic ``head(mu)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib.defenses._defense import Defense
from mibench_lib.models.base import Classifier

STD_SHIFT = 5.0
"""Pre-activation shift of the standard deviation: ``std = softplus(s - 5)`` (official code)."""


def gaussian_kl_to_standard_normal(mu: Tensor, std: Tensor) -> Tensor:
    """KL(N(mu, std^2) || N(0, I)) summed over code dimensions, averaged over the batch.

    ``-1/2 * sum_k (1 + 2 ln std - mu^2 - std^2)``, the closed form for diagonal Gaussians.

    Args:
        mu: (N, k) means.
        std: (N, k) standard deviations, > 0.

    Returns:
        Scalar tensor (nats per sample).

    Example:
        >>> gaussian_kl_to_standard_normal(torch.ones(2, 3), torch.ones(2, 3)).item()
        1.5
    """
    if mu.shape != std.shape or mu.ndim != 2:
        raise ValueError(
            f"mu and std must both have shape (N, k), got {tuple(mu.shape)} and {tuple(std.shape)}"
        )
    return -0.5 * (1 + 2 * std.log() - mu.pow(2) - std.pow(2)).sum(dim=1).mean()


class VIBClassifier(Classifier):
    """A classifier whose head reads a stochastic bottleneck code (MID's defended model).

    ``features(x)`` returns the code ``z`` the head reads, so ``forward(x) == head(features(x))``
    as for every classifier: a sample ``mu + std * eps`` in training mode, and in eval mode a sample
    too when ``sample_at_inference`` (eps drawn from torch's global RNG on the model's device, so
    two calls on one input differ) or ``mu`` otherwise (deterministic). :meth:`encode` gives ``mu``
    and ``std`` themselves. In training mode each forward pass keeps its KL term for the loss
    (:meth:`pop_kl`); eval-mode passes keep nothing.

    Args:
        base: The network to defend; its ``features`` feed the bottleneck and its own ``head`` is
            no longer used (kept as a submodule, untrained).
        bottleneck_dim: Code size k (default ``base.feature_dim // 2``, as in the official code).
        sample_at_inference: Whether eval-mode outputs use a fresh sample (official) or ``mu``.

    Attributes:
        base: The wrapped classifier.
        stats: Linear(d, 2k) giving ``mu`` and the pre-activation of ``std``.
        head: Linear(k, num_classes), the new head.

    Raises:
        TypeError: ``base`` is not a :class:`Classifier`.
        ValueError: ``base`` is already a VIBClassifier, or ``bottleneck_dim`` < 1.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> vib = VIBClassifier(tiny_classifier(), sample_at_inference=False).eval()
        >>> vib.feature_dim, vib(torch.rand(2, 1, 8, 8)).shape
        (8, torch.Size([2, 4]))
    """

    def __init__(
        self,
        base: Classifier,
        *,
        bottleneck_dim: int | None = None,
        sample_at_inference: bool = True,
    ) -> None:
        if not isinstance(base, Classifier):
            raise TypeError(f"base must be a Classifier, got {type(base).__name__}")
        if isinstance(base, VIBClassifier):
            raise ValueError("base is already a VIBClassifier; wrap the undefended model instead")
        k = base.feature_dim // 2 if bottleneck_dim is None else bottleneck_dim
        if k < 1:
            raise ValueError(f"bottleneck_dim must be >= 1, got {k}")
        super().__init__(base.num_classes, k, base.input_shape)
        self.base = base
        self.stats = nn.Linear(base.feature_dim, 2 * k)
        self.sample_at_inference = bool(sample_at_inference)
        self._kl: Tensor | None = None

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) in [0, 1] -> ``(mu, std)``, each (N, k); std = softplus(s - 5) > 0."""
        s = self.stats(self.base.features(x))
        k = self.feature_dim
        return s[:, :k], F.softplus(s[:, k:] - STD_SHIFT)

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, k) code read by the head (a sample, or mu; see class)."""
        mu, std = self.encode(x)
        if self.training:
            self._kl = gaussian_kl_to_standard_normal(mu, std)
        if self.training or self.sample_at_inference:
            return mu + std * torch.randn_like(std)
        return mu

    def pop_kl(self) -> Tensor:
        """The KL term of the last training-mode forward pass, which is then forgotten.

        Raises:
            RuntimeError: no training-mode forward pass since the last call.
        """
        if self._kl is None:
            raise RuntimeError(
                "no KL term recorded: run a training-mode forward pass before the MID loss"
            )
        kl, self._kl = self._kl, None
        return kl


def _find_vib(model: nn.Module) -> VIBClassifier:
    for m in model.modules():  # also finds it inside wrappers such as opacus' GradSampleModule
        if isinstance(m, VIBClassifier):
            return m
    raise ValueError(
        f"the MID loss needs a model built by mid_defense().build, got {type(model).__name__}"
    )


def mid_defense(
    *,
    beta: float = 0.003,
    bottleneck_dim: int | None = None,
    sample_at_inference: bool = True,
) -> Defense:
    """MID: train through a Gaussian bottleneck with loss ``CE + beta * KL`` (see module docstring).

    ``build`` wraps any :class:`Classifier` in a :class:`VIBClassifier` (new bottleneck and head;
    the base network's weights are kept, so a pre-trained base is fine-tuned); ``loss`` reads the
    KL term the model recorded during the same forward pass.

    Args:
        beta: Weight of the KL term, >= 0 (0.003 in the official code; larger values constrain
            I(X; Z) more and cost accuracy). The knob of this defense.
        bottleneck_dim: Code size k; None gives ``feature_dim // 2`` of the base model.
        sample_at_inference: Eval-mode outputs from a fresh sample (True, official: the oracle
            releases random outputs) or from ``mu`` (False, deterministic).

    Returns:
        A :class:`Defense` named ``"mid"`` with ``build`` and ``loss`` hooks.

    Raises:
        ValueError: ``beta`` negative or not finite, ``bottleneck_dim`` < 1.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> d = mid_defense(beta=0.01)
        >>> model = d.build(tiny_classifier()).train()
        >>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
        >>> d.loss(model(x), y, model=model, images=x, epoch=0).ndim
        0
    """
    if isinstance(beta, bool) or not (
        isinstance(beta, int | float) and math.isfinite(beta) and beta >= 0
    ):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if bottleneck_dim is not None and (
        isinstance(bottleneck_dim, bool)
        or not isinstance(bottleneck_dim, int)
        or bottleneck_dim < 1
    ):
        raise ValueError(f"bottleneck_dim must be None or an int >= 1, got {bottleneck_dim!r}")
    if not isinstance(sample_at_inference, bool):
        raise ValueError(f"sample_at_inference must be a bool, got {sample_at_inference!r}")
    beta = float(beta)

    def build(model: nn.Module) -> nn.Module:
        return VIBClassifier(
            model, bottleneck_dim=bottleneck_dim, sample_at_inference=sample_at_inference
        )

    def loss(
        logits: Tensor, labels: Tensor, *, model: nn.Module, images: Tensor, epoch: int
    ) -> Tensor:
        kl = _find_vib(model).pop_kl()
        ce = F.cross_entropy(logits, labels)
        return ce if beta == 0 else ce + beta * kl

    return Defense(
        "mid",
        config={
            "beta": beta,
            "bottleneck_dim": bottleneck_dim,
            "sample_at_inference": sample_at_inference,
        },
        knob="beta",
        build=build,
        loss=loss,
    )
