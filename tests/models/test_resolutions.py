"""Every zoo model of the resolution study builds, runs forward and backward at its resolutions.

The digit models (target ``mnist_cnn``, evaluator ``mnist_eval``, extractor ``mnist_resnet``) run
at 16, 32 and 64 px; the face models (``vgg16_64``, ``facenet64``, ``ir152_64``) at 64 and 128 px.
Each test builds a seeded model and pushes a batch of 2 through it in training mode. Reference
logits pin each model at the resolution it was written for, so that making a head follow
``input_shape`` can never change the weights or outputs there. The digit loaders are checked to
deliver the requested resolution in every part of the split.
"""

from __future__ import annotations

import pytest
import torch

from mibench_lib.data import load_dataset
from mibench_lib.models import MODELS
from mibench_lib.models.small_cnn import MnistEvaluator

K = 5
DIGIT_MODELS = ["mnist_cnn", "mnist_eval", "mnist_resnet"]
FACE_MODELS = ["vgg16_64", "facenet64", "ir152_64"]
CASES = [
    pytest.param(name, (1, r, r), id=f"{name}-{r}px") for name in DIGIT_MODELS for r in (16, 32, 64)
] + [
    # The 128-px face networks take 2-4 s each on one CPU thread (IR-152 the longest).
    pytest.param(name, (3, r, r), id=f"{name}-{r}px", marks=[pytest.mark.slow] if r > 64 else [])
    for name in FACE_MODELS
    for r in (64, 128)
]

# Logits of ``MODELS[name](5, input_shape=shape)`` built after ``torch.manual_seed(0)``, in eval
# mode, on ``torch.rand(2, *shape)`` drawn from a generator seeded with 1: recorded before the
# resolution work, at each model's original resolution.
REFERENCE = {
    "mnist_cnn": (
        (1, 32, 32),
        [
            [-0.04691137, -0.01821256, 0.05222109, 0.009577667, -0.0543852],
            [-0.04998486, -0.01140342, 0.04746913, 0.01318346, -0.04272061],
        ],
    ),
    "mnist_eval": (
        (1, 32, 32),
        [
            [-0.01179418, -0.01778429, 0.03703343, 0.02293848, -0.05639496],
            [-0.01592964, -0.0230836, 0.04078641, 0.02247235, -0.06108958],
        ],
    ),
    "mnist_resnet": (
        (1, 32, 32),
        [
            [-0.0007447284, 0.01554885, -0.105275, -0.003065006, 0.07891381],
            [0.003546346, 0.01820339, -0.09930614, -0.001862438, 0.07672033],
        ],
    ),
    "vgg16_64": (
        (3, 64, 64),
        [
            [-0.06191516, -0.03452264, 0.03487759, -0.1310389, 0.1929967],
            [-0.02764712, -0.01482239, 0.02080918, -0.1138422, 0.231086],
        ],
    ),
    "facenet64": (
        (3, 64, 64),
        [
            [-2.960819, -0.7807219, -1.539908, -2.395074, -2.05873],
            [-2.126694, -0.4711655, -0.6156135, -1.417822, 1.915259],
        ],
    ),
    "ir152_64": (
        (3, 64, 64),
        [
            [102.8887, -215.5744, 55.70826, -1.667903, 157.1801],
            [87.88191, -353.5081, 36.68285, 220.0358, 62.40055],
        ],
    ),
}


def _batch(shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.rand(2, *shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_forward_backward_at_resolution(name, shape):
    torch.manual_seed(0)
    model = MODELS[name](K, input_shape=shape).train()
    assert model.input_shape == shape
    assert model.head.in_features == model.feature_dim
    x = _batch(shape).requires_grad_(True)
    feats, logits = model.forward_with_features(x)
    assert feats.shape == (2, model.feature_dim) and logits.shape == (2, K)
    logits.logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and torch.isfinite(x.grad).all()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(x)).all()


@pytest.mark.parametrize("name", list(REFERENCE))
def test_original_resolution_outputs_unchanged(name):
    shape, expected = REFERENCE[name]
    torch.manual_seed(0)
    model = MODELS[name](K, input_shape=shape).eval()
    with torch.no_grad():
        logits = model(_batch(shape))
    torch.testing.assert_close(logits, torch.tensor(expected), rtol=1e-4, atol=1e-5)


def test_evaluator_rejects_inputs_below_16_px():
    with pytest.raises(ValueError, match=r"H and W >= 16, got \(1, 8, 8\)"):
        MnistEvaluator(10, input_shape=(1, 8, 8))


@pytest.mark.parametrize("dataset", ["mnist5k", "digits"])
@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_digit_loaders_give_requested_resolution(dataset, resolution):
    split = load_dataset(dataset, resolution=resolution)
    assert split.image_shape == (1, resolution, resolution)
    assert split.info["resolution"] == resolution
    parts = ["private_train", "private_test", "public", "evaluator_train", "evaluator_test"]
    for part in parts:
        data = getattr(split, part).data
        assert data.shape[1:] == (1, resolution, resolution), part
        assert data.dtype == torch.float32 and 0 <= data.min() and data.max() <= 1, part
