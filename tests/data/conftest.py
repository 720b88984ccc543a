"""Builders of tiny datasets in their real on-disk formats (CelebA, FFHQ, FaceScrub, ImageFolder).

Every image is a flat colour inside the region the loader should keep and BORDER outside it, so a
test can check the crop by looking at the loaded pixels: a wrong crop lets the border bleed in.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

BORDER = (0, 0, 255)
COLORS = [
    (220, 40, 40),
    (40, 200, 40),
    (230, 200, 40),
    (40, 200, 220),
    (200, 40, 200),
    (128, 128, 128),
    (250, 150, 60),
    (90, 60, 20),
    (250, 250, 250),
]

#: identity id -> number of images. 37 and 58 tie at 3 images: the smaller id ranks first.
CELEBA_COUNTS = {101: 4, 205: 4, 37: 3, 58: 3, 999: 2, 7: 1}
CELEBA_BOX = (35, 55, 143, 163)  # the 108x108 centre of a 178x218 aligned image


def write_image(
    path: Path, *, size: tuple[int, int], box: tuple[int, int, int, int], color: tuple[int, ...]
) -> None:
    """A (width, height) image: ``color`` inside box (left, top, right, bottom), BORDER outside."""
    w, h = size
    arr = np.empty((h, w, 3), dtype=np.uint8)
    arr[:] = BORDER
    left, top, right, bottom = box
    arr[top:bottom, left:right] = color
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=95, subsampling=0)
    else:
        img.save(path)


def build_celeba(
    root: Path, counts: dict[int, int] = CELEBA_COUNTS
) -> dict[int, tuple[int, int, int]]:
    """Write img_align_celeba/*.jpg (178x218), identity_CelebA.txt and list_eval_partition.txt.

    Identities are interleaved in file order, as in the real release. The j-th image of an
    identity is its colour darkened by 2j (distinct images, same colour within tolerance).
    Returns id -> centre colour.
    """
    colors = {i: COLORS[k] for k, i in enumerate(sorted(counts))}
    left = dict(counts)
    order = []
    while any(left.values()):
        for i in sorted(left):
            if left[i]:
                order.append(i)
                left[i] -= 1
    ident, part, seen = [], [], dict.fromkeys(counts, 0)
    for n, i in enumerate(order, start=1):
        name = f"{n:06d}.jpg"
        color = tuple(max(v - 2 * seen[i], 0) for v in colors[i])
        seen[i] += 1
        write_image(root / "img_align_celeba" / name, size=(178, 218), box=CELEBA_BOX, color=color)
        ident.append(f"{name} {i}\n")
        part.append(f"{name} {n % 3}\n")
    (root / "identity_CelebA.txt").write_text("".join(ident))
    (root / "list_eval_partition.txt").write_text("".join(part))
    return colors


def build_ffhq(root: Path, n: int = 5) -> list[tuple[int, int, int]]:
    """Write n 128x128 PNGs in two sub-folders (FFHQ's 00000/, 01000/ layout) plus a non-image.

    The centre 88x88 square (the crop the loader keeps) has colour COLORS[k] for image k.
    """
    for k in range(n):
        folder = "00000" if k < 3 else "01000"
        write_image(
            root / folder / f"{k:05d}.png", size=(128, 128), box=(20, 20, 108, 108), color=COLORS[k]
        )
    (root / "LICENSE.txt").write_text("not an image")
    return COLORS[:n]


def build_imagefolder(
    root: Path, counts: dict[str, int], *, size: tuple[int, int] = (20, 16), suffix: str = ".png"
) -> dict[str, tuple[int, int, int]]:
    """Write root/<name>/<k><suffix>; images wider than tall, the centred square in the colour."""
    w, h = size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    colors = {}
    for k, (name, n) in enumerate(sorted(counts.items())):
        colors[name] = COLORS[k]
        for j in range(n):
            write_image(root / name / f"{name}_{j}{suffix}", size=size, box=box, color=COLORS[k])
    return colors


@pytest.fixture
def celeba_root(tmp_path: Path) -> tuple[Path, dict[int, tuple[int, int, int]]]:
    root = tmp_path / "celeba"
    return root, build_celeba(root)


@pytest.fixture
def ffhq_root(tmp_path: Path) -> tuple[Path, list[tuple[int, int, int]]]:
    root = tmp_path / "ffhq"
    return root, build_ffhq(root)


def assert_color(images, color, *, tol: float = 12 / 255) -> None:
    """Every pixel of (N, 3, H, W) float images is within tol of the RGB ``color``."""
    target = np.asarray(color, dtype=np.float32).reshape(1, 3, 1, 1) / 255
    err = np.abs(images.numpy() - target).max()
    assert err <= tol, f"max deviation {err * 255:.1f}/255 from {color}"


@pytest.fixture
def build() -> SimpleNamespace:
    """The builders and the colour check above, for tests that need their own variants."""
    return SimpleNamespace(
        celeba=build_celeba,
        ffhq=build_ffhq,
        imagefolder=build_imagefolder,
        image=write_image,
        assert_color=assert_color,
        colors=COLORS,
        border=BORDER,
    )
