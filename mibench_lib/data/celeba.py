"""CelebA in its official on-disk layout, split into private and public identities (GMI protocol).

Liu et al., "Deep Learning Face Attributes in the Wild", ICCV 2015 (the dataset); the split follows
Zhang et al., "The Secret Revealer", CVPR 2020, and its successors (KEDMI, PLG-MI, LOMMA): the
target is trained on the 1,000 identities with the most images, and the attacker's GAN on images of
other identities. Aligned 178x218 images are centre-cropped to 108x108 (offsets 35, 55), then
resized (64x64 by default).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from mibench_lib.data._types import DatasetNotFoundError, ImageSet, MISplit
from mibench_lib.data.ffhq import ffhq, ffhq_files
from mibench_lib.data.imagefolder import file_identity, read_images
from mibench_lib.data.splits import (
    check_disjoint,
    check_fraction,
    check_splittable,
    identity_split,
    rank_identities,
)
from mibench_lib.data.transforms import fixed_center_box

#: Size (width, height) of every image in img_align_celeba/.
ALIGNED_SIZE = (178, 218)
#: Side of the centred square crop applied before resizing.
CROP_SIZE = 108

_HOW_TO_GET = "download them from the official CelebA page and unpack them there"
_REPAIR = (
    "re-extract it from img_align_celeba.zip (the official CelebA download); deleting it is not "
    "enough, because identity_CelebA.txt lists every image"
)
_PARTITION_NAMES = {0: "train", 1: "val", 2: "test"}


def _layout(root: Path) -> str:
    return (
        f"CelebA expects {root / 'img_align_celeba'}/ with the aligned JPEGs (000001.jpg ...), "
        f"{root / 'identity_CelebA.txt'} (lines '000001.jpg 2880') and "
        f"{root / 'list_eval_partition.txt'} (lines '000001.jpg 0'); {_HOW_TO_GET}"
    )


def read_annotation(path: Path, *, example: str, allowed: set[int] | None = None) -> dict[str, int]:
    """Parse a CelebA annotation file of ``<image> <integer>`` lines into {image: integer}.

    Blank lines are skipped; anything else that is not exactly a file name and an integer (in
    ``allowed`` when given) raises, naming the file, the line number and the line.

    Args:
        path: The annotation file.
        example: A correct line, quoted in error messages.
        allowed: Permitted values (e.g. {0, 1, 2} for the partition file); any integer when None.

    Returns:
        Image file name -> integer value, in file order.

    Raises:
        ValueError: A malformed line, a value outside ``allowed`` or an image listed twice.
    """
    out: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            value = parts[1] if len(parts) == 2 else ""
            if len(parts) != 2 or not value.lstrip("-").isdigit():
                raise ValueError(
                    f"{path}, line {lineno}: expected '<image> <integer>' like '{example}', "
                    f"got {line.rstrip()!r}"
                )
            if allowed is not None and int(value) not in allowed:
                raise ValueError(
                    f"{path}, line {lineno}: value must be one of {sorted(allowed)}, "
                    f"got {line.rstrip()!r}"
                )
            if parts[0] in out:
                raise ValueError(f"{path}, line {lineno}: image {parts[0]} is listed twice")
            out[parts[0]] = int(value)
    if not out:
        raise ValueError(f"{path} is empty; expected lines like '{example}'")
    return out


def celeba(
    root: str | os.PathLike[str],
    *,
    resolution: int = 64,
    num_private: int = 1000,
    num_public: int | None = None,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    public_root: str | os.PathLike[str] | None = None,
    max_images_per_identity: int | None = None,
) -> MISplit:
    """Load CelebA as an MI split: the most frequent identities private, disjoint identities public.

    Private identities are the ``num_private`` identities with the most images (ties broken by the
    smaller identity id), relabelled 0..K-1 in that order; each one's images are split into
    private_train/private_test by a seeded per-identity draw. Public images are those of all other
    identities, or of the next ``num_public`` most frequent ones, with labels -1; or, when
    ``public_root`` is given, the FFHQ images found there (see :func:`~mibench_lib.data.ffhq.ffhq`).
    The evaluator uses the private split (standard protocol), ``private_to_evaluator = arange(K)``.

    ``list_eval_partition.txt`` is read and validated (one 0/1/2 entry per annotated image) but not
    used for the split: MI needs every private identity on both sides of its train/test split,
    which the official partition does not provide. ``info["eval_partition"]`` records this and
    how the private images fall in the official parts.

    Preprocessing: RGB, centre crop 108x108 of the 178x218 aligned image, bilinear resize to
    ``resolution``; stored as uint8.

    Args:
        root: Folder with ``img_align_celeba/``, ``identity_CelebA.txt`` and
            ``list_eval_partition.txt``.
        resolution: Output side length; images are (3, resolution, resolution).
        num_private: Number of private identities K (1,000 in GMI/KEDMI/PLG-MI).
        num_public: Number of public identities (the next most frequent); all others when None.
            Must be None when ``public_root`` is given.
        test_fraction: Per-identity fraction of private images held out as private_test, in (0, 1).
        split_seed: Seed of the private train/test split.
        public_root: Folder of FFHQ images to use as public data instead of CelebA identities.
        max_images_per_identity: Keep at most this many images of each private identity (the
            first ones by file name); all when None.

    Returns:
        :class:`MISplit` named ``"celeba"``.

    Raises:
        DatasetNotFoundError: ``root``, the image folder, an annotation file or an image is missing.
        CorruptImageError: Image files that cannot be decoded (truncated, ...); all are named.
        ValueError: A malformed annotation line, an image without a partition entry, too few
            identities for ``num_private``/``num_public``, a private identity with fewer than 2
            images, a bad argument, private and public data that would overlap, or an annotated
            image that is a link to another one.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"CelebA root {root} does not exist. {_layout(root)}")
    img_dir = root / "img_align_celeba"
    for p in (img_dir, root / "identity_CelebA.txt", root / "list_eval_partition.txt"):
        if not p.exists():
            raise DatasetNotFoundError(f"missing {p}. {_layout(root)}")
    if resolution <= 0:
        raise ValueError(f"resolution must be a positive integer, got {resolution}")
    if num_private <= 0:
        raise ValueError(f"num_private must be a positive integer, got {num_private}")
    if num_public is not None and num_public <= 0:
        raise ValueError(f"num_public must be a positive integer or None, got {num_public}")
    if num_public is not None and public_root is not None:
        raise ValueError(
            f"num_public={num_public} counts CelebA identities, but public_root={public_root} "
            "replaces them by FFHQ; pass only one of them"
        )
    if max_images_per_identity is not None and max_images_per_identity <= 0:
        raise ValueError(
            "max_images_per_identity must be a positive integer or None, "
            f"got {max_images_per_identity}"
        )
    check_fraction("test_fraction", test_fraction)

    identity = read_annotation(root / "identity_CelebA.txt", example="000001.jpg 2880")
    partition = read_annotation(
        root / "list_eval_partition.txt", example="000001.jpg 0", allowed=set(_PARTITION_NAMES)
    )
    unpartitioned = [f for f in identity if f not in partition]
    if unpartitioned:
        raise ValueError(
            f"{len(unpartitioned)} image(s) of identity_CelebA.txt have no line in "
            f"{root / 'list_eval_partition.txt'}, first: {unpartitioned[:3]}; the two files "
            "must come from the same CelebA release"
        )

    files_of: dict[int, list[str]] = {}
    for fname in sorted(identity):
        files_of.setdefault(identity[fname], []).append(fname)
    ranked = rank_identities({i: len(f) for i, f in files_of.items()})
    if num_private > len(ranked):
        raise ValueError(
            f"num_private={num_private} but {root / 'identity_CelebA.txt'} lists only "
            f"{len(ranked)} identities"
        )
    private_ids = ranked[:num_private]
    if public_root is None:
        rest = ranked[num_private:]
        if num_public is not None and num_public > len(rest):
            raise ValueError(
                f"num_public={num_public} but only {len(rest)} identities remain after the "
                f"{num_private} private ones ({len(ranked)} in all)"
            )
        public_ids = rest if num_public is None else rest[:num_public]
        if not public_ids:
            raise ValueError(
                f"num_private={num_private} uses all {len(ranked)} identities, leaving no public "
                "data; lower num_private or pass public_root"
            )
        check_disjoint(private_ids, public_ids, what="identities")
    private_files = [files_of[i][:max_images_per_identity] for i in private_ids]
    check_splittable(
        {i: len(f) for i, f in zip(private_ids, private_files)},
        test_fraction=test_fraction,
        what="identity",
    )

    on_disk = set(os.listdir(img_dir))
    selected = [f for fs in private_files for f in fs]
    if public_root is None:
        public_files = [f for i in public_ids for f in files_of[i]]
        check_disjoint(selected, public_files, what="image files")
        selected += public_files
    missing = [f for f in selected if f not in on_disk]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} annotated image(s) are missing from {img_dir}, first: {missing[:3]}; "
            f"unpack the complete img_align_celeba.zip there"
        )
    first_name: dict[tuple[Any, ...], str] = {}
    aliases = []
    for f in selected:  # symlinked or hard-linked copies would put one image in two places
        name = first_name.setdefault(file_identity(img_dir / f), f)
        if name != f:
            aliases.append(f"{min(f, name)} and {max(f, name)} are one file")
    if aliases:
        raise ValueError(
            f"{len(aliases)} annotated image(s) in {img_dir} are links to another annotated "
            f"image, first: {'; '.join(aliases[:3])}; one image would be used twice (possibly in "
            "both training and test data). Re-extract img_align_celeba.zip"
        )

    crop = fixed_center_box(CROP_SIZE, CROP_SIZE, expect=ALIGNED_SIZE)
    data = read_images(
        [img_dir / f for fs in private_files for f in fs],
        resolution=resolution,
        crop=crop,
        desc="CelebA private",
        repair=_REPAIR,
    )
    labels = torch.cat(
        [torch.full((len(fs),), k, dtype=torch.int64) for k, fs in enumerate(private_files)]
    )
    info: dict[str, Any] = {
        "root": str(root),
        "resolution": resolution,
        "preprocessing": f"RGB; centre crop {CROP_SIZE}x{CROP_SIZE} of the {ALIGNED_SIZE[0]}x"
        f"{ALIGNED_SIZE[1]} aligned image (left 35, top 55); bilinear resize to "
        f"{resolution}; uint8",
        "num_private": num_private,
        "private_identities": list(private_ids),
        "private_selection": "identities with the most images, ties by smaller id",
        "max_images_per_identity": max_images_per_identity,
        "eval_partition": {
            "used": False,
            "why": "read and validated only; the MI protocol needs every private identity in "
            "both private_train and private_test, so each identity's images are split by "
            "split_seed instead",
            "private_images_by_partition": {
                _PARTITION_NAMES[k]: n
                for k, n in sorted(
                    Counter(partition[f] for fs in private_files for f in fs).items()
                )
            },
        },
    }
    public_labels = None
    if public_root is None:
        # each public image's identity (0..P-1): public knowledge of the public data, for attacks
        # whose threat model includes a labelled public set (C2FMI's embedding network)
        public_labels = torch.tensor(
            [j for j, i in enumerate(public_ids) for _ in files_of[i]], dtype=torch.int64
        )
        public = ImageSet(
            read_images(
                [img_dir / f for f in public_files],
                resolution=resolution,
                crop=crop,
                desc="CelebA public",
                repair=_REPAIR,
            ),
            torch.full((len(public_files),), -1, dtype=torch.int64),
        )
        info["public_source"] = (
            f"CelebA: {len(public_ids)} identities disjoint from the private ones "
            f"({'all others' if num_public is None else 'the next most frequent'})"
        )
        info["num_public_identities"] = len(public_ids)
    else:
        private_paths = [img_dir / f for fs in private_files for f in fs]
        public_paths = ffhq_files(public_root)
        # Compare files by identity (symlinks, hard links), shown by real path.
        shown = {file_identity(p): p.resolve() for p in [*public_paths, *private_paths]}
        check_disjoint(
            {shown[file_identity(p)] for p in private_paths},
            {shown[file_identity(p)] for p in public_paths},
            what="image files",
        )
        public = ffhq(public_root, resolution=resolution)
        info["public_source"] = f"FFHQ folder {public_root} ({len(public)} images)"
    return identity_split(
        "celeba",
        ImageSet(data, labels),
        public,
        class_names=[str(i) for i in private_ids],
        test_fraction=test_fraction,
        split_seed=split_seed,
        info=info,
        public_labels=public_labels,
    )
