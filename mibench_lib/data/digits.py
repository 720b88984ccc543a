"""scikit-learn's 1,797 8x8 digits in the MNIST split protocol: tiny, download-free, for tests."""

from __future__ import annotations

import torch

from mibench_lib.data._types import MISplit
from mibench_lib.data.splits import check_fraction, digit_split
from mibench_lib.data.transforms import resize


def digits(
    *,
    resolution: int = 8,
    test_fraction: float = 0.2,
    evaluator_holdout: float = 0.2,
    split_seed: int = 0,
) -> MISplit:
    """Load ``sklearn.datasets.load_digits`` as a private (0-4) / public (5-9) MI split.

    Same protocol as :func:`~mibench_lib.data.mnist5k.mnist5k`: private digits 0-4 split per digit
    into train/test, public digits 5-9 with labels -1, evaluator over all 10 digits. Pixel values
    0..16 are divided by 16; other resolutions use a bilinear resize with antialiasing.

    Args:
        resolution: Output side length; images are (1, resolution, resolution) float32 in [0, 1].
        test_fraction: Fraction of each private digit held out as private_test, in (0, 1).
        evaluator_holdout: Fraction of each public digit held out of evaluator training, in [0, 1).
        split_seed: Seed of both stratified splits.

    Returns:
        :class:`MISplit` with ``num_classes=5`` and ``evaluator_num_classes=10``.

    Raises:
        ValueError: ``resolution`` not positive or a fraction out of range.

    Example:
        >>> s = digits()
        >>> s.image_shape, s.num_classes, s.evaluator_num_classes, len(s.private_train)
        ((1, 8, 8), 5, 10, 721)
    """
    from sklearn.datasets import load_digits

    if resolution <= 0:
        raise ValueError(f"resolution must be a positive integer, got {resolution}")
    check_fraction("test_fraction", test_fraction)
    check_fraction("evaluator_holdout", evaluator_holdout, allow_zero=True)
    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return digit_split(
        "digits",
        resize(images, resolution),
        torch.tensor(d.target, dtype=torch.int64),
        test_fraction=test_fraction,
        evaluator_holdout=evaluator_holdout,
        split_seed=split_seed,
        info={
            "source": "sklearn.datasets.load_digits() (1,797 8x8 digits, values 0..16)",
            "resolution": resolution,
            "preprocessing": "pixels/16; bilinear resize with antialiasing when "
            "resolution is not 8",
        },
    )
