"""Reference points every attack is compared with: random latents through the same generator.

A GAN prior alone already produces digit-like (or face-like) images; an attack is only worth its
queries if it beats images drawn from the prior without looking at the target at all.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from mibench_lib.attacks._result import InversionResult


def random_latent_baseline(
    generator: nn.Module,
    labels: Tensor,
    *,
    rng: torch.Generator | None = None,
    truncation: float | None = None,
) -> InversionResult:
    """One image per label from z ~ N(0, I) through ``generator``, with no target query at all.

    Args:
        generator: (N, latent_dim) -> images in [0, 1], with a ``latent_dim`` attribute.
        labels: (N,) int64; only their count is used (the label is what the image is scored against).
        rng: CPU generator for the latents.
        truncation: If given, clamp latents to [-truncation, truncation] (GMI searches in [-1, 1]).

    Example:
        >>> from mibench_lib.testing import tiny_generator
        >>> random_latent_baseline(tiny_generator(), torch.tensor([0, 1])).images.shape
        torch.Size([2, 1, 8, 8])
    """
    t0 = time.perf_counter()
    device = next(generator.parameters()).device
    z = torch.randn(labels.shape[0], generator.latent_dim, generator=rng)
    if truncation is not None:
        z = z.clamp(-truncation, truncation)
    with torch.inference_mode():
        images = generator(z.to(device)).float().cpu()
    return InversionResult(
        "random_latent", images.clone(), labels.clone(), z, [], 0, time.perf_counter() - t0
    )
