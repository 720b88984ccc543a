"""Input checks shared by attacks, metrics and training: errors name the bad value."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor


def check_int(name: str, value: object, low: int = 1) -> int:
    """``value`` as an ``int``; ``ValueError`` unless it is an integer (not a bool) >= ``low``.

    >>> check_int("steps", 3), check_int("warmup", 0, low=0)
    (3, 0)
    >>> check_int("steps", 0)
    Traceback (most recent call last):
    ...
    ValueError: steps must be an integer >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_real(name: str, value: object, *, low: float = 0.0, strict: bool = False) -> float:
    """``value`` as a ``float``; ``ValueError`` unless it is a finite real (not a bool) >= ``low``
    (> ``low`` when ``strict``).

    >>> check_real("weight", 0), check_real("lr", 0.5, strict=True)
    (0.0, 0.5)
    >>> check_real("lr", 0.0, strict=True)
    Traceback (most recent call last):
    ...
    ValueError: lr must be a finite number > 0, got 0.0
    >>> check_real("weight", float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: weight must be a finite number >= 0, got nan
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= low if strict else value < low):  # type: ignore[operator]
        raise ValueError(
            f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}"
        )
    return float(value)  # type: ignore[arg-type]


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


def check_start_latents(
    start_latents: object, shapes: Sequence[tuple[int, ...]], expected: str
) -> Tensor:
    """A user-given start-latent tensor: a float tensor of the default dtype, finite, of one of
    ``shapes`` (``expected`` describes them in the message); returned detached (not copied).

    Raises:
        TypeError: not a tensor.
        ValueError: wrong shape, dtype, or a nan/inf value.
    """
    if not isinstance(start_latents, Tensor):
        raise TypeError(
            f"start_latents must be a torch.Tensor or None, got {type(start_latents).__name__}"
        )
    if tuple(start_latents.shape) not in [tuple(s) for s in shapes]:
        raise ValueError(
            f"start_latents must have shape {expected}, got {tuple(start_latents.shape)}"
        )
    if start_latents.dtype != torch.get_default_dtype():
        raise ValueError(
            f"start_latents must have dtype {torch.get_default_dtype()} (that of the random "
            f"draws), got {start_latents.dtype}"
        )
    if not torch.isfinite(start_latents).all():
        raise ValueError("start_latents must be finite, got nan or inf")
    return start_latents.detach()
