"""Batched, gradient-free passes of a model over an image set: penultimate features and logits.

Every metric that compares images in a feature space (delta_eval, delta_face, FID, PRDC) goes
through :func:`extract_features`, and every accuracy through :func:`predict_logits`, so batching,
device placement, eval mode and the finiteness check live in one place. The model is put in eval
mode and on ``device`` for the pass only; its previous mode and device are restored afterwards, so
a metric never changes the caller's model (in eval mode BatchNorm running statistics stay as
they are).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from mibench_lib._checks import check_images
from mibench_lib.data._types import ImageSet
from mibench_lib.metrics._errors import MetricUnavailable

#: What the metrics accept as images: a float (N, C, H, W) batch in [0, 1], or an ImageSet (which
#: may hold uint8 pixels and is converted one batch at a time, so a large set is never materialised
#: as float32 all at once).
Images = Tensor | ImageSet


def _model_device(model: nn.Module) -> torch.device:
    """Device of the first parameter (or buffer) of ``model``; CPU for a model without any."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def evaluating(model: nn.Module, device: torch.device | str | None) -> Iterator[torch.device]:
    """Run ``model`` in eval mode on ``device`` inside the block, restoring mode and device after.

    Args:
        model: Any module.
        device: Where to run; ``None`` keeps the model's current device.

    Yields:
        The device the model sits on inside the block.
    """
    was_training = model.training
    home = _model_device(model)
    run_on = home if device is None else torch.device(device)
    model.to(run_on).eval()
    try:
        yield run_on
    finally:
        model.to(home).train(was_training)


def _batches(images: Images, batch_size: int, device: torch.device) -> Iterator[Tensor]:
    """Float32 batches in [0, 1] on ``device``, converting uint8 ImageSet storage batch by batch."""
    data = images.data if isinstance(images, ImageSet) else images
    for start in range(0, data.shape[0], batch_size):
        x = data[start : start + batch_size].to(device)
        yield x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _check_inputs(images: Images, batch_size: int, name: str) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, ImageSet):
        n = len(images)
    else:
        check_images(images, name=name)
        n = images.shape[0]
    if n == 0:
        raise ValueError(f"{name} is empty: at least one image is needed")
    return n


def _run(
    fn: Callable[[Tensor], Tensor],
    model: nn.Module,
    images: Images,
    *,
    batch_size: int,
    device: torch.device | str | None,
    name: str,
    what: str,
) -> Tensor:
    n = _check_inputs(images, batch_size, name)
    with torch.inference_mode(), evaluating(model, device) as run_on:
        out = torch.cat([fn(x).float().cpu() for x in _batches(images, batch_size, run_on)])
    if out.ndim != 2 or out.shape[0] != n:
        raise ValueError(
            f"{type(model).__name__} {what} must have shape ({n}, D) for {n} images, "
            f"got {tuple(out.shape)}"
        )
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).any(dim=1).sum())
        raise MetricUnavailable(
            f"{type(model).__name__} gave non-finite {what} for {bad} of {n} {name}"
        )
    return out


def extract_features(
    model: nn.Module,
    images: Images,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    name: str = "images",
) -> Tensor:
    """Penultimate features ``model.features(x)`` of every image, computed in batches.

    Args:
        model: A classifier exposing ``features(x)``: (B, C, H, W) in [0, 1] -> (B, D). A face
            embedding network is used through a small module whose ``features`` does its own
            resize and normalisation.
        images: (N, C, H, W) float in [0, 1], or an :class:`~mibench_lib.data.ImageSet`.
        batch_size: Images per forward pass.
        device: Where the model runs for this call (it is moved back afterwards); ``None`` keeps
            the model's device.
        name: What the images are, for error messages.

    Returns:
        (N, D) float32 features on the CPU.

    Raises:
        ValueError: malformed or empty images, a non-positive ``batch_size``, or ``features`` not
            returning one row per image.
        MetricUnavailable: some feature is NaN or infinite.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> extract_features(tiny_classifier(), torch.rand(5, 1, 8, 8), batch_size=2).shape
        torch.Size([5, 16])
    """
    return _run(
        model.features,
        model,
        images,
        batch_size=batch_size,
        device=device,
        name=name,
        what="features",
    )


def predict_logits(
    model: nn.Module,
    images: Images,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    name: str = "images",
) -> Tensor:
    """Logits ``model(x)`` of every image, in batches; same rules as :func:`extract_features`.

    Returns:
        (N, K) float32 logits on the CPU.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> predict_logits(tiny_classifier(num_classes=3), torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 3])
    """
    return _run(
        model, model, images, batch_size=batch_size, device=device, name=name, what="logits"
    )
