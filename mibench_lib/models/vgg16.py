"""VGG16-BN target at 64 px, the standard face-MI target of GMI, KEDMI and PLG-MI.

Architecture: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015, https://arxiv.org/abs/1409.1556 (torchvision ``vgg16_bn`` convolutional
part), as adapted for model inversion by Zhang et al., "The Secret Revealer", CVPR 2020,
https://arxiv.org/abs/1911.07135: the 13 conv layers with their 5 max-pools turn a 64-px face
into 512 x 2 x 2, which is flattened to 2048 values and passed through a BatchNorm1d whose shift is
frozen at 0 ("no shift"); those 2048 values are the penultimate features and a linear head gives
the logits. No ImageNet classifier (fc6-fc8) is used.

Submodule names follow the public checkpoints (``feature``, ``bn``); only their ``fc_layer`` is
called ``head`` here, so a local checkpoint loads with
``weights.load_local_weights(model, path, key_map={"fc_layer.": "head."})``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from mibench_lib.models.base import Classifier

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16_64(Classifier):
    """VGG16-BN features -> flatten (512 * H/32 * W/32) -> BatchNorm1d (no shift) -> head.

    Randomly initialised (torchvision's init); nothing is downloaded. For ImageNet-pretrained
    features, load a local torchvision ``vgg16_bn`` file with
    ``weights.load_backbone_weights(model, path, key_map={"features.": "feature."}, strict=False)``
    (its ``classifier.*`` keys are then reported as unexpected, ``bn.*`` as missing).

    Args:
        num_classes: Number of classes K (>= 2).
        input_shape: (C, H, W) with H, W >= 32; (3, 64, 64) gives feature_dim 2048. With C != 3 the
            first conv takes C channels.
        normalization: "imagenet" (per-channel ImageNet mean/std, needs C = 3) or "none" (raw
            [0, 1], as the GMI/KEDMI/PLG-MI target checkpoints were trained).

    Attributes:
        feature: the layers of torchvision ``vgg16_bn().features`` (13 conv-BN-ReLU and 5
            max-pools: 44 children).
        bn: BatchNorm1d(feature_dim) whose bias has ``requires_grad=False``.

    Raises:
        ValueError: an input smaller than 32 px, an unknown ``normalization``, or "imagenet" with
            C != 3.

    Example:
        >>> import torch
        >>> model = VGG16_64(7).eval()
        >>> model.feature_dim, model(torch.rand(2, 3, 64, 64)).shape
        (2048, torch.Size([2, 7]))
    """

    def __init__(
        self,
        num_classes: int,
        *,
        input_shape: tuple[int, int, int] = (3, 64, 64),
        normalization: Literal["imagenet", "none"] = "imagenet",
    ) -> None:
        c, h, w = (int(s) for s in input_shape)
        if min(h, w) < 32:
            raise ValueError(f"input_shape must be at least 32 x 32 px, got {input_shape}")
        # Five 2x2 max-pools: the conv output is 512 x floor(H / 32) x floor(W / 32).
        super().__init__(num_classes, 512 * (h // 32) * (w // 32), input_shape)
        if normalization == "imagenet":
            if c != 3:
                raise ValueError(f"normalization 'imagenet' needs 3 channels, got {c}")
            mean, std = _IMAGENET_MEAN, _IMAGENET_STD
        elif normalization == "none":
            mean, std = (0.0,) * c, (1.0,) * c
        else:
            raise ValueError(f"normalization must be 'imagenet' or 'none', got {normalization!r}")
        self.normalization = normalization
        self.register_buffer("mean", torch.tensor(mean).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, c, 1, 1), persistent=False)
        # The conv part of torchvision's vgg16_bn, built without its 120M-parameter ImageNet
        # classifier (which this target never uses), then given torchvision's VGG init.
        self.feature = make_layers(cfgs["D"], batch_norm=True)
        if c != 3:
            self.feature[0] = nn.Conv2d(c, 64, kernel_size=3, padding=1)
        for m in self.feature.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.bn = nn.BatchNorm1d(self.feature_dim)
        self.bn.bias.requires_grad_(False)  # shift frozen at 0, as in the literature target

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, feature_dim) batch-normalised conv features."""
        x = self.feature((x - self.mean) / self.std)
        return self.bn(x.flatten(1))


ZOO = {"vgg16_64": VGG16_64}
