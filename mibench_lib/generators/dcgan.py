"""The GMI prior: a DCGAN-style generator and a WGAN-GP critic with InstanceNorm.

Zhang et al., "The Secret Revealer: Generative Model-Inversion Attacks Against Deep Neural
Networks", CVPR 2020, https://arxiv.org/abs/1911.07135. Their generator maps z ~ N(0, I) (100-d)
through a linear layer and transposed convolutions with BatchNorm to a sigmoid image; their critic
is a strided convolutional network with InstanceNorm in place of LayerNorm (WGAN-GP forbids
BatchNorm in the critic) and no sigmoid, trained on public data only.

The widths here are sized for 32 px digits on a CPU (the 1,500-step latent search runs every
generator, critic and target forward/backward 1,500 times); ``width`` scales them up for faces.
Both networks follow the resolution: one up- (down-) sampling block per doubling from 4 x 4, with
the channels doubled towards the 4 x 4 end, so a larger image also means wider inner layers.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from mibench_lib.generators.base import Generator


def _num_upsamplings(size: int) -> int:
    n = math.log2(size / 4)
    if size < 8 or n != int(n):
        raise ValueError(f"resolution must be a power of two >= 8, got {size}")
    return int(n)


class DCGANGenerator(Generator):
    """z (latent_dim) -> linear -> (4w', 4, 4) -> transposed-conv blocks -> sigmoid image.

    ``blocks[i]`` doubles the resolution; the last one outputs ``C`` channels through a sigmoid,
    so images lie in [0, 1]. ``synthesize(w, start=k, features=h)`` resumes from block ``k``.

    Channels: with ``n = log2(H / 4)`` blocks, the stem gives ``2**n * width`` channels at 4 x 4
    and each block halves them, so the last hidden layer (at H/2) has ``2 * width`` channels, e.g.
    ``128 -> 64 -> 32 -> C`` for width 16 at 32 px. GMI's generator with ``dim`` d ends its hidden
    layers at d channels, so it corresponds to ``width = d / 2`` here: width 64 is twice as wide as
    GMI's ``dim=64`` CelebA generator (12.7M against 5.1M parameters at 64 px, with 4x4 kernels
    here and 5x5 there).

    Args:
        latent_dim: Size of z (GMI: 100).
        output_shape: (C, H, W) with H == W a power of two >= 8.
        width: Half the channels of the last hidden block (doubled towards the stem).

    Example:
        >>> import torch
        >>> DCGANGenerator(100, (1, 32, 32)).eval()(torch.randn(2, 100)).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(
        self,
        latent_dim: int = 100,
        output_shape: tuple[int, int, int] = (1, 32, 32),
        width: int = 16,
    ) -> None:
        super().__init__(latent_dim, output_shape)
        c, h, w = output_shape
        if h != w:
            raise ValueError(f"DCGANGenerator needs square images, got {output_shape}")
        n = _num_upsamplings(h)
        chans = [width * 2 ** (n - 1 - i) for i in range(n)]  # e.g. 64, 32, 16 for n = 3
        top = chans[0] * 2
        self.stem = nn.Sequential(
            nn.Linear(latent_dim, top * 16, bias=False),
            nn.BatchNorm1d(top * 16),
            nn.ReLU(),
            nn.Unflatten(1, (top, 4, 4)),
        )
        blocks: list[nn.Module] = []
        cin = top
        for i, cout in enumerate(chans):
            last = i == n - 1
            conv = nn.ConvTranspose2d(cin, c if last else cout, 4, 2, 1, bias=last)
            blocks.append(
                nn.Sequential(conv, nn.Sigmoid())
                if last
                else nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())
            )
            cin = cout
        self.blocks = nn.ModuleList(blocks)


class WGANCritic(nn.Module):
    """Strided conv critic: conv-LReLU, then [conv-InstanceNorm-LReLU] down to 4x4, then linear.

    Returns one unbounded realness score per image (higher = more like the public data). Channels
    are ``width`` after the first conv (at H/2), doubled by each further conv down to 4 x 4, as in
    GMI's critic with ``dim = width``.

    Args:
        input_shape: (C, H, W) with H == W a power of two >= 8.
        width: Channels of the first convolution.

    Raises:
        ValueError: non-square images or a side that is not a power of two >= 8.

    Example:
        >>> import torch
        >>> WGANCritic((1, 32, 32))(torch.rand(3, 1, 32, 32)).shape
        torch.Size([3])
    """

    def __init__(self, input_shape: tuple[int, int, int] = (1, 32, 32), width: int = 16) -> None:
        super().__init__()
        c, h, w = input_shape
        if h != w:
            raise ValueError(f"WGANCritic needs square images, got {input_shape}")
        n = _num_upsamplings(h)
        layers: list[nn.Module] = [nn.Conv2d(c, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        cin = width
        for _ in range(n - 1):
            layers += [
                nn.Conv2d(cin, 2 * cin, 4, 2, 1),
                nn.InstanceNorm2d(2 * cin, affine=True),
                nn.LeakyReLU(0.2),
            ]
            cin *= 2
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin * 16, 1))
        self.input_shape = tuple(input_shape)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N,) scores."""
        return self.net(x * 2 - 1).squeeze(1)
