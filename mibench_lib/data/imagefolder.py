"""Identity-labelled image folders (one sub-folder per identity) and FaceScrub as MI splits.

FaceScrub: Ng and Winkler, "A data-driven approach to cleaning large face datasets", ICIP 2014.
Its cropped faces ship as ``actors/faces/<Name>/*.jpg`` and ``actresses/faces/<Name>/*.jpg``;
PPA and later attacks train the target on its identities and take public data from elsewhere
(FFHQ). Face crops in these folders are already tight, so the only crop applied is the largest
centred square (no distortion), followed by a bilinear resize.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mibench_lib.data._types import DatasetNotFoundError, ImageSet, MISplit
from mibench_lib.data.splits import (
    check_disjoint,
    check_fraction,
    check_splittable,
    identity_split,
    rank_identities,
)
from mibench_lib.data.transforms import (
    IMAGE_SUFFIXES,
    list_image_files,
    load_images,
    square_center_box,
)

_PREPROCESSING = "{mode}; largest centred square crop; bilinear resize to {r}; uint8"


def scan_imagefolder(root: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """Map each identity sub-folder of ``root`` to its image files (searched recursively, sorted).

    Hidden entries (names starting with ".") and loose files directly in ``root`` are ignored, as
    in torchvision's ``ImageFolder``.

    Args:
        root: Folder laid out as ``root/<identity>/<image files>``.

    Returns:
        Identity name -> sorted image paths, identities in name order.

    Raises:
        DatasetNotFoundError: ``root`` is missing or has no identity sub-folders.
        ValueError: An identity sub-folder holds no image files.
    """
    root = Path(root)
    layout = f"expected {root}/<identity>/<image files> (one sub-folder per identity)"
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist; {layout}")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DatasetNotFoundError(f"{root} has no identity sub-folders; {layout}")
    identities = {}
    for sub in subdirs:
        files = list_image_files(sub)
        if not files:
            raise ValueError(
                f"identity folder {sub} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                "add its images or remove the folder"
            )
        identities[sub.name] = files
    return identities


def split_identity_folders(
    name: str,
    identities: dict[str, list[Path]],
    *,
    resolution: int,
    num_private: int | None,
    test_fraction: float,
    split_seed: int,
    public_root: str | os.PathLike[str] | None,
    channels: int,
    info: dict[str, Any],
) -> MISplit:
    """Shared core of :func:`imagefolder` and :func:`facescrub` (arguments as documented there).

    Args:
        name: Dataset key of the split.
        identities: Identity name -> image files (from :func:`scan_imagefolder`).
        resolution: Output side length.
        num_private: Private identities (largest first, ties by name); all when None.
        test_fraction: Per-identity private test fraction.
        split_seed: Seed of the private split.
        public_root: Public image folder replacing the remaining identities.
        channels: 3 (RGB) or 1 (grey).
        info: Provenance to extend.

    Returns:
        The :class:`MISplit`.
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be a positive integer, got {resolution}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if num_private is not None and num_private <= 0:
        raise ValueError(f"num_private must be a positive integer or None, got {num_private}")
    check_fraction("test_fraction", test_fraction)
    ranked = rank_identities({k: len(v) for k, v in identities.items()})
    if num_private is not None and num_private > len(ranked):
        raise ValueError(f"num_private={num_private} but {name} has only {len(ranked)} identities")
    private_ids = ranked[:num_private]
    check_splittable(
        {i: len(identities[i]) for i in private_ids}, test_fraction=test_fraction, what="identity"
    )
    if public_root is None:
        public_ids = ranked[len(private_ids) :]
        if not public_ids:
            raise ValueError(
                f"num_private={num_private} makes all {len(ranked)} identities private, leaving no "
                "public data; pass public_root (e.g. an FFHQ folder) or a smaller num_private"
            )
        check_disjoint(private_ids, public_ids, what="identities")
        public_files = [f for i in public_ids for f in identities[i]]
        info["public_source"] = f"{len(public_ids)} remaining identities of {name}"
        info["num_public_identities"] = len(public_ids)
    else:
        public_files = list_image_files(public_root)
        if not public_files:
            raise DatasetNotFoundError(
                f"public_root {public_root} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                "put the public images there (flat or one sub-folder per identity)"
            )
        info["public_source"] = f"folder {public_root} ({len(public_files)} images)"
        info["unused_identities"] = len(ranked) - len(private_ids)
    private_files = [f for i in private_ids for f in identities[i]]
    check_disjoint(
        {p.resolve() for p in private_files},
        {p.resolve() for p in public_files},
        what="image files",
    )

    crop = square_center_box(1.0)
    load: dict[str, Any] = {"resolution": resolution, "crop": crop, "channels": channels}
    private = ImageSet(
        load_images(private_files, desc=f"{name} private", **load),
        torch.cat(
            [
                torch.full((len(identities[i]),), k, dtype=torch.int64)
                for k, i in enumerate(private_ids)
            ]
        ),
    )
    public = ImageSet(
        load_images(public_files, desc=f"{name} public", **load),
        torch.full((len(public_files),), -1, dtype=torch.int64),
    )
    info.update(
        resolution=resolution,
        channels=channels,
        preprocessing=_PREPROCESSING.format(
            mode="RGB" if channels == 3 else "grey (L)", r=resolution
        ),
        num_private=len(private_ids),
        private_identities=list(private_ids),
        private_selection="identities with the most images, ties by name",
    )
    return identity_split(
        name,
        private,
        public,
        class_names=list(private_ids),
        test_fraction=test_fraction,
        split_seed=split_seed,
        info=info,
    )


def imagefolder(
    root: str | os.PathLike[str],
    *,
    resolution: int = 64,
    num_private: int | None = None,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    public_root: str | os.PathLike[str] | None = None,
    channels: int = 3,
) -> MISplit:
    """Load any ImageFolder layout (``root/<identity>/<images>``) as an MI split.

    Private identities are the ``num_private`` with the most images (ties by name; all when None),
    relabelled 0..K-1 in that order and split per identity by a seeded draw. Public data (labels
    -1) are the remaining identities, or every image under ``public_root`` (a flat folder or an
    ImageFolder, loaded with the same preprocessing) when given; the remaining identities are then
    unused. Private and public image files must not overlap. The evaluator uses the private split.

    Preprocessing: RGB (or grey with ``channels=1``), largest centred square crop, bilinear resize
    to ``resolution``; stored as uint8.

    Args:
        root: ImageFolder root.
        resolution: Output side length.
        num_private: Number of private identities; all when None (then ``public_root`` is needed).
        test_fraction: Per-identity fraction of private images held out, in (0, 1).
        split_seed: Seed of the private train/test split.
        public_root: Folder of public images replacing the remaining identities.
        channels: 3 (RGB) or 1 (grey).

    Returns:
        :class:`MISplit` named ``"imagefolder"``, ``private_to_evaluator = arange(K)``.

    Raises:
        DatasetNotFoundError: ``root`` or ``public_root`` missing, or no identity sub-folders.
        ValueError: Too few identities, an identity with fewer than 2 images, no public data,
            overlapping private and public files, or a bad argument.
    """
    return split_identity_folders(
        "imagefolder",
        scan_imagefolder(root),
        resolution=resolution,
        num_private=num_private,
        test_fraction=test_fraction,
        split_seed=split_seed,
        public_root=public_root,
        channels=channels,
        info={"root": str(root), "layout": "ImageFolder"},
    )


def facescrub(
    root: str | os.PathLike[str],
    *,
    resolution: int = 64,
    num_private: int | None = None,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    public_root: str | os.PathLike[str] | None = None,
    channels: int = 3,
) -> MISplit:
    """Load FaceScrub's cropped faces as an MI split (same protocol as :func:`imagefolder`).

    Accepted layouts: the official ``root/actors/faces/<Name>/*.jpg`` and
    ``root/actresses/faces/<Name>/*.jpg`` (either or both; ``info["layout"]`` records which), or the
    flattened ``root/<Name>/*`` ImageFolder form. With all identities private (PPA's setting, the
    default), pass ``public_root`` (e.g. FFHQ) for the attacker's data.

    Args:
        root: FaceScrub root.
        resolution: Output side length.
        num_private: Number of private identities; all when None.
        test_fraction: Per-identity fraction of private images held out, in (0, 1).
        split_seed: Seed of the private train/test split.
        public_root: Folder of public images replacing the remaining identities.
        channels: 3 (RGB) or 1 (grey).

    Returns:
        :class:`MISplit` named ``"facescrub"``.

    Raises:
        DatasetNotFoundError: ``root`` missing, or neither layout found.
        ValueError: A name in both actors and actresses, or as in :func:`imagefolder`.
    """
    root = Path(root)
    layout = (
        f"FaceScrub expects {root}/actors/faces/<Name>/*.jpg and "
        f"{root}/actresses/faces/<Name>/*.jpg "
        f"(the official cropped faces) or the flattened {root}/<Name>/*.jpg"
    )
    if not root.is_dir():
        raise DatasetNotFoundError(f"FaceScrub root {root} does not exist; {layout}")
    parts = [root / g / "faces" for g in ("actors", "actresses")]
    if any(p.is_dir() for p in parts):
        identities: dict[str, list[Path]] = {}
        for part in (p for p in parts if p.is_dir()):
            for who, files in scan_imagefolder(part).items():
                if who in identities:
                    raise ValueError(f"identity {who!r} appears under both actors and actresses")
                identities[who] = files
        found = [str(p.relative_to(root)) for p in parts if p.is_dir()]
        info: dict[str, Any] = {"root": str(root), "layout": f"official ({', '.join(found)})"}
    elif any((root / g).is_dir() for g in ("actors", "actresses")):
        raise DatasetNotFoundError(
            f"found actors/ or actresses/ in {root} without faces/ inside; {layout}"
        )
    else:
        identities = scan_imagefolder(root)
        info = {"root": str(root), "layout": "flattened ImageFolder"}
    return split_identity_folders(
        "facescrub",
        identities,
        resolution=resolution,
        num_private=num_private,
        test_fraction=test_fraction,
        split_seed=split_seed,
        public_root=public_root,
        channels=channels,
        info=info,
    )
