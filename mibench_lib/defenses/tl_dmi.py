"""Transfer-learning-based defense against model inversion (TL-DMI).

Ho et al., "Model Inversion Robustness: Can Transfer Learning Help?", CVPR 2024,
https://arxiv.org/abs/2405.05588.

The target is first trained on *public* labelled data; then the front of its feature extractor is
frozen and only the remaining layers plus a new head are fine-tuned on the private data. Limiting
the layers that can encode information about the private data degrades inversion at a small cost
in natural accuracy; the paper justifies this with a per-layer Fisher-information analysis
(:func:`layer_fisher_information` computes it, to compare an undefended and a TL-trained model).
The strength of the defense is the number of parameters updated with private data, theta_C
(fewer: more robust).

What is frozen here (``frozen_fraction``): the feature extractor is cut into *units*, the modules
that own parameters directly (convolutions, linear layers, normalisation layers, PReLUs; the head
excluded), ordered by their first call in a forward pass of ``model.features``; the parameters of
the first ``floor(frozen_fraction * n_units)`` units are frozen. ``frozen_layers`` names modules
instead (every parameter below them is frozen), e.g. the official VGG16 split ``k = 26`` is
``[f"feature.{i}" for i in range(27)]``.

BatchNorm policy: BatchNorm layers inside the frozen part are put in eval mode for good (their
class is swapped for a subclass whose ``train()`` always selects eval mode), so they normalise with
the public running statistics and private batches never reach their buffers. The official code
calls ``model.train()`` on everything and lets those statistics absorb the private data; with that
policy the "frozen" layers would still change with private data.

Paper/official defaults: VGG16-BN with 8 of 13 convolutions frozen, IR-152 with all but the last
stage frozen, fine-tuned with SGD (momentum 0.9, weight decay 1e-4); backbones pre-trained on
ImageNet-1K or MS-Celeb-1M. Here the public pre-training set is an argument (nothing is
downloaded), pre-trained with Adam (``pretrain_lr`` 1e-3); the fine-tuning optimiser is the one
given to ``train_classifier``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from mibench_lib._checks import check_labels
from mibench_lib.cache import tensor_fingerprint
from mibench_lib.data._types import ImageSet
from mibench_lib.defenses._defense import Defense
from mibench_lib.models.base import Classifier
from mibench_lib.models.train import train_classifier

PRETRAIN_TEST_SIZE = 512  # images of the public set used to report pre-training accuracy


class EvalModeBatchNorm1d(nn.BatchNorm1d):
    """A BatchNorm1d that stays in eval mode: running statistics are used and never updated."""

    def train(self, mode: bool = True) -> EvalModeBatchNorm1d:
        """Ignore ``mode``: always eval."""
        return super().train(False)


class EvalModeBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that stays in eval mode: running statistics are used and never updated."""

    def train(self, mode: bool = True) -> EvalModeBatchNorm2d:
        """Ignore ``mode``: always eval."""
        return super().train(False)


class EvalModeBatchNorm3d(nn.BatchNorm3d):
    """A BatchNorm3d that stays in eval mode: running statistics are used and never updated."""

    def train(self, mode: bool = True) -> EvalModeBatchNorm3d:
        """Ignore ``mode``: always eval."""
        return super().train(False)


_EVAL_MODE_BN: dict[type, type] = {
    nn.BatchNorm1d: EvalModeBatchNorm1d,
    nn.BatchNorm2d: EvalModeBatchNorm2d,
    nn.BatchNorm3d: EvalModeBatchNorm3d,
}


def count_trainable(model: nn.Module) -> int:
    """theta_C: the number of parameters that training updates (``requires_grad=True``).

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> count_trainable(tiny_classifier(4))
        1364
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameterised_units(
    model: nn.Module, run: Callable[[Tensor], Tensor] | None = None
) -> list[tuple[str, nn.Module]]:
    """Modules owning parameters directly, in the order of their first call in a forward pass.

    The pass runs ``run`` (default: ``model`` itself) on a zero batch of two images of
    ``model.input_shape`` without gradients and in eval mode (so no running statistics move); every
    module's train/eval flag is restored afterwards. Modules never called are left out.

    Args:
        model: A module with an ``input_shape`` attribute (C, H, W), e.g. a ``Classifier``.
        run: The forward function to trace, e.g. ``model.features`` to leave out the head.

    Returns:
        ``[(qualified_name, module), ...]`` in forward order.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> [n for n, _ in parameterised_units(tiny_classifier())]
        ['body.0', 'body.1', 'body.4', 'body.5', 'head']
    """
    names = {id(m): n for n, m in model.named_modules()}
    owners = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    order: list[nn.Module] = []

    def record(module: nn.Module, args: object) -> None:
        if all(module is not m for m in order):
            order.append(module)

    p = next(model.parameters())
    x = torch.zeros(2, *model.input_shape, device=p.device, dtype=p.dtype)
    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_pre_hook(record) for m in owners]
    model.eval()
    try:
        with torch.no_grad():
            (run or model)(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return [(names[id(m)], m) for m in order]


def freeze_front(
    model: Classifier,
    *,
    frozen_fraction: float = 0.5,
    frozen_layers: Sequence[str] | None = None,
) -> list[str]:
    """Freeze the front of ``model``'s feature extractor in place (parameters and BatchNorm).

    Args:
        model: The classifier; ``model.head`` is never frozen.
        frozen_fraction: In [0, 1]: freeze the first ``floor(frozen_fraction * n)`` of the n
            units of :func:`parameterised_units` over ``model.features``.
        frozen_layers: Qualified module names (``model.named_modules()``); when given, they are
            frozen instead and ``frozen_fraction`` is not used.

    Returns:
        Names of the frozen modules, in forward order (or as given).

    Raises:
        ValueError: ``frozen_fraction`` outside [0, 1], an unknown name or one inside the head, or
            a BatchNorm variant other than BatchNorm1d/2d/3d in the frozen part.
    """
    if frozen_layers is not None:
        modules = dict(model.named_modules())
        for name in frozen_layers:
            if name not in modules or name == "":
                raise ValueError(f"frozen_layers: no module named {name!r} in the model")
            if name == "head" or name.startswith("head."):
                raise ValueError(f"frozen_layers: {name!r} is in the head, which is replaced")
        frozen = [(name, modules[name]) for name in frozen_layers]
        subtrees = [m for _, mod in frozen for m in mod.modules()]
    else:
        _check_fraction(frozen_fraction)
        units = parameterised_units(model, model.features)
        frozen = units[: math.floor(frozen_fraction * len(units) + 1e-9)]
        subtrees = [m for _, m in frozen]
    for m in subtrees:
        for p in m.parameters(recurse=frozen_layers is not None):
            p.requires_grad_(False)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            _keep_in_eval_mode(m)
    return [name for name, _ in frozen]


def tl_dmi_defense(
    *,
    pretrain_data: ImageSet,
    pretrain_num_classes: int,
    frozen_fraction: float = 0.5,
    frozen_layers: Sequence[str] | None = None,
    pretrain_epochs: int = 5,
    pretrain_lr: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Defense:
    """Pre-train on public data, freeze the front, fine-tune the rest on private data.

    ``build(model)`` (in place): (1) swaps in a head of ``pretrain_num_classes`` and trains the
    whole model on ``pretrain_data`` with :func:`~mibench_lib.models.train.train_classifier`
    (Adam, batch 64); (2) freezes the front with :func:`freeze_front`; (3) puts a fresh head for
    the model's original (private) classes in place. ``after_training`` reports theta_C
    (:func:`count_trainable`) as ``"theta_C"`` in ``TrainReport.extra``.

    Args:
        pretrain_data: PUBLIC labelled images (labels in [0, pretrain_num_classes)), the same
            (C, H, W) as the model.
        pretrain_num_classes: Classes of the public task, >= 2.
        frozen_fraction: Knob: fraction of the feature extractor's units frozen, in [0, 1].
        frozen_layers: Module names to freeze instead of a fraction (takes precedence).
        pretrain_epochs: Epochs on the public data, >= 0 (0: no pre-training, an ablation that
            freezes randomly initialised layers).
        pretrain_lr: Adam learning rate of pre-training, > 0.
        seed: Seeds the new heads and the pre-training batch order (the caller's RNG is restored).
        device: Where to pre-train.

    Returns:
        ``Defense("tl_dmi")`` with ``build`` and ``after_training``, knob ``"frozen_fraction"``.

    Raises:
        ValueError: a bad value (named), or unlabelled/out-of-range public labels.
    """
    if pretrain_num_classes < 2:
        raise ValueError(f"pretrain_num_classes must be >= 2, got {pretrain_num_classes}")
    check_labels(pretrain_data.labels, pretrain_num_classes, name="pretrain_data.labels")
    _check_fraction(frozen_fraction)
    if pretrain_epochs < 0:
        raise ValueError(f"pretrain_epochs must be >= 0, got {pretrain_epochs}")
    if not pretrain_lr > 0:
        raise ValueError(f"pretrain_lr must be > 0, got {pretrain_lr}")
    if isinstance(frozen_layers, str):
        raise ValueError(f"frozen_layers must be a sequence of names, got {frozen_layers!r}")
    layers = None if frozen_layers is None else [str(n) for n in frozen_layers]

    def build(model: nn.Module) -> nn.Module:
        if not isinstance(model, Classifier):
            raise ValueError(f"TL-DMI needs a Classifier, got {type(model).__name__}")
        if tuple(pretrain_data.image_shape) != tuple(model.input_shape):
            raise ValueError(
                f"pretrain_data images are {pretrain_data.image_shape}, "
                f"the model takes {model.input_shape}"
            )
        private_classes = model.num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if pretrain_epochs > 0:
                _set_head(model, pretrain_num_classes)
                test = pretrain_data.subset(
                    torch.arange(min(len(pretrain_data), PRETRAIN_TEST_SIZE))
                )
                train_classifier(
                    model,
                    pretrain_data,
                    test,
                    epochs=pretrain_epochs,
                    lr=pretrain_lr,
                    device=device,
                    rng=torch.Generator().manual_seed(seed),
                    desc="tl_dmi pretrain",
                )
            freeze_front(model, frozen_fraction=frozen_fraction, frozen_layers=layers)
            _set_head(model, private_classes)
        return model

    def after_training(model: nn.Module, test_set: ImageSet, device: torch.device) -> dict:
        return {"theta_C": float(count_trainable(model))}

    def restore(model: nn.Module) -> nn.Module:
        # saved TL-DMI weights: same architecture, same frozen front (no pre-training again)
        freeze_front(model, frozen_fraction=frozen_fraction, frozen_layers=layers)
        return model

    config = {
        "pretrain_data": tensor_fingerprint(pretrain_data.data, pretrain_data.labels),
        "pretrain_num_classes": int(pretrain_num_classes),
        "frozen_fraction": None if layers is not None else float(frozen_fraction),
        "frozen_layers": layers,
        "pretrain_epochs": int(pretrain_epochs),
        "pretrain_lr": float(pretrain_lr),
        "seed": int(seed),
        "bn_policy": "frozen_bn_eval",
    }
    return Defense(
        "tl_dmi",
        config=config,
        knob="frozen_fraction",
        build=build,
        after_training=after_training,
        restore=restore,
    )


def layer_fisher_information(
    model: nn.Module,
    data: ImageSet,
    *,
    batch_size: int = 64,
    max_batches: int | None = None,
    reduction: Literal["sum", "mean"] = "sum",
    trainable_only: bool = False,
) -> dict[str, float]:
    """Per-layer empirical Fisher information of the data's log-likelihood.

    For each parameter ``theta_j`` the empirical Fisher diagonal is
    ``F_j = mean_i (d log p(y_i | x_i) / d theta_j)^2`` over the samples ``(x_i, y_i)``; a layer's
    value is the sum (``"sum"``: the trace of its diagonal block) or the mean (``"mean"``: per
    parameter, comparable across layer sizes) of ``F_j`` over the parameters it owns directly.
    Per-sample gradients come from ``torch.func`` (``vmap`` of ``grad`` of a ``functional_call``)
    with the model in eval mode, so BatchNorm uses running statistics and Dropout is off; memory
    grows as ``batch_size`` x number of parameters.

    Args:
        model: A classifier with ``input_shape``: (N, C, H, W) in [0, 1] -> (N, K) logits.
        data: Labelled images (labels in [0, K)), e.g. the private training set.
        batch_size: Samples per vmapped batch, >= 1.
        max_batches: Use only the first this many batches (None: all).
        reduction: ``"sum"`` or ``"mean"`` over a layer's parameters.
        trainable_only: Count only parameters with ``requires_grad`` (frozen layers report 0): the
            information that *training* could write into the model.

    Returns:
        ``{module_name: value}`` for every module owning parameters, in forward order (head last).

    Raises:
        ValueError: empty data, labels out of range, bad ``batch_size``/``max_batches``/``reduction``.

    Example:
        >>> from mibench_lib.testing import tiny_classifier, tiny_digits
        >>> x, y = tiny_digits()
        >>> fi = layer_fisher_information(tiny_classifier(10), ImageSet(x[:8], y[:8]))
        >>> list(fi)
        ['body.0', 'body.1', 'body.4', 'body.5', 'head']
    """
    if len(data) == 0:
        raise ValueError("data must be non-empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    check_labels(data.labels, _num_classes(model), name="data.labels")
    units = parameterised_units(model)
    named = dict(model.named_parameters())
    wanted = {n: p for n, p in named.items() if p.requires_grad or not trainable_only}
    params = {n: p.detach() for n, p in wanted.items()}
    fixed = {n: p.detach() for n, p in named.items() if n not in wanted}
    buffers = dict(model.named_buffers())

    def log_likelihood(theta: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (theta, fixed, buffers), (x.unsqueeze(0),))
        return F.log_softmax(logits, dim=1).gather(1, y.view(1, 1)).squeeze()

    per_sample_grads = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
    squares = {n: torch.zeros_like(p) for n, p in params.items()}
    device = next(model.parameters()).device
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    n_seen = 0
    try:
        starts = range(0, len(data), batch_size)
        if max_batches is not None:
            starts = starts[:max_batches]
        for i in starts:
            x = data.images[i : i + batch_size].to(device)
            y = data.labels[i : i + batch_size].to(device)
            grads = per_sample_grads(params, x, y)
            for n, g in grads.items():
                squares[n] += g.pow(2).sum(0)
            n_seen += x.shape[0]
    finally:
        for m, training in modes:
            m.training = training
    out: dict[str, float] = {}
    for name, module in units:
        total, count = 0.0, 0
        for pname, p in module.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            count += p.numel()
            if full in squares:
                total += float(squares[full].sum()) / n_seen
        out[name] = total if reduction == "sum" else total / count
    return out


def _num_classes(model: nn.Module) -> int:
    if hasattr(model, "num_classes"):
        return int(model.num_classes)
    return int(model.head.out_features)


def _set_head(model: Classifier, num_classes: int) -> None:
    p = next(model.parameters())
    model.head = nn.Linear(model.feature_dim, num_classes).to(device=p.device, dtype=p.dtype)
    model.num_classes = int(num_classes)


def _keep_in_eval_mode(bn: nn.Module) -> None:
    if type(bn) in _EVAL_MODE_BN.values():
        return
    if type(bn) not in _EVAL_MODE_BN:
        raise ValueError(
            f"cannot keep {type(bn).__name__} in eval mode; only BatchNorm1d/2d/3d are supported"
        )
    bn.__class__ = _EVAL_MODE_BN[type(bn)]
    bn.eval()


def _check_fraction(frozen_fraction: float) -> None:
    if not 0.0 <= frozen_fraction <= 1.0:
        raise ValueError(f"frozen_fraction must lie in [0, 1], got {frozen_fraction}")
