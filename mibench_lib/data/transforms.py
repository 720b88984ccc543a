"""Image preprocessing shared by the loaders: padding, resizing, crop boxes and reading image files.

Tensors follow the project's one convention, (N, C, H, W) floats in [0, 1]; files are read with PIL
and stored as uint8 (4x less memory than float32 for the large face datasets).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

#: File suffixes (lower case) that count as images when scanning folders.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

#: A crop rule: (width, height, path) of an image -> PIL box (left, upper, right, lower).
CropBox = Callable[[int, int, Path], tuple[int, int, int, int]]


def pad_to(x: Tensor, size: int) -> Tensor:
    """Zero-pad (N, C, H, W) images symmetrically to (N, C, size, size).

    The extra rows (columns) are split evenly, the odd one going to the bottom (right).

    Args:
        x: (N, C, H, W) images with H, W <= size.
        size: Target side length.

    Returns:
        (N, C, size, size) tensor of the same dtype.

    Raises:
        ValueError: ``x`` is larger than ``size`` in either spatial dimension.

    Example:
        >>> import torch
        >>> pad_to(torch.ones(1, 1, 28, 28), 32)[0, 0, 2:30, 2:30].min().item()
        1.0
    """
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad images of size {h}x{w} to the smaller size {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(x, (left, size - w - left, top, size - h - top))


def resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize with antialiasing of (N, C, H, W) float images in [0, 1] to size x size.

    Antialiasing matters when shrinking (e.g. 32 -> 16): plain bilinear sampling would skip pixels
    and alias thin digit strokes. The result is clamped to [0, 1] against rounding error.

    Args:
        x: (N, C, H, W) floating-point images in [0, 1].
        size: Target side length (> 0).

    Returns:
        (N, C, size, size) float images in [0, 1]; ``x`` itself when it already has that size.

    Raises:
        ValueError: ``size`` is not positive or ``x`` is not floating point.
    """
    if size <= 0:
        raise ValueError(f"resolution must be a positive integer, got {size}")
    if not x.is_floating_point():
        raise ValueError(f"resize expects floating-point images in [0, 1], got {x.dtype}")
    if tuple(x.shape[-2:]) == (size, size):
        return x
    out = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def fixed_center_box(
    crop_width: int, crop_height: int, *, expect: tuple[int, int] | None = None
) -> CropBox:
    """A crop rule cutting a fixed crop_width x crop_height box from the image centre.

    The offsets are ``(W - crop_width) // 2`` and ``(H - crop_height) // 2``; for aligned CelebA
    (178 x 218) and a 108 x 108 crop that is left 35, top 55: the box GMI and its successors use.

    Args:
        crop_width: Width of the box in pixels.
        crop_height: Height of the box in pixels.
        expect: If given, the (width, height) every image must have; others raise ``ValueError``.

    Returns:
        A :data:`CropBox` rule for :func:`~mibench_lib.data.imagefolder.read_images`.
    """

    def box(width: int, height: int, path: Path) -> tuple[int, int, int, int]:
        if expect is not None and (width, height) != expect:
            raise ValueError(
                f"{path} is {width}x{height} pixels, expected {expect[0]}x{expect[1]} "
                "(the aligned-and-cropped images); a different version of the dataset would be "
                "cropped in the wrong place"
            )
        if width < crop_width or height < crop_height:
            raise ValueError(
                f"{path} is {width}x{height} pixels, smaller than the "
                f"{crop_width}x{crop_height} crop"
            )
        left, top = (width - crop_width) // 2, (height - crop_height) // 2
        return left, top, left + crop_width, top + crop_height

    return box


def square_center_box(fraction: float = 1.0) -> CropBox:
    """A crop rule cutting a centred square of side ``fraction`` x the image's shorter side.

    Args:
        fraction: In (0, 1]; 1 keeps the largest centred square (no distortion on resize).

    Returns:
        A :data:`CropBox` rule for :func:`~mibench_lib.data.imagefolder.read_images`.

    Raises:
        ValueError: ``fraction`` outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"crop fraction must lie in (0, 1], got {fraction}")

    def box(width: int, height: int, path: Path) -> tuple[int, int, int, int]:
        side = max(1, round(min(width, height) * fraction))
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    return box


def load_image(path: Path, *, resolution: int, crop: CropBox, channels: int = 3) -> np.ndarray:
    """Read one image, crop it, resize it to resolution x resolution and return (C, r, r) uint8.

    The crop is taken first, so no pixel outside the box leaks into the border of the result;
    PIL's bilinear resize then widens its filter when shrinking, so it antialiases like
    :func:`resize` does for tensors.

    Args:
        path: Image file readable by PIL.
        resolution: Output side length.
        crop: Rule giving the crop box from the image size.
        channels: 3 (RGB) or 1 (grey, PIL mode ``"L"``).

    Returns:
        (channels, resolution, resolution) uint8 array.
    """
    mode = {3: "RGB", 1: "L"}[channels]
    with Image.open(path) as img:
        img = img.convert(mode)
        box = crop(img.width, img.height, path)
        img = img.crop(box).resize((resolution, resolution), Image.Resampling.BILINEAR)
        arr = np.array(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)
