"""MIFace (Algorithm 1): the first step, the stop rules, argmin return, absorbing stops."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mibench_lib.attacks import miface_attack
from mibench_lib.models.base import Classifier
from mibench_lib.oracle import AccessDenied, TargetOracle
from mibench_lib.testing import tiny_classifier


class PositiveLinearTarget(Classifier):
    """Two classes; the logit of class 1 grows with every pixel (weights in [0.1, 2])."""

    def __init__(self) -> None:
        super().__init__(2, 64, (1, 8, 8))
        with torch.no_grad():
            self.head.weight.copy_(torch.stack([torch.zeros(64), torch.linspace(0.1, 2.0, 64)]))
            self.head.bias.zero_()

    def features(self, x: Tensor) -> Tensor:
        return x.flatten(1)


class PlateauTarget(Classifier):
    """Logits (0, 2 min(10 mean(x), 1)): the cost falls, then is exactly flat (p_1 = 0.88)."""

    def __init__(self) -> None:
        super().__init__(2, 1, (1, 8, 8))

    def features(self, x: Tensor) -> Tensor:
        return (10 * x.mean(dim=(1, 2, 3))).clamp(max=1.0)[:, None]

    def forward(self, x: Tensor) -> Tensor:
        s = self.features(x)
        return torch.cat([torch.zeros_like(s), 2 * s], dim=1) + 0 * self.head.bias.sum()


def _cost_grad(model: Classifier, x: Tensor, labels: Tensor) -> Tensor:
    x = x.clone().requires_grad_(True)
    cost = 1 - F.softmax(model(x), dim=1).gather(1, labels[:, None]).sum()
    return torch.autograd.grad(cost, x)[0]


# -- the feature: raises the label's probability over the zero image ------------------------------
def test_beats_zero_image(digits_target, label_prob):
    labels = torch.tensor([0, 1, 2, 3])
    res = miface_attack(TargetOracle(digits_target), labels, max_iter=50)
    p_attack = label_prob(digits_target, res.images, labels)
    p_zero = label_prob(digits_target, torch.zeros(4, 1, 8, 8), labels)
    assert (p_attack >= p_zero).all()  # the argmin includes x_0 = 0
    # measured: label 2 rises from 0.06 to 0.99 and label 1 from 0.94 to 0.99 (mean gain 0.25);
    # labels 0 and 3 (p_y 1e-6 and 5e-5 at x_0) stall at step 1 on the vanishing softmax gradient
    assert (p_attack - p_zero).max() > 0.5
    assert p_attack.mean() > p_zero.mean() + 0.1
    torch.testing.assert_close(res.extras["cost"], 1 - p_attack)


def test_shapes_range_and_exact_queries(digits_target):
    oracle = TargetOracle(digits_target)
    res = miface_attack(oracle, torch.tensor([1, 2, 2]), max_iter=40)
    assert res.attack == "miface" and res.latents is None
    assert res.images.shape == (3, 1, 8, 8) and res.images.device.type == "cpu"
    assert 0.0 <= float(res.images.min()) <= float(res.images.max()) <= 1.0
    stop = res.extras["stop_step"]
    assert res.queries == oracle.queries == 3 + int(stop.sum())  # x_0, then one per step run
    assert len(res.losses) == int(stop.max())


# -- Algorithm 1, step by step --------------------------------------------------------------------
def test_first_step_from_zero_is_minus_lr_times_gradient():
    target = PositiveLinearTarget()
    labels = torch.tensor([1])
    res = miface_attack(TargetOracle(target), labels, lr=0.1, max_iter=1)
    expected = -0.1 * _cost_grad(target, torch.zeros(1, 1, 8, 8), labels)
    assert 0 < float(expected.min()) and float(expected.max()) < 1  # no clamping involved
    assert res.extras["best_step"].tolist() == [1]
    torch.testing.assert_close(res.images, expected, rtol=0, atol=1e-6)  # pixels 0.0025..0.05


def test_first_step_is_clamped_to_pixel_range(digits_target):
    labels = torch.tensor([2])
    res = miface_attack(TargetOracle(digits_target), labels, lr=1.0, max_iter=1)
    step = -1.0 * _cost_grad(digits_target, torch.zeros(1, 1, 8, 8), labels)
    assert float(step.min()) < 0  # some pixels would leave [0, 1]
    assert res.extras["best_step"].tolist() == [1]
    torch.testing.assert_close(res.images, step.clamp(0, 1), rtol=0, atol=1e-6)


def test_stops_within_window_after_plateau():
    window = 5
    res = miface_attack(
        TargetOracle(PlateauTarget()), torch.tensor([1]), lr=1.0, window=window, max_iter=200
    )
    costs = torch.tensor(res.losses)  # one sample: losses[i - 1] = c(x_i)
    plateau_start = int((costs == costs[-1]).nonzero()[0]) + 1
    stop = int(res.extras["stop_step"])
    assert plateau_start < stop <= plateau_start + window + 1
    assert res.extras["best_step"].tolist() == [plateau_start]  # earliest lowest-cost iterate


def test_stops_at_first_step_whose_label_probability_reaches_threshold():
    # logistic target: from x_0 = 0 (p_1 = 0.5), p_1(x_i) rises at every step (lr 0.01, by
    # 0.02 to 0.06 per step) and stays below 0.83 for 8 steps, so neither other rule fires
    target, labels = PositiveLinearTarget(), torch.tensor([1])
    free = miface_attack(TargetOracle(target), labels, lr=0.01, threshold=1.0, max_iter=8)
    assert free.extras["stop_step"].tolist() == [8]
    p = [0.5] + [1.0 - c for c in free.losses]  # p[i] = p_1(x_i), same run
    assert min(b - a for a, b in pairwise(p)) > 0.02 and p[-1] < 0.9
    for k in (1, 3, 7):
        threshold = (p[k - 1] + p[k]) / 2  # reached first at step k, with a margin > 0.01
        res = miface_attack(TargetOracle(target), labels, lr=0.01, threshold=threshold, max_iter=8)
        assert res.extras["stop_step"].tolist() == [k]
        assert res.losses == free.losses[:k]  # the same path, cut at step k
    # Algorithm 1 read literally (c <= gamma = 0.99, i.e. threshold = 1 - gamma): p_1 >= 0.01
    # already holds after the first step
    literal = miface_attack(TargetOracle(target), labels, lr=0.01, threshold=1 - 0.99, max_iter=8)
    assert literal.extras["stop_step"].tolist() == [1]


def test_threshold_is_on_the_label_probability(digits_target, label_prob):
    labels = torch.tensor([2])
    res = miface_attack(TargetOracle(digits_target), labels, threshold=0.5, max_iter=200)
    stop = int(res.extras["stop_step"])
    assert label_prob(digits_target, res.images, labels).item() >= 0.5
    assert 1 < stop < 200 and res.losses[-2] > 0.5  # the step before was not good enough
    longer = miface_attack(TargetOracle(digits_target), labels, threshold=0.99, max_iter=200)
    assert int(longer.extras["stop_step"]) > stop


def test_returns_lowest_cost_iterate_not_last(digits_target, label_prob):
    labels = torch.tensor([2])
    res = miface_attack(
        TargetOracle(digits_target), labels, lr=1.0, window=5, threshold=1.0, max_iter=200
    )
    x0_cost = 1 - label_prob(digits_target, torch.zeros(1, 1, 8, 8), labels)
    trajectory = torch.cat([x0_cost, torch.tensor(res.losses)])
    assert float(res.extras["last_cost"]) > float(trajectory.min())  # it went back up
    assert res.extras["best_step"].tolist() == [int(trajectory.argmin())]
    torch.testing.assert_close(
        1 - label_prob(digits_target, res.images, labels), trajectory.min()[None]
    )


def test_stopped_samples_never_change(digits_target):
    # lr 1: label 1 stops at step 1 (p_y 0.9935 >= 0.99), label 2 at step 3 (the step overshoots,
    # its cost rises by 0.06); every stop decision before and at those steps clears its bound by
    # >= 0.0035 (measured), so batched and lone runs cannot round to different stop steps.
    # (Labels 0 and 3 are avoided: from x_0 their cost is 1 - 1e-6, where progress is a few ulps.)
    labels = torch.tensor([1, 2, 2, 1])
    short = miface_attack(TargetOracle(digits_target), labels, lr=1.0, window=5, max_iter=100)
    stops = short.extras["stop_step"]
    assert len(set(stops.tolist())) > 1 and int(stops.max()) < 100
    # more budget changes nothing once every sample has stopped: no queries, no movement
    long = miface_attack(TargetOracle(digits_target), labels, lr=1.0, window=5, max_iter=200)
    assert torch.equal(short.images, long.images) and short.queries == long.queries
    # batching is per sample: each sample alone follows the same path and stops at the same step
    for i in range(4):
        alone = miface_attack(
            TargetOracle(digits_target), labels[i : i + 1], lr=1.0, window=5, max_iter=100
        )
        assert alone.extras["stop_step"].item() == stops[i].item()
        torch.testing.assert_close(alone.images[0], short.images[i], rtol=0, atol=1e-4)


# -- threat model, frozen target, determinism, errors --------------------------------------------
@pytest.mark.parametrize("access", ["logits", "probabilities", "label"])
def test_refuses_non_white_box_oracle(access):
    oracle = TargetOracle(tiny_classifier(), access=access)
    with pytest.raises(AccessDenied, match=f"white-box.*{access}"):
        miface_attack(oracle, torch.tensor([0]), max_iter=1)
    assert oracle.queries == 0


def test_frozen_target_unchanged(buffer_hash):
    target = tiny_classifier()
    oracle = TargetOracle(target)
    target.train()  # the attack must still run it in eval mode
    before = buffer_hash(target)
    miface_attack(oracle, torch.tensor([0, 3]), max_iter=5)
    assert buffer_hash(target) == before and target.training
    assert all(p.grad is None for p in target.parameters())


def test_deterministic(digits_target):
    a, b = (
        miface_attack(
            TargetOracle(digits_target),
            torch.tensor([1, 2]),
            max_iter=20,
            rng=torch.Generator().manual_seed(seed),
        )
        for seed in (0, 1)
    )
    assert torch.equal(a.images, b.images) and a.losses == b.losses


def test_bad_arguments_raise():
    oracle = TargetOracle(tiny_classifier())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got \[4\]"):
        miface_attack(oracle, torch.tensor([4]))
    with pytest.raises(ValueError, match="threshold"):
        miface_attack(oracle, torch.tensor([0]), threshold=1.5)
    with pytest.raises(ValueError, match="window"):
        miface_attack(oracle, torch.tensor([0]), window=0)


def test_chunked_batches_give_the_same_images(digits_target):
    labels = torch.tensor([0, 1, 2, 3, 2])
    whole = miface_attack(TargetOracle(digits_target), labels, max_iter=30, window=5)
    chunked = miface_attack(
        TargetOracle(digits_target), labels, max_iter=30, window=5, batch_size=2
    )
    torch.testing.assert_close(chunked.images, whole.images, atol=1e-5, rtol=0)
    assert torch.equal(chunked.extras["stop_step"], whole.extras["stop_step"])
    assert chunked.queries == whole.queries
    assert chunked.losses == pytest.approx(whole.losses, abs=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        miface_attack(TargetOracle(digits_target), labels, batch_size=0)
