"""Output-processing defenses at the oracle: grids, truncation, labels, noise, counting, white-box."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mibench_lib.attacks import miface_attack
from mibench_lib.defenses._defense import NO_DEFENSE
from mibench_lib.defenses.output import (
    add_gaussian_noise,
    defended_oracle,
    effective_access,
    gaussian_noise_defense,
    label_only_defense,
    rounding_defense,
    top_k_defense,
)
from mibench_lib.oracle import QueryBudgetExceeded, TargetOracle
from mibench_lib.testing import tiny_classifier


class PixelLogits(nn.Module):
    """Logits = 10 * pixel - 5 over a (1, 1, K) image: the test sets every logit by hand."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = (1, 1, num_classes)
        self.unused = nn.Parameter(torch.zeros(()))  # gives the oracle a device

    def forward(self, x: Tensor) -> Tensor:
        return 10 * x.flatten(1) - 5 + 0 * self.unused


def images_for(probs: Tensor) -> Tensor:
    """Images on which PixelLogits gives ``probs`` (rows summing to 1)."""
    return ((probs.log() + 5) / 10).view(probs.shape[0], 1, 1, -1)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


DEFENSES = {
    "rounding": lambda: rounding_defense(decimals=2),
    "top_k": lambda: top_k_defense(k=2),
    "label_only": label_only_defense,
    "gaussian_noise": lambda: gaussian_noise_defense(scale=0.2, rng=_gen()),
}


def test_rounded_values_lie_on_the_grid():
    x = torch.rand(16, 1, 1, 5, generator=_gen(1))
    oracle = defended_oracle(PixelLogits(), rounding_defense(), access="probabilities")
    scaled = oracle(x) * 1000
    torch.testing.assert_close(scaled, scaled.round(), atol=1e-3, rtol=0)
    raw = torch.softmax(PixelLogits()(x), dim=1)
    assert (oracle(x) - raw).abs().max() <= 5e-4 + 1e-6
    logits = defended_oracle(PixelLogits(), rounding_defense(), access="logits")(x)
    scaled = logits.exp() * 1000  # the logits level releases the log of the rounded values
    torch.testing.assert_close(scaled, scaled.round(), atol=1e-3, rtol=0)


def test_rounding_ties_go_to_the_lowest_class_index():
    probs = torch.tensor([[0.4001, 0.4004, 0.1995]])
    x = images_for(probs)
    assert PixelLogits(3)(x).argmax(1).item() == 1  # unrounded argmax
    released = defended_oracle(PixelLogits(3), rounding_defense(), access="probabilities")(x)
    torch.testing.assert_close(released, torch.tensor([[0.4, 0.4, 0.2]]))
    oracle = defended_oracle(PixelLogits(3), rounding_defense(), access="label")
    assert oracle(x).tolist() == [0] and oracle(x).tolist() == [0]


def test_top_k_keeps_at_most_k_values_and_the_argmax():
    x = torch.rand(20, 1, 1, 5, generator=_gen(2))
    top = defended_oracle(PixelLogits(), top_k_defense(k=2), access="probabilities")(x)
    assert ((top > 0).sum(1) <= 2).all()
    assert torch.equal(top.argmax(1), PixelLogits()(x).argmax(1))
    raw = torch.softmax(PixelLogits()(x), dim=1)
    kept = top > 0
    torch.testing.assert_close(top[kept], raw[kept])  # not renormalised


@pytest.mark.parametrize(("attacker_k", "expected"), [(None, 2), (1, 1), (3, 2)])
def test_top_k_takes_the_smaller_k(attacker_k, expected):
    access = "probabilities" if attacker_k is None else "top-k"
    oracle = defended_oracle(PixelLogits(), top_k_defense(k=2), access=access, top_k=attacker_k)
    assert oracle.access == "top-k" and oracle.top_k == expected


def test_label_only_releases_one_label_per_row():
    probs = torch.tensor(
        [[0.7, 0.1, 0.1, 0.05, 0.05], [0.1, 0.1, 0.6, 0.1, 0.1], [0.05, 0.05, 0.1, 0.1, 0.7]]
    )
    oracle = defended_oracle(PixelLogits(), label_only_defense(), access="probabilities")
    out = oracle(images_for(probs))
    assert out.dtype == torch.int64 and out.tolist() == [0, 2, 4]


def test_noise_is_fresh_per_query_and_rows_are_distributions():
    x = torch.rand(4, 1, 1, 5, generator=_gen(3))
    oracle = defended_oracle(
        PixelLogits(), gaussian_noise_defense(scale=0.2, rng=_gen()), access="probabilities"
    )
    a, b = oracle(x), oracle(x)
    assert not torch.equal(a, b)
    for out in (a, b):
        assert (out >= 0).all()
        torch.testing.assert_close(out.sum(1), torch.ones(4))


def test_noise_same_rng_same_release():
    x = torch.rand(4, 1, 1, 5, generator=_gen(3))
    outs = [
        defended_oracle(PixelLogits(), gaussian_noise_defense(rng=_gen(7)), access="probabilities")(
            x
        )
        for _ in range(2)
    ]
    assert torch.equal(*outs)


def test_noise_rows_clipped_to_zero_become_uniform():
    probs = torch.tensor([[0.9, 0.1]]).repeat(500, 1)
    out = add_gaussian_noise(probs, scale=50.0, rng=_gen(4))
    assert torch.isfinite(out).all() and (out >= 0).all()
    torch.testing.assert_close(out.sum(1), torch.ones(500))
    uniform = (out == 0.5).all(1)
    assert uniform.any()  # ~1/4 of the rows have both noisy values <= 0


@pytest.mark.parametrize("name", list(DEFENSES))
@pytest.mark.parametrize("access", ["white-box", "logits", "probabilities", "top-k", "label"])
def test_every_release_counts_queries(name, access):
    oracle = defended_oracle(PixelLogits(), DEFENSES[name](), access=access, budget=5)
    x = torch.rand(3, 1, 1, 5, generator=_gen(5))
    oracle(x)
    assert oracle.queries == 3
    with pytest.raises(QueryBudgetExceeded):
        oracle(x)
    assert oracle.queries == 3


@pytest.mark.parametrize(
    ("access", "release", "expected"),
    [
        ("white-box", "label", "white-box"),
        ("logits", None, "logits"),
        ("logits", "top-k", "top-k"),
        ("probabilities", "label", "label"),
        ("label", "top-k", "label"),
        ("top-k", "top-k", "top-k"),
    ],
)
def test_effective_access_is_the_more_restrictive(access, release, expected):
    assert effective_access(access, release) == expected


@pytest.mark.parametrize("name", list(DEFENSES))
def test_white_box_ignores_the_defense(name):
    model = tiny_classifier()
    oracle = defended_oracle(model, DEFENSES[name](), access="white-box")
    assert oracle.access == "white-box" and oracle.postprocess is None
    labels = torch.tensor([0, 1, 2, 3])
    on = miface_attack(oracle, labels, max_iter=15, rng=_gen())
    off = miface_attack(TargetOracle(model), labels, max_iter=15, rng=_gen())
    assert torch.equal(on.images, off.images)
    assert on.queries == off.queries > labels.numel()  # the attack did run steps


def test_training_defense_gives_a_plain_oracle():
    oracle = defended_oracle(PixelLogits(), NO_DEFENSE, access="probabilities")
    assert oracle.access == "probabilities" and oracle.postprocess is None


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: rounding_defense(decimals=-1), "decimals"),
        (lambda: rounding_defense(decimals=1.5), "decimals"),
        (lambda: top_k_defense(k=0), "k must"),
        (lambda: gaussian_noise_defense(scale=-0.1), "scale"),
        (lambda: effective_access("admin", None), "access"),
        (lambda: effective_access("logits", "blurred"), "release"),
        (lambda: defended_oracle(PixelLogits(), NO_DEFENSE, access="top-k", top_k=0), "top_k"),
    ],
)
def test_bad_values_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()
