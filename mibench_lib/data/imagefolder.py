"""Identity-labelled image folders (one sub-folder per identity) and FaceScrub as MI splits.

FaceScrub: Ng and Winkler, "A data-driven approach to cleaning large face datasets", ICIP 2014.
Its cropped faces ship as ``actors/faces/<Name>/*.jpg`` and ``actresses/faces/<Name>/*.jpg``;
PPA and later attacks train the target on its identities and take public data from elsewhere
(FFHQ). Face crops in these folders are already tight, so the only crop applied is the largest
centred square (no distortion), followed by a bilinear resize.

Folders are listed by :func:`find_image_files`: symlinked directories are followed, but a
directory is entered once however many links lead to it (a symlink loop cannot repeat images), and
a file reached by several paths (symlinks, hard links) is listed once. A file in two identities is
an error, so no image can land in both the training and the test split. Images are decoded by
:func:`read_images`, which names every file it cannot decode and says how to repair it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mibench_lib.data._types import CorruptImageError, DatasetNotFoundError, ImageSet, MISplit
from mibench_lib.data.splits import (
    check_disjoint,
    check_fraction,
    check_splittable,
    identity_split,
    rank_identities,
)
from mibench_lib.data.transforms import (
    IMAGE_SUFFIXES,
    CropBox,
    load_image,
    square_center_box,
)
from mibench_lib.progress import tqdm

_PREPROCESSING = "{mode}; largest centred square crop; bilinear resize to {r}; uint8"

#: How to repair an undecodable file in a folder-listed dataset (the listing is the index).
FOLDER_REPAIR = (
    "re-extract it from the dataset's archive (or download it again), or delete it: "
    "images are found by listing the folder, so a deleted file is simply left out"
)


def file_identity(path: str | os.PathLike[str]) -> tuple[Any, ...]:
    """What makes two paths the same file: (device, inode), or the real path where that is unknown.

    Symlinks are followed, so a link and its target, and two hard links, share one identity.
    """
    try:
        st = os.stat(path)
    except OSError:
        # A broken or looping symlink: it has no target to compare. Listing keeps it, and loading
        # then reports it as a missing file (see read_images).
        return ("unresolved", os.path.realpath(path))
    if st.st_ino == 0:  # file systems without inode numbers
        return ("path", os.path.realpath(path))
    return (st.st_dev, st.st_ino)


def find_image_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every image file under ``root``, each file once, sorted by relative path.

    Recursive, hidden entries skipped, suffixes in
    :data:`~mibench_lib.data.transforms.IMAGE_SUFFIXES`, sorted by relative POSIX path so seeded
    splits do not depend on the file system; and safe with symlinks: symlinked
    directories are followed, yet a directory already visited (same device and inode: a symlink
    loop, or two links to one folder) is not entered again, and a file reached by several paths
    (symlinks or hard links) is kept once, under its first path in sorted order. Skipped duplicates
    are reported by a ``RuntimeWarning``.

    Args:
        root: A directory.

    Returns:
        Distinct image files.

    Raises:
        DatasetNotFoundError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist or is not a directory")
    found: list[Path] = []
    visited: set[tuple[Any, ...]] = set()
    revisits: list[str] = []
    # Top-down with sorted sub-folders: which of several links to a folder is entered is fixed.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        ident = file_identity(dirpath)
        if ident in visited:
            dirnames[:] = []  # already listed through another path: do not list or enter it again
            revisits.append(dirpath)
            continue
        visited.add(ident)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath, f)
            for f in filenames
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES
        ]
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    unique: dict[tuple[Any, ...], Path] = {}
    for p in found:
        unique.setdefault(file_identity(p), p)
    if revisits or len(unique) < len(found):
        warnings.warn(
            f"{root}: skipped {len(revisits)} folder(s) already listed through another path "
            f"(symlink loop or duplicate link; first: {revisits[0] if revisits else '-'}) and "
            f"{len(found) - len(unique)} duplicate path(s) of the same files; each image is used "
            "once. Remove the extra symlinks to silence this warning",
            RuntimeWarning,
            stacklevel=2,
        )
    return list(unique.values())


def read_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    resolution: int,
    crop: CropBox,
    channels: int = 3,
    desc: str = "loading images",
    repair: str = FOLDER_REPAIR,
    workers: int | None = None,
) -> Tensor:
    """Read, crop and resize image files into one (N, C, r, r) uint8 tensor, in ``paths`` order.

    Decoding runs in a small thread pool (PIL releases the GIL), output in input order whatever
    the number of threads. A file PIL cannot decode (truncated, half-extracted, not an image)
    raises :class:`~mibench_lib.data._types.CorruptImageError` naming it, after the other files
    were tried, so one run lists every bad file, not just the first.

    Args:
        paths: Image files.
        resolution: Output side length (> 0).
        crop: Crop rule applied before the resize.
        channels: 3 for RGB or 1 for grey.
        desc: Label of the progress bar.
        repair: What the user should do about an undecodable file (ends the error message).
        workers: Decoding threads; default ``min(8, os.cpu_count())``.

    Returns:
        (len(paths), channels, resolution, resolution) uint8 tensor.

    Raises:
        ValueError: Bad ``resolution`` or ``channels``, or a crop rule rejected an image.
        DatasetNotFoundError: A file in ``paths`` does not exist.
        CorruptImageError: Files that exist but cannot be decoded (all listed, with PIL's reason).
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be a positive integer, got {resolution}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    paths = [Path(p) for p in paths]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} image file(s) are missing, first: {', '.join(map(str, missing[:3]))}"
        )
    out = torch.empty((len(paths), channels, resolution, resolution), dtype=torch.uint8)

    def read(p: Path) -> np.ndarray | Exception:
        try:
            return load_image(p, resolution=resolution, crop=crop, channels=channels)
        except FileNotFoundError:
            raise  # removed while loading: PIL's message names the file
        except (OSError, SyntaxError, EOFError) as err:  # PIL's ways of saying "cannot decode"
            return err  # collected below and raised with every other bad file

    bad: list[tuple[Path, Exception]] = []
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(read, paths)
        for i, arr in enumerate(tqdm(results, total=len(paths), desc=desc, leave=False)):
            if isinstance(arr, Exception):
                bad.append((paths[i], arr))
            else:
                out[i] = torch.from_numpy(arr)
    if bad:
        listed = "; ".join(f"{p} ({type(e).__name__}: {e})" for p, e in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        which = "this file" if len(bad) == 1 else "each of these files"
        raise CorruptImageError(
            f"cannot decode {len(bad)} image file(s), truncated or corrupt: {listed}{more}. "
            f"To fix {which}: {repair}",
            [p for p, _ in bad],
        ) from bad[0][1]
    return out


def scan_imagefolder(root: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """Map each identity sub-folder of ``root`` to its image files (searched recursively, sorted).

    Hidden entries (names starting with ".") and loose files directly in ``root`` are ignored, as
    in torchvision's ``ImageFolder``. Each identity's files are listed by :func:`find_image_files`
    (symlink loops entered once, each file once).

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
        files = find_image_files(sub)
        if not files:
            raise ValueError(
                f"identity folder {sub} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                "add its images or remove the folder"
            )
        identities[sub.name] = files
    return identities


def _one_identity_per_file(identities: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """``identities`` with each identity's files deduplicated; a file in two identities raises.

    Two paths are the same file when :func:`file_identity` says so (symlinks, hard links). Within
    an identity the first path is kept. A file under two identities would carry two labels and
    could be in one identity's training split and the other's test split, so it is an error.
    """
    owner: dict[tuple[Any, ...], tuple[str, Path]] = {}
    clashes: list[str] = []
    out: dict[str, list[Path]] = {}
    for who, files in identities.items():
        kept = []
        for f in files:
            ident = file_identity(f)
            if ident not in owner:
                owner[ident] = (who, f)
                kept.append(f)
            elif owner[ident][0] != who:
                clashes.append(f"{f} ({who}) is {owner[ident][1]} ({owner[ident][0]})")
        out[who] = kept
    if clashes:
        raise ValueError(
            f"{len(clashes)} image file(s) belong to two identities (through symlinks or hard "
            f"links), first: {'; '.join(clashes[:3])}. Remove the links so that each image lies "
            "under one identity folder only"
        )
    return out


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
        identities: Identity name -> image files (from :func:`scan_imagefolder`); a file
            listed twice in one identity is used once, a file in two identities raises.
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
    identities = _one_identity_per_file(identities)
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
        public_files = find_image_files(public_root)
        if not public_files:
            raise DatasetNotFoundError(
                f"public_root {public_root} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                "put the public images there (flat or one sub-folder per identity)"
            )
        info["public_source"] = f"folder {public_root} ({len(public_files)} images)"
        info["unused_identities"] = len(ranked) - len(private_ids)
    private_files = [f for i in private_ids for f in identities[i]]
    # Compare files by identity (symlinks and hard links are the same file), shown by real path.
    shown = {file_identity(p): p.resolve() for p in [*public_files, *private_files]}
    check_disjoint(
        {shown[file_identity(p)] for p in private_files},
        {shown[file_identity(p)] for p in public_files},
        what="image files",
    )

    crop = square_center_box(1.0)
    load: dict[str, Any] = {"resolution": resolution, "crop": crop, "channels": channels}
    private = ImageSet(
        read_images(private_files, desc=f"{name} private", **load),
        torch.cat(
            [
                torch.full((len(identities[i]),), k, dtype=torch.int64)
                for k, i in enumerate(private_ids)
            ]
        ),
    )
    public = ImageSet(
        read_images(public_files, desc=f"{name} public", **load),
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
        CorruptImageError: Image files that cannot be decoded (truncated, ...); all are named.
        ValueError: Too few identities, an identity with fewer than 2 images, no public data,
            overlapping private and public files, a file in two identities (through symlinks or
            hard links), or a bad argument.
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
        CorruptImageError: Image files that cannot be decoded (truncated, ...); all are named.
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
