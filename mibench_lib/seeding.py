"""Seeding and device selection: every run starts from ``seed_everything`` and one device string."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and return a CPU generator seeded with ``seed``.

    Library functions take the returned generator as ``rng`` and draw their random numbers on the
    CPU with it, then move the tensors to the device, so CPU and CUDA runs start from the same draws.

    Args:
        seed: Non-negative integer.

    Returns:
        A ``torch.Generator`` on the CPU, seeded with ``seed``.

    Example:
        >>> g = seed_everything(0)
        >>> torch.randn(2, generator=g).shape
        torch.Size([2])
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds code that uses the legacy global state)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return torch.Generator().manual_seed(seed)


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (or from entropy when ``seed`` is None)."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn the one device setting into a ``torch.device``.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ValueError: ``"cuda"`` was asked for on a machine without CUDA.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine"
        )
    return dev
