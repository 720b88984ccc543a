"""IR-50 / IR-152 face classifiers at 64 px, as used as MI targets by GMI, KEDMI and PLG-MI.

Architecture: the "improved residual" (IR) backbone of face.evoLVe (Deng et al., "ArcFace: Additive
Angular Margin Loss for Deep Face Recognition", CVPR 2019, https://arxiv.org/abs/1801.07698), in the
64-px variant of the model-inversion literature (Zhang et al., "The Secret Revealer", CVPR 2020,
https://arxiv.org/abs/1911.07135; Chen et al., "Knowledge-Enriched Distributional Model Inversion
Attacks", ICCV 2021, https://arxiv.org/abs/2010.04092).

- stem: conv3x3(C -> 64, stride 1)-BN-PReLU;
- body: a flat sequence of ``bottleneck_IR`` units in four stages (64, 128, 256, 512 channels), the
  first unit of every stage with stride 2; depths [3, 4, 14, 3] (IR-50) or [3, 8, 36, 3] (IR-152);
- output layer: BN2d-Dropout(0.5)-flatten-linear(512 * s * s -> 512)-BN1d with s = ceil(H / 16)
  (4 at 64 px, 7 at 112 px), giving the 512-d penultimate features; then ``head`` = linear(512, K).

Submodule names follow the public checkpoints (``feature.input_layer``, ``feature.body``,
``output_layer``); only their ``fc_layer`` is called ``head`` here, so a local checkpoint loads with
``weights.load_local_weights(model, path, key_map={"fc_layer.": "head."})``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from mibench_lib.models.base import Classifier

Normalization = Literal["face", "imagenet", "none"]

# Per-channel (mean, std) applied inside ``features``. "face" maps [0, 1] to [-1, 1] as the
# face.evoLVe (MS-Celeb-1M) backbones expect; "none" feeds [0, 1] unchanged, as the GMI/KEDMI/PLG-MI
# target checkpoints were trained.
_NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "face": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": None,
}

STAGE_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)


class BottleneckIR(nn.Module):
    """One IR unit: ``res(x) + shortcut(x)`` with no activation after the sum.

    res = BN-conv3x3-PReLU-conv3x3(stride)-BN. The shortcut is a strided identity (max-pool with a
    1x1 window) when the width is kept, else a strided 1x1 conv + BN projection.

    Args:
        in_channels: Input width.
        out_channels: Output width.
        stride: 1 or 2; applied by the second conv and by the shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if in_channels == out_channels:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, in, H, W) -> (N, out, ceil(H / stride), ceil(W / stride))."""
        return self.res_layer(x) + self.shortcut_layer(x)


class IRBackbone(nn.Module):
    """Stem + body of an IR-``depth`` network, without output layer (the 64-px "Backbone64").

    Args:
        depth: 50, 100 or 152.
        in_channels: Image channels C.

    Attributes:
        input_layer: conv3x3-BN-PReLU stem.
        body: ``nn.Sequential`` of all units in order; ``stage_ranges`` says which indices form
            each stage.
    """

    def __init__(self, depth: int, in_channels: int = 3) -> None:
        super().__init__()
        if depth not in STAGE_DEPTHS:
            raise ValueError(f"depth must be one of {sorted(STAGE_DEPTHS)}, got {depth}")
        self.input_layer = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        )
        units: list[nn.Module] = []
        ranges: list[range] = []
        width = 64
        for n_units, out_width in zip(STAGE_DEPTHS[depth], STAGE_WIDTHS):
            ranges.append(range(len(units), len(units) + n_units))
            units.append(BottleneckIR(width, out_width, 2))
            units.extend(BottleneckIR(out_width, out_width, 1) for _ in range(n_units - 1))
            width = out_width
        self.body = nn.Sequential(*units)
        self.stage_ranges: tuple[range, ...] = tuple(ranges)
        # Xavier-uniform convs and unit BN, as in the public 64-px backbone.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W), already normalised -> (N, 512, ceil(H / 16), ceil(W / 16))."""
        return self.body(self.input_layer(x))


class IRNet64(Classifier):
    """IR-``depth`` classifier: backbone -> BN-Dropout-flatten-linear-BN1d (512-d) -> head.

    Args:
        num_classes: Number of classes K (>= 2).
        depth: 50, 100 or 152.
        input_shape: (C, H, W); 64 x 64 in the MI literature (112 x 112 gives the evaluator size).
        normalization: "face" ((x - 0.5) / 0.5, the face.evoLVe convention), "imagenet", or "none"
            (raw [0, 1], needed to reuse GMI/KEDMI/PLG-MI target checkpoints).

    Attributes:
        feature: :class:`IRBackbone`; the units ``feature.body[i]``, ``i`` in ``stage_ranges[3]``,
            form the last stage.
        output_layer: BN2d-Dropout-Flatten-Linear-BN1d.

    Raises:
        ValueError: unknown ``depth`` or ``normalization``, an input smaller than 16 px, or
            "imagenet"/"face" normalisation with C != 3 ("face" accepts any C).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        depth: int = 152,
        input_shape: tuple[int, int, int] = (3, 64, 64),
        normalization: Normalization = "face",
    ) -> None:
        super().__init__(num_classes, 512, input_shape)
        c, h, w = self.input_shape
        if min(h, w) < 16:
            raise ValueError(f"input_shape must be at least 16 x 16 px, got {input_shape}")
        self.register_buffer("mean", _norm_tensor(normalization, c, 0), persistent=False)
        self.register_buffer("std", _norm_tensor(normalization, c, 1), persistent=False)
        self.normalization = normalization
        self.depth = int(depth)
        self.feature = IRBackbone(depth, c)
        sh, sw = math.ceil(h / 16), math.ceil(w / 16)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(0.5),
            nn.Flatten(),
            nn.Linear(512 * sh * sw, 512),
            nn.BatchNorm1d(512),
        )

    @property
    def stage_ranges(self) -> tuple[range, ...]:
        """Indices into ``self.feature.body`` of the four stages' units."""
        return self.feature.stage_ranges

    def last_stage(self) -> tuple[nn.Sequential, range]:
        """The container holding the last stage and the indices of its units in it.

        A defense can swap units in place: ``seq, idx = model.last_stage(); seq[idx[0]] = ...``.
        """
        return self.feature.body, self.feature.stage_ranges[-1]

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, 512) penultimate features (after the BN1d)."""
        x = (x - self.mean) / self.std
        return self.output_layer(self.feature(x))


def _norm_tensor(normalization: str, channels: int, which: int) -> Tensor:
    """(1, C, 1, 1) mean (``which`` 0) or std (1) of a named normalisation; identity for "none"."""
    if normalization not in _NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {sorted(_NORMALIZATIONS)}, got {normalization!r}"
        )
    stats = _NORMALIZATIONS[normalization]
    if stats is None:
        values: tuple[float, ...] = (float(which),) * channels  # mean 0, std 1
    elif normalization == "face":
        values = (stats[which][0],) * channels
    elif channels != 3:
        raise ValueError(f"normalization {normalization!r} needs 3 channels, got {channels}")
    else:
        values = stats[which]
    return torch.tensor(values, dtype=torch.float32).view(1, channels, 1, 1)


class IR152_64(IRNet64):
    """IR-152 target at 64 px (about 62M parameters without the head); see :class:`IRNet64`.

    Example:
        >>> import torch
        >>> model = IR152_64(7).eval()
        >>> model(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 7])
    """

    def __init__(
        self,
        num_classes: int,
        *,
        input_shape: tuple[int, int, int] = (3, 64, 64),
        normalization: Normalization = "face",
    ) -> None:
        super().__init__(
            num_classes, depth=152, input_shape=input_shape, normalization=normalization
        )


class IR50_64(IRNet64):
    """IR-50 classifier at 64 px (about 35M parameters without the head); see :class:`IRNet64`."""

    def __init__(
        self,
        num_classes: int,
        *,
        input_shape: tuple[int, int, int] = (3, 64, 64),
        normalization: Normalization = "face",
    ) -> None:
        super().__init__(
            num_classes, depth=50, input_shape=input_shape, normalization=normalization
        )


ZOO = {"ir152_64": IR152_64, "ir50_64": IR50_64}
