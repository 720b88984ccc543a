from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mibench_lib.data import load_dataset
from mibench_lib.defenses.label_smoothing import (
    label_smoothing_defense,
    smoothed_cross_entropy,
    smoothing_schedule,
)
from mibench_lib.models.base import Classifier
from mibench_lib.models.train import predict_logits, train_classifier


def _batch(n: int = 6, c: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 3, torch.randint(0, c, (n,), generator=g)


def _soft_target_ce(logits: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """-sum_c t_c log p_c with t = (1 - alpha) e_y + alpha / C, averaged over the batch."""
    c = logits.shape[1]
    target = (1 - alpha) * F.one_hot(labels, c).double() + alpha / c
    return -(target * logits.double().log_softmax(1)).sum(1).mean()


class TestSmoothedCrossEntropy:
    @pytest.mark.parametrize("alpha", [0.0, 0.1])
    def test_equals_pytorch_for_non_negative_alpha(self, alpha):
        logits, labels = _batch()
        ours = smoothed_cross_entropy(logits, labels, alpha)
        ref = F.cross_entropy(logits, labels, label_smoothing=alpha)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)

    @pytest.mark.parametrize("alpha", [-0.05, -0.5])
    def test_equals_soft_target_formula_for_negative_alpha(self, alpha):
        logits, labels = _batch()
        ours = smoothed_cross_entropy(logits.double(), labels, alpha)
        torch.testing.assert_close(ours, _soft_target_ce(logits, labels, alpha), rtol=0, atol=1e-6)

    def test_negative_alpha_differs_from_unsmoothed(self):
        # the trap this loss exists for: torch's CE does not apply negative factors
        logits, labels = _batch()
        smoothed = smoothed_cross_entropy(logits, labels, -0.5)
        assert abs(float(smoothed - F.cross_entropy(logits, labels))) > 1e-2

    def test_hand_computed_value(self):
        logits, labels = torch.tensor([[0.0, 0.0]]), torch.tensor([0])
        # p = (1/2, 1/2): both terms are log 2 whatever alpha is
        torch.testing.assert_close(
            smoothed_cross_entropy(logits, labels, -0.3), torch.tensor(0.6931472), rtol=0, atol=1e-6
        )

    def test_batch_size_independent(self):
        logits, labels = _batch(n=4)
        one = smoothed_cross_entropy(logits, labels, -0.05)
        three = smoothed_cross_entropy(logits.repeat(3, 1), labels.repeat(3), -0.05)
        torch.testing.assert_close(one, three, rtol=0, atol=1e-6)

    def test_gradient_is_softmax_minus_target(self):
        logits, labels = _batch(n=3, c=4)
        logits.requires_grad_(True)
        smoothed_cross_entropy(logits, labels, -0.2).backward()
        target = 1.2 * F.one_hot(labels, 4) - 0.2 / 4
        torch.testing.assert_close(logits.grad, (logits.softmax(1) - target).detach() / 3)

    def test_exceptions(self):
        logits, labels = _batch()
        with pytest.raises(ValueError, match=r"alpha must be a finite number <= 1, got 1\.5"):
            smoothed_cross_entropy(logits, labels, 1.5)
        with pytest.raises(ValueError, match=r"labels must be int64 of shape \(6,\)"):
            smoothed_cross_entropy(logits, labels[:3], 0.1)
        with pytest.raises(ValueError, match=r"logits must have shape \(N, C\)"):
            smoothed_cross_entropy(logits[:, :1], labels, 0.1)


class TestSchedule:
    def test_official_values_for_100_epochs(self):
        a = -0.05
        got = [smoothing_schedule(e, alpha=a, epochs=100) for e in (0, 49, 50, 74, 75, 99)]
        assert got == pytest.approx([0.0, 0.0, a / 50, a / 2, a, a], abs=1e-12)

    def test_scaled_to_other_lengths(self):
        # E = 8: start 4, full 6; ramp a * (e + 1 - 4) / 4 in epochs 4-5
        got = [smoothing_schedule(e, alpha=-0.4, epochs=8) for e in range(8)]
        assert got == pytest.approx([0, 0, 0, 0, -0.1, -0.2, -0.4, -0.4])

    def test_no_warmup_for_positive_or_when_disabled(self):
        assert smoothing_schedule(0, alpha=0.1, epochs=100) == 0.1
        assert smoothing_schedule(0, alpha=-0.05, epochs=100, warmup=False) == -0.05
        assert smoothing_schedule(500, alpha=-0.05, epochs=100) == -0.05

    def test_exceptions(self):
        with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
            smoothing_schedule(0, alpha=-0.05, epochs=0)
        with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
            smoothing_schedule(-1, alpha=-0.05, epochs=10)


class TestLabelSmoothingDefense:
    def test_config_and_knob(self):
        d = label_smoothing_defense()
        assert d.name == "label_smoothing" and d.knob == "alpha" and d.knob_value == -0.05
        assert dict(d.config) == {"alpha": -0.05, "epochs": 100, "warmup": True}
        assert d.trains and d.build is None and d.prepare is None

    def test_config_records_the_training_epochs_as_epochs(self):
        # cache keys hash the config: the supplied ``train_epochs`` keeps the key ``"epochs"``
        d = label_smoothing_defense(alpha=0.1, train_epochs=7, warmup=False)
        assert dict(d.config) == {"alpha": 0.1, "epochs": 7, "warmup": False}

    def test_training_epochs_are_a_study_input(self):
        from mibench_lib.defenses import STUDY_INPUTS

        assert "train_epochs" in STUDY_INPUTS
        with pytest.raises(TypeError, match="epochs"):
            label_smoothing_defense(epochs=4)  # the old name is gone, not silently ignored

    def test_loss_hook_follows_schedule(self):
        d = label_smoothing_defense(alpha=-0.5, train_epochs=100)
        logits, labels = _batch()

        def hook(epoch: int) -> torch.Tensor:
            return d.loss(logits, labels, model=nn.Identity(), images=torch.zeros(1), epoch=epoch)

        torch.testing.assert_close(hook(10), F.cross_entropy(logits, labels))
        torch.testing.assert_close(hook(80), smoothed_cross_entropy(logits, labels, -0.5))

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"alpha": float("nan")}, "alpha must be a finite number <= 1, got nan"),
            ({"alpha": 2.0}, r"alpha must be a finite number <= 1, got 2\.0"),
            ({"train_epochs": 0}, "train_epochs must be an integer >= 1, got 0"),
            ({"train_epochs": 2.5}, r"train_epochs must be an integer >= 1, got 2\.5"),
        ],
    )
    def test_exceptions(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            label_smoothing_defense(**kwargs)


class _DigitsMLP(Classifier):
    def __init__(self) -> None:
        super().__init__(5, 64, (1, 8, 8))
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_digits_held_out_confidence_positive_vs_negative():
    """alpha = 0.1 caps confidence at 1 - 0.1 * 4/5 = 0.92; alpha < 0 drives it towards 1.

    So on held-out digits the negatively smoothed model is *more* confident than the positively
    smoothed one, while both still classify well.
    """
    split = load_dataset("digits")
    conf = {}
    for alpha in (0.1, -0.05):
        torch.manual_seed(0)
        model, report = train_classifier(
            _DigitsMLP(),
            split.private_train,
            split.private_test,
            epochs=3,
            batch_size=32,
            lr=1e-2,
            defense=label_smoothing_defense(alpha=alpha, train_epochs=3, warmup=False),
            rng=torch.Generator().manual_seed(0),
            progress=False,
        )
        assert report.test_acc > 0.8  # 0.96-0.99 over seeds 0-7
        probs = predict_logits(model, split.private_test.images).softmax(1)
        conf[alpha] = float(probs.max(1).values.mean())
    # seeds 0-7: 0.87-0.89 and 0.97-0.98 (0.90-0.91 and > 0.99 after 10 epochs)
    assert conf[0.1] < 0.92 < conf[-0.05]
