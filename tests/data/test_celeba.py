import pytest
import torch

from mibench_lib.data import DatasetNotFoundError, celeba

TOL = 12 / 255


class TestCeleba:
    def test_split_sizes_labels_and_ranking(self, celeba_root):
        root, _ = celeba_root
        s = celeba(root, resolution=8, num_private=3)
        # counts {101: 4, 205: 4, 37: 3, 58: 3, 999: 2, 7: 1}: 37 beats 58 on the tie (smaller id)
        assert s.class_names == ["101", "205", "37"]
        assert s.info["private_identities"] == [101, 205, 37]
        # 1 test image per identity (round(0.1 * n) raised to 1), the rest train
        assert s.private_train.class_counts() == {0: 3, 1: 3, 2: 2}
        assert s.private_test.class_counts() == {0: 1, 1: 1, 2: 1}
        assert s.public.class_counts() == {-1: 3 + 2 + 1}
        assert s.image_shape == (3, 8, 8) and s.private_train.data.dtype == torch.uint8
        assert (s.num_classes, s.evaluator_num_classes) == (3, 3)
        torch.testing.assert_close(s.private_to_evaluator, torch.arange(3))
        assert s.evaluator_train is s.private_train and s.evaluator_test is s.private_test
        assert s.info["num_public_identities"] == 3

    def test_centre_crop_and_identity_mapping(self, celeba_root, build):
        root, colors = celeba_root
        s = celeba(root, resolution=16, num_private=3)
        for k, ident in enumerate([101, 205, 37]):
            for part in (s.private_train, s.private_test):
                build.assert_color(part.of_class(k).images, colors[ident], tol=TOL)
        public_colors = {colors[i] for i in (58, 999, 7)}
        for img in s.public.images:
            mean = tuple(round(v) for v in (img.mean((1, 2)) * 255).tolist())
            assert min(max(abs(a - b) for a, b in zip(mean, c)) for c in public_colors) < 12
        # public identities 58, 999, 7 (the next most frequent) are labelled 0, 1, 2, image by image
        assert s.public_labels.tolist() == [0, 0, 0, 1, 1, 2]
        for j, ident in enumerate([58, 999, 7]):
            build.assert_color(s.public.images[s.public_labels == j], colors[ident], tol=TOL)

    def test_num_public_takes_next_most_frequent(self, celeba_root):
        root, _ = celeba_root
        s = celeba(root, resolution=8, num_private=2, num_public=2)
        assert s.class_names == ["101", "205"]
        assert len(s.public) == 3 + 3  # identities 37 and 58
        assert "next most frequent" in s.info["public_source"]

    def test_max_images_per_identity(self, celeba_root):
        root, _ = celeba_root
        s = celeba(root, resolution=8, num_private=3, max_images_per_identity=2)
        assert s.private_train.class_counts() == {0: 1, 1: 1, 2: 1}
        assert s.private_test.class_counts() == {0: 1, 1: 1, 2: 1}

    def test_split_seed(self, celeba_root):
        root, _ = celeba_root
        a = celeba(root, resolution=8, num_private=2, split_seed=0)
        b = celeba(root, resolution=8, num_private=2, split_seed=0)
        torch.testing.assert_close(a.private_test.data, b.private_test.data)
        torch.testing.assert_close(a.private_train.data, b.private_train.data)
        tests = {
            celeba(root, resolution=8, num_private=2, split_seed=seed)
            .private_test.data.numpy()
            .tobytes()
            for seed in range(4)
        }
        assert len(tests) > 1
        assert a.info["split_seed"] == 0

    def test_eval_partition_is_recorded(self, celeba_root):
        root, _ = celeba_root
        s = celeba(root, resolution=8, num_private=3)
        part = s.info["eval_partition"]
        assert part["used"] is False
        assert sum(part["private_images_by_partition"].values()) == 4 + 4 + 3
        assert set(part["private_images_by_partition"]) <= {"train", "val", "test"}

    def test_public_root_ffhq(self, celeba_root, ffhq_root):
        root, _ = celeba_root
        froot, fcolors = ffhq_root
        s = celeba(root, resolution=8, num_private=5, public_root=froot)
        assert len(s.public) == len(fcolors) and s.public.class_counts() == {-1: 5}
        assert s.info["public_source"].startswith("FFHQ folder")
        assert s.num_classes == 5 and s.public.image_shape == (3, 8, 8)

    def test_private_public_disjoint(self, celeba_root):
        root, _ = celeba_root
        s = celeba(root, resolution=8, num_private=3)
        priv = {x.numpy().tobytes() for x in torch.cat([s.private_train.data, s.private_test.data])}
        pub = {x.numpy().tobytes() for x in s.public.data}
        assert not priv & pub  # each identity has its own colour
        with pytest.raises(ValueError, match="must be disjoint, but 11 image files are in both"):
            celeba(root, resolution=8, num_private=3, public_root=root / "img_align_celeba")


class TestCelebaErrors:
    def test_missing_root(self, tmp_path):
        with pytest.raises(DatasetNotFoundError, match=r"CelebA root .*nope does not exist") as e:
            celeba(tmp_path / "nope")
        msg = str(e.value)
        assert "img_align_celeba/ with the aligned JPEGs" in msg
        assert "identity_CelebA.txt (lines '000001.jpg 2880')" in msg
        assert "download them from the official CelebA page and unpack them there" in msg
        assert isinstance(e.value, FileNotFoundError)

    @pytest.mark.parametrize(
        "missing", ["identity_CelebA.txt", "list_eval_partition.txt", "img_align_celeba"]
    )
    def test_missing_piece(self, celeba_root, missing):
        root, _ = celeba_root
        target = root / missing
        target.rename(root / "moved")
        with pytest.raises(DatasetNotFoundError, match=f"missing .*{missing}. CelebA expects"):
            celeba(root, num_private=2)

    def test_malformed_identity_line(self, celeba_root):
        root, _ = celeba_root
        path = root / "identity_CelebA.txt"
        lines = path.read_text().splitlines()
        lines[2] = "000003.jpg abc"
        path.write_text("\n".join(lines) + "\n")
        msg = (
            r"identity_CelebA.txt, line 3: expected '<image> <integer>' like '000001.jpg 2880', "
            r"got '000003.jpg abc'"
        )
        with pytest.raises(ValueError, match=msg):
            celeba(root, num_private=2)

    def test_bad_partition_value(self, celeba_root):
        root, _ = celeba_root
        path = root / "list_eval_partition.txt"
        path.write_text(path.read_text().replace("000002.jpg 2", "000002.jpg 5"))
        with pytest.raises(
            ValueError, match=r"line 2: value must be one of \[0, 1, 2\], got '000002.jpg 5'"
        ):
            celeba(root, num_private=2)

    def test_image_without_partition(self, celeba_root):
        root, _ = celeba_root
        path = root / "list_eval_partition.txt"
        path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
        with pytest.raises(
            ValueError, match=r"1 image\(s\) of identity_CelebA.txt have no line in"
        ):
            celeba(root, num_private=2)

    def test_missing_image_file(self, celeba_root):
        root, _ = celeba_root
        (root / "img_align_celeba" / "000005.jpg").unlink()
        with pytest.raises(
            DatasetNotFoundError, match=r"1 annotated image\(s\) are missing .*000005.jpg"
        ):
            celeba(root, num_private=2)

    def test_wrong_image_size(self, celeba_root, build):
        root, _ = celeba_root
        build.image(
            root / "img_align_celeba" / "000001.jpg",
            size=(100, 100),
            box=(0, 0, 1, 1),
            color=(0, 0, 0),
        )
        with pytest.raises(ValueError, match=r"000001\.jpg is 100x100 pixels, expected 178x218"):
            celeba(root, num_private=2)

    def test_too_many_private_identities(self, celeba_root):
        root, _ = celeba_root
        with pytest.raises(ValueError, match=r"num_private=7 but .* lists only 6 identities"):
            celeba(root, num_private=7)
        with pytest.raises(
            ValueError, match="num_private=6 uses all 6 identities, leaving no public"
        ):
            celeba(root, num_private=6)
        with pytest.raises(ValueError, match="num_public=4 but only 3 identities remain"):
            celeba(root, num_private=3, num_public=4)

    def test_identity_too_small_to_split(self, celeba_root, ffhq_root):
        root, _ = celeba_root
        with pytest.raises(
            ValueError, match=r"1 identity\(s\) have fewer than 2 images .*: 7 \(1\)"
        ):
            celeba(root, num_private=6, public_root=ffhq_root[0])

    def test_bad_arguments(self, celeba_root, ffhq_root):
        root, _ = celeba_root
        with pytest.raises(ValueError, match="pass only one of them"):
            celeba(root, num_public=2, public_root=ffhq_root[0])
        with pytest.raises(ValueError, match="num_private must be a positive integer, got 0"):
            celeba(root, num_private=0)
        with pytest.raises(ValueError, match=r"test_fraction must lie in \(0, 1\), got 0"):
            celeba(root, num_private=2, test_fraction=0)
