import pytest
import torch

from mibench_lib.data import digits
from mibench_lib.testing import tiny_digits


def _keys(images: torch.Tensor) -> set[bytes]:
    return {x.numpy().tobytes() for x in images}


class TestDigits:
    def test_sizes_and_protocol(self):
        s = digits()
        _, y = tiny_digits()
        n_private, n_public = int((y < 5).sum()), int((y >= 5).sum())
        assert len(s.private_train) + len(s.private_test) == n_private
        assert len(s.public) == n_public
        assert len(s.evaluator_train) + len(s.evaluator_test) == len(y)
        assert set(s.private_train.class_counts()) == set(range(5))
        assert s.public.class_counts() == {-1: n_public}
        assert set(s.evaluator_train.class_counts()) == set(range(10))
        assert (s.num_classes, s.evaluator_num_classes) == (5, 10)
        torch.testing.assert_close(s.private_to_evaluator, torch.arange(5))

    def test_images_are_sklearn_digits_over_16(self):
        s = digits()
        x, y = tiny_digits()
        private = torch.cat([s.private_train.images, s.private_test.images])
        assert _keys(private) == _keys(x[y < 5])
        assert _keys(s.public.images) == _keys(x[y >= 5])
        assert private.dtype == torch.float32 and private.max().item() == 1.0

    def test_private_train_test_disjoint(self):
        s = digits()
        assert not _keys(s.private_train.images) & _keys(s.private_test.images)

    @pytest.mark.parametrize("resolution", [4, 8, 16])
    def test_resolution(self, resolution):
        s = digits(resolution=resolution)
        assert s.image_shape == (1, resolution, resolution)
        x = s.evaluator_train.images
        assert 0.0 <= x.min().item() and x.max().item() <= 1.0

    def test_seed(self):
        a, b, c = digits(split_seed=3), digits(split_seed=3), digits(split_seed=4)
        torch.testing.assert_close(a.private_test.data, b.private_test.data)
        assert _keys(a.private_test.images) != _keys(c.private_test.images)

    def test_exception(self):
        with pytest.raises(ValueError, match=r"test_fraction must lie in \(0, 1\), got 1.5"):
            digits(test_fraction=1.5)
