"""PGD and adversarial training: constraints, analytic worst case, evaluation, and the effect."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mibench_lib.data import load_dataset
from mibench_lib.data._types import ImageSet
from mibench_lib.defenses.adversarial import (
    adversarial_training_defense,
    pgd_attack,
    robust_accuracy,
)
from mibench_lib.models.train import accuracy, train_classifier
from mibench_lib.testing import tiny_classifier


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _mlp(in_features=256, num_classes=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_features, 64), nn.ReLU(), nn.Linear(64, num_classes)
    )


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits", resolution=16)


@pytest.fixture(scope="module")
def standard_mlp(digits16):
    model, _ = train_classifier(
        _mlp(),
        digits16.private_train,
        digits16.private_test,
        epochs=3,
        batch_size=64,
        lr=1e-2,
        rng=_gen(),
        progress=False,
    )
    return model


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_the_ball_and_the_pixel_box(norm):
    x = torch.rand(6, 1, 8, 8, generator=_gen(1))
    x[0] = 0.0  # saturated images: the box constraint binds
    x[1] = 1.0
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    eps = 0.1 if norm == "linf" else 0.5
    x_adv = pgd_attack(
        tiny_classifier(), x, y, eps=eps, alpha=eps / 2, steps=5, norm=norm, rng=_gen()
    )
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert (size > 0).any()


def _linear_binary(w: torch.Tensor) -> nn.Module:
    """Logits (0, w.x): the CE-maximising move is along -y' w (y' = +1 for class 1, -1 for 0)."""
    lin = nn.Linear(w.numel(), 2, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[1] = w
    return nn.Sequential(nn.Flatten(), lin)


# L2 from a random start only converges geometrically to the worst case (each projection
# shrinks the off-axis part of the start), so L2 starts at x; L-inf gets there in finite steps.
@pytest.mark.parametrize(("norm", "random_start"), [("linf", True), ("l2", False)])
def test_pgd_reaches_the_analytic_worst_case_of_a_linear_classifier(norm, random_start):
    g = _gen(2)
    w = torch.randn(16, generator=g)
    model = _linear_binary(w)
    x = 0.35 + 0.3 * torch.rand(4, 1, 4, 4, generator=g)  # interior: the box never binds
    y = torch.tensor([1, 0, 1, 0])
    sign = (2 * y - 1).view(-1, 1, 1, 1).float()
    eps = 0.1 if norm == "linf" else 0.3
    direction = w.sign() if norm == "linf" else w / w.norm()
    worst = x - eps * sign * direction.view(1, 1, 4, 4)
    x_adv = pgd_attack(
        model, x, y, eps=eps, alpha=eps / 4, steps=10, norm=norm, random_start=random_start, rng=g
    )
    torch.testing.assert_close(x_adv, worst, atol=1e-6, rtol=0)


def test_pgd_crafts_in_eval_mode_and_restores_the_mode():
    model = tiny_classifier().train()
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x = torch.rand(4, 1, 8, 8, generator=_gen())
    pgd_attack(model, x, torch.tensor([0, 1, 2, 3]), eps=0.1, alpha=0.05, steps=3, rng=_gen())
    assert model.training
    for k, v in buffers.items():  # BatchNorm running statistics never saw the iterates
        assert torch.equal(model.state_dict()[k], v)
    assert all(p.grad is None for p in model.parameters())


def test_pgd_raises_the_loss_above_random_noise(digits16, standard_mlp):
    x, y = digits16.private_test.images[:64], digits16.private_test.labels[:64]
    noise = (x + 0.1 * torch.randn(x.shape, generator=_gen(4)).sign()).clamp(0, 1)
    x_adv = pgd_attack(standard_mlp, x, y, eps=0.1, alpha=0.025, steps=10, rng=_gen())
    with torch.no_grad():
        # seeds 0-5: about 2.0-2.5 after PGD, 0.06-0.12 after random signs of the same size
        assert F.cross_entropy(standard_mlp(x_adv), y) > F.cross_entropy(standard_mlp(noise), y) + 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": -0.1}, "eps"),
        ({"alpha": 0.0}, "alpha"),
        ({"steps": -1}, "steps"),
        ({"norm": "l1"}, "norm"),
    ],
)
def test_pgd_bad_values_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pgd_attack(tiny_classifier(), torch.rand(1, 1, 8, 8), torch.tensor([0]), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"norm": "l3"}, "norm"),
        ({"eval_restarts": 0}, "eval_restarts"),
        ({"eps": -1.0}, "eps"),
        ({"alpha": -0.1}, "alpha"),
    ],
)
def test_defense_bad_values_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        adversarial_training_defense(**kwargs)


def test_zero_eps_gives_clean_accuracy(digits16, standard_mlp):
    test = digits16.private_test
    clean = accuracy(standard_mlp, test)
    assert robust_accuracy(standard_mlp, test, eps=0.0, steps=5) == pytest.approx(clean)


def test_more_steps_never_raise_robust_accuracy(digits16, standard_mlp):
    test = digits16.private_test
    accs = [
        robust_accuracy(standard_mlp, test, eps=0.1, steps=s, alpha=0.02, restarts=2)
        for s in (1, 3, 10)
    ]
    assert accs[0] >= accs[1] >= accs[2]
    assert accs[0] > accs[2]
    assert accs[0] <= accuracy(standard_mlp, test)


def test_adversarial_training_raises_robust_accuracy(digits16, standard_mlp):
    eps = 0.15
    defense = adversarial_training_defense(eps=eps, steps=3)
    _, report = train_classifier(
        _mlp(),
        digits16.private_train,
        digits16.private_test,
        epochs=3,
        batch_size=64,
        lr=1e-2,
        defense=defense,
        rng=_gen(),
        progress=False,
    )
    extra = report.extra
    assert extra["eps"] == eps and extra["norm"] == "linf" and extra["eval_steps"] == 20
    assert extra["clean_acc"] == pytest.approx(report.test_acc)
    assert 0 <= extra["robust_acc"] <= extra["clean_acc"]
    standard = robust_accuracy(standard_mlp, digits16.private_test, eps=eps, steps=20)
    assert extra["robust_acc"] > standard + 0.15  # gain 0.36-0.46 over seeds 0-4


def test_loss_hook_trains_on_adversarial_examples_only():
    defense = adversarial_training_defense(eps=0.2, steps=3)
    model = defense.build(_mlp(64, 4).train())  # no BatchNorm: the two runs below see one model
    images = torch.rand(8, 1, 8, 8, generator=_gen(5))
    labels = torch.arange(8) % 4
    logits = model(images)
    loss = defense.loss(logits, labels, model=model, images=images, epoch=0)
    assert model.training
    assert loss > F.cross_entropy(logits, labels)
    # the clean logits are not part of the graph of the loss
    assert torch.autograd.grad(loss, logits, allow_unused=True)[0] is None
    # every training run restarts the random starts from the seed
    again = defense.build(model)
    assert torch.equal(
        defense.loss(logits, labels, model=again, images=images, epoch=0).detach(),
        loss.detach(),
    )


def test_robust_accuracy_rejects_empty_data():
    with pytest.raises(ValueError, match="empty"):
        robust_accuracy(
            tiny_classifier(), ImageSet(torch.zeros(0, 1, 8, 8), torch.zeros(0)), eps=0.1
        )
