import pytest
import torch

from mibench_lib.data import DatasetNotFoundError, facescrub, imagefolder

COUNTS = {"cat": 3, "dog": 5, "emu": 2, "fox": 3}


@pytest.fixture
def folder(tmp_path, build):
    root = tmp_path / "pets"
    return root, build.imagefolder(root, COUNTS)


def _keys(images: torch.Tensor) -> set[bytes]:
    return {x.numpy().tobytes() for x in images}


class TestImagefolder:
    def test_private_are_largest_identities(self, folder, build):
        root, colors = folder
        s = imagefolder(root, resolution=4, num_private=2)
        assert s.class_names == ["dog", "cat"]  # 5 images, then cat before fox on the 3-3 tie
        assert s.private_train.class_counts() == {0: 4, 1: 2}
        assert s.private_test.class_counts() == {0: 1, 1: 1}
        assert s.public.class_counts() == {-1: 2 + 3}
        assert s.image_shape == (3, 4, 4)
        build.assert_color(s.private_train.of_class(0).images, colors["dog"], tol=0)
        build.assert_color(s.private_test.of_class(1).images, colors["cat"], tol=0)
        assert _keys(s.public.images) == _keys(
            torch.tensor([colors["emu"], colors["fox"]], dtype=torch.float32)[
                :, :, None, None
            ].expand(2, 3, 4, 4)
            / 255
        )
        torch.testing.assert_close(s.private_to_evaluator, torch.arange(2))
        assert s.evaluator_train is s.private_train
        assert s.info["num_public_identities"] == 2 and s.info["layout"] == "ImageFolder"

    def test_grey_channels(self, folder):
        root, _ = folder
        s = imagefolder(root, resolution=6, num_private=3, channels=1)
        assert s.image_shape == (1, 6, 6) and s.public.image_shape == (1, 6, 6)

    def test_public_root_flat_folder(self, folder, tmp_path, build):
        root, _ = folder
        pub = tmp_path / "public"
        for k in range(3):
            build.image(pub / f"{k}.jpg", size=(10, 10), box=(0, 0, 10, 10), color=build.colors[7])
        s = imagefolder(root, resolution=4, public_root=pub)
        assert s.num_classes == 4 and len(s.public) == 3
        assert s.info["unused_identities"] == 0
        s = imagefolder(root, resolution=4, num_private=1, public_root=pub)
        assert len(s.public) == 3 and s.info["unused_identities"] == 3

    def test_split_seed(self, folder, tmp_path, build):
        root = tmp_path / "distinct"
        for j in range(6):  # one identity of 6 distinct images, another of 2
            build.image(root / "a" / f"{j}.png", size=(4, 4), box=(0, 0, 4, 4), color=(j, 0, 0))
        for j in range(2):
            build.image(root / "b" / f"{j}.png", size=(4, 4), box=(0, 0, 4, 4), color=(0, j, 0))
        runs = [imagefolder(root, resolution=2, num_private=1, split_seed=s) for s in range(4)]
        again = imagefolder(root, resolution=2, num_private=1, split_seed=0)
        torch.testing.assert_close(runs[0].private_test.data, again.private_test.data)
        assert len({r.private_test.data.numpy().tobytes() for r in runs}) > 1
        for r in runs:
            assert not _keys(r.private_train.images) & _keys(r.private_test.images)

    def test_exception(self, folder, tmp_path):
        root, _ = folder
        with pytest.raises(DatasetNotFoundError, match=r"expected .*nope/<identity>/<image files>"):
            imagefolder(tmp_path / "nope")
        with pytest.raises(ValueError, match="makes all 4 identities private, leaving no public"):
            imagefolder(root)
        with pytest.raises(ValueError, match="num_private=5 but imagefolder has only 4 identities"):
            imagefolder(root, num_private=5)
        with pytest.raises(ValueError, match=r"must be disjoint, but 13 image files are in both"):
            imagefolder(root, public_root=root)
        with pytest.raises(ValueError, match=r"channels must be 1 \(grey\) or 3 \(RGB\), got 4"):
            imagefolder(root, num_private=1, channels=4)
        (root / "gnu").mkdir()
        with pytest.raises(ValueError, match=r"identity folder .*gnu holds no image files"):
            imagefolder(root, num_private=1)

    def test_identity_too_small(self, tmp_path, build):
        root = tmp_path / "small"
        build.imagefolder(root, {"a": 3, "b": 1, "c": 2})
        with pytest.raises(
            ValueError, match=r"1 identity\(s\) have fewer than 2 images .*: b \(1\)"
        ):
            imagefolder(root, num_private=3, public_root=tmp_path / "small" / "a")

    def test_no_identity_folders(self, tmp_path, build):
        build.image(tmp_path / "flat" / "x.png", size=(4, 4), box=(0, 0, 4, 4), color=(1, 1, 1))
        with pytest.raises(DatasetNotFoundError, match="has no identity sub-folders"):
            imagefolder(tmp_path / "flat")


class TestFacescrub:
    @pytest.fixture
    def official(self, tmp_path, build):
        root = tmp_path / "facescrub"
        actors = build.imagefolder(
            root / "actors" / "faces",
            {"Aaron_Eckhart": 4, "Adam_Brody": 2},
            size=(30, 40),
            suffix=".jpeg",
        )
        actresses = build.imagefolder(
            root / "actresses" / "faces",
            {"Alyssa_Milano": 3, "Anne_Hathaway": 2},
            size=(40, 30),
            suffix=".jpeg",
        )
        return root, actors, actresses

    def test_official_layout(self, official, build):
        root, actors, actresses = official
        s = facescrub(root, resolution=8, num_private=2)
        assert s.class_names == ["Aaron_Eckhart", "Alyssa_Milano"]
        assert s.info["layout"] == "official (actors/faces, actresses/faces)"
        assert len(s.public) == 2 + 2 and set(s.public.labels.tolist()) == {-1}
        assert s.private_train.class_counts() == {0: 3, 1: 2}
        # the largest centred square of the 30x40 / 40x30 crops is the coloured square
        build.assert_color(s.private_train.of_class(0).images, actors["Aaron_Eckhart"], tol=8 / 255)
        build.assert_color(
            s.private_test.of_class(1).images, actresses["Alyssa_Milano"], tol=8 / 255
        )

    def test_all_private_needs_public_root(self, official, ffhq_root):
        root, _, _ = official
        with pytest.raises(ValueError, match="pass public_root"):
            facescrub(root, resolution=8)
        s = facescrub(root, resolution=8, public_root=ffhq_root[0])
        assert s.num_classes == 4 and len(s.public) == 5

    def test_only_actresses(self, official):
        import shutil

        root, _, _ = official
        shutil.rmtree(root / "actors")
        s = facescrub(root, resolution=8, num_private=1)
        assert s.info["layout"] == "official (actresses/faces)" and s.class_names == [
            "Alyssa_Milano"
        ]

    def test_flattened_layout(self, tmp_path, build):
        root = tmp_path / "flat"
        build.imagefolder(root, {"Aaron_Eckhart": 3, "Adam_Brody": 2, "Alan_Alda": 2})
        s = facescrub(root, resolution=4, num_private=2)
        assert s.info["layout"] == "flattened ImageFolder" and s.name == "facescrub"
        assert s.class_names == ["Aaron_Eckhart", "Adam_Brody"] and len(s.public) == 2

    def test_exception(self, official, tmp_path, build):
        root, _, _ = official
        with pytest.raises(DatasetNotFoundError, match=r"actors/faces/<Name>/\*\.jpg"):
            facescrub(tmp_path / "missing")
        build.imagefolder(root / "actresses" / "faces", {"Adam_Brody": 2})
        with pytest.raises(
            ValueError, match="'Adam_Brody' appears under both actors and actresses"
        ):
            facescrub(root, num_private=1)
        half = tmp_path / "half"
        (half / "actors" / "images").mkdir(parents=True)
        with pytest.raises(DatasetNotFoundError, match="without faces/ inside"):
            facescrub(half)
