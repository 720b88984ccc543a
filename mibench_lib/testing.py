"""Tiny seeded models and data for tests and doctests (8x8 images, a handful of classes, < 1 s).

Shared by the unit tests and the docstring examples, so that every example in the library runs
on the same small fixtures without any download.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mibench_lib.generators.base import Generator
from mibench_lib.models.base import Classifier


class TinyClassifier(Classifier):
    """conv(8)-BN-ReLU-pool-conv(16)-BN-ReLU-GAP -> linear: a stand-in target for unit tests."""

    def __init__(self, num_classes: int = 4, input_shape: tuple[int, int, int] = (1, 8, 8)) -> None:
        super().__init__(num_classes, 16, input_shape)
        c = input_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, 16)."""
        return self.body(x * 2 - 1)


class TinyGenerator(Generator):
    """linear(z -> 16x2x2)-BN-ReLU -> 2 x (upsample, conv) -> sigmoid: images in [0, 1]."""

    def __init__(self, latent_dim: int = 8, output_shape: tuple[int, int, int] = (1, 8, 8)) -> None:
        super().__init__(latent_dim, output_shape)
        c, h, _ = output_shape
        s = h // 4
        self.stem = nn.Sequential(
            nn.Linear(latent_dim, 16 * s * s),
            nn.BatchNorm1d(16 * s * s),
            nn.ReLU(),
            nn.Unflatten(1, (16, s, s)),
        )
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Upsample(scale_factor=2),
                    nn.Conv2d(16, 8, 3, padding=1),
                    nn.BatchNorm2d(8),
                    nn.ReLU(),
                ),
                nn.Sequential(
                    nn.Upsample(scale_factor=2), nn.Conv2d(8, c, 3, padding=1), nn.Sigmoid()
                ),
            ]
        )


class TinyDiscriminator(nn.Module):
    """conv-InstanceNorm-LeakyReLU critic giving one unbounded score per image (WGAN style)."""

    def __init__(self, input_shape: tuple[int, int, int] = (1, 8, 8)) -> None:
        super().__init__()
        c, h, w = input_shape
        self.net = nn.Sequential(
            nn.Conv2d(c, 8, 3, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(8, 16, 3, 2, 1),
            nn.InstanceNorm2d(16, affine=True),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(16 * (h // 4) * (w // 4), 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N,) critic scores."""
        return self.net(x * 2 - 1).squeeze(1)


def tiny_classifier(
    num_classes: int = 4, input_shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0
) -> TinyClassifier:
    """A seeded, randomly initialised :class:`TinyClassifier` in eval mode."""
    torch.manual_seed(seed)
    return TinyClassifier(num_classes, input_shape).eval()


def tiny_generator(
    latent_dim: int = 8, output_shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0
) -> TinyGenerator:
    """A seeded, randomly initialised :class:`TinyGenerator` in eval mode."""
    torch.manual_seed(seed)
    return TinyGenerator(latent_dim, output_shape).eval()


def tiny_discriminator(
    input_shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0
) -> TinyDiscriminator:
    """A seeded, randomly initialised :class:`TinyDiscriminator` in eval mode."""
    torch.manual_seed(seed)
    return TinyDiscriminator(input_shape).eval()


def tiny_digits(resolution: int = 8) -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 8x8 digits as (N, 1, r, r) float in [0, 1] and (N,) int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if resolution != 8:
        x = nn.functional.interpolate(
            x, size=(resolution, resolution), mode="bilinear", align_corners=False
        )
    return x.clamp(0, 1), torch.tensor(d.target, dtype=torch.int64)
