"""The one classifier interface: logits for attacks and training, penultimate features for metrics.

Every model in the zoo takes images in [0, 1] with shape (N, C, H, W) and normalises internally, so
the whole library shares one pixel range. A model exposes:

- ``features(x) -> (N, feature_dim)``: the penultimate representation (used by delta_eval,
  delta_face, FID and PRDC);
- ``head``: the final linear layer, so ``forward(x) == head(features(x))``;
- ``num_classes``, ``feature_dim`` and ``input_shape`` attributes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Classifier(nn.Module):
    """Base class of the zoo: subclasses build ``self.head`` and implement :meth:`features`.

    Args:
        num_classes: Output size K.
        feature_dim: Size of the penultimate representation.
        input_shape: (C, H, W) of accepted images.
    """

    def __init__(
        self, num_classes: int, feature_dim: int, input_shape: tuple[int, int, int]
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.feature_dim = int(feature_dim)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, feature_dim) penultimate features."""
        raise NotImplementedError(f"{type(self).__name__} must implement features()")  # abstract

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, num_classes) logits."""
        return self.head(self.features(x))

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both outputs from one pass: ``(features, logits)``."""
        f = self.features(x)
        return f, self.head(f)


class ResizedInput(Classifier):
    """A classifier fed images of another size, resized (bilinear, antialiased) to its own.

    For a network whose weights fix its input size (a face-recognition model trained at 64 px)
    scoring images of another resolution, as feature-space metrics do in the literature (FaceNet
    evaluators resize to 112 or 160 px). Shares the wrapped model's head and features.

    Args:
        model: The classifier, with its native ``input_shape``.
        input_shape: (C, H, W) of the images it is fed; C must equal the model's.
    """

    def __init__(self, model: Classifier, input_shape: tuple[int, int, int]) -> None:
        if input_shape[0] != model.input_shape[0]:
            raise ValueError(
                f"cannot feed {tuple(input_shape)} images to a {model.input_shape} model: "
                "the channels differ"
            )
        super().__init__(model.num_classes, model.feature_dim, input_shape)
        self.model = model
        self.head = model.head

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1], resized to the model's size -> its penultimate features."""
        size = tuple(self.model.input_shape[1:])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.model.features(x)
