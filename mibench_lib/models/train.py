"""The one training loop every classifier (target, evaluator, defended model) goes through.

Defenses change training through three hooks instead of their own loops:

- ``loss_fn(logits, labels, *, model, images, epoch) -> scalar``: e.g. label smoothing, MID's
  KL term, BiDO's dependence terms (``model`` and ``images`` give access to hidden features);
- ``wrap_model(model) -> model``: e.g. a stochastic bottleneck or an adversarial-example wrapper;
- ``prepare(model, optimizer, loader) -> (model, optimizer, loader)``: e.g. opacus' DP-SGD engine.

The loop is seeded through ``rng`` (batch order) and records test accuracy. With
``checkpoint_thresholds`` it keeps a copy of the weights the first time test accuracy reaches each
threshold: the predictive-power study attacks the same architecture at rising accuracies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from mibench_lib.data._types import ImageSet
from mibench_lib.metrics.features import predict_logits
from mibench_lib.progress import tqdm


class LossFn(Protocol):
    """Training loss hook: ``(logits, labels, *, model, images, epoch) -> scalar``."""

    def __call__(
        self, logits: Tensor, labels: Tensor, *, model: nn.Module, images: Tensor, epoch: int
    ) -> Tensor: ...


PrepareFn = Callable[
    [nn.Module, torch.optim.Optimizer, DataLoader],
    tuple[nn.Module, torch.optim.Optimizer, DataLoader],
]


def cross_entropy_loss(
    logits: Tensor, labels: Tensor, *, model: nn.Module, images: Tensor, epoch: int
) -> Tensor:
    """The undefended loss: mean cross-entropy."""
    return F.cross_entropy(logits, labels)


@dataclass(frozen=True)
class Checkpoint:
    """Weights saved the first time test accuracy reached ``threshold``."""

    threshold: float
    step: int
    test_acc: float
    state_dict: dict[str, Tensor]


@dataclass
class TrainReport:
    """What training did: final test accuracy, loss history and threshold checkpoints."""

    test_acc: float
    train_acc: float
    steps: int
    epochs: int
    losses: list[float] = field(default_factory=list)
    acc_history: list[tuple[int, float]] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def batch_loader(
    data: ImageSet, *, batch_size: int, rng: torch.Generator | None, shuffle: bool = True
) -> DataLoader:
    """A DataLoader that indexes the in-memory set once per batch (no per-sample Python loop)."""
    sampler = RandomSampler(data, generator=rng) if shuffle else range(len(data))
    return DataLoader(
        data, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None
    )


def accuracy(
    model: nn.Module,
    data: ImageSet,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on a labelled set."""
    if len(data) == 0:
        raise ValueError("cannot compute accuracy on an empty set")
    logits = predict_logits(model, data, batch_size=batch_size, device=device)
    return float((logits.argmax(1) == data.labels).float().mean())


def train_classifier(
    model: nn.Module,
    train: ImageSet,
    test: ImageSet,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    lr_milestones: Sequence[int] = (),
    loss_fn: LossFn = cross_entropy_loss,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    prepare: PrepareFn | None = None,
    defense: Any | None = None,
    eval_every: int | None = None,
    checkpoint_thresholds: Sequence[float] = (),
    device: torch.device | str = "cpu",
    rng: torch.Generator | None = None,
    progress: bool = True,
    desc: str = "train",
) -> tuple[nn.Module, TrainReport]:
    """Train ``model`` on ``train`` and report accuracy on ``test``.

    Args:
        model: A classifier (N, C, H, W) in [0, 1] -> (N, K) logits; trained in place.
        train, test: Labelled image sets (labels in [0, K)).
        epochs, batch_size, lr: The usual. ``optimizer`` is ``"adam"`` or ``"sgd"`` (with
            ``momentum``); ``weight_decay`` applies to both; ``lr_milestones`` decays lr by 10x.
        loss_fn: Training loss hook (default: cross-entropy). See module docstring.
        wrap_model: Applied once to the model before training (the wrapped model is returned).
        prepare: Applied to (model, optimizer, loader) before training, e.g. DP-SGD.
        defense: A :class:`mibench_lib.defenses.Defense`; its ``build``, ``loss`` and ``prepare``
            hooks are applied (and must not be combined with the explicit hooks above), and its
            ``after_training`` numbers land in ``TrainReport.extra``.
        eval_every: Evaluate test accuracy every this many steps (and at each epoch end); needed
            for fine-grained threshold checkpoints. ``None``: only at epoch ends.
        checkpoint_thresholds: Save a copy of the weights the first time test accuracy is >= each
            value (checked before the first step too). Thresholds never reached are absent.
        device: Where to train.
        rng: Seeds the batch order (CPU generator). Model initialisation is seeded by the caller.
        progress: Show a tqdm progress bar.

    Returns:
        ``(model, TrainReport)``, the model in eval mode.

    Raises:
        ValueError: empty data, unknown optimizer, thresholds outside (0, 1].
    """
    if len(train) == 0 or len(test) == 0:
        raise ValueError(
            f"train and test must be non-empty, got {len(train)} and {len(test)} images"
        )
    if any(not 0 < t <= 1 for t in checkpoint_thresholds):
        raise ValueError(
            f"checkpoint_thresholds must lie in (0, 1], got {list(checkpoint_thresholds)}"
        )
    device = torch.device(device)
    if defense is not None:
        if loss_fn is not cross_entropy_loss or prepare is not None:
            raise ValueError("pass either a defense or explicit loss_fn/prepare hooks, not both")
        if defense.build is not None:
            model = defense.build(model)
        loss_fn = defense.loss or cross_entropy_loss
        prepare = defense.prepare
    model = model.to(device)
    if wrap_model is not None:
        model = wrap_model(model).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]  # frozen layers stay untouched
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    loader = batch_loader(train, batch_size=batch_size, rng=rng)
    if prepare is not None:
        model, opt, loader = prepare(model, opt, loader)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(lr_milestones), gamma=0.1)

    pending = sorted(set(checkpoint_thresholds))
    report = TrainReport(test_acc=float("nan"), train_acc=float("nan"), steps=0, epochs=epochs)

    def evaluate(step: int) -> float:
        acc = accuracy(model, test, device=device)
        report.acc_history.append((step, acc))
        while pending and acc >= pending[0]:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            report.checkpoints.append(Checkpoint(pending.pop(0), step, acc, state))
        return acc

    if pending:
        evaluate(0)
    step = 0
    bar = tqdm(total=epochs * len(loader), desc=desc, disable=not progress, leave=False)
    for epoch in range(epochs):
        model.train()
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            loss = loss_fn(model(images), labels, model=model, images=images, epoch=epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            report.losses.append(loss.detach().item())
            bar.update(1)
            if eval_every and step % eval_every == 0:
                bar.set_postfix(acc=f"{evaluate(step):.3f}")
        sched.step()
        if not (eval_every and step % eval_every == 0):
            bar.set_postfix(acc=f"{evaluate(step):.3f}")
    bar.close()
    model.eval()
    report.steps = step
    report.test_acc = (
        report.acc_history[-1][1] if report.acc_history else accuracy(model, test, device=device)
    )
    report.train_acc = accuracy(model, train, device=device)
    if defense is not None and defense.after_training is not None:
        report.extra.update(defense.after_training(model, test, device))
    return model, report


def copy_with_state(model: nn.Module, state_dict: dict[str, Tensor]) -> nn.Module:
    """A deep copy of ``model`` carrying ``state_dict``, in eval mode."""
    clone = copy.deepcopy(model)
    clone.load_state_dict(state_dict)
    return clone.eval()
