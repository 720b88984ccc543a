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


def _constant_images(
    name: str, image: Tensor, labels: Tensor, t0: float, extras: dict | None = None
) -> InversionResult:
    images = image.unsqueeze(0).expand(labels.shape[0], *image.shape).clone()
    return InversionResult(
        name, images, labels.clone(), None, [], 0, time.perf_counter() - t0, extras or {}
    )


def blank_image_baseline(labels: Tensor, *, shape: tuple[int, int, int]) -> InversionResult:
    """An all-black image for every label: what "nothing recovered" scores.

    An evaluator assigns a black image to one class, so its Acc@1 is 1/K for K classes attacked
    once each; an attack scoring that much has shown nothing (MIFace, starting from a black
    image, stops there for most classes).

    Example:
        >>> blank_image_baseline(torch.tensor([0, 1, 2]), shape=(1, 8, 8)).images.sum().item()
        0.0
    """
    t0 = time.perf_counter()
    return _constant_images("blank_image", torch.zeros(shape), labels, t0)


def mean_public_baseline(public_images: Tensor, labels: Tensor) -> InversionResult:
    """The mean of the attacker's public images for every label: the public prior's centre.

    Args:
        public_images: (M, C, H, W) in [0, 1], the attacker's public data (labels unused).
        labels: (N,) int64 classes to score the image against.

    Example:
        >>> pub = torch.rand(10, 1, 8, 8)
        >>> r = mean_public_baseline(pub, torch.tensor([0, 1]))
        >>> torch.allclose(r.images[1], pub.mean(0))
        True
    """
    t0 = time.perf_counter()
    if public_images.ndim != 4 or public_images.shape[0] == 0:
        raise ValueError(
            f"public_images must be a non-empty (M, C, H, W) batch, got {tuple(public_images.shape)}"
        )
    return _constant_images("mean_public", public_images.float().mean(0), labels, t0)
