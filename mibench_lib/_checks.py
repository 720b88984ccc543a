"""Input checks shared by attacks, metrics and training: errors name the bad value."""

from __future__ import annotations

import torch
from torch import Tensor


def check_images(
    x: Tensor, *, name: str = "images", value_range: tuple[float, float] = (0.0, 1.0)
) -> None:
    """Raise ``ValueError`` unless ``x`` is a float (N, C, H, W) batch inside ``value_range``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < value_range[0] - 1e-5 or hi > value_range[1] + 1e-5:
            raise ValueError(
                f"{name} must lie in {list(value_range)}, got values in [{lo:.4g}, {hi:.4g}]"
            )


def check_labels(y: Tensor, num_classes: int, *, name: str = "labels") -> None:
    """Raise ``ValueError`` unless ``y`` is a non-empty 1-D int64 tensor of ids in [0, num_classes)."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim != 1 or y.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(y.shape)}")
    if y.dtype != torch.int64:
        raise ValueError(f"{name} must be int64, got {y.dtype}")
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.numel():
        raise ValueError(f"{name} must lie in [0, {num_classes}), got {bad.unique().tolist()}")
