"""The style-based generator prior shared by the attacks that search StyleGAN's spaces.

Mirror (An et al., NDSS 2022) and C2FMI (Ye et al., 2023) search the latent spaces of a
StyleGAN generator trained on public data only. :data:`STYLE_GENERATOR` is that prior as a
:class:`~mibench_lib.attacks._spec.PublicPrior`: built once per public set and keyword
arguments, cached, and handed to every attack that names it under the keyword
``style_generator`` (a :class:`~mibench_lib.generators.stylegan.StyleGenerator` in eval mode).
The architecture and training follow StyleGAN2-ADA; see :mod:`mibench_lib.generators.stylegan`.
A converted official generator (``scripts/convert_stylegan2_ada.py`` then
:func:`~mibench_lib.generators.stylegan.load_stylegan2_ada`) can be passed in its place.
"""

from __future__ import annotations

from mibench_lib.attacks._spec import PublicPrior
from mibench_lib.generators.stylegan import build_style_generator, load_style_generator

__all__ = ["STYLE_GENERATOR"]

#: The public StyleGAN2-ADA prior; ``quick`` builds an 8x8 one in about a second.
STYLE_GENERATOR = PublicPrior(
    "style_generator",
    build_style_generator,
    load_style_generator,
    quick={
        "z_dim": 8,
        "w_dim": 8,
        "mapping_layers": 2,
        "channels": 8,
        "iterations": 20,
        "batch_size": 16,
    },
)
