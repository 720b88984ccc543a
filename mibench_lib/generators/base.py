"""The generator interface shared by every GAN prior.

A generator maps latents ``z`` of shape (N, latent_dim) to images in [0, 1] of shape
``output_shape``. Where the architecture allows, it is split into ``mapping`` (z -> w; identity for
DCGAN-style generators) and ``synthesis`` (w -> image), and synthesis is a sequence of
``blocks`` so that intermediate-feature attacks (IF-GMI) and w-space attacks (PPA, Mirror) can
start synthesis from any block: ``synthesize(w, start=k, features=h)``.
"""

from __future__ import annotations

from torch import Tensor, nn


class Generator(nn.Module):
    """Base class: subclasses fill ``self.blocks`` and set ``self.stem``.

    ``synthesis`` runs ``stem`` on w, then the blocks in order; the last block must end in [0, 1].

    Args:
        latent_dim: Size of z (and of w for generators without a mapping network).
        output_shape: (C, H, W) of the images produced.
    """

    def __init__(self, latent_dim: int, output_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.output_shape = tuple(int(s) for s in output_shape)
        self.stem: nn.Module = nn.Identity()
        self.blocks = nn.ModuleList()

    @property
    def num_blocks(self) -> int:
        """Number of synthesis blocks after the stem."""
        return len(self.blocks)

    def mapping(self, z: Tensor) -> Tensor:
        """z -> w. Identity for generators without a mapping network."""
        return z

    def synthesize(
        self, w: Tensor, *, start: int = 0, features: Tensor | None = None, stop: int | None = None
    ) -> Tensor:
        """Run synthesis from block ``start`` (0 = from w through the stem) up to block ``stop``.

        Args:
            w: (N, latent_dim) latent (only read when ``start == 0``).
            start: First block to run; with ``start > 0``, ``features`` is the output of block
                ``start - 1`` (or of the stem when ``start == 0`` is skipped that way).
            features: Intermediate features entering block ``start``.
            stop: Run blocks ``start .. stop-1``; default all, giving images in [0, 1].
        """
        stop = self.num_blocks if stop is None else stop
        if not 0 <= start <= stop <= self.num_blocks:
            raise ValueError(
                f"need 0 <= start <= stop <= {self.num_blocks}, got start={start}, stop={stop}"
            )
        h = self.stem(w) if features is None else features
        for block in self.blocks[start:stop]:
            h = block(h)
        return h

    def forward(self, z: Tensor) -> Tensor:
        """(N, latent_dim) -> (N, C, H, W) images in [0, 1]."""
        return self.synthesize(self.mapping(z))
