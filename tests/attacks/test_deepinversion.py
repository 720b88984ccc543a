"""DeepInversion: BN prior on BN inputs, augmentation before every loss, kept batch, frozen target."""

from __future__ import annotations

import inspect
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib.attacks import SPECS
from mibench_lib.attacks.deepinversion import (
    OFFICIAL_SETTINGS,
    _image_prior_losses,
    deepinversion_attack,
)
from mibench_lib.byo import as_target
from mibench_lib.data import load_dataset
from mibench_lib.models.train import train_classifier
from mibench_lib.oracle import AccessDenied, QueryBudgetExceeded, TargetOracle
from mibench_lib.testing import TinyClassifier, tiny_classifier

# The tiny targets compute x * 2 - 1 internally: their normalised space is mean 0.5, std 0.5.
NORM = {"mean": 0.5, "std": 0.5}


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _bn_inputs(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Logits of ``model`` on ``x`` and the input of each BatchNorm2d, in modules() order."""
    seen: dict[nn.Module, Tensor] = {}
    handles = [
        m.register_forward_hook(lambda m, i, o: seen.__setitem__(m, i[0]))
        for m in _bn_layers(model)
    ]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, [seen[m] for m in _bn_layers(model)]


def _reference_terms(model: nn.Module, v: Tensor, y: Tensor, first: float) -> dict[str, float]:
    """Every loss term by hand, on a normalised batch ``v`` (mean 0.5, std 0.5)."""
    with torch.no_grad():
        logits, inputs = _bn_inputs(model, v * 0.5 + 0.5)
        r = 0.0
        for k, (bn, x) in enumerate(zip(_bn_layers(model), inputs, strict=True)):
            mu = x.mean(dim=(0, 2, 3))
            var = ((x - mu[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))  # biased
            term = (bn.running_var - var).norm() + (bn.running_mean - mu).norm()
            r += (first if k == 0 else 1.0) * float(term)
        diffs = [
            v[..., :, :-1] - v[..., :, 1:],
            v[..., :-1, :] - v[..., 1:, :],
            v[..., 1:, :-1] - v[..., :-1, 1:],
            v[..., :-1, :-1] - v[..., 1:, 1:],
        ]
        return {
            "ce": float(F.cross_entropy(logits, y)),
            "r_feature": r,
            "tv_l2": sum(float(d.norm()) for d in diffs),
            "tv_l1": sum(float(d.abs().mean()) for d in diffs),
            "l2": float(v.flatten(1).norm(dim=1).mean()),
        }


def _total(terms: dict[str, float], **w: float) -> float:
    return (
        w.get("main_loss_multiplier", 1.0) * terms["ce"]
        + w["r_feature"] * terms["r_feature"]
        + w["tv_l2"] * terms["tv_l2"]
        + w.get("tv_l1", 0.0) * terms["tv_l1"]
        + w["l2"] * terms["l2"]
    )


class Recording(nn.Module):
    """Passes images to ``net`` and keeps a copy of every batch it is given."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.num_classes, self.input_shape = net.num_classes, net.input_shape
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


# -- the feature: beats random images on a trained BatchNorm target -------------------------------
@pytest.fixture(scope="module")
def digits16_target() -> TinyClassifier:
    """TinyClassifier (5 classes, 16x16 digits) trained for 15 epochs (~1 s, test acc ~0.98)."""
    split = load_dataset("digits", resolution=16)
    torch.manual_seed(0)
    model, report = train_classifier(
        TinyClassifier(split.num_classes, split.image_shape),
        split.private_train,
        split.private_test,
        epochs=15,
        lr=3e-3,
        batch_size=32,
        progress=False,
        rng=_rng(0),
    )
    assert report.test_acc > 0.9
    return model


def test_beats_random_images_on_a_trained_bn_target(digits16_target):
    labels = torch.arange(5).repeat(4)
    res = deepinversion_attack(
        TargetOracle(digits16_target),
        labels,
        iterations=200,
        lr=0.1,
        warmup=20,
        jitter=2,
        flip=False,  # digits are not mirror-symmetric (CIFAR setting: no flip)
        r_feature=0.1,
        rng=_rng(0),
        **NORM,
    )
    with torch.no_grad():
        attack_acc = (digits16_target(res.images).argmax(1) == labels).float().mean()
        noise = torch.rand(len(labels), 1, 16, 16, generator=_rng(5))
        random_acc = (digits16_target(noise).argmax(1) == labels).float().mean()
    # measured: 1.00 against 0.20 (the random images all fall in one class)
    assert attack_acc >= 0.95 and attack_acc - random_acc >= 0.5


def test_bn_prior_lowers_the_bn_statistics_loss(digits16_target):
    labels = torch.arange(5).repeat(4)
    runs = {
        weight: deepinversion_attack(
            TargetOracle(digits16_target),
            labels,
            iterations=100,
            lr=0.1,
            warmup=10,
            jitter=1,
            flip=False,
            r_feature=weight,
            rng=_rng(0),
            **NORM,
        )
        for weight in (0.1, 0.0)
    }
    with_prior, without = runs[0.1].extras["r_feature"], runs[0.0].extras["r_feature"]
    assert with_prior[0] == without[0]  # same start
    # measured: 23.9 -> 2.0 with the prior, 23.9 -> 8.1 without (CE and TV alone)
    assert with_prior[-1] < 0.2 * with_prior[0]
    assert with_prior[-1] < 0.5 * without[-1]


# -- R_feature: batch statistics of each BN layer's *input* ---------------------------------------
def test_r_feature_is_zero_when_running_stats_are_the_batch_input_stats():
    target = tiny_classifier()
    # the attack's first query: its noise, unshifted (jitter 0), mapped to pixels (not clipped)
    x0 = torch.randn(3, 1, 8, 8, generator=_rng(7)) * 0.5 + 0.5
    layers = _bn_layers(target)
    for k, bn in enumerate(layers):  # in order: a layer's input depends on the layers before it
        with torch.no_grad():
            x = _bn_inputs(target, x0)[1][k]
        bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
    res = deepinversion_attack(
        TargetOracle(target),
        torch.tensor([0, 1, 2]),
        iterations=1,
        jitter=0,
        flip=False,
        rng=_rng(7),
        **NORM,
    )
    assert res.extras["bn_layers"] == 2
    assert res.extras["r_feature"][0] == pytest.approx(0.0, abs=1e-4)
    # the outputs' statistics do not match: a port hooking the BN output would not give 0
    with torch.no_grad():
        out = layers[0](_bn_inputs(target, x0)[1][0])
    gap = (out.var(dim=(0, 2, 3), unbiased=False) - layers[0].running_var).norm()
    assert gap > 0.1


def test_losses_by_hand_first_bn_weighted(digits_target):
    y = torch.tensor([0, 1, 2, 3])
    weights = {"r_feature": 0.5, "tv_l2": 0.01, "tv_l1": 0.02, "l2": 0.03}
    res = deepinversion_attack(
        TargetOracle(digits_target),
        y,
        iterations=1,
        jitter=0,
        flip=False,
        first_bn_multiplier=3.0,
        main_loss_multiplier=2.0,
        rng=_rng(3),
        **weights,
        **NORM,
    )
    v0 = torch.randn(4, 1, 8, 8, generator=_rng(3))
    ref = _reference_terms(digits_target, v0, y, first=3.0)
    for key, value in ref.items():
        assert res.extras[key][0] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert res.losses[0] == pytest.approx(
        _total(ref, main_loss_multiplier=2.0, **weights), rel=1e-5
    )


# -- image priors: four-direction TV ----------------------------------------------------------------
def test_tv_is_zero_on_a_constant_image_and_has_four_directions():
    tv_l1, tv_l2 = _image_prior_losses(torch.full((2, 3, 6, 6), 0.7))
    assert float(tv_l1) == 0.0 and float(tv_l2) == 0.0
    i, j = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    checker = ((i + j) % 2).float()[None, None]  # diagonal neighbours equal: 2 axis terms
    axis, diagonal = 30**0.5, 25**0.5  # norms of 6 x 5 and 5 x 5 differences of magnitude 1
    assert float(_image_prior_losses(checker)[1]) == pytest.approx(2 * axis)
    stripes = (j % 2).float()[None, None]  # horizontal and both diagonal neighbours differ
    assert float(_image_prior_losses(stripes)[1]) == pytest.approx(axis + 2 * diagonal)
    assert float(_image_prior_losses(stripes)[0]) == pytest.approx(3.0)  # mean |d| = 1 each


# -- augmentation before every loss ----------------------------------------------------------------
def test_jitter_and_flip_come_before_every_loss(digits_target):
    recording = Recording(digits_target)
    y = torch.tensor([0, 1, 2])
    seed, jitter = 4, 3
    weights = {"r_feature": 0.5, "tv_l2": 0.01, "l2": 0.03}
    res = deepinversion_attack(
        TargetOracle(recording),
        y,
        iterations=2,
        jitter=jitter,
        flip=True,
        rng=_rng(seed),
        **weights,
        **NORM,
    )
    # the attack's draws, in its documented order: noise, then per iteration shifts and flip
    g = _rng(seed)
    v0 = torch.randn(3, 1, 8, 8, generator=g)
    dh, dw = torch.randint(-jitter, jitter + 1, (2,), generator=g).tolist()
    flipped = float(torch.rand((), generator=g)) > 0.5
    assert (dh, dw) != (0, 0) and flipped, "pick a seed that shifts and flips at step 0"
    expected = torch.roll(v0, shifts=(dh, dw), dims=(2, 3)).flip(3)

    queries = [x for x in recording.seen if x.shape[0] == 3]  # drop the contract check's batch
    assert len(queries) == 2
    x0 = v0 * 0.5 + 0.5  # the first batch in pixels, as the attack maps it
    torch.testing.assert_close(queries[0], expected * 0.5 + 0.5, atol=1e-6, rtol=0)
    assert torch.equal(queries[0].flatten().sort().values, x0.flatten().sort().values)
    assert not torch.allclose(queries[0], x0)
    # every term, the BN prior included, is that of the shifted and flipped batch
    shifted = _reference_terms(digits_target, expected, y, first=10.0)
    plain = _reference_terms(digits_target, v0, y, first=10.0)
    for key in ("ce", "r_feature", "tv_l2", "l2"):
        assert res.extras[key][0] == pytest.approx(shifted[key], rel=1e-4), key
    assert res.losses[0] == pytest.approx(_total(shifted, **weights), rel=1e-5)
    assert abs(res.losses[0] - _total(plain, **weights)) > 1e-3  # the test can tell them apart


def test_flip_off_keeps_the_same_shifts(digits_target):
    """The flip coin is drawn even with flip=False, so both runs shift alike at every step."""
    runs = []
    for flip in (True, False):
        recording = Recording(digits_target)
        deepinversion_attack(
            TargetOracle(recording),
            torch.tensor([0, 1, 2]),
            iterations=6,
            lr=1e-9,  # the batch barely moves: the queries differ only by the augmentation
            jitter=3,
            flip=flip,
            rng=_rng(2),
            **NORM,
        )
        runs.append([x for x in recording.seen if x.shape[0] == 3])
    for flipped, plain in zip(*runs, strict=True):
        assert torch.allclose(flipped, plain, atol=1e-5) or torch.allclose(
            flipped.flip(3), plain, atol=1e-5
        )
    assert any(not torch.allclose(a, b, atol=1e-5) for a, b in zip(*runs, strict=True))


# -- optimisation: kept batch, schedule, clipping, queries ------------------------------------------
def test_kept_batch_is_the_lowest_loss_one_before_its_update(digits_target):
    y = torch.tensor([0, 1, 2, 3])
    weights = {"r_feature": 0.01, "tv_l2": 1e-4, "l2": 1e-5}
    res = deepinversion_attack(
        TargetOracle(digits_target),
        y,
        iterations=30,
        lr=3.0,
        schedule="constant",
        jitter=0,
        flip=False,
        rng=_rng(0),
        **weights,
        **NORM,
    )
    best = res.extras["best_step"]
    assert res.losses[best] == min(res.losses) == res.extras["best_loss"]
    assert best < len(res.losses) - 1  # measured: step 12 of 30, not the last batch
    # without augmentation the loss is a function of the batch: recompute it on the result
    v = (res.images - 0.5) / 0.5
    assert _total(_reference_terms(digits_target, v, y, first=10.0), **weights) == pytest.approx(
        min(res.losses), rel=1e-4
    )


def test_cosine_schedule_with_warmup_and_constant():
    oracle = TargetOracle(tiny_classifier())
    res = deepinversion_attack(oracle, torch.tensor([0, 1]), iterations=150, lr=0.2, **NORM)
    lrs = res.extras["lr"]
    assert lrs[0] == pytest.approx(0.2 / 100) and lrs[99] == pytest.approx(0.2)
    assert lrs[100] == pytest.approx(0.2) and lrs[-1] < 0.2 * 1e-3
    assert all(a >= b for a, b in pairwise(lrs[99:]))  # non-increasing after the warm-up
    flat = deepinversion_attack(
        oracle, torch.tensor([0]), iterations=5, lr=0.05, schedule="constant", **NORM
    )
    assert flat.extras["lr"] == [0.05] * 5


@pytest.mark.parametrize("clip", [True, False])
def test_clipping_keeps_queries_in_pixel_range(digits_target, clip):
    recording = Recording(digits_target)
    res = deepinversion_attack(
        TargetOracle(recording),
        torch.tensor([0, 1, 2]),
        iterations=10,
        lr=1.0,
        warmup=0,
        clip=clip,
        rng=_rng(1),
        mean=0.3,
        std=0.2,
    )
    queries = [x for x in recording.seen if x.shape[0] == 3]  # not the contract check's 2
    assert len(queries) == 10
    later = torch.stack(queries[1:])  # after a step (the first is the unclipped noise)
    inside = float(later.min()) >= -1e-5 and float(later.max()) <= 1 + 1e-5
    assert inside == clip  # the N(0, 1) start with std 0.2 leaves [0, 1] unless clipped
    assert 0.0 <= float(res.images.min()) <= float(res.images.max()) <= 1.0


def test_queries_are_exactly_iterations_times_batch():
    labels = torch.tensor([0, 1, 2, 3, 1])
    oracle = TargetOracle(tiny_classifier(), budget=7 * 5)
    res = deepinversion_attack(oracle, labels, iterations=7, **NORM)
    assert res.queries == oracle.queries == 7 * 5 and len(res.losses) == 7
    short = TargetOracle(tiny_classifier(), budget=7 * 5 - 1)
    with pytest.raises(QueryBudgetExceeded):
        deepinversion_attack(short, labels, iterations=7, **NORM)


# -- threat model, frozen target, determinism, progress ---------------------------------------------
def test_target_state_unchanged(buffer_hash):
    target = tiny_classifier()
    oracle = TargetOracle(target)
    target.train()  # the attack must run it in eval mode and restore every flag
    target.body[1].eval()
    flags = [m.training for m in target.modules()]
    before, state = buffer_hash(target), {k: v.clone() for k, v in target.state_dict().items()}
    deepinversion_attack(oracle, torch.tensor([0, 3]), iterations=10, r_feature=1.0, **NORM)
    assert buffer_hash(target) == before
    assert all(torch.equal(v, state[k]) for k, v in target.state_dict().items())
    assert [m.training for m in target.modules()] == flags
    assert all(p.grad is None for p in target.parameters())
    assert all(not m._forward_hooks for m in target.modules())  # hooks removed


def test_hooks_removed_when_the_attack_fails():
    target = tiny_classifier()
    with pytest.raises(QueryBudgetExceeded):
        deepinversion_attack(TargetOracle(target, budget=3), torch.tensor([0, 1]), **NORM)
    assert all(not m._forward_hooks for m in target.modules())


def test_deterministic(digits_target):
    a, b, c = (
        deepinversion_attack(
            TargetOracle(digits_target),
            torch.tensor([1, 2]),
            iterations=20,
            jitter=2,
            rng=_rng(seed),
            **NORM,
        )
        for seed in (0, 0, 1)
    )
    assert torch.equal(a.images, b.images) and a.losses == b.losses
    assert not torch.equal(a.images, c.images)


def test_progress_every_ten_steps_and_the_last():
    calls = []
    deepinversion_attack(
        TargetOracle(tiny_classifier()),
        torch.tensor([0]),
        iterations=25,
        on_step=lambda step, total, info: calls.append((step, total, info)),
        **NORM,
    )
    assert [c[0] for c in calls] == [10, 20, 25] and {c[1] for c in calls} == {25}
    assert set(calls[0][2]) == {"loss", "ce", "r_feature", "tv_l2", "tv_l1", "l2", "lr"}
    assert all(isinstance(v, float) for c in calls for v in c[2].values())


def test_target_without_batchnorm_runs_without_the_bn_prior():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    oracle = TargetOracle(as_target(net, num_classes=3, input_shape=(3, 4, 4)))
    res = deepinversion_attack(oracle, torch.tensor([0, 2]), iterations=4, jitter=1)
    assert res.extras["bn_layers"] == 0 and res.extras["r_feature"] == [0.0] * 4
    assert res.queries == 8 and res.images.shape == (2, 3, 4, 4)


def test_official_settings_are_accepted_and_setting1_is_the_default():
    params = inspect.signature(deepinversion_attack).parameters
    for name, kwargs in OFFICIAL_SETTINGS.items():
        assert set(kwargs) <= set(params), name
    defaults = {k: params[k].default for k in OFFICIAL_SETTINGS["imagenet_setting1"]}
    assert defaults == OFFICIAL_SETTINGS["imagenet_setting1"]
    assert SPECS["deepinversion"].run is deepinversion_attack
    assert SPECS["deepinversion"].access == "white-box" and not SPECS["deepinversion"].needs


# -- bad inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("access", ["logits", "probabilities", "label"])
def test_refuses_non_white_box_oracle(access):
    oracle = TargetOracle(tiny_classifier(), access=access)
    with pytest.raises(AccessDenied, match=f"white-box.*{access}"):
        deepinversion_attack(oracle, torch.tensor([0]), iterations=1, **NORM)
    assert oracle.queries == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"iterations": 0}, r"iterations must be an integer >= 1, got 0"),
        ({"lr": 0.0}, r"lr must be a positive number, got 0.0"),
        ({"betas": (0.5,)}, r"betas must be two numbers in \[0, 1\), got \(0.5,\)"),
        ({"betas": [0.9, 1.0]}, r"betas must be two numbers"),
        ({"schedule": "step"}, r"schedule must be 'cosine' or 'constant', got 'step'"),
        ({"warmup": -1}, r"warmup must be an integer >= 0, got -1"),
        ({"jitter": 1.5}, r"jitter must be an integer >= 0, got 1.5"),
        ({"r_feature": -0.1}, r"r_feature must be a finite number >= 0, got -0.1"),
        ({"tv_l2": float("nan")}, r"tv_l2 must be a finite number >= 0"),
        ({"std": 0.0}, r"std must be positive, got 0.0"),
        ({"mean": "0.5"}, r"mean must be a number or a sequence of numbers, got '0.5'"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    oracle = TargetOracle(tiny_classifier())
    with pytest.raises(ValueError, match=match):
        deepinversion_attack(oracle, torch.tensor([0]), **(NORM | kwargs))
    assert oracle.queries == 0


def test_bad_labels_and_imagenet_statistics_on_one_channel_raise():
    oracle = TargetOracle(tiny_classifier())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got \[4\]"):
        deepinversion_attack(oracle, torch.tensor([4]), **NORM)
    with pytest.raises(
        ValueError, match=r"mean must be a single number or one number per channel.*\(1\), got 3"
    ):
        deepinversion_attack(oracle, torch.tensor([0]))  # ImageNet defaults, 1-channel target
    assert oracle.queries == 0


def test_batchnorm_without_running_statistics_raises_before_any_query():
    target = tiny_classifier()
    target.body[1] = nn.BatchNorm2d(8, track_running_stats=False)
    oracle = TargetOracle(target)
    with pytest.raises(ValueError, match=r"'body.1'.*no running statistics"):
        deepinversion_attack(oracle, torch.tensor([0]), **NORM)
    assert oracle.queries == 0
