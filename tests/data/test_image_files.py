"""Damaged and linked image files: every loader names a file it cannot decode and says what to do;
folder listings survive symlink loops and never use one image twice (so never in train and test).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mibench_lib.data import celeba, facescrub, ffhq, imagefolder
from mibench_lib.data._types import CorruptImageError
from mibench_lib.data.ffhq import ffhq_files
from mibench_lib.data.imagefolder import find_image_files, read_images
from mibench_lib.data.transforms import square_center_box


def _distinct(path: Path, k: int, *, size: int = 12) -> None:
    """A noisy image, different for every k (so images can be told apart after loading)."""
    rng = np.random.default_rng(k)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(arr).save(path, quality=95)
    else:
        Image.fromarray(arr).save(path)


def _truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def _keys(images: torch.Tensor) -> list[bytes]:
    return [x.numpy().tobytes() for x in images]


def _symlink(link: Path, target: str | Path) -> None:
    try:
        os.symlink(target, link, target_is_directory=True)
    except (OSError, NotImplementedError) as err:  # e.g. Windows without the privilege
        pytest.skip(f"cannot create symlinks here: {err}")


# -- truncated and corrupt images -----------------------------------------------------------------
DAMAGE = {
    "truncated JPEG (half)": lambda p: _truncate(p, 0.5),
    "truncated JPEG (header only)": lambda p: _truncate(p, 0.04),
    "truncated JPEG (last bytes)": lambda p: p.write_bytes(p.read_bytes()[:-2]),
    "empty file": lambda p: p.write_bytes(b""),
    "not an image": lambda p: p.write_text("<html>404 Not Found</html>"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_read_images_names_the_bad_file(tmp_path, damage):
    paths = [tmp_path / f"{k}.jpg" for k in range(4)]
    for k, p in enumerate(paths):
        _distinct(p, k, size=40)
    DAMAGE[damage](paths[2])
    with pytest.raises(CorruptImageError) as info:
        read_images(paths, resolution=8, crop=square_center_box())
    msg = str(info.value)
    assert str(paths[2]) in msg and "re-extract" in msg and "delete" in msg
    assert info.value.paths == [paths[2]]
    assert isinstance(info.value, OSError)  # callers catching PIL's OSError keep working
    assert info.value.__cause__ is not None  # PIL's own error is chained


def test_every_bad_file_is_named_in_one_error(tmp_path):
    paths = [tmp_path / "ok" / f"{k}.jpg" for k in range(3)] + [
        tmp_path / "bad" / f"{k}.jpg" for k in range(3)
    ]
    for k, p in enumerate(paths):
        _distinct(p, k, size=40)
    for p, damage in zip(paths[3:], ("truncated JPEG (half)", "empty file", "not an image")):
        DAMAGE[damage](p)
    with pytest.raises(CorruptImageError, match=r"cannot decode 3 image file\(s\)") as info:
        read_images(paths, resolution=8, crop=square_center_box(), workers=2)
    assert info.value.paths == paths[3:]
    assert all(str(p) in str(info.value) for p in paths[3:])


def test_truncated_png_is_named(tmp_path):
    paths = [tmp_path / f"{k}.png" for k in range(2)]
    for k, p in enumerate(paths):
        _distinct(p, k, size=40)
    _truncate(paths[0], 0.6)
    with pytest.raises(CorruptImageError, match=re.escape(str(paths[0]))):
        read_images(paths, resolution=8, crop=square_center_box())


def test_imagefolder_names_the_truncated_jpeg(tmp_path):
    root = tmp_path / "pets"
    for i, who in enumerate(("cat", "dog", "emu")):
        for j in range(3):
            _distinct(root / who / f"{j}.jpg", 10 * i + j, size=40)
    bad = root / "dog" / "1.jpg"
    _truncate(bad)
    with pytest.raises(CorruptImageError, match=re.escape(str(bad))) as info:
        imagefolder(root, resolution=8, num_private=2)
    assert "re-extract" in str(info.value) and "delete it" in str(info.value)
    bad.unlink()  # what the message suggests: then the identity has 2 images and loads
    assert len(imagefolder(root, resolution=8, num_private=2).private_train) > 0


def test_imagefolder_names_a_bad_public_file(tmp_path):
    root, pub = tmp_path / "pets", tmp_path / "public"
    for i, who in enumerate(("cat", "dog")):
        for j in range(2):
            _distinct(root / who / f"{j}.jpg", 10 * i + j)
    for j in range(3):
        _distinct(pub / f"{j}.jpg", 100 + j, size=40)
    _truncate(pub / "2.jpg")
    with pytest.raises(CorruptImageError, match=re.escape(str(pub / "2.jpg"))):
        imagefolder(root, resolution=8, public_root=pub)


def test_facescrub_names_the_truncated_jpeg(tmp_path):
    root = tmp_path / "facescrub"
    for who in ("Aaron_Eckhart", "Adam_Brody"):
        for j in range(3):
            _distinct(root / "actors" / "faces" / who / f"{who}_{j}.jpeg", len(who) + j, size=40)
    bad = root / "actors" / "faces" / "Adam_Brody" / "Adam_Brody_2.jpeg"
    _truncate(bad)
    with pytest.raises(CorruptImageError, match=re.escape(str(bad))):
        facescrub(root, resolution=8, num_private=1)


def test_ffhq_names_the_truncated_file(ffhq_root):
    root, _ = ffhq_root
    bad = root / "01000" / "00004.png"
    _truncate(bad, 0.3)
    with pytest.raises(CorruptImageError, match=re.escape(str(bad))) as info:
        ffhq(root, resolution=8)
    assert "delete it" in str(info.value)


def test_celeba_names_the_truncated_jpeg(celeba_root):
    root, _ = celeba_root
    bad = root / "img_align_celeba" / "000003.jpg"
    _truncate(bad)
    with pytest.raises(CorruptImageError, match=re.escape(str(bad))) as info:
        celeba(root, resolution=8, num_private=2)
    assert "img_align_celeba.zip" in str(info.value)


def test_celeba_names_a_truncated_public_image(celeba_root):
    root, _ = celeba_root
    # 000006.jpg is the first image of identity 999 (2 images): public when num_private=4
    bad = root / "img_align_celeba" / "000006.jpg"
    _truncate(bad)
    with pytest.raises(CorruptImageError, match=re.escape(str(bad))):
        celeba(root, resolution=8, num_private=4)


# -- symlinks -------------------------------------------------------------------------------------
@pytest.fixture
def looped(tmp_path) -> Path:
    """root/a: 6 distinct images plus a/loop -> a (a symlink loop); root/b: 3 images."""
    root = tmp_path / "ids"
    for j in range(6):
        _distinct(root / "a" / f"{j}.png", j)
    for j in range(3):
        _distinct(root / "b" / f"{j}.png", 100 + j)
    _symlink(root / "a" / "loop", ".")
    return root


def test_symlink_loop_lists_each_image_once(looped):
    with pytest.warns(RuntimeWarning, match="symlink loop"):
        files = find_image_files(looped / "a")
    assert [p.name for p in files] == [f"{j}.png" for j in range(6)]
    assert all(p.parent == looped / "a" for p in files)  # the shortest path, not loop/loop/...


def test_symlink_loop_does_not_leak_test_images_into_training(looped):
    with pytest.warns(RuntimeWarning, match="symlink loop"):
        s = imagefolder(looped, resolution=6, num_private=1, test_fraction=0.34)
    train, test = _keys(s.private_train.images), _keys(s.private_test.images)
    assert len(train) + len(test) == 6
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)
    assert len(s.public) == 3


def test_loop_to_the_root_puts_files_in_two_identities(tmp_path):
    root = tmp_path / "ids"
    for i, who in enumerate(("a", "b")):
        for j in range(3):
            _distinct(root / who / f"{j}.png", 10 * i + j)
    _symlink(root / "a" / "up", "..")
    with (
        pytest.warns(RuntimeWarning, match="symlink loop"),
        pytest.raises(ValueError, match=r"belong to two identities .*b/0\.png"),
    ):
        imagefolder(root, resolution=4, num_private=1)


def test_hard_link_in_two_identities_is_an_error(tmp_path):
    root = tmp_path / "ids"
    for who, seed in (("a", 0), ("b", 10), ("c", 20)):
        for j in range(3):
            _distinct(root / who / f"{j}.png", seed + j)
    os.link(root / "a" / "0.png", root / "b" / "copy.png")
    with pytest.raises(ValueError, match=r"1 image file\(s\) belong to two identities"):
        imagefolder(root, resolution=4, num_private=2)


def test_two_links_to_one_folder_and_linked_files(tmp_path):
    shared = tmp_path / "shared"
    for j in range(3):
        _distinct(shared / f"{j}.png", j)
    root = tmp_path / "pub"
    root.mkdir()
    _symlink(root / "x", shared)
    _symlink(root / "y", shared)
    os.symlink(shared / "0.png", root / "alias.png")
    with pytest.warns(RuntimeWarning, match="1 duplicate path"):
        files = find_image_files(root)
    # x/ is entered (first in sorted order), y/ is skipped; alias.png sorts first and stays
    assert [p.relative_to(root).as_posix() for p in files] == ["alias.png", "x/1.png", "x/2.png"]
    with pytest.warns(RuntimeWarning, match="1 duplicate path"):
        assert ffhq_files(root) == files


def test_symlinked_identity_folders_are_followed_silently(tmp_path, recwarn):
    store, root = tmp_path / "store", tmp_path / "ids"
    for who, seed in (("a", 0), ("b", 10)):
        for j in range(3):
            _distinct(store / who / f"{j}.png", seed + j)
    root.mkdir()
    for who in ("a", "b"):
        _symlink(root / who, store / who)
    s = imagefolder(root, resolution=4, num_private=1)
    assert len(s.private_train) + len(s.private_test) == 3 and len(s.public) == 3
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_ffhq_with_a_loop_loads_each_image_once(ffhq_root):
    root, colors = ffhq_root
    _symlink(root / "00000" / "again", "..")
    with pytest.warns(RuntimeWarning, match="symlink loop"):
        s = ffhq(root, resolution=8)
    assert len(s) == len(colors) == 5


def test_public_root_linking_private_files_is_rejected(tmp_path):
    root, pub = tmp_path / "ids", tmp_path / "pub"
    for who, seed in (("a", 0), ("b", 10)):
        for j in range(3):
            _distinct(root / who / f"{j}.png", seed + j)
    pub.mkdir()
    os.link(root / "a" / "1.png", pub / "hard.png")  # same file, no symlink to resolve
    _distinct(pub / "own.png", 99)
    with pytest.raises(ValueError, match=r"disjoint, but 1 image files are in both"):
        imagefolder(root, resolution=4, public_root=pub)


def test_celeba_rejects_an_annotated_image_linked_to_another(celeba_root):
    root, _ = celeba_root
    img = root / "img_align_celeba"
    (img / "000002.jpg").unlink()
    os.symlink("000001.jpg", img / "000002.jpg")
    with pytest.raises(ValueError, match=r"000001\.jpg and 000002\.jpg are one file"):
        celeba(root, resolution=8, num_private=2)
