"""ResNet-18/34/50/101/152 classifiers (torchvision architectures, random init) for any input size.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
https://arxiv.org/abs/1512.03385. The torchvision network is kept whole inside the wrapper
(as ``net``) with its ``fc`` replaced by an identity, so ``features`` is the global-average-pooled
output of ``layer4`` (512-d for ResNet-18/34, 2048-d for ResNet-50/101/152) and ``head`` is a
new linear layer. Keeping the torchvision module names means that ``net.layer4`` (the last stage,
whose skip connections RoLSS removes) is directly reachable, and that a torchvision-format state
dict loads with ``weights.load_backbone_weights(model, path, key_map={"": "net.", "fc.": "head."})``
(the ImageNet ``fc`` is mapped onto ``head`` and thereby skipped).
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101, resnet152

from mibench_lib.models.base import Classifier

ARCHS = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNetClassifier(Classifier):
    """A torchvision ResNet (``weights=None``) with a new head: features = pooled ``layer4`` output.

    Args:
        num_classes: Number of classes K (>= 2).
        arch: One of ``ARCHS``: "resnet18", "resnet34", "resnet50", "resnet101", "resnet152".
        input_shape: (C, H, W) with H, W >= 32 (the stem and four stages downsample 32x before the
            adaptive pooling). With C != 3 the first conv takes C channels.
        normalization: "imagenet" (per-channel ImageNet mean/std, needs C = 3) or "none".

    Attributes:
        net: The torchvision ResNet with ``net.fc`` an ``nn.Identity``; ``net.layer4`` is the last
            stage.

    Raises:
        ValueError: an unknown ``arch`` or ``normalization``, an input smaller than 32 px, or
            "imagenet" with C != 3.

    Example:
        >>> import torch
        >>> model = ResNetClassifier(7, arch="resnet18").eval()
        >>> model.feature_dim, model(torch.rand(2, 3, 64, 64)).shape
        (512, torch.Size([2, 7]))
    """

    def __init__(
        self,
        num_classes: int,
        *,
        arch: str = "resnet18",
        input_shape: tuple[int, int, int] = (3, 64, 64),
        normalization: Literal["imagenet", "none"] = "imagenet",
    ) -> None:
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
        c, h, w = (int(s) for s in input_shape)
        if min(h, w) < 32:
            raise ValueError(f"input_shape must be at least 32 x 32 px, got {input_shape}")
        net = ARCHS[arch](weights=None)
        super().__init__(num_classes, net.fc.in_features, input_shape)
        if normalization == "imagenet":
            if c != 3:
                raise ValueError(f"normalization 'imagenet' needs 3 channels, got {c}")
            mean, std = _IMAGENET_MEAN, _IMAGENET_STD
        elif normalization == "none":
            mean, std = (0.0,) * c, (1.0,) * c
        else:
            raise ValueError(f"normalization must be 'imagenet' or 'none', got {normalization!r}")
        self.arch = arch
        self.normalization = normalization
        self.register_buffer("mean", torch.tensor(mean).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, c, 1, 1), persistent=False)
        if c != 3:
            net.conv1 = nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.net = net

    def last_stage(self) -> tuple[nn.Sequential, range]:
        """The container of the last stage (``net.layer4``) and the indices of its blocks in it."""
        return self.net.layer4, range(len(self.net.layer4))

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, feature_dim) average-pooled ``layer4`` output."""
        return self.net((x - self.mean) / self.std)


def resnet(
    name: str,
    num_classes: int,
    *,
    input_shape: tuple[int, int, int] = (3, 64, 64),
    normalization: Literal["imagenet", "none"] = "imagenet",
) -> ResNetClassifier:
    """Build ``ResNetClassifier(num_classes, arch=name, ...)``, randomly initialised.

    Args:
        name: "resnet18", "resnet34", "resnet50", "resnet101" or "resnet152".
        num_classes: Number of classes K (>= 2).
        input_shape: (C, H, W), H, W >= 32.
        normalization: "imagenet" or "none".

    Returns:
        The classifier; ``feature_dim`` is 512 (18/34) or 2048 (50/101/152).

    Raises:
        ValueError: see :class:`ResNetClassifier`.
    """
    return ResNetClassifier(
        num_classes, arch=name, input_shape=input_shape, normalization=normalization
    )


ZOO = {
    "resnet18": partial(resnet, "resnet18"),
    "resnet34": partial(resnet, "resnet34"),
    "resnet50": partial(resnet, "resnet50"),
    "resnet101": partial(resnet, "resnet101"),
    "resnet152": partial(resnet, "resnet152"),
}
