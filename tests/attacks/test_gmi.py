"""GMI: the official objective and optimiser, restarts and selection, the white-box threat model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib.attacks import gmi_attack
from mibench_lib.attacks.gmi import OFFICIAL_SCALING
from mibench_lib.models.base import Classifier
from mibench_lib.oracle import AccessDenied, TargetOracle
from mibench_lib.testing import tiny_classifier, tiny_discriminator, tiny_generator


class LinearTarget(Classifier):
    """Random linear model on raw pixels: each class column ranks images differently."""

    def __init__(self, num_classes: int = 50, seed: int = 0) -> None:
        super().__init__(num_classes, 64, (1, 8, 8))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(num_classes, 64, generator=g))
            self.head.bias.zero_()

    def features(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the feature: raises target confidence over random latents ------------------------------------
def test_beats_random_latents(digits_target, digits_generator, label_prob):
    labels = torch.tensor([0, 1, 2, 3, 0, 3])
    res = gmi_attack(
        TargetOracle(digits_target),
        labels,
        generator=digits_generator,
        discriminator=tiny_discriminator(),
        steps=30,
        restarts=2,
        rng=_rng(0),
    )
    with torch.no_grad():
        random_images = digits_generator(torch.randn(6, 8, generator=_rng(1)).clamp(-1, 1))
    p_attack = label_prob(digits_target, res.images, labels)
    p_random = label_prob(digits_target, random_images, labels)
    # measured: p_attack >= 0.966 (mean 0.985), p_random mean 0.33
    assert (p_attack > 0.75).all()
    assert p_attack.mean() > p_random.mean() + 0.3
    torch.testing.assert_close(res.extras["target_prob"], p_attack)
    assert res.losses[-1] < res.losses[0]


@pytest.mark.parametrize("setting", ["celeba", "mnist"])
def test_matches_official_loop_of_each_script(setting, digits_target, digits_generator):
    # the official loop, literally: batch means of both losses over one batch of B identities
    # (Celeba/attack.py: B = 100 at lr 0.02; MNIST/attack.py: B = 5 at lr 0.01),
    # v <- m v - lr g, z <- z - m v_prev + (1 + m) v, then clamp to [-1, 1]
    scaling = OFFICIAL_SCALING[setting]
    lr, batch, m = scaling["lr"], scaling["loss_divisor"], 0.9
    disc, labels = tiny_discriminator(), torch.arange(batch) % 4
    res = gmi_attack(
        TargetOracle(digits_target),
        labels,
        generator=digits_generator,
        discriminator=disc,
        steps=6,
        restarts=1,
        rng=_rng(3),
        **scaling,
    )
    z = torch.randn(batch, 8, generator=_rng(3))
    v = torch.zeros_like(z)
    for _ in range(6):
        z.requires_grad_(True)
        images = digits_generator(z)
        total = -disc(images).mean() + 100 * F.cross_entropy(digits_target(images), labels)
        (grad,) = torch.autograd.grad(total, z)
        v_prev, v = v, m * v - lr * grad
        z = (z.detach() - m * v_prev + (1 + m) * v).clamp(-1, 1)
    # measured: latents move by up to 2.1-2.6 and agree to 7e-7; dividing by the wrong batch
    # (100 instead of 5 on MNIST) changes them by 1.6
    assert float((res.latents - torch.randn(batch, 8, generator=_rng(3))).abs().max()) > 0.5
    torch.testing.assert_close(res.latents, z, rtol=1e-4, atol=1e-5)


def test_per_latent_step_is_fixed_by_the_setting_not_the_batch(digits_target, digits_generator):
    # first step from v = 0 (no clamp): z_1 - z_0 = -(1 + m) (lr / loss_divisor) grad of the
    # latent's own loss, computed here for each latent alone; the rest of the batch (4 labels
    # x 2 restarts) changes nothing
    disc, labels, m = tiny_discriminator(), torch.tensor([0, 1, 2, 3]), 0.9
    z0 = torch.randn(8, 8, generator=_rng(4))
    moves = {}
    for setting, scaling in OFFICIAL_SCALING.items():
        res = gmi_attack(
            TargetOracle(digits_target),
            labels,
            generator=digits_generator,
            discriminator=disc,
            steps=1,
            restarts=2,
            clip=100.0,
            select="all",
            rng=_rng(4),
            **scaling,
        )
        moves[setting] = res.latents - z0
        for i in range(8):
            zi = z0[i : i + 1].clone().requires_grad_(True)
            images = digits_generator(zi)
            own = -disc(images) + 100 * F.cross_entropy(
                digits_target(images), labels[i % 4].view(1)
            )
            (g,) = torch.autograd.grad(own.sum(), zi)
            step = -(1 + m) * scaling["lr"] / scaling["loss_divisor"] * g
            torch.testing.assert_close(moves[setting][i : i + 1], step, rtol=1e-4, atol=1e-6)
    # MNIST's per-latent step coefficient 0.01 / 5 is ten times CelebA's 0.02 / 100 (the moves
    # are 6e-5..0.17 on CelebA; atol covers float32 rounding of z_1 - z_0 at |z| <= 3)
    torch.testing.assert_close(moves["mnist"], 10 * moves["celeba"], rtol=1e-4, atol=1e-5)


def test_prior_step_raises_critic_score(digits_generator, digits_target):
    # one descent step on the prior term alone must raise D(G(z)): catches a flipped sign
    disc = tiny_discriminator()
    labels = torch.tensor([0, 1, 2, 3])
    res = gmi_attack(
        TargetOracle(digits_target),
        labels,
        generator=digits_generator,
        discriminator=disc,
        steps=1,
        lr=10.0,
        lambda_iden=0.0,
        clip=10.0,
        restarts=1,
        rng=_rng(0),
    )
    with torch.no_grad():
        before = disc(digits_generator(torch.randn(4, 8, generator=_rng(0))))
        after = disc(res.images)
    assert (after > before).all()  # measured: gains 7e-4 to 0.24; the flipped sign loses 7e-4+
    assert res.losses == pytest.approx([-float(before.mean())], rel=1e-5)


# -- restarts and selection -----------------------------------------------------------------------
def test_select_best_keeps_restart_with_highest_label_logit():
    target = LinearTarget(num_classes=50)
    labels = torch.arange(40, 50)  # labels differ from row indices
    kw = {
        "generator": tiny_generator(),
        "discriminator": tiny_discriminator(),
        "steps": 3,
        "restarts": 5,
    }
    every = gmi_attack(TargetOracle(target), labels, select="all", rng=_rng(0), **kw)
    best = gmi_attack(TargetOracle(target), labels, select="best", rng=_rng(0), **kw)
    with torch.no_grad():
        logits = target(every.images).view(5, 10, 50)  # restart-major
    by_label = logits.gather(2, labels.expand(5, 10)[:, :, None]).squeeze(2).argmax(dim=0)
    by_row = logits[:, torch.arange(10), torch.arange(10)].argmax(dim=0)
    assert not torch.equal(by_label, by_row)  # reading score[i, i] would pick other restarts
    assert torch.equal(every.extras["selected"].view(5, 10).float().argmax(0), by_label)
    assert every.extras["selected"].view(5, 10).sum(0).tolist() == [1] * 10
    assert torch.equal(best.images, every.images.view(5, 10, 1, 8, 8)[by_label, torch.arange(10)])
    assert torch.equal(best.extras["restart"], by_label)
    assert best.labels.tolist() == labels.tolist()


def test_select_all_shapes_and_labels():
    res = gmi_attack(
        TargetOracle(tiny_classifier()),
        torch.tensor([2, 0, 2]),
        generator=tiny_generator(),
        discriminator=tiny_discriminator(),
        steps=2,
        restarts=3,
        select="all",
        rng=_rng(0),
    )
    assert res.images.shape == (9, 1, 8, 8) and res.latents.shape == (9, 8)
    assert res.labels.tolist() == [2, 0, 2] * 3
    assert res.extras["restart"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert res.extras["selected"].dtype == torch.bool and int(res.extras["selected"].sum()) == 3


def test_shapes_range_and_exact_queries():
    oracle = TargetOracle(tiny_classifier())
    res = gmi_attack(
        oracle,
        torch.tensor([1, 3]),
        generator=tiny_generator(),
        discriminator=tiny_discriminator(),
        steps=4,
        restarts=3,
        rng=_rng(0),
    )
    assert res.attack == "gmi"
    assert res.images.shape == (2, 1, 8, 8) and res.images.device.type == "cpu"
    assert 0.0 <= float(res.images.min()) <= float(res.images.max()) <= 1.0
    assert res.latents.shape == (2, 8) and len(res.losses) == 4
    assert res.queries == oracle.queries == (4 + 1) * 2 * 3  # steps, then the selection pass
    assert res.extras["target_prob"].shape == (2,)


def test_latents_stay_clamped_after_huge_lr():
    res = gmi_attack(
        TargetOracle(tiny_classifier()),
        torch.tensor([0, 1]),
        generator=tiny_generator(),
        discriminator=tiny_discriminator(),
        steps=2,
        lr=1e6,
        clip=0.5,
        restarts=2,
        select="all",
        rng=_rng(0),
    )
    assert float(res.latents.abs().max()) == 0.5


# -- threat model, frozen networks, determinism, errors ------------------------------------------
@pytest.mark.parametrize("access", ["logits", "probabilities", "label"])
def test_refuses_non_white_box_oracle(access):
    oracle = TargetOracle(tiny_classifier(), access=access)
    with pytest.raises(AccessDenied, match=f"white-box.*{access}"):
        gmi_attack(
            oracle,
            torch.tensor([0]),
            generator=tiny_generator(),
            discriminator=tiny_discriminator(),
            steps=1,
        )
    assert oracle.queries == 0


def test_frozen_networks_unchanged(buffer_hash):
    gen, disc, target = tiny_generator().train(), tiny_discriminator().train(), tiny_classifier()
    oracle = TargetOracle(target)
    target.train()  # the attack must still run it in eval mode
    before = buffer_hash(gen, disc, target)
    gmi_attack(
        oracle,
        torch.tensor([0, 1]),
        generator=gen,
        discriminator=disc,
        steps=3,
        restarts=2,
        rng=_rng(0),
    )
    assert buffer_hash(gen, disc, target) == before
    assert gen.training and disc.training and target.training  # caller's modes restored
    nets: list[nn.Module] = [gen, disc, target]
    assert all(p.grad is None for net in nets for p in net.parameters())


def test_same_rng_same_images_different_rng_different():
    def run(seed: int):
        return gmi_attack(
            TargetOracle(tiny_classifier()),
            torch.tensor([0, 3]),
            generator=tiny_generator(),
            discriminator=tiny_discriminator(),
            steps=3,
            restarts=2,
            rng=_rng(seed),
        )

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.images, b.images) and a.losses == b.losses
    assert not torch.equal(a.images, c.images)


def test_bad_arguments_raise():
    oracle = TargetOracle(tiny_classifier())
    kw = {"generator": tiny_generator(), "discriminator": tiny_discriminator(), "steps": 1}
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got \[7\]"):
        gmi_attack(oracle, torch.tensor([7]), **kw)
    with pytest.raises(ValueError, match="select"):
        gmi_attack(oracle, torch.tensor([0]), select="top", **kw)
    with pytest.raises(ValueError, match="momentum"):
        gmi_attack(oracle, torch.tensor([0]), momentum=0.0, **kw)
    with pytest.raises(ValueError, match="loss_divisor"):
        gmi_attack(oracle, torch.tensor([0]), loss_divisor=0, **kw)

    class VectorCritic(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.flatten(1)[:, :1]  # (N, 1) instead of (N,)

    # caught at entry by mibench_lib.byo.check_critic, before any query, with the fix
    with pytest.raises(ValueError, match=r"one score per image.*\(2, 1\).*as_critic"):
        gmi_attack(
            oracle,
            torch.tensor([0]),
            generator=tiny_generator(),
            discriminator=VectorCritic(),
            steps=1,
            restarts=1,
        )
    assert oracle.queries == 0


def test_chunked_batches_give_the_same_search():
    """batch_size only splits the latents into consecutive chunks: same images, queries, losses."""
    oracle_args = (tiny_classifier(),)
    kwargs = dict(
        generator=tiny_generator(),
        discriminator=tiny_discriminator(),
        steps=6,
        restarts=3,
        select="all",
    )
    labels = torch.tensor([0, 1, 2, 3, 1])
    whole = gmi_attack(TargetOracle(*oracle_args), labels, rng=_rng(), **kwargs)
    chunked = gmi_attack(TargetOracle(*oracle_args), labels, rng=_rng(), batch_size=4, **kwargs)
    torch.testing.assert_close(chunked.images, whole.images, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.latents, whole.latents, atol=1e-5, rtol=0)
    assert chunked.queries == whole.queries == (6 + 1) * 15
    assert chunked.losses == pytest.approx(whole.losses, abs=1e-4)
    assert torch.equal(chunked.extras["selected"], whole.extras["selected"])
    with pytest.raises(ValueError, match="batch_size"):
        gmi_attack(TargetOracle(*oracle_args), labels, batch_size=0, **kwargs)


# -- start latents ---------------------------------------------------------------------------------
def _gmi_kwargs(**overrides):
    kw = dict(generator=tiny_generator(), discriminator=tiny_discriminator(), restarts=2)
    return {**kw, **overrides}


def test_start_latents_are_where_the_first_step_starts():
    """steps=0 returns the given points; one step is the first Nesterov step from them."""
    labels = torch.tensor([0, 3, 1])
    start = torch.randn(2, 3, 8, generator=_rng(5))
    kept = start.clone()
    res = gmi_attack(
        TargetOracle(tiny_classifier()),
        labels,
        steps=0,
        select="all",
        start_latents=start,
        **_gmi_kwargs(),
    )
    assert torch.equal(res.latents, start.reshape(6, 8))  # restart-major: [r, i] -> r * N + i
    assert torch.equal(res.extras["restart"], torch.tensor([0, 0, 0, 1, 1, 1]))
    with torch.no_grad():
        torch.testing.assert_close(res.images, tiny_generator()(start.reshape(6, 8)))

    lr, momentum, divisor, lam = 0.05, 0.9, 4, 100.0
    res = gmi_attack(
        TargetOracle(tiny_classifier()),
        labels,
        steps=1,
        select="all",
        start_latents=start,
        lr=lr,
        momentum=momentum,
        loss_divisor=divisor,
        lambda_iden=lam,
        clip=10.0,
        **_gmi_kwargs(),
    )
    # by hand: SGD's first Nesterov step is z - lr * (1 + momentum) * grad
    z = start.reshape(6, 8).clone().requires_grad_(True)
    images = tiny_generator()(z)
    y = labels.repeat(2)
    loss = -tiny_discriminator()(images) + lam * F.cross_entropy(
        tiny_classifier()(images), y, reduction="none"
    )
    (grad,) = torch.autograd.grad(loss.sum() / divisor, z)
    expected = (z - lr * (1 + momentum) * grad).detach()
    torch.testing.assert_close(res.latents, expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(start, kept)  # the caller's tensor is copied, never updated


def test_given_draws_reproduce_the_default_search():
    """start_latents = the draws the default takes from rng: the very same search."""
    labels = torch.tensor([2, 0])
    kw = _gmi_kwargs(steps=4, restarts=3, select="all")
    default = gmi_attack(TargetOracle(tiny_classifier()), labels, rng=_rng(7), **kw)
    start = torch.randn(3, 2, 8, generator=_rng(7))
    given = gmi_attack(
        TargetOracle(tiny_classifier()), labels, start_latents=start, rng=_rng(99), **kw
    )
    assert torch.equal(given.images, default.images)
    assert torch.equal(given.latents, default.latents)
    assert given.losses == default.losses and given.queries == default.queries == 5 * 6


def test_start_latents_of_one_restart_may_drop_the_restart_axis():
    labels = torch.tensor([1, 2])
    start = torch.randn(2, 8, generator=_rng(1))
    kw = _gmi_kwargs(steps=2, restarts=1)
    flat = gmi_attack(TargetOracle(tiny_classifier()), labels, start_latents=start, **kw)
    nested = gmi_attack(TargetOracle(tiny_classifier()), labels, start_latents=start[None], **kw)
    assert torch.equal(flat.latents, nested.latents)


@pytest.mark.parametrize(
    ("start", "match"),
    [
        (torch.zeros(3, 2, 8), r"\(restarts, N, latent_dim\) = \(2, 2, 8\).*got \(3, 2, 8\)"),
        (torch.zeros(2, 2, 7), r"got \(2, 2, 7\)"),
        (torch.zeros(2, 8), r"\(N, latent_dim\) = \(2, 8\) need restarts=1, got restarts=2"),
        (torch.zeros(2, 2, 8, dtype=torch.float64), "dtype torch.float32.*got torch.float64"),
        (torch.full((2, 2, 8), float("nan")), "finite"),
    ],
)
def test_bad_start_latents_raise_before_any_query(start, match):
    oracle = TargetOracle(tiny_classifier())
    with pytest.raises(ValueError, match=match):
        gmi_attack(oracle, torch.tensor([0, 1]), start_latents=start, **_gmi_kwargs(steps=1))
    assert oracle.queries == 0


# -- a caller's identity loss (LOMMA's hook) -------------------------------------------------------
def test_identity_loss_of_per_image_cross_entropy_reproduces_the_default_exactly():
    labels = torch.tensor([0, 3, 1])
    kw = _gmi_kwargs(steps=5, restarts=2, select="all")
    default = gmi_attack(TargetOracle(tiny_classifier()), labels, rng=_rng(2), **kw)
    oracle = TargetOracle(tiny_classifier())
    seen = []

    def cross_entropy(images: Tensor, y: Tensor) -> Tensor:
        seen.append(y.clone())
        return F.cross_entropy(oracle(images), y, reduction="none")

    given = gmi_attack(oracle, labels, identity_loss=cross_entropy, rng=_rng(2), **kw)
    assert torch.equal(given.images, default.images)
    assert torch.equal(given.latents, default.latents)
    assert given.losses == default.losses
    assert given.queries == default.queries == oracle.queries == (5 + 1) * 6
    assert len(seen) == 5 and all(torch.equal(y, labels.repeat(2)) for y in seen)


def test_identity_loss_drives_the_search_and_its_queries_are_counted():
    # a loss that asks the target twice per step: both queries are counted
    labels, oracle = torch.tensor([2, 0]), TargetOracle(tiny_classifier())

    def twice(images: Tensor, y: Tensor) -> Tensor:
        return -oracle(images).gather(1, y[:, None]).squeeze(1) + 0 * oracle(images).sum(1)

    kw = _gmi_kwargs(steps=3, restarts=2, select="all")
    res = gmi_attack(oracle, labels, identity_loss=twice, rng=_rng(0), **kw)
    assert res.queries == oracle.queries == 3 * 2 * 4 + 4
    ce = gmi_attack(TargetOracle(tiny_classifier()), labels, rng=_rng(0), **kw)
    assert not torch.equal(res.latents, ce.latents)
    # its gradient is the identity term: a loss without gradient leaves the prior term alone
    prior_only = gmi_attack(
        TargetOracle(tiny_classifier()), labels, lambda_iden=0.0, rng=_rng(0), **kw
    )
    other = TargetOracle(tiny_classifier())
    flat = gmi_attack(
        other,
        labels,
        identity_loss=lambda images, y: F.cross_entropy(
            other(images), y, reduction="none"
        ).detach(),
        rng=_rng(0),
        **kw,
    )
    assert torch.equal(flat.latents, prior_only.latents)


def test_bad_identity_loss_raises():
    oracle = TargetOracle(tiny_classifier())
    with pytest.raises(ValueError, match="identity_loss must be None or a callable"):
        gmi_attack(oracle, torch.tensor([0]), identity_loss="logit", **_gmi_kwargs(steps=1))
    assert oracle.queries == 0
    with pytest.raises(
        ValueError, match=r"identity_loss must return one loss per image, shape \(2,\)"
    ):
        gmi_attack(
            oracle,
            torch.tensor([0]),
            identity_loss=lambda images, y: oracle(images).sum(),
            **_gmi_kwargs(steps=1),
        )
