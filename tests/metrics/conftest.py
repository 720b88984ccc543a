"""Feature extractors with closed-form outputs, so that metric values can be worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mibench_lib.models.base import Classifier


class FlatClassifier(Classifier):
    """features(x) = x flattened: a (N, D, 1, 1) "image" is its own D-dim feature vector.

    The head is a seeded linear layer; tests needing known logits use ``PixelLogits`` instead.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__(num_classes, math.prod(input_shape), input_shape)

    def features(self, x: Tensor) -> Tensor:
        return x.flatten(1)


class PixelLogits(Classifier):
    """logits(x) = x flattened: a (N, 1, 1, K) image holds its own logits; features are the same."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes, num_classes, (1, 1, num_classes))
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(num_classes))
            self.head.bias.zero_()

    def features(self, x: Tensor) -> Tensor:
        return x.flatten(1)


@pytest.fixture
def flat_classifier() -> type[FlatClassifier]:
    """The class; ``flat_classifier(K, (D, 1, 1))`` reads (N, D, 1, 1) images as D-dim points."""
    return FlatClassifier


@pytest.fixture
def pixel_logits() -> type[PixelLogits]:
    """The class: ``pixel_logits(K)`` reads (N, 1, 1, K) images as their own logits."""
    return PixelLogits


@pytest.fixture(autouse=True)
def _skip_slow_unless_selected(request: pytest.FixtureRequest) -> None:
    """Tests marked ``slow`` run only when asked for, e.g. ``pytest -m slow``."""
    selected = "slow" in (request.config.option.markexpr or "")
    if request.node.get_closest_marker("slow") and not selected:
        pytest.skip("slow test: select it with -m slow")
