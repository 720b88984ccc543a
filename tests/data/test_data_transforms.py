from pathlib import Path

import pytest
import torch

from mibench_lib.data import DatasetNotFoundError
from mibench_lib.data.imagefolder import find_image_files, read_images
from mibench_lib.data.transforms import (
    fixed_center_box,
    pad_to,
    resize,
    square_center_box,
)


def test_pad_to_centres_the_image():
    x = torch.ones(2, 1, 3, 4)
    y = pad_to(x, 6)
    assert y.shape == (2, 1, 6, 6)
    # 3 extra rows: 1 on top, 2 below; 2 extra columns: 1 each side
    assert y[0, 0].sum().item() == 12 and y[0, 0, 1:4, 1:5].min().item() == 1.0
    with pytest.raises(ValueError, match="cannot pad images of size 3x4 to the smaller size 2x2"):
        pad_to(x, 2)


def test_resize_antialiases_and_keeps_range():
    # Every 4th column lit: plain bilinear 8 -> 2 samples only unlit columns (all 0); the
    # antialiased resize averages the footprint, giving about the lit fraction 1/4.
    x = torch.zeros(1, 1, 8, 8)
    x[..., ::4] = 1.0
    y = resize(x, 2)
    plain = torch.nn.functional.interpolate(x, size=(2, 2), mode="bilinear", align_corners=False)
    assert y.shape == (1, 1, 2, 2) and plain.max().item() == 0.0
    assert abs(y.mean().item() - 0.25) < 0.05
    assert 0.0 <= y.min().item() and y.max().item() <= 1.0
    assert resize(x, 8) is x
    with pytest.raises(ValueError, match="resolution must be a positive integer, got 0"):
        resize(x, 0)


def test_fixed_center_box_celeba_offsets():
    box = fixed_center_box(108, 108, expect=(178, 218))
    assert box(178, 218, Path("a.jpg")) == (35, 55, 143, 163)
    with pytest.raises(ValueError, match=r"a.jpg is 200x200 pixels, expected 178x218"):
        box(200, 200, Path("a.jpg"))


def test_square_center_box():
    assert square_center_box()(60, 40, Path("x")) == (10, 0, 50, 40)
    assert square_center_box(88 / 128)(128, 128, Path("x")) == (20, 20, 108, 108)
    with pytest.raises(ValueError, match=r"crop fraction must lie in \(0, 1\], got 0"):
        square_center_box(0)


def test_find_image_files_sorted_recursive(tmp_path, build):
    for rel in ["b/2.png", "a/10.JPG", "a/9.jpeg", "c.png", ".hidden/x.png", "a/.x.png"]:
        build.image(tmp_path / rel, size=(4, 4), box=(0, 0, 4, 4), color=(1, 2, 3))
    (tmp_path / "notes.txt").write_text("x")
    got = [p.relative_to(tmp_path).as_posix() for p in find_image_files(tmp_path)]
    assert got == ["a/10.JPG", "a/9.jpeg", "b/2.png", "c.png"]
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        find_image_files(tmp_path / "nope")


def test_read_images(tmp_path, build):
    paths = [tmp_path / f"{k}.png" for k in range(3)]
    for k, p in enumerate(paths):
        build.image(p, size=(30, 20), box=(5, 0, 25, 20), color=build.colors[k])
    x = read_images(paths, resolution=5, crop=square_center_box(), workers=2)
    assert x.shape == (3, 3, 5, 5) and x.dtype == torch.uint8
    for k in range(3):
        build.assert_color(x[k : k + 1].float() / 255, build.colors[k], tol=0)
    grey = read_images(paths[:1], resolution=5, crop=square_center_box(), channels=1)
    assert grey.shape == (1, 1, 5, 5)
    missing = r"1 image file\(s\) are missing, first: .*nope.png"
    with pytest.raises(DatasetNotFoundError, match=missing):
        read_images([*paths, tmp_path / "nope.png"], resolution=5, crop=square_center_box())
    with pytest.raises(ValueError, match="channels must be 1 \\(grey\\) or 3 \\(RGB\\), got 2"):
        read_images(paths, resolution=5, crop=square_center_box(), channels=2)
