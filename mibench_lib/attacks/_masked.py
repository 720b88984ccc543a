"""What a partial-image attacker holds: private images with a hidden region, and the mask.

SecretGen's threat model (Yuan et al., ECCV 2022): the attacker has a private image whose centre
(or face region) is hidden and fills the hole with the right identity. A study gives such an
attack one masked private training image per label entry; the pixels under the hole are zeroed
before the attack sees them, so nothing hidden leaks through the tensor it receives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MaskedImages", "center_mask", "mask_images"]


@dataclass(frozen=True)
class MaskedImages:
    """Images with a hidden region.

    Attributes:
        images: (N, C, H, W) in [0, 1]; every hidden pixel is 0.
        mask: (N, 1, H, W) float, 1 where the pixel is known, 0 in the hole.
    """

    images: Tensor
    mask: Tensor

    def __post_init__(self) -> None:
        n, _, h, w = self.images.shape
        if tuple(self.mask.shape) != (n, 1, h, w):
            raise ValueError(
                f"mask must have shape ({n}, 1, {h}, {w}), got {tuple(self.mask.shape)}"
            )
        if bool(((self.images * (1 - self.mask)) != 0).any()):
            raise ValueError("masked images must be 0 under the hole (mask == 0)")

    def __len__(self) -> int:
        return int(self.images.shape[0])


def center_mask(height: int, width: int, *, fraction: float = 0.5) -> Tensor:
    """(1, 1, H, W) mask hiding the central square of side ``fraction`` of the image.

    SecretGen's "center" mask hides the central 32 x 32 of a 64 x 64 face: ``fraction`` 0.5.

    Example:
        >>> m = center_mask(8, 8)
        >>> int((m == 0).sum()), m[0, 0, 2:6, 2:6].abs().sum().item()
        (16, 0.0)
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    mask = torch.ones(1, 1, height, width)
    hh, ww = max(1, round(height * fraction)), max(1, round(width * fraction))
    top, left = (height - hh) // 2, (width - ww) // 2
    mask[..., top : top + hh, left : left + ww] = 0
    return mask


def mask_images(images: Tensor, *, fraction: float = 0.5) -> MaskedImages:
    """Hide the centre of every image of ``images`` ((N, C, H, W) in [0, 1])."""
    n, _, h, w = images.shape
    mask = center_mask(h, w, fraction=fraction).expand(n, 1, h, w).contiguous()
    return MaskedImages(images * mask, mask)
