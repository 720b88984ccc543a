import pytest
import torch

from mibench_lib.data import DatasetNotFoundError, ffhq


class TestFfhq:
    def test_loads_sorted_unlabelled(self, ffhq_root, build):
        root, colors = ffhq_root
        s = ffhq(root, resolution=8)
        assert len(s) == 5 and s.image_shape == (3, 8, 8) and s.data.dtype == torch.uint8
        assert s.class_counts() == {-1: 5}
        # sorted by relative path: 00000/00000..00002, then 01000/00003, 01000/00004;
        # the 88/128 centre crop keeps only the coloured square (PNG: exact)
        for k, color in enumerate(colors):
            build.assert_color(s.images[k : k + 1], color, tol=0)

    def test_max_images(self, ffhq_root, build):
        root, colors = ffhq_root
        s = ffhq(root, resolution=4, max_images=2)
        assert len(s) == 2
        build.assert_color(s.images[1:2], colors[1], tol=0)

    def test_other_sizes_use_the_same_fraction(self, tmp_path, build):
        # a 64x64 image: the kept square is 44x44 at offset 10
        build.image(tmp_path / "a.png", size=(64, 64), box=(10, 10, 54, 54), color=build.colors[3])
        build.assert_color(ffhq(tmp_path, resolution=4).images, build.colors[3], tol=0)

    def test_exception(self, tmp_path, ffhq_root):
        with pytest.raises(DatasetNotFoundError, match=r"FFHQ expects a folder of face images"):
            ffhq(tmp_path / "missing")
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "readme.txt").write_text("x")
        with pytest.raises(DatasetNotFoundError, match=r"no image files .* found under"):
            ffhq(tmp_path / "empty")
        with pytest.raises(
            ValueError, match="max_images must be a positive integer or None, got 0"
        ):
            ffhq(ffhq_root[0], max_images=0)
