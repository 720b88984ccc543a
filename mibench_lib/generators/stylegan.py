"""A style-based generator with the StyleGAN2-ADA architecture, sized for a CPU.

Karras, Aittala, Hellsten, Laine, Lehtinen and Aila, "Training Generative Adversarial Networks
with Limited Data", NeurIPS 2020, https://arxiv.org/abs/2006.06676 (StyleGAN2-ADA), on the
architecture of Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020,
https://arxiv.org/abs/1912.04958. Reference code: NVlabs/stylegan2-ada-pytorch,
``training/networks.py`` and ``training/loss.py``.

Architecture (as officially, config "cifar" and "auto" where they differ only in sizes):

- *Mapping* ``z -> w``: ``z`` normalised to unit second moment, then ``mapping_layers``
  equalised fully connected layers (learning-rate multiplier 0.01), each followed by
  ``LeakyReLU(0.2)`` with gain ``sqrt(2)``. Because the leaky ReLU is positively homogeneous,
  ``w = lrelu(a)`` for the last layer's pre-activation ``a`` (gain included), so
  ``LeakyReLU(1 / 0.2)(w)`` gives ``a`` back exactly: Mirror's p-space
  (:attr:`StyleGenerator.mapping_slope`). During training the mapping tracks the moving average
  ``w_avg`` of its outputs (beta 0.995); truncation ``psi`` lerps ``w`` towards it.
- *Synthesis* ``ws -> image``: a learned constant 4x4 input, then one block per resolution
  (``b4``, ``b8``, ...). Each block has one (``b4``) or two 3x3 modulated convolutions with
  weight demodulation (the first of ``b8``, ``b16``, ... upsamples by 2), per-layer affine
  ``w -> styles`` (bias 1), per-pixel noise with a learned strength, bias and ``LeakyReLU(0.2)``
  with gain ``sqrt(2)``, and a 1x1 ToRGB layer (modulated, not demodulated) whose output is added
  to the upsampled image of the previous block ("skip" architecture). Up-sampling uses the
  official FIR filter ``[1, 3, 3, 1]`` (zero insertion, then the normalised 4x4 filter with gain
  4), implemented here with plain ``conv2d`` / ``conv_transpose2d`` instead of the custom
  ``upfirdn2d`` kernels: the same arithmetic, so converted official weights give the official
  images up to float rounding. ``num_ws = 2 * log2(resolution) - 2``: one ``w`` per convolution
  plus one for the last ToRGB; block ``b_r``'s ToRGB shares its ``w`` with the next block's
  first convolution, as officially.
- *Output range*: official generators draw in about [-1, 1]; here :meth:`StyleGenerator.synthesis`
  returns ``clamp((x + 1) / 2, 0, 1)`` (the benchmark's [0, 1]), as the model-inversion code
  that uses StyleGAN does (PPA, Mirror). The raw output is ``generator.synthesis_network(ws)``.
- *Noise*: random per-pixel noise in training mode and the stored ``noise_const`` buffers in eval
  mode (official ``noise_mode="const"``), so an eval-mode generator is deterministic. Set
  :attr:`StyleGenerator.noise_mode` to force ``"random"``, ``"const"`` or ``"none"``.

Parameter names follow the official ``G_ema`` state dict (``mapping.fc0.weight``,
``mapping.w_avg``, ``synthesis.b4.const``, ``synthesis.b4.conv1.affine.weight``,
``synthesis.b8.conv0.weight``, ``synthesis.b8.torgb.weight``, ``noise_const``,
``noise_strength``, ``resample_filter`` ...), so a converted StyleGAN2-ADA generator loads with
``load_state_dict(strict=True)`` (:func:`load_stylegan2_ada`; convert a trusted pickle with
``scripts/convert_stylegan2_ada.py``). Deliberate differences with the official networks:

- Only unconditional generators (``c_dim = 0``) and the "skip" synthesis architecture (the
  official default); no FP16 (the official ``num_fp16_res`` layers compute in float32 here),
  convolution clamping (``conv_clamp``) is supported.
- Modulation is applied to the activations (official ``fused_modconv=False``, what it trains
  with) in every mode: the same values as the fused grouped convolution, faster on a CPU.
- Truncation applies to all layers (no ``truncation_cutoff``).

Training (:func:`build_style_generator`): public images only (labels ignored), the official
non-saturating logistic loss with lazy R1 regularisation of the discriminator (every 16 steps,
Adam hyperparameters adjusted by ``16/17`` as officially), Adam(0.0025, betas (0, 0.99)), an
exponential moving average ``G_ema`` of the generator (official ramp-up 0.05), which is what is
returned, and the official residual ("resnet") discriminator scaled down with a minibatch
standard-deviation layer. Left out for the CPU budget (as in the official "cifar" configuration):
path-length regularisation and style mixing (``style_mixing`` enables mixing with the official
probability 0.9); adaptive augmentation (ADA) is not implemented.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib._checks import check_int, check_real
from mibench_lib.data._types import ImageSet
from mibench_lib.generators.base import Generator
from mibench_lib.progress import tqdm

__all__ = [
    "StyleDiscriminator",
    "StyleGenerator",
    "build_style_generator",
    "load_style_generator",
    "load_stylegan2_ada",
]

_SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------------- primitives


def _setup_filter(taps: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)) -> Tensor:
    """The official 2-D low-pass filter: outer product of ``taps``, normalised to sum 1."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def _upfirdn(
    x: Tensor, f: Tensor, *, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0), gain=1.0
) -> Tensor:
    """Zero-insertion upsampling, padding (same on both axes), FIR filtering, downsampling.

    The reference arithmetic of the official ``upfirdn2d`` with a 2-D filter: ``gain`` multiplies
    the filter (``up ** 2`` keeps the mean after zero insertion). Negative pads crop.
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = (f * gain).flip([0, 1]).to(x.dtype)[None, None].expand(c, 1, *f.shape)
    x = F.conv2d(x, k, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def _upsample2d(x: Tensor, f: Tensor) -> Tensor:
    """Official ``upsample2d`` by 2 with a 4-tap filter: output exactly twice the size."""
    fw = f.shape[-1]
    return _upfirdn(x, f, up=2, pad=((fw + 1) // 2, (fw - 2) // 2), gain=4.0)


def _bias_act(
    x: Tensor, b: Tensor | None, *, act: str, gain: float = 1.0, clamp: float | None = None
) -> Tensor:
    """Official ``bias_act``: ``act(x + b) * def_gain * gain``, then clamp to +-clamp."""
    if b is not None:
        x = x + b.reshape(1, -1, *([1] * (x.ndim - 2)))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2) * (_SQRT2 * gain)
    elif gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale each row to unit mean square (the mapping network's input normalisation)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class FullyConnectedLayer(nn.Module):
    """Equalised linear layer: ``weight ~ N(0, 1) / lr_multiplier`` used as ``weight * gain``.

    ``gain = lr_multiplier / sqrt(in_features)``, bias scaled by ``lr_multiplier``, optional
    ``lrelu`` activation (slope 0.2, gain sqrt(2)).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def pre_activation(self, x: Tensor) -> Tensor:
        """``x W^T + b`` with the equalised scales, before the activation and its gain."""
        b = None if self.bias is None else self.bias * self.bias_gain
        return F.linear(x, self.weight * self.weight_gain, b)

    def forward(self, x: Tensor) -> Tensor:
        return _bias_act(self.pre_activation(x), None, act=self.activation)


class Conv2dLayer(nn.Module):
    """Equalised convolution with optional FIR downsampling by 2 (discriminator layers)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        activation: str = "linear",
        down: int = 1,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.down = down
        self.register_buffer("resample_filter", _setup_filter())
        self.padding = kernel_size // 2
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        w = self.weight * self.weight_gain
        if self.down > 1:  # official order: blur (padded for the kernel), then strided conv
            fw = self.resample_filter.shape[-1]
            k = w.shape[-1]
            p0 = self.padding + (fw - 2 + 1) // 2
            p1 = self.padding + (fw - 2) // 2
            if k == 1:  # 1x1: blur-downsample first, then convolve
                x = _upfirdn(x, self.resample_filter, down=2, pad=(p0, p1))
                x = F.conv2d(x, w)
            else:
                x = _upfirdn(x, self.resample_filter, pad=(p0, p1))
                x = F.conv2d(x, w, stride=2)
        else:
            x = F.conv2d(x, w, padding=self.padding)
        return _bias_act(x, self.bias, act=self.activation, gain=gain)


# ------------------------------------------------------------------------------------ generator


class MappingNetwork(nn.Module):
    """``z -> w``: 2nd-moment normalisation, ``num_layers`` equalised lrelu layers, ``w_avg``.

    Called as ``mapping(z, truncation_psi=1.0)``; returns (N, w_dim). In training mode each call
    updates ``w_avg`` (moving average, decay ``w_avg_beta``) unless ``update_w_avg=False``.
    """

    def __init__(
        self,
        z_dim: int,
        w_dim: int,
        num_layers: int = 8,
        *,
        lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.995,
    ) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_layers = z_dim, w_dim, num_layers
        self.w_avg_beta = w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        for i in range(num_layers):
            layer = FullyConnectedLayer(
                features[i], features[i + 1], activation="lrelu", lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{i}", layer)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def pre_activation(self, z: Tensor) -> Tensor:
        """The last layer's pre-activation ``a`` times the lrelu gain: ``w = lrelu(a, 0.2)``."""
        x = normalize_2nd_moment(z.float())
        for i in range(self.num_layers - 1):
            x = getattr(self, f"fc{i}")(x)
        return getattr(self, f"fc{self.num_layers - 1}").pre_activation(x) * _SQRT2

    def forward(
        self, z: Tensor, truncation_psi: float = 1.0, *, update_w_avg: bool = True
    ) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape (N, {self.z_dim}), got {tuple(z.shape)}")
        x = normalize_2nd_moment(z.float())
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if self.training and update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, float(truncation_psi))
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (demodulated), noise, bias, lrelu; optional FIR upsampling."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        *,
        up: int = 1,
        kernel_size: int = 3,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.register_buffer("resample_filter", _setup_filter())
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random") -> Tensor:
        styles = self.affine(w)  # (N, in)
        n = x.shape[0]
        wt = self.weight
        dcoefs = (
            (wt[None] * styles[:, None, :, None, None]).square().sum([2, 3, 4]) + 1e-8
        ).rsqrt()
        x = x * styles.reshape(n, -1, 1, 1)
        if self.up > 1:
            # Official conv2d_resample(up=2): a true convolution (flipped weight) of the
            # zero-inserted input, then the FIR filter; as a transposed convolution.
            fw, k = self.resample_filter.shape[-1], wt.shape[-1]
            p0 = self.padding + (fw + self.up - 1) // 2 - (k - 1)
            p1 = self.padding + (fw - self.up) // 2 - (k - self.up)
            x = F.conv_transpose2d(x, wt.transpose(0, 1), stride=self.up)
            x = _upfirdn(x, self.resample_filter, pad=(p0, p1), gain=float(self.up**2))
        else:
            x = F.conv2d(x, wt, padding=self.padding)
        x = x * dcoefs.reshape(n, -1, 1, 1)
        if noise_mode == "random":
            noise = torch.randn(n, 1, self.resolution, self.resolution, device=x.device)
            x = x + noise * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        return _bias_act(x, self.bias, act="lrelu", clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution without demodulation, plus bias (linear)."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None
    ) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = F.conv2d(x * styles[:, :, None, None], self.weight)
        return _bias_act(x, self.bias, act="linear", clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the "skip" synthesis network: (x, img, ws) -> (x, img)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        *,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.img_channels = resolution, img_channels
        self.register_buffer("resample_filter", _setup_filter())
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp
            )
        self.conv1 = SynthesisLayer(
            out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp
        )
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(
        self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str = "random"
    ) -> tuple[Tensor, Tensor]:
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, next(w_iter), noise_mode)
        x = self.conv1(x, next(w_iter), noise_mode)
        if img is not None:
            img = _upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter))
        img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """``ws`` (N, num_ws, w_dim) -> raw images (about [-1, 1]); blocks ``b4``, ``b8``, ..."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        *,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        log2 = int(math.log2(img_resolution)) if img_resolution > 0 else 0
        if img_resolution < 4 or 2**log2 != img_resolution:
            raise ValueError(f"resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        if min(channels.values()) < 1:
            raise ValueError(
                f"channel_base {channel_base} gives no channels at {img_resolution} px"
            )
        self.channels = channels
        self.num_ws = 0
        self.w_offsets: list[int] = []
        for r in self.block_resolutions:
            block = SynthesisBlock(
                channels[r // 2] if r > 4 else 0,
                channels[r],
                w_dim,
                r,
                img_channels,
                conv_clamp=conv_clamp,
            )
            self.w_offsets.append(self.num_ws)
            self.num_ws += block.num_conv
            setattr(self, f"b{r}", block)
        self.num_ws += 1  # the last block's ToRGB

    def block(self, i: int) -> SynthesisBlock:
        """The ``i``-th block (0 = ``b4``)."""
        return getattr(self, f"b{self.block_resolutions[i]}")

    def block_ws(self, ws: Tensor, i: int) -> Tensor:
        """The ws the ``i``-th block reads (its convolutions, then its ToRGB)."""
        b = self.block(i)
        return ws.narrow(1, self.w_offsets[i], b.num_conv + b.num_torgb)

    def forward(self, ws: Tensor, noise_mode: str = "random") -> Tensor:
        x = img = None
        for i in range(len(self.block_resolutions)):
            x, img = self.block(i)(x, img, self.block_ws(ws, i), noise_mode)
        return img


class StyleGenerator(Generator):
    """StyleGAN2-ADA generator: ``mapping`` (z -> w) and ``synthesis`` (ws -> images in [0, 1]).

    ``mapping`` and ``synthesis`` are methods with the interface below; the underlying official
    modules (state-dict prefixes ``mapping.`` and ``synthesis.``) are
    :attr:`mapping_network` and :attr:`synthesis_network`.

    Args:
        z_dim: Size of z (official 512).
        w_dim: Size of w (official 512).
        img_resolution: Image side, a power of two >= 4.
        img_channels: Image channels.
        mapping_layers: Fully connected layers of the mapping (official 8; "cifar" 2).
        channel_base: Channels at resolution r are ``min(channel_base // r, channel_max)``
            (official ``fmaps * 32768``: 32768 for "cifar" and the paper configurations).
        channel_max: Maximum channels (official 512).
        conv_clamp: Clamp of the convolution outputs (official 256 in trained pickles; None = off).
        mapping_lr_multiplier: Learning-rate multiplier of the mapping (official 0.01).
        w_avg_beta: Decay of the tracked ``w_avg`` (official 0.995).

    Example:
        >>> import torch
        >>> g = StyleGenerator(8, 8, 8, 1, mapping_layers=2, channel_base=64, channel_max=16).eval()
        >>> g.num_ws, g(torch.randn(2, 8)).shape
        (4, torch.Size([2, 1, 8, 8]))
    """

    #: Slope of the mapping network's last LeakyReLU: ``LeakyReLU(1 / mapping_slope)`` inverts it.
    mapping_slope: float = 0.2

    def __init__(
        self,
        z_dim: int = 512,
        w_dim: int = 512,
        img_resolution: int = 32,
        img_channels: int = 3,
        *,
        mapping_layers: int = 8,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: float | None = None,
        mapping_lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.995,
    ) -> None:
        super().__init__(z_dim, (img_channels, img_resolution, img_resolution))
        for name, value in (
            ("z_dim", z_dim),
            ("w_dim", w_dim),
            ("img_channels", img_channels),
            ("mapping_layers", mapping_layers),
            ("channel_base", channel_base),
            ("channel_max", channel_max),
        ):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.z_dim, self.w_dim = int(z_dim), int(w_dim)
        self.img_resolution, self.img_channels = int(img_resolution), int(img_channels)
        self.hparams: dict[str, Any] = {
            "z_dim": self.z_dim,
            "w_dim": self.w_dim,
            "img_resolution": self.img_resolution,
            "img_channels": self.img_channels,
            "mapping_layers": int(mapping_layers),
            "channel_base": int(channel_base),
            "channel_max": int(channel_max),
            "conv_clamp": None if conv_clamp is None else float(conv_clamp),
            "mapping_lr_multiplier": float(mapping_lr_multiplier),
            "w_avg_beta": float(w_avg_beta),
        }
        synthesis = SynthesisNetwork(
            self.w_dim,
            self.img_resolution,
            self.img_channels,
            channel_base=channel_base,
            channel_max=channel_max,
            conv_clamp=conv_clamp,
        )
        mapping = MappingNetwork(
            self.z_dim,
            self.w_dim,
            int(mapping_layers),
            lr_multiplier=mapping_lr_multiplier,
            w_avg_beta=w_avg_beta,
        )
        # Registered under the official names; `mapping` / `synthesis` stay this class's methods.
        self._modules["synthesis"] = synthesis
        self._modules["mapping"] = mapping
        self.num_ws: int = synthesis.num_ws
        #: None: "random" noise in training mode, "const" in eval mode; or force a mode.
        self.noise_mode: str | None = None

    # -- the official submodules
    @property
    def mapping_network(self) -> MappingNetwork:
        """The official ``mapping`` module."""
        return self._modules["mapping"]  # type: ignore[return-value]

    @property
    def synthesis_network(self) -> SynthesisNetwork:
        """The official ``synthesis`` module (raw output, about [-1, 1])."""
        return self._modules["synthesis"]  # type: ignore[return-value]

    @property
    def w_avg(self) -> Tensor:
        """(w_dim,) moving average of mapped w (the ``mapping.w_avg`` buffer)."""
        return self.mapping_network.w_avg

    @property
    def num_blocks(self) -> int:
        """Synthesis blocks (``b4`` ... ``b<resolution>``)."""
        return len(self.synthesis_network.block_resolutions)

    def _noise_mode(self) -> str:
        if self.noise_mode is not None:
            if self.noise_mode not in ("random", "const", "none"):
                raise ValueError(
                    f"noise_mode must be random, const or none, got {self.noise_mode!r}"
                )
            return self.noise_mode
        return "random" if self.training else "const"

    # -- the interface
    def mapping(self, z: Tensor, truncation_psi: float = 1.0) -> Tensor:  # type: ignore[override]
        """(N, z_dim) -> (N, w_dim); ``truncation_psi < 1`` lerps towards ``w_avg``."""
        return self.mapping_network(z, truncation_psi)

    def broadcast(self, w: Tensor) -> Tensor:
        """(N, w_dim) -> (N, num_ws, w_dim); (N, num_ws, w_dim) passes through (checked)."""
        if w.ndim == 2 and w.shape[1] == self.w_dim:
            return w.unsqueeze(1).expand(-1, self.num_ws, -1)
        if w.ndim == 3 and w.shape[1:] == (self.num_ws, self.w_dim):
            return w
        raise ValueError(
            f"ws must have shape (N, {self.w_dim}) or (N, {self.num_ws}, {self.w_dim}), "
            f"got {tuple(w.shape)}"
        )

    @staticmethod
    def to_unit(img: Tensor) -> Tensor:
        """Official [-1, 1] range -> [0, 1], clamped."""
        return ((img + 1) / 2).clamp(0, 1)

    def synthesis(self, ws: Tensor) -> Tensor:
        """(N, num_ws, w_dim) (or (N, w_dim), broadcast) -> images (N, C, H, W) in [0, 1]."""
        return self.synthesis_blocks(ws)

    def synthesize_w(self, w: Tensor) -> Tensor:
        """One w (N, w_dim) for every layer -> images in [0, 1]."""
        if w.ndim != 2:
            raise ValueError(f"w must have shape (N, {self.w_dim}), got {tuple(w.shape)}")
        return self.synthesis_blocks(w)

    def synthesis_blocks(
        self,
        ws: Tensor,
        *,
        start: int = 0,
        features: Tensor | None = None,
        stop: int | None = None,
    ) -> Tensor:
        """Run synthesis blocks ``start .. stop - 1``.

        The features between blocks are the block's activations and its running skip image
        concatenated along channels: ``cat([x, img], 1)`` of shape (N, channels + C, r, r).

        Args:
            ws: (N, num_ws, w_dim), or (N, w_dim) broadcast to every layer. Every block reads its
                own slice, so pass the full ``ws`` whatever ``start`` is.
            start: First block (0 = ``b4``, from the learned constant).
            features: Output of block ``start - 1`` (required when ``start > 0``).
            stop: One past the last block; default all blocks.

        Returns:
            Images in [0, 1] when ``stop`` is the last block, else the features after ``stop - 1``.
        """
        ws = self.broadcast(ws)
        net = self.synthesis_network
        stop = self.num_blocks if stop is None else stop
        if not 0 <= start <= stop <= self.num_blocks:
            raise ValueError(
                f"need 0 <= start <= stop <= {self.num_blocks}, got start={start}, stop={stop}"
            )
        x = img = None
        if start > 0:
            if features is None:
                raise ValueError(f"features of block {start - 1} are needed to start at {start}")
            expect = net.block(start - 1).out_channels + self.img_channels
            if features.ndim != 4 or features.shape[1] != expect:
                raise ValueError(
                    f"features must have {expect} channels, got shape {tuple(features.shape)}"
                )
            x, img = features[:, : expect - self.img_channels], features[:, -self.img_channels :]
        mode = self._noise_mode()
        for i in range(start, stop):
            x, img = net.block(i)(x, img, net.block_ws(ws, i), mode)
        if stop == self.num_blocks:
            return self.to_unit(img)
        if x is None:  # start == stop == 0: nothing ran
            raise ValueError("stop must be > start when starting from block 0")
        return torch.cat([x, img], dim=1)

    def synthesize(  # base-class interface: w (N, w_dim) or ws
        self, w: Tensor, *, start: int = 0, features: Tensor | None = None, stop: int | None = None
    ) -> Tensor:
        """Same as :meth:`synthesis_blocks` (the :class:`Generator` interface)."""
        return self.synthesis_blocks(w, start=start, features=features, stop=stop)

    def forward(self, z: Tensor, truncation_psi: float = 1.0) -> Tensor:
        """(N, z_dim) -> images (N, C, H, W) in [0, 1] (one w for every layer)."""
        return self.synthesis_blocks(self.mapping(z, truncation_psi))

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> StyleGenerator:
        """Build from :attr:`hparams` (random weights)."""
        h = dict(hparams)
        return cls(
            h.pop("z_dim"),
            h.pop("w_dim"),
            h.pop("img_resolution"),
            h.pop("img_channels"),
            **h,
        )


# -------------------------------------------------------------------------------- discriminator


class _MinibatchStd(nn.Module):
    def __init__(self, group_size: int, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        if n % g:
            g = math.gcd(n, g)
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class _DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int):
        super().__init__()
        self.in_channels = in_channels
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu")
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu")
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: Tensor | None, img: Tensor) -> Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


class StyleDiscriminator(nn.Module):
    """The official residual ("resnet") discriminator, scaled by ``channel_base``/``channel_max``.

    Blocks from the image resolution down to 8x8 (fromRGB at the first; two 3x3 convolutions,
    the second downsampling with the FIR filter, plus a 1x1 downsampling skip, both scaled by
    sqrt(1/2)), then the 4x4 epilogue: minibatch standard deviation (group 4, one channel), a 3x3
    convolution, a fully connected layer and the linear output. Takes images in [0, 1] (mapped
    to the official [-1, 1] inside) and returns one logit per image.
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        *,
        channel_base: int = 32768,
        channel_max: int = 512,
        mbstd_group_size: int = 4,
    ) -> None:
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if img_resolution < 8 or 2**log2 != img_resolution:
            raise ValueError(f"resolution must be a power of two >= 8, got {img_resolution}")
        res = [2**i for i in range(log2, 2, -1)]
        ch = {r: min(channel_base // r, channel_max) for r in [*res, 4]}
        for r in res:
            in_ch = 0 if r == img_resolution else ch[r]
            setattr(self, f"b{r}", _DiscriminatorBlock(in_ch, ch[r], ch[r // 2], img_channels))
        self.block_resolutions = res
        self.mbstd = _MinibatchStd(mbstd_group_size)
        self.conv = Conv2dLayer(ch[4] + 1, ch[4], 3, activation="lrelu")
        self.fc = FullyConnectedLayer(ch[4] * 16, ch[4], activation="lrelu")
        self.out = FullyConnectedLayer(ch[4], 1)

    def forward(self, img: Tensor) -> Tensor:
        img = img * 2 - 1
        x = None
        for r in self.block_resolutions:
            x = getattr(self, f"b{r}")(x, img)
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1))).squeeze(1)


# ------------------------------------------------------------------------------------- training


def build_style_generator(
    public: ImageSet,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    z_dim: int = 64,
    w_dim: int = 64,
    mapping_layers: int = 2,
    channels: int = 32,
    channel_base: int | None = None,
    d_channels: int | None = None,
    iterations: int = 1600,
    batch_size: int = 8,
    lr: float = 0.0025,
    betas: tuple[float, float] = (0.0, 0.99),
    r1_gamma: float = 0.01,
    r1_interval: int = 16,
    ema_kimg: float = 10.0,
    ema_rampup: float | None = 0.05,
    style_mixing: float = 0.0,
    mbstd_group_size: int = 4,
    weights: str = "",
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Train a :class:`StyleGenerator` on public images (labels never read); return ``G_ema``.

    With ``weights`` (the path stem of the ``.safetensors`` and ``.json`` written by
    ``scripts/convert_stylegan2_ada.py`` from a trusted official pickle), nothing is trained: the
    converted ``G_ema`` is loaded strictly (:func:`load_stylegan2_ada`) and returned as it is; it
    must draw images of the public images' shape.

    Each iteration is one generator step (non-saturating loss ``softplus(-D(G(z)))``) and one
    discriminator step (``softplus(D(G(z))) + softplus(-D(x))``) on a batch of ``batch_size``
    real images drawn without replacement (reshuffled every pass), with the R1 penalty
    ``r1_gamma / 2 * ||grad_x D(x)||^2`` added every ``r1_interval`` discriminator steps (scaled
    by the interval, with the discriminator's Adam lr and betas adjusted by
    ``interval / (interval + 1)``, official lazy regularisation). ``G_ema`` follows the generator
    with half-life ``ema_kimg`` thousand images (ramped up to ``ema_rampup`` times the images
    seen so far) and copies its buffers (``w_avg``). Everything random follows ``seed``; the
    caller's global random state is left as it was.

    Official values (``train.py``, configuration "cifar", the closest to 32 px digits): Adam
    (0.0025, betas (0, 0.99)), batch 64, R1 gamma 0.01, lazy interval 16, EMA 500 kimg with
    ramp-up 0.05 (the "auto" configuration: EMA ``batch * 10 / 32`` kimg, no ramp-up), no style
    mixing ("auto": 0.9), no path-length regularisation ("auto": weight 2, not implemented
    here), 2 mapping layers ("auto": 8), z = w = 512, 512 channels. The defaults here are the
    CPU sizes for 32 px digits, measured in ``benchmarks/style_prior_fid.py``: z = w = 64,
    2 mapping layers, 32 channels up to 16 px and 16 at 32 px (83k generator parameters), the
    same widths in the discriminator, 1,600 iterations of batch 8: about 210 s on one CPU thread
    (the DCGAN prior's 100 WGAN-GP epochs: about 245 s), FID 24 in the evaluator's feature space
    against the DCGAN prior's 35. Measured alternatives (FID, CPU seconds): 1,000 x 8 (39, 128),
    800 x 16 (38, 183) and 800 x 32 (47, 281), these two on a loaded machine: small batches and
    more steps win at this budget.
    The ramp-up makes the EMA half-life 5 % of the images seen, whatever ``ema_kimg``, in runs
    this short.

    Args:
        public: The attacker's public images; labels are never read.
        seed: Seeds the weights, the batch orders, the latents and the noise.
        device: Where to train.
        progress: Show a progress bar.
        z_dim, w_dim, mapping_layers: Mapping network sizes.
        channels: Maximum channels of the generator (``channel_max``).
        channel_base: ``channel_max`` at resolutions up to ``channel_base / channels``;
            default ``16 * channels`` (full width up to 16 px, then halving).
        d_channels: Maximum channels of the discriminator (default ``channels``; its base
            follows the same rule).
        iterations: Generator steps (= discriminator steps).
        batch_size: Images per step; at most ``len(public)``.
        lr: Adam learning rate of both networks (official 0.0025).
        betas: Adam betas (official (0, 0.99)).
        r1_gamma: R1 weight (official cifar 0.01); 0 disables it.
        r1_interval: Lazy regularisation interval (official 16).
        ema_kimg: EMA half-life in thousands of images.
        ema_rampup: EMA ramp-up ratio (official 0.05), None = off.
        style_mixing: Probability of mixing two latents at a random layer (official 0.9; 0 off).
        mbstd_group_size: Minibatch-std group (official 4).
        weights: Path stem of converted StyleGAN2-ADA weights ("" trains one).

    Returns:
        ``(tensors, meta)``: ``G_ema``'s state dict under its official names and JSON-able
        metadata (``hparams`` for :func:`load_style_generator`, losses, wall time).

    Example:
        >>> from mibench_lib.data import ImageSet
        >>> from mibench_lib.testing import tiny_digits
        >>> x, y = tiny_digits()
        >>> t, m = build_style_generator(ImageSet(x[:64], y[:64]), seed=0, z_dim=8, w_dim=8,
        ...     channels=8, iterations=2, batch_size=16)
        >>> load_style_generator(t, m, "cpu")(torch.randn(3, 8)).shape
        torch.Size([3, 1, 8, 8])
    """
    if not isinstance(public, ImageSet):
        raise TypeError(f"public must be an ImageSet, got {type(public).__name__}")
    if weights:
        g = load_stylegan2_ada(f"{weights}.safetensors", f"{weights}.json")
        if tuple(g.output_shape) != tuple(public.image_shape):
            raise ValueError(
                f"style_generator weights {weights!r} draw images of shape "
                f"{tuple(g.output_shape)}, the public images are {tuple(public.image_shape)}: "
                "use weights at the study's resolution and channels"
            )
        tensors = {k: v.detach().cpu().contiguous() for k, v in g.state_dict().items()}
        return tensors, {"hparams": g.hparams, "weights": str(weights)}
    c, h, w = public.image_shape
    if h != w:
        raise ValueError(f"public images must be square, got {public.image_shape}")
    z_dim, w_dim = check_int("z_dim", z_dim), check_int("w_dim", w_dim)
    mapping_layers = check_int("mapping_layers", mapping_layers)
    channels = check_int("channels", channels)
    channel_base = check_int(
        "channel_base", 16 * channels if channel_base is None else channel_base
    )
    d_channels = check_int("d_channels", channels if d_channels is None else d_channels)
    iterations = check_int("iterations", iterations)
    batch_size = check_int("batch_size", batch_size)
    r1_interval = check_int("r1_interval", r1_interval)
    mbstd_group_size = check_int("mbstd_group_size", mbstd_group_size)
    if batch_size > len(public):
        raise ValueError(
            f"batch_size must be at most the number of public images ({len(public)}), got "
            f"{batch_size}"
        )
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    beta_pair = tuple(float(b) for b in betas)
    if len(beta_pair) != 2 or not all(0 <= b < 1 for b in beta_pair):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    r1_gamma = check_real("r1_gamma", r1_gamma)
    ema_kimg = check_real("ema_kimg", ema_kimg)
    if ema_rampup is not None:
        check_real("ema_rampup", ema_rampup)
    if not (isinstance(style_mixing, numbers.Real) and 0 <= style_mixing <= 1):
        raise ValueError(f"style_mixing must be a probability, got {style_mixing!r}")
    if h < 8 or 2 ** int(math.log2(h)) != h:
        raise ValueError(f"image side must be a power of two >= 8, got {h}")

    device = torch.device(device)
    t0 = time.perf_counter()
    hparams = {
        "z_dim": z_dim,
        "w_dim": w_dim,
        "img_resolution": h,
        "img_channels": c,
        "mapping_layers": mapping_layers,
        "channel_base": channel_base,
        "channel_max": channels,
    }
    history: dict[str, list[float]] = {"d_loss": [], "g_loss": [], "r1": []}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # weights, noise inputs (global RNG), then training draws
        G = StyleGenerator.from_hparams(hparams)
        D = StyleDiscriminator(
            h,
            c,
            channel_base=16 * d_channels,
            channel_max=d_channels,
            mbstd_group_size=mbstd_group_size,
        )
        G_ema = copy.deepcopy(G).eval()
        G.to(device).train()
        D.to(device).train()
        G_ema.to(device)
        rng = torch.Generator().manual_seed(seed)
        ratio = r1_interval / (r1_interval + 1) if r1_gamma > 0 else 1.0
        opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=beta_pair, eps=1e-8)
        opt_d = torch.optim.Adam(
            D.parameters(), lr=lr * ratio, betas=tuple(b**ratio for b in beta_pair), eps=1e-8
        )
        n_pub = len(public)
        order = torch.randperm(n_pub, generator=rng)
        pos = 0
        bar = tqdm(total=iterations, desc="StyleGAN2", disable=not progress, leave=False)

        def real_batch() -> Tensor:
            nonlocal order, pos
            if pos + batch_size > n_pub:
                order, pos = torch.randperm(n_pub, generator=rng), 0
            idx = order[pos : pos + batch_size]
            pos += batch_size
            return public.data[idx].float().div(255.0 if public.data.dtype == torch.uint8 else 1.0)

        def generate(n: int) -> Tensor:
            z = torch.randn(n, z_dim, generator=rng).to(device)
            ws = G.broadcast(G.mapping(z))
            if style_mixing > 0 and float(torch.rand((), generator=rng)) < style_mixing:
                cut = int(torch.randint(1, G.num_ws, (), generator=rng))
                z2 = torch.randn(n, z_dim, generator=rng).to(device)
                ws2 = G.broadcast(G.mapping_network(z2, update_w_avg=False))
                ws = torch.cat([ws[:, :cut], ws2[:, cut:]], dim=1)
            return G.synthesis(ws)

        cur_nimg = 0
        for it in range(iterations):
            # Generator step.
            G.requires_grad_(True)
            D.requires_grad_(False)
            g_loss = F.softplus(-D(generate(batch_size))).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            # Discriminator step (+ lazy R1).
            G.requires_grad_(False)
            D.requires_grad_(True)
            with torch.no_grad():
                fake = generate(batch_size)
            real = real_batch().to(device)
            do_r1 = r1_gamma > 0 and it % r1_interval == 0
            if do_r1:
                real.requires_grad_(True)
            real_logits = D(real)
            d_loss = F.softplus(D(fake)).mean() + F.softplus(-real_logits).mean()
            loss = d_loss
            if do_r1:
                (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
                r1 = grad.square().sum([1, 2, 3]).mean()
                loss = loss + r1 * (r1_gamma / 2) * r1_interval
                history["r1"].append(float(r1.detach()))
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
            # EMA.
            cur_nimg += batch_size
            ema_nimg = ema_kimg * 1000
            if ema_rampup is not None:
                ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
            beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))
            with torch.no_grad():
                for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
                    p_ema.copy_(p.lerp(p_ema, beta))
                for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
                    b_ema.copy_(b)
            history["d_loss"].append(float(d_loss.detach()))
            history["g_loss"].append(float(g_loss.detach()))
            bar.update(1)
            if it % 50 == 0:
                bar.set_postfix(d=f"{history['d_loss'][-1]:.3f}", g=f"{history['g_loss'][-1]:.3f}")
        bar.close()
    G_ema.eval()
    step = max(1, len(history["d_loss"]) // 200)
    meta = {
        "hparams": G_ema.hparams,
        "iterations": iterations,
        "batch_size": batch_size,
        "lr": float(lr),
        "betas": list(beta_pair),
        "r1_gamma": r1_gamma,
        "r1_interval": r1_interval,
        "style_mixing": float(style_mixing),
        "d_channels": d_channels,
        "seed": int(seed),
        "d_loss": history["d_loss"][::step],
        "g_loss": history["g_loss"][::step],
        "r1": history["r1"],
        "train_seconds": time.perf_counter() - t0,
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in G_ema.state_dict().items()}
    return tensors, meta


def load_style_generator(
    tensors: Mapping[str, Tensor], meta: Mapping[str, Any], device: torch.device | str = "cpu"
) -> StyleGenerator:
    """Rebuild :func:`build_style_generator`'s ``G_ema`` (strict load), in eval mode."""
    g = StyleGenerator.from_hparams(meta["hparams"])
    g.load_state_dict(dict(tensors), strict=True)
    return g.to(device).eval()


def load_stylegan2_ada(
    path_safetensors: str | os.PathLike[str],
    path_json: str | os.PathLike[str],
    device: torch.device | str = "cpu",
) -> StyleGenerator:
    """A converted official StyleGAN2-ADA ``G_ema`` (``scripts/convert_stylegan2_ada.py``).

    Args:
        path_safetensors: ``G_ema``'s state dict.
        path_json: Its hyperparameters: ``z_dim``, ``w_dim``, ``img_resolution``,
            ``img_channels``, ``channel_base``, ``channel_max``, ``mapping_layers`` (and
            optionally ``conv_clamp``, ``c_dim`` which must be 0).

    Returns:
        The generator in eval mode (constant noise), images in [0, 1].

    Raises:
        ValueError: a conditional generator, or missing hyperparameters.
        RuntimeError: tensors that do not match the architecture (strict load).
    """
    from safetensors.torch import load_file

    with open(path_json) as fh:
        info = json.load(fh)
    if int(info.get("c_dim", 0)) != 0:
        raise ValueError(f"only unconditional generators are supported, got c_dim={info['c_dim']}")
    need = ("z_dim", "w_dim", "img_resolution", "img_channels", "channel_base", "channel_max")
    missing = [k for k in (*need, "mapping_layers") if k not in info]
    if missing:
        raise ValueError(f"{path_json}: missing hyperparameters {missing}")
    hparams = {k: int(info[k]) for k in need}
    hparams["mapping_layers"] = int(info["mapping_layers"])
    if info.get("conv_clamp") is not None:
        hparams["conv_clamp"] = float(info["conv_clamp"])
    if info.get("w_avg_beta") is not None:
        hparams["w_avg_beta"] = float(info["w_avg_beta"])
    if info.get("mapping_lr_multiplier") is not None:
        hparams["mapping_lr_multiplier"] = float(info["mapping_lr_multiplier"])
    g = StyleGenerator.from_hparams(hparams)
    g.load_state_dict(load_file(str(path_safetensors)), strict=True)
    return g.to(device).eval()
