"""The classifier zoo and the one training loop.

Every model takes images in [0, 1] and returns logits; ``model.features(x)`` gives the penultimate
features used by the metrics. ``MODELS`` maps a registry name to a constructor
``(num_classes, *, input_shape=(C, H, W), **kwargs) -> Classifier``:

- embedded default (1-channel digits, 16-64 px): ``mnist_cnn`` (target), ``mnist_eval``
  (evaluator), ``mnist_resnet`` (second feature extractor);
- real data (64 px RGB faces; random init, local weights via
  :func:`mibench_lib.models.weights.load_local_weights`): ``vgg16_64``, ``ir152_64``, ``ir50_64``,
  ``facenet64`` and torchvision ResNets ``resnet18`` ... ``resnet152``.
"""

from mibench_lib.models import facenet64, irse, resnet, small_cnn, vgg16
from mibench_lib.models.base import Classifier
from mibench_lib.models.train import (
    Checkpoint,
    TrainReport,
    accuracy,
    cross_entropy_loss,
    predict_logits,
    train_classifier,
)

MODELS = {**small_cnn.ZOO, **vgg16.ZOO, **irse.ZOO, **facenet64.ZOO, **resnet.ZOO}

__all__ = [
    "MODELS",
    "Checkpoint",
    "Classifier",
    "TrainReport",
    "accuracy",
    "cross_entropy_loss",
    "predict_logits",
    "train_classifier",
]
