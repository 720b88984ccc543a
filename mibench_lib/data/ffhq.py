"""FFHQ (or any folder of face images) as unlabelled public data for the attacker.

FFHQ has no identities, so it only ever serves as public data (labels -1). Faces in FFHQ are
aligned and centred but framed more loosely than CelebA's crop; following the public-FFHQ setting
of KEDMI and PLG-MI (an 88x88 centre crop of the 128x128 thumbnails, then a resize to 64), we keep
the centred square whose side is 88/128 of the image's shorter side, then resize.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mibench_lib.data._types import DatasetNotFoundError, ImageSet
from mibench_lib.data.imagefolder import find_image_files, read_images
from mibench_lib.data.transforms import IMAGE_SUFFIXES, square_center_box

#: Side of the centred square kept, as a fraction of the shorter image side (88 of 128 px).
FFHQ_CROP_FRACTION = 88 / 128


def ffhq(
    root: str | os.PathLike[str],
    *,
    resolution: int = 64,
    max_images: int | None = None,
) -> ImageSet:
    """Load a folder of face images (FFHQ layout or any other) as unlabelled public data.

    Files with an image suffix are searched recursively and sorted by relative path, so the
    1024x1024 ``images1024x1024/00000/00000.png`` layout and the flat 128x128 thumbnails both
    work; symlinked folders are followed, each folder and each file once (see
    :func:`~mibench_lib.data.imagefolder.find_image_files`). Each image is converted to RGB,
    cropped to the centred square of side :data:`FFHQ_CROP_FRACTION` x its shorter side, and
    resized bilinearly to ``resolution``.

    Args:
        root: Folder holding the images (any depth).
        resolution: Output side length; images are (3, resolution, resolution) uint8.
        max_images: Keep only the first ``max_images`` files in sorted order (all when None).

    Returns:
        :class:`ImageSet` with every label -1.

    Raises:
        DatasetNotFoundError: ``root`` is missing or holds no image files.
        CorruptImageError: Image files that cannot be decoded (truncated, ...); all are named.
        ValueError: ``max_images`` or ``resolution`` is not positive.
    """
    paths = ffhq_files(root, max_images=max_images)
    data = read_images(
        paths, resolution=resolution, crop=square_center_box(FFHQ_CROP_FRACTION), desc="FFHQ"
    )
    return ImageSet(data, torch.full((len(paths),), -1, dtype=torch.int64))


def ffhq_files(root: str | os.PathLike[str], *, max_images: int | None = None) -> list[Path]:
    """The image files :func:`ffhq` would load, in order (the first ``max_images`` when given).

    Raises:
        DatasetNotFoundError: ``root`` is missing or holds no image files.
        ValueError: ``max_images`` is not positive.
    """
    if max_images is not None and max_images <= 0:
        raise ValueError(f"max_images must be a positive integer or None, got {max_images}")
    if not os.path.isdir(root):
        raise DatasetNotFoundError(
            f"FFHQ expects a folder of face images at {root} (e.g. {root}/00000/00000.png from "
            "the official images1024x1024 or thumbnails128x128 download); it does not exist"
        )
    paths = find_image_files(root)
    if not paths:
        raise DatasetNotFoundError(
            f"no image files ({', '.join(IMAGE_SUFFIXES)}) found under {root}; put the FFHQ "
            "images there (any sub-folder depth)"
        )
    return paths[:max_images]
