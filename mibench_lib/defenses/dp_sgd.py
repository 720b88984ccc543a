"""DP-SGD: Abadi et al., "Deep Learning with Differential Privacy", CCS 2016,
https://arxiv.org/abs/1607.00133, through opacus (Yousefpour et al., "Opacus: User-Friendly
Differential Privacy Library in PyTorch", 2021, https://opacus.ai).

Algorithm. Each step draws a Poisson batch (every training image joins independently with
probability ``q``), computes one gradient per image, clips each to L2 norm ``<= C``
(``max_grad_norm``, flat over all parameters), sums them, adds Gaussian noise ``N(0, sigma^2 C^2)``
to every coordinate and divides by the *expected* batch size ``q N``. A privacy accountant
(opacus' PRV accountant by default) turns ``(sigma, q, steps)`` into ``epsilon`` at a given
``delta``. Defaults: ``sigma = 1``, ``C = 1``, ``delta = 1e-5`` (at most ``1/N`` for our sets),
Poisson sampling on.

What the guarantee covers. ``(epsilon, delta)`` bounds what the trained model reveals about any
*one training image* (example-level DP). Model inversion recovers what a whole class shares (an
identity, a digit), which many training images carry together: a class of ``k`` images is only
protected at the group-privacy level (roughly ``k * epsilon``), so a small epsilon does not by
itself promise that class representatives stay hidden. Every run, hyper-parameter search or
epoch selection on private data spends budget that the reported epsilon does not include.

Architecture. BatchNorm mixes the images of a batch and has no per-image gradient, so
:func:`make_dp_compatible` swaps it for GroupNorm (opacus ``ModuleValidator.fix``). The defense's
``build`` does only that, leaving the training recipe unchanged.

Matched baseline. The GroupNorm swap alone changes accuracy and what an attack recovers, so a
DP-SGD target must be compared with an undefended target *of the same architecture and recipe*, not
with the BatchNorm one. ``dp_sgd_defense(noise_multiplier=0, max_grad_norm=None)`` is that
baseline: the same GroupNorm model, optimizer, learning rate, opacus engine, Poisson sampling and
normalisation by the expected batch size ``q N``, with only the two privacy mechanisms off (no
noise, no clipping). Its step is exactly the non-private step on the same Poisson batch with the
loss summed over the batch and divided by ``q N``; its epsilon is reported as ``inf``. Poisson
sampling is kept on purpose, so that the comparison isolates noise and clipping from the batch
sampling (variable batch sizes, examples skipped or repeated within an epoch). In a study's
``defenses:`` list: ``{name: dp_sgd, kwargs: {noise_multiplier: 0, max_grad_norm: null}}``.

Data loading. The training loop's loader indexes an in-memory :class:`ImageSet` once per batch.
opacus rebuilds a loader as a ``DPDataLoader`` that fetches images one by one and collates them
with the original loader's ``collate_fn``; for a loader built with ``batch_size=None`` that is
``default_convert``, which returns a list of ``(image, label)`` pairs instead of two stacked tensors.
``prepare`` therefore hands opacus a loader over a thin view of the set that fetches a whole
batch with one index operation (``__getitems__``) and an identity collate; opacus' own Poisson
sampler and empty-batch handling are then used unchanged, and an empty Poisson batch arrives as
``(0, C, H, W)`` images and ``(0,)`` labels (its loss is 0 and the step adds noise only).

After training. The returned model is opacus' ``GradSampleModule``: it runs the forward pass,
``eval()`` and ``state_dict()`` (keys prefixed ``_module.``) but does not forward plain
attributes such as ``num_classes``. Call :func:`unwrap_dp_model` on it before attacking or saving;
the defense's ``unwrap`` hook does that before a study saves the weights.

Differences from the paper. Abadi et al. use lots of size ``L`` and the moments accountant; opacus'
PRV accountant is tighter for the same mechanism. ``secure_mode=False`` (default) draws noise and
batches from seeded pseudo-random generators for reproducibility, which is fine for measuring but
not for a deployed guarantee (``secure_mode=True`` needs the ``torchcsprng`` package).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from opacus import GradSampleModule, PrivacyEngine
from opacus.validators import ModuleValidator
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from mibench_lib.data._types import ImageSet
from mibench_lib.defenses._defense import Defense

__all__ = ["dp_sgd_defense", "make_dp_compatible", "unwrap_dp_model"]

ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp", "gdp")

#: The clipping bound handed to opacus for ``max_grad_norm=None``. No finite gradient norm reaches
#: it, so every per-image clip factor ``min(1, C / (norm + 1e-6))`` is exactly 1, and the noise
#: std ``sigma * C`` is exactly 0 for ``sigma = 0`` (``inf`` would make it ``0 * inf = nan``).
NO_CLIPPING: float = float(torch.finfo(torch.float32).max)


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that opacus can train: BatchNorm replaced by GroupNorm.

    opacus' fixer turns each ``BatchNorm*d(C)`` into ``GroupNorm(gcd(32, C), C)`` with fresh affine
    parameters; in-place activations compute out of place; every other layer (and its weights) is
    copied unchanged.

    Args:
        model: Any module; it is not modified.

    Returns:
        The fixed deep copy, in the training mode of ``model``; it passes
        ``ModuleValidator.validate(..., strict=True)`` once in training mode.

    Raises:
        opacus.validators.errors.UnsupportedModuleError: a layer opacus cannot fix or train.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> m = make_dp_compatible(tiny_classifier())
        >>> type(m.body[1]).__name__, ModuleValidator.validate(m.train())
        ('GroupNorm', [])
    """
    fixed = ModuleValidator.fix(model)
    # In-place activations (torchvision's VGG uses ReLU(inplace=True)) overwrite the outputs that
    # opacus' backward hooks hold, and the first DP step raises; the copy computes out of place
    # (same values).
    for module in fixed.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    # opacus also insists on training mode, which prepare sets; check the layers alone here
    fixed.train()
    ModuleValidator.validate(fixed, strict=True)
    return fixed.train(model.training)


def unwrap_dp_model(model: nn.Module) -> nn.Module:
    """The plain module inside opacus' ``GradSampleModule`` (clean ``state_dict`` keys).

    Removes opacus' hooks and per-sample gradient attributes; the wrapper must not be used for
    training afterwards. A module that is not wrapped is returned as it is.

    Args:
        model: The model returned by training with :func:`dp_sgd_defense`, or any module.

    Returns:
        The wrapped module itself (same parameters, no ``_module.`` key prefix).
    """
    if isinstance(model, GradSampleModule):
        return model.to_standard_module()
    return model


class _BatchFetch(Dataset):
    """View of an :class:`ImageSet` that fetches a list of indices with one index operation."""

    def __init__(self, data: ImageSet) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.data[i]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        # An empty list gives (0, C, H, W) images and (0,) labels.
        return self.data[torch.as_tensor(indices, dtype=torch.long)]


def _keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Identity collate: ``_BatchFetch.__getitems__`` already returns stacked tensors."""
    return batch


def _batched_loader(loader: DataLoader, *, generator: torch.Generator | None) -> DataLoader:
    """A loader with the batches-per-epoch of ``loader`` that opacus can rebuild for Poisson sampling."""
    data = loader.dataset
    if not isinstance(data, ImageSet):
        raise TypeError(f"dp_sgd expects a loader over an ImageSet, got {type(data).__name__}")
    batch_size = (
        loader.sampler.batch_size if isinstance(loader.sampler, BatchSampler) else loader.batch_size
    )
    if batch_size is None:
        raise ValueError(
            "dp_sgd cannot tell the loader's batch size (no BatchSampler, batch_size None)"
        )
    return DataLoader(
        _BatchFetch(data),
        batch_sampler=BatchSampler(RandomSampler(data, generator=generator), batch_size, False),
        collate_fn=_keep_batch,
        generator=generator,
    )


def dp_cross_entropy(
    logits: Tensor, labels: Tensor, *, model: nn.Module, images: Tensor, epoch: int
) -> Tensor:
    """Mean cross-entropy, and 0 (not NaN) on an empty Poisson batch.

    Args:
        logits: (B, K) with B >= 0; labels: (B,) int64.

    Returns:
        Scalar loss attached to the graph (an empty batch gives zero gradients, so the step
        adds only the Gaussian noise, as the DP analysis requires).
    """
    if logits.shape[0] == 0:
        return logits.sum()
    return F.cross_entropy(logits, labels)


def dp_sgd_defense(
    *,
    noise_multiplier: float = 1.0,
    max_grad_norm: float | None = 1.0,
    target_epsilon: float | None = None,
    delta: float = 1e-5,
    epochs: int | None = None,
    accountant: str = "prv",
    poisson_sampling: bool = True,
    secure_mode: bool = False,
    seed: int = 0,
) -> Defense:
    """DP-SGD training (example-level differential privacy) with opacus.

    Args:
        noise_multiplier: sigma, noise std over the clipping norm (>= 0; 0 gives epsilon = inf).
            Ignored when ``target_epsilon`` is given.
        max_grad_norm: C, the per-image gradient clipping norm (> 0). None: no clipping, only
            with ``noise_multiplier=0`` and no ``target_epsilon`` (noise without a clipping bound
            protects nothing). ``noise_multiplier=0, max_grad_norm=None`` is the matched
            non-private baseline described in the module docstring.
        target_epsilon: If given, opacus picks sigma so that ``epochs`` epochs spend this epsilon
            (``make_private_with_epsilon``). Training longer than ``epochs`` spends more; the
            reported epsilon is always the one actually spent.
        delta: delta of the guarantee, in (0, 1); keep it <= 1 / (number of training images).
        epochs: Epochs the target epsilon is planned for (required with ``target_epsilon``, must
            match the training loop's ``epochs``).
        accountant: ``"prv"`` (opacus' default), ``"rdp"`` or ``"gdp"``.
        poisson_sampling: Poisson batches (required by the accountant's analysis); False keeps
            shuffled fixed-size batches, which the accountant only approximates.
        secure_mode: Cryptographically secure noise and sampling (needs ``torchcsprng``); the seed
            is then unused.
        seed: Seeds the Poisson sampler and the noise when ``secure_mode`` is off.

    Returns:
        A :class:`Defense` named ``"dp_sgd"``: ``build`` = :func:`make_dp_compatible`, ``loss`` =
        :func:`dp_cross_entropy`, ``prepare`` wraps (model, optimizer, loader) with a fresh
        ``PrivacyEngine``, and ``after_training`` reports ``epsilon`` (at ``delta``), ``delta``,
        ``noise_multiplier``, ``max_grad_norm`` (``inf`` without clipping), ``sample_rate`` and
        ``steps`` of the last training prepared with this defense instance. ``epsilon`` is ``inf``
        whenever no noise was added. ``unwrap`` = :func:`unwrap_dp_model`.

    Raises:
        ValueError: a value out of range, an unknown accountant, ``target_epsilon`` without
            ``epochs``.

    Example:
        >>> d = dp_sgd_defense(noise_multiplier=1.5)
        >>> d.name, d.knob, d.knob_value
        ('dp_sgd', 'noise_multiplier', 1.5)
        >>> dp_sgd_defense(noise_multiplier=0, max_grad_norm=None).config["max_grad_norm"] is None
        True
    """
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if max_grad_norm is not None and not 0 < max_grad_norm < math.inf:
        raise ValueError(
            f"max_grad_norm must be positive and finite (None: no clipping), got {max_grad_norm}"
        )
    if max_grad_norm is None and (noise_multiplier != 0 or target_epsilon is not None):
        raise ValueError(
            "max_grad_norm=None (no clipping) needs noise_multiplier=0 and no target_epsilon: "
            "without a clipping bound the noise gives no privacy guarantee"
        )
    if target_epsilon is not None and target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be positive or None, got {target_epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be a positive integer or None, got {epochs}")
    if target_epsilon is not None and epochs is None:
        raise ValueError("target_epsilon needs epochs (the number of epochs it is planned for)")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")

    # One training at a time: prepare stores its engine here for after_training.
    state: dict[str, Any] = {}

    def prepare(
        model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
        with warnings.catch_warnings():
            # secure_mode is an explicit, documented argument of this defense
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=accountant, secure_mode=secure_mode)
        model.train()  # opacus validates (and wraps) a model in training mode
        device = next(model.parameters()).device
        sample_rng = None if secure_mode else torch.Generator().manual_seed(seed)
        noise_rng = None
        if not secure_mode:  # a different stream from the sampler's
            noise_rng = torch.Generator(device=device).manual_seed(seed + 1_000_003)
        common: dict[str, Any] = {
            "module": model,
            "optimizer": optimizer,
            "data_loader": _batched_loader(loader, generator=sample_rng),
            "max_grad_norm": NO_CLIPPING if max_grad_norm is None else max_grad_norm,
            "poisson_sampling": poisson_sampling,
            "noise_generator": noise_rng,
        }
        if target_epsilon is None:
            out = engine.make_private(noise_multiplier=noise_multiplier, **common)
        else:
            out = engine.make_private_with_epsilon(
                target_epsilon=target_epsilon, target_delta=delta, epochs=epochs, **common
            )
        dp_model, dp_optimizer, dp_loader = out
        state.clear()
        state.update(engine=engine, optimizer=dp_optimizer, sample_rate=1 / len(dp_loader))
        return dp_model, dp_optimizer, dp_loader

    def after_training(
        model: nn.Module, test_set: ImageSet, device: torch.device
    ) -> Mapping[str, float]:
        if "engine" not in state:
            raise RuntimeError("after_training called before prepare: nothing was trained with DP")
        engine: PrivacyEngine = state["engine"]
        steps = sum(n for _, _, n in engine.accountant.history)
        sigma = float(state["optimizer"].noise_multiplier)
        eps = float(engine.get_epsilon(delta)) if steps and sigma > 0 else float("inf")
        return {
            "epsilon": eps,
            "delta": delta,
            "noise_multiplier": sigma,
            "max_grad_norm": float("inf") if max_grad_norm is None else max_grad_norm,
            "sample_rate": float(state["sample_rate"]),
            "steps": float(steps),
        }

    return Defense(
        "dp_sgd",
        config={
            "noise_multiplier": noise_multiplier if target_epsilon is None else None,
            "max_grad_norm": max_grad_norm,
            "target_epsilon": target_epsilon,
            "delta": delta,
            "epochs": epochs,
            "accountant": accountant,
            "poisson_sampling": poisson_sampling,
            "secure_mode": secure_mode,
            "seed": seed,
        },
        knob="noise_multiplier" if target_epsilon is None else "target_epsilon",
        build=make_dp_compatible,
        loss=dp_cross_entropy,
        prepare=prepare,
        after_training=after_training,
        unwrap=unwrap_dp_model,
    )
